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


def build_zipapp(dest: pathlib.Path, bytecode: bool = False) -> pathlib.Path:
    """Write the agent as one self-contained `.pyz` and return its path.

    `dest` is the file to write, or an existing directory to write `ZIPAPP_NAME` into.
    The file is replaced atomically; `python3 <file>` runs the agent on stdin/stdout.
    `bytecode`: each module also compiled by this interpreter, beside its source, which
    an interpreter of the same version imports instead of compiling the source (zipimport
    cannot cache what it compiles: 0.45 s of every start); any other version takes the
    source, as zipimport does for a .pyc whose magic number is not its own.
    """
    import os
    import pathlib
    import py_compile
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
            copy = root / "hostagent" / source.name
            shutil.copyfile(source, copy)
            if bytecode:  # not checked against the source: both are written together
                unchecked = py_compile.PycInvalidationMode.UNCHECKED_HASH
                compiled = str(copy.with_suffix(".pyc"))
                py_compile.compile(str(copy), compiled, doraise=True, invalidation_mode=unchecked)
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
