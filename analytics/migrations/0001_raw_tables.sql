-- Raw tables: one row per Kafka record the loader keeps, in the loader's row shape
-- (analytics/loader/rows.py). Names are LowCardinality, money is Decimal(38, 9) USD,
-- times are DateTime64(3, 'UTC'). `kafka_partition`/`kafka_offset` say where a row came
-- from. Each table is a ReplacingMergeTree whose sorting key ends with the record's
-- identity, so a duplicate that ever got past the loader's dedup collapses on merge.
-- The raw-row TTL is applied by migrate.py from TOLLWAY_ANALYTICS_RAW_TTL_DAYS.
-- non_replicated_deduplication_window: remember the last blocks' insert_deduplication_token.

CREATE TABLE IF NOT EXISTS {db}.requests
(
    request_id          String,
    execution_id        String,
    team_id             LowCardinality(String),
    key_id              LowCardinality(Nullable(String)),
    app                 LowCardinality(String),
    tags                Array(LowCardinality(String)),
    metadata            Map(LowCardinality(String), String),
    mode                LowCardinality(String),
    requested_model     LowCardinality(String),
    served_model        LowCardinality(Nullable(String)),
    provider            LowCardinality(Nullable(String)),
    deployment          LowCardinality(Nullable(String)),
    status              LowCardinality(String),
    http_status         UInt16,
    error_type          LowCardinality(Nullable(String)),
    attempts            UInt16,
    fallback_used       Bool,
    cache_hit           Bool,
    batch_id            Nullable(String),
    custom_id           Nullable(String),
    latency_ms          UInt32,
    ttft_ms             Nullable(UInt32),
    prompt_tokens       UInt32,
    completion_tokens   UInt32,
    cached_tokens       UInt32,
    reasoning_tokens    UInt32,
    cache_write_tokens  UInt32,
    received_at         DateTime64(3, 'UTC'),
    finished_at         DateTime64(3, 'UTC'),
    kafka_partition     UInt16,
    kafka_offset        UInt64,
    -- First result per request wins (docs/decisions/0003): the highest version is the
    -- lowest offset. Duplicate results share their key, hence their partition.
    first_wins_version  UInt64 MATERIALIZED bitNot(kafka_offset)
)
ENGINE = ReplacingMergeTree(first_wins_version)
PARTITION BY toYYYYMM(received_at)
ORDER BY (team_id, received_at, request_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {db}.attempts
(
    request_id          String,
    attempt_id          String,
    attempt             UInt16,
    team_id             LowCardinality(String),
    key_id              LowCardinality(Nullable(String)),
    mode                LowCardinality(String),
    deployment          LowCardinality(String),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    outcome             LowCardinality(String),
    http_status         Nullable(UInt16),
    error_type          LowCardinality(Nullable(String)),
    error_code          LowCardinality(Nullable(String)),
    latency_ms          Float64,
    prompt_tokens       UInt32,
    completion_tokens   UInt32,
    cached_tokens       UInt32,
    reasoning_tokens    UInt32,
    cache_write_tokens  UInt32,
    router_id           LowCardinality(String),
    started_at          DateTime64(3, 'UTC'),
    kafka_partition     UInt16,
    kafka_offset        UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(started_at)
ORDER BY (team_id, started_at, request_id, attempt_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {db}.usage
(
    usage_id            String,
    request_id          String,
    attempt_id          String,
    team_id             LowCardinality(String),
    key_id              LowCardinality(Nullable(String)),
    mode                LowCardinality(String),
    requested_model     LowCardinality(String),
    model               LowCardinality(String),
    provider            LowCardinality(String),
    deployment          LowCardinality(String),
    prompt_tokens       UInt32,
    completion_tokens   UInt32,
    cached_tokens       UInt32,
    cache_write_tokens  UInt32,
    reasoning_tokens    UInt32,
    cost_usd            Decimal(38, 9),
    saved_usd           Decimal(38, 9),
    cost_status         LowCardinality(String),
    pricing_version     LowCardinality(String),
    occurred_at         DateTime64(3, 'UTC'),
    priced_at           DateTime64(3, 'UTC'),
    kafka_partition     UInt16,
    kafka_offset        UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (team_id, occurred_at, usage_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {db}.budget_events
(
    event_id            String,
    scope_type          LowCardinality(String),
    scope_id            String,
    budget_window       LowCardinality(String),
    threshold_pct       UInt16,
    spent_usd           Decimal(38, 9),
    limit_usd           Decimal(38, 9),
    occurred_at         DateTime64(3, 'UTC'),
    kafka_partition     UInt16,
    kafka_offset        UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (scope_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
