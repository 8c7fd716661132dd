"""The ClickHouse loader: outcome topics -> ClickHouse, each record stored once.

Reading order: `rows.py` (record -> row, pure), `batching.py` (size/age batches, pure),
`sink.py` (the write contract and its fake), `clickhouse.py` (the adapter),
`consumer.py` (the wiring: consume, batch, write, then commit).
"""
