"""Cost processor: price every provider call.

Reading order: `catalogue.json` (prices per million tokens, built by
`build_catalogue.py`) -> `catalogue.py` (load, overrides, lookup) -> `pricing.py`
(`compute_cost`, pure) -> `usage.py` (Attempt -> UsageRecord, pure) -> `agent.py`
(faust wiring: tollway.attempts -> tollway.usage).
"""
