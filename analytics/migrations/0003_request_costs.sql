-- What each request cost: every priced provider call of it (retries, fallbacks and
-- repeated calls after a crash are real spend), summed per request_id by a view from
-- `usage`. `requests_with_cost` joins it to `requests`; a request whose usage has not
-- arrived yet shows 0 (usage comes from the cost processor, after the result).

CREATE TABLE IF NOT EXISTS {db}.request_costs
(
    request_id          String,
    team_id             LowCardinality(String),
    occurred_on         Date,
    calls               UInt64,
    cost_usd            Decimal(38, 9),
    saved_usd           Decimal(38, 9)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(occurred_on)
ORDER BY (team_id, request_id, occurred_on)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.request_costs_mv TO {db}.request_costs AS
SELECT
    request_id,
    team_id,
    toDate(occurred_at, 'UTC') AS occurred_on,
    count() AS calls,
    sum(cost_usd) AS cost_usd,
    sum(saved_usd) AS saved_usd
FROM {db}.usage
GROUP BY request_id, team_id, occurred_on;

CREATE VIEW IF NOT EXISTS {db}.requests_with_cost AS
SELECT
    request_row.*,
    request_cost.calls AS billed_calls,
    request_cost.cost_usd AS cost_usd,
    request_cost.saved_usd AS saved_usd
FROM {db}.requests AS request_row
LEFT JOIN
(
    SELECT team_id, request_id, sum(calls) AS calls, sum(cost_usd) AS cost_usd,
           sum(saved_usd) AS saved_usd
    FROM {db}.request_costs
    GROUP BY team_id, request_id
) AS request_cost
    ON request_row.team_id = request_cost.team_id
    AND request_row.request_id = request_cost.request_id;
