"""Bulk socket ops for the five-tuple suite (many connections per request).

Ops register themselves with `hostagent.ops.register` when this module is imported.
"""

from __future__ import annotations
