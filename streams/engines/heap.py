"""The garbage collector on the scoring path: the start-up heap is frozen out of it.

A worker holds ~1M long-lived objects after start-up (Faust, aiohttp, onnxruntime, pydantic, numpy, the
model), and scoring makes tens of thousands of short-lived container objects per second (consumed
messages, outputs, headers, delivery callbacks) of which the in-flight window keeps many alive long enough
to be promoted. CPython then runs a full collection every time the promoted objects reach a quarter of the
long-lived ones, and each full collection walks the whole start-up heap again: py-spy of a batch-engine
worker under a backlog put 20 % of all samples (38 % of the scoring thread's) in ``gc_collect_main``, and
single pauses of that kind are what the p99 at 10k events/s was made of. ``gc.freeze()`` moves what exists
at start-up into a permanent generation the collector never walks; cycles made later are still collected.

>>> import gc
>>> freeze_startup_heap() and gc.get_freeze_count() > 0
True
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> bool:
    """Collect once, then freeze every object that survived (start-up state: modules, the model, services).

    Called by each engine when it starts scoring; calling it again freezes what was added since. True once done.
    """
    gc.collect()
    gc.freeze()
    return True
