"""The one teardown path from a ledger: what `Lab.down`, `netharness down` and `clean`
use, and the rule the fork server's sentinel applies (hostagent.reaper) for namespaces."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from harness.backends import clean_recorded
from harness.core.ledger import LabRecord
from harness.errors import CleanupError
from hostagent import reaper


def destroy_recorded(
    record: LabRecord, progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """Remove every object in the ledger, then the ledger. Returns what it removed.

    `progress(done, total)` is told of the namespaces as they go. Namespaces go by the
    same rules and code as the fork server's sentinel uses (hostagent.reaper).
    """
    entries = record.entries()
    # Containers and other backends' hosts first: their processes go with them.
    removed: list[str] = clean_recorded(record.id, entries)
    gone, leftovers = reaper.remove_namespaces(record.id, entries, progress)
    if leftovers:
        raise CleanupError(leftovers)
    shutil.rmtree(record.dir, ignore_errors=True)
    return removed + gone
