"""The cyclic GC under a busy runtime: a young generation that holds what is in flight.

Every ask in flight holds a few dozen container objects (its envelope, run, events, futures,
the commit being written) for the milliseconds its commit takes. With 64 asks in flight that
is ~2,000 objects at any moment, above CPython 3.11's young threshold of 700 allocations, so
young collections ran every ~5 ms and moved objects still in flight to the older
generations, where they died and, every ~2,500 messages, set off a full collection: a walk of
the whole heap (34 ms for Loom's own imports, more for a larger application). Each pause
stalls every ask in flight at once. Measured in `make bench` (docs/performance.md): with the
threshold at 10,000, a round of 5,120 messages runs without a single collection, and
durable throughput rises by a quarter; resident memory is unchanged (the hot path's garbage
is freed by reference counting). What does wait is cyclic garbage (an exception whose
traceback holds its frames, say): up to ~14 times as many allocations as before.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def raise_young_threshold(threshold: int = YOUNG_THRESHOLD) -> bool:
    """Raise the collector's young-generation threshold to `threshold` allocations, for the
    whole process and for good: never lower it (an application that chose a larger one
    keeps it), and leave a threshold of 0 (automatic collection off) alone. A collector
    switched off for now (`gc.disable()`, as a replay does while it decodes) gets the new
    threshold for when it is back on. True if it changed."""
    young, middle, old = gc.get_threshold()
    if young == 0 or young >= threshold:
        return False
    gc.set_threshold(threshold, middle, old)
    return True
