"""`python -m harness` is the `netharness` command (the fork server's reaper uses it)."""

import sys

from harness.cli._entry import main

sys.exit(main())
