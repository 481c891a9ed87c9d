"""`python -m hostagent`: run the host agent on stdin/stdout until stdin reaches EOF."""

from __future__ import annotations

import sys

from hostagent.agent import serve


def main() -> int:
    try:
        return serve(0, 1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
