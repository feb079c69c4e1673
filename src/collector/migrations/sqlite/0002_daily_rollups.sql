-- Daily roll-ups beside the hourly ones (`hour` holds the day's start): a query over
-- weeks or months reads one row per day instead of 24. Filled from the hourly ones for
-- data ingested before this migration; written in the ingest transaction from now on.
CREATE TABLE rollup_daily (
    hour INTEGER NOT NULL,
    team TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    route TEXT NOT NULL,
    service TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    fallbacks INTEGER NOT NULL,
    partials INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_pico INTEGER NOT NULL,
    latency_ms_sum INTEGER NOT NULL,
    PRIMARY KEY (hour, team, key_id, model, provider, route, service)
) WITHOUT ROWID;
CREATE INDEX rollup_daily_team_hour ON rollup_daily (team, hour);

CREATE TABLE rollup_latency_daily (
    hour INTEGER NOT NULL,
    team TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    route TEXT NOT NULL,
    service TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (hour, team, key_id, model, provider, route, service, bucket)
) WITHOUT ROWID;

INSERT INTO rollup_daily
SELECT (hour / 86400) * 86400, team, key_id, model, provider, route, service,
       SUM(requests), SUM(errors), SUM(fallbacks), SUM(partials), SUM(input_tokens),
       SUM(output_tokens), SUM(cached_tokens), SUM(reasoning_tokens), SUM(cost_pico),
       SUM(latency_ms_sum)
FROM rollup_hourly
GROUP BY (hour / 86400) * 86400, team, key_id, model, provider, route, service;

INSERT INTO rollup_latency_daily
SELECT (hour / 86400) * 86400, team, key_id, model, provider, route, service, bucket, SUM(count)
FROM rollup_latency
GROUP BY (hour / 86400) * 86400, team, key_id, model, provider, route, service, bucket;
