"""Socket ops the multiplexing and ports suites need.

Ops register themselves with `hostagent.ops.register` when this module is imported.
"""

from __future__ import annotations
