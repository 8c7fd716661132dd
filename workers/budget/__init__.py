"""Budget processor and enforcement: rolling spend per scope, and admission against it.

Reading order: `config.py` (the budgets file) -> `windows.py` (window arithmetic,
pure) -> `ledger.py` (buckets, dedup, states, pure) -> `freshness.py` (processing
watermark, pure) -> `agent.py` (faust wiring: tollway.usage -> tollway.budget-state
/ budget-events) -> `enforcement.py` (admission decision, pure; used by
`ingress/budgets.py`). Design: docs/decisions/0005-budget-windows-and-dedup.md.
"""
