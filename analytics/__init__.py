"""Usage in ClickHouse: the loader, the schema as a contract, SQL analytics.

Reading guide (follows the data; docs/analytics-schema.md documents every table,
column and named query):

    settings.py        CLICKHOUSE_URL and TOLLWAY_ANALYTICS_* (parsed once, frozen)
    connection.py      clickhouse-connect for http(s):// and chdb:// alike
    chserver.py        the embedded ClickHouse: one process owns chdb, serves HTTP
    migrations/*.sql   numbered schema; migrate.py applies the missing ones
    loader/            outcome topics -> ClickHouse, each record stored once
    queries.py         named, parameterized queries returning typed rows
    report.py, cli.py  `tollway analytics|loader|spend|usage|sql`
"""
