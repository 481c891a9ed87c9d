"""netharness host agent: opens the sockets a test asks for, and no others.

Standard library only, Python 3.9+. It talks JSON lines on stdin/stdout (docs/protocol.md)
and exits when stdin reaches EOF. `build_zipapp()` packs it into one file for hosts that do
not share the controller's file system (containers, SSH).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hostagent.protocol import AGENT_NAME, PROTOCOL_VERSION

if TYPE_CHECKING:  # pathlib costs agents ~10 ms of start-up; only build_zipapp needs it
    import pathlib

__all__ = ["AGENT_NAME", "PROTOCOL_VERSION", "ZIPAPP_NAME", "build_zipapp"]

ZIPAPP_NAME = f"{AGENT_NAME}-v{PROTOCOL_VERSION}.pyz"

_ZIP_MAIN = """\
import sys

from hostagent.__main__ import main

sys.exit(main())
"""


def build_zipapp(dest: pathlib.Path) -> pathlib.Path:
    """Write the agent as one self-contained `.pyz` and return its path.

    `dest` is the file to write, or an existing directory to write `ZIPAPP_NAME` into.
    The file is replaced atomically; `python3 <file>` runs the agent on stdin/stdout.
    """
    import os
    import pathlib
    import shutil
    import tempfile
    import zipapp

    dest = pathlib.Path(dest)
    if dest.is_dir():
        dest = dest / ZIPAPP_NAME
    package = pathlib.Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="nh-zipapp-") as tmp:
        root = pathlib.Path(tmp) / "src"
        (root / "hostagent").mkdir(parents=True)
        for source in sorted(package.glob("*.py")):  # ssh machines run the fork server too
            shutil.copyfile(source, root / "hostagent" / source.name)
        (root / "__main__.py").write_text(_ZIP_MAIN, encoding="utf-8")
        partial = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            zipapp.create_archive(
                root, partial, interpreter="/usr/bin/env python3", compressed=True
            )
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
    return dest
