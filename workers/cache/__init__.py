"""Exact and semantic response caching (issue 8, docs/decisions/0017).

Reading order: `canonical.py` (keys, who may use the cache) -> `store.py` (exact store:
TTL, LRU, bounds) -> `semantic.py` (vector index per scope) -> `minilm.py` +
`minilm_graph.py` + `wordpiece.py` (the embedding model on onnxruntime, 0020;
`minilm_reference.py` the float32 oracle) -> `cache.py` (lookup/admit) ->
`answers.py` (a hit as Result, Attempt and stream) -> `hook.py` (the router's calls) ->
`kafka.py` (tollway.cache) -> `service.py` (wiring), `settings.py` (TOLLWAY_CACHE_*).
"""

import os

# numpy's OpenBLAS would start one thread per core for every small product: on a busy
# 2-core router that costs far more than it gains (measured: ~50x slower embeddings
# under load). Set before numpy is imported by this package; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
