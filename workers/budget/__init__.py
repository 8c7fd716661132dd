"""Budget processor and enforcement: rolling spend per scope, and admission against it.

Reading order: `config.py` (the budgets file) -> `windows.py` (window arithmetic,
pure) -> `ledger.py` (buckets, dedup, states, pure) -> `freshness.py` (processing
watermark, pure) -> `agent.py` (faust wiring: tollway.usage -> tollway.budget-state
/ budget-events) -> `enforcement.py` (admission decision, pure) -> `view.py`
(tollway.budget-state in memory, for the ingress and the routers) ->
`ownership.py` (which requests one router must own, pure) -> `reservations.py`
(the routers' worst-case holds, pure; wired in `workers/router/budgets.py`).
Design: docs/decisions/0005-budget-windows-and-dedup.md, 0009-budget-reservations.md.
"""
