-- Hourly and daily cost per team, key and model, fed by materialized views from `usage`.
-- SummingMergeTree adds up rows with the same key on merge, so readers still
-- `sum()` ... `GROUP BY`. A usage row reaches a rollup once: the loader inserts each
-- usage_id once, and a retried insert (same insert_deduplication_token) is dropped in
-- `usage` and in every view's target alike (each target remembers its own blocks).
-- key_id '' means "no virtual key" (a Nullable column cannot be part of the key).

CREATE TABLE IF NOT EXISTS {db}.cost_hourly
(
    hour                DateTime64(3, 'UTC'),
    team_id             LowCardinality(String),
    key_id              LowCardinality(String),
    requested_model     LowCardinality(String),
    model               LowCardinality(String),
    provider            LowCardinality(String),
    calls               UInt64,
    cache_hits          UInt64,
    unpriced_calls      UInt64,
    prompt_tokens       UInt64,
    completion_tokens   UInt64,
    cached_tokens       UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    cost_usd            Decimal(38, 9),
    saved_usd           Decimal(38, 9)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, team_id, key_id, requested_model, model, provider)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.cost_hourly_mv TO {db}.cost_hourly AS
SELECT
    toDateTime64(toStartOfHour(occurred_at), 3, 'UTC') AS hour,
    team_id,
    ifNull(key_id, '') AS key_id,
    requested_model,
    model,
    provider,
    count() AS calls,
    countIf(cost_status = 'cache_hit') AS cache_hits,
    countIf(cost_status = 'unpriced') AS unpriced_calls,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_usd) AS cost_usd,
    sum(saved_usd) AS saved_usd
FROM {db}.usage
GROUP BY hour, team_id, key_id, requested_model, model, provider;

CREATE TABLE IF NOT EXISTS {db}.cost_daily
(
    day                 Date,
    team_id             LowCardinality(String),
    key_id              LowCardinality(String),
    requested_model     LowCardinality(String),
    model               LowCardinality(String),
    provider            LowCardinality(String),
    calls               UInt64,
    cache_hits          UInt64,
    unpriced_calls      UInt64,
    prompt_tokens       UInt64,
    completion_tokens   UInt64,
    cached_tokens       UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    cost_usd            Decimal(38, 9),
    saved_usd           Decimal(38, 9)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, team_id, key_id, requested_model, model, provider)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.cost_daily_mv TO {db}.cost_daily AS
SELECT
    toDate(occurred_at, 'UTC') AS day,
    team_id,
    ifNull(key_id, '') AS key_id,
    requested_model,
    model,
    provider,
    count() AS calls,
    countIf(cost_status = 'cache_hit') AS cache_hits,
    countIf(cost_status = 'unpriced') AS unpriced_calls,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_usd) AS cost_usd,
    sum(saved_usd) AS saved_usd
FROM {db}.usage
GROUP BY day, team_id, key_id, requested_model, model, provider;
