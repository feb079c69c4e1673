-- Daily roll-ups beside the hourly ones (`hour` holds the day's start): a query over
-- weeks or months reads one row per day instead of 24. Filled from the hourly ones for
-- data ingested before this migration; written in the ingest transaction from now on.
CREATE TABLE rollup_daily (
    hour BIGINT NOT NULL,
    team TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    route TEXT NOT NULL,
    service TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    fallbacks BIGINT NOT NULL,
    partials BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_pico BIGINT NOT NULL,
    latency_ms_sum BIGINT NOT NULL,
    PRIMARY KEY (hour, team, key_id, model, provider, route, service)
);
CREATE INDEX rollup_daily_team_hour ON rollup_daily (team, hour);

CREATE TABLE rollup_latency_daily (
    hour BIGINT NOT NULL,
    team TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    route TEXT NOT NULL,
    service TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (hour, team, key_id, model, provider, route, service, bucket)
);

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
