"""Cyclic garbage collector settings for long-running serving processes.

Why: Python's default thresholds (700, 10, 10) run a young-generation
collection every 700 net container allocations, and every tenth one also
walks the older generation. A serving process allocates hundreds of
containers per request (asyncio handles, aiokafka and aiohttp objects, dicts),
so it collects several times per request while reference counting already
frees almost all of it. Measured in the sync benchmark (gc.callbacks timing,
bench/sync_throughput.py, 1 router at saturation): the router spent 9.6 % of
its CPU in the collector with the defaults; with the settings below, 0.1 s
in one freeze-time collection and then almost nothing.

`tune_gc()` first collects and freezes everything alive (modules, clients,
settings: start-up objects that will never be garbage), so no later collection
walks them, then raises the young threshold to `YOUNG_THRESHOLD`. Reference
cycles are still collected, only in larger batches: memory held by cyclic
garbage is bounded by about `YOUNG_THRESHOLD` container objects per
generation step.

Call it once a process has started its clients, just before it serves.
"""

from __future__ import annotations

import gc
from typing import Final

YOUNG_THRESHOLD: Final = 50_000
"""Net container allocations between young collections (CPython's default: 700)."""
OLDER_THRESHOLDS: Final = (20, 10)
"""Young collections per middle one, middle per old (defaults: 10, 10)."""


def tune_gc() -> None:
    """Freeze the start-up heap and collect young objects in larger batches."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
