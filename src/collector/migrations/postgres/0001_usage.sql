-- Raw usage events: the line as the sidecar sent it, keyed by its UUIDv7 (idempotent
-- ingest), with the columns that paging, team isolation and retention filter on.
CREATE TABLE events (
    id UUID PRIMARY KEY NOT NULL,
    ts_ms BIGINT NOT NULL,
    team TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts_ms);
CREATE INDEX events_team_ts ON events (team, ts_ms);

-- Hourly roll-ups, written in the same transaction as the events they sum. `latency`
-- holds the latencies' histogram (an array; collector/rollup.rs).
CREATE TABLE rollup_hourly (
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
    latency BIGINT[] NOT NULL,
    PRIMARY KEY (hour, team, key_id, model, provider, route, service)
);
CREATE INDEX rollup_hourly_team_hour ON rollup_hourly (team, hour);

-- Daily roll-ups, the same columns (`hour` holds the day's start): a query over weeks
-- or months reads one row per day and group instead of 24.
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
    latency BIGINT[] NOT NULL,
    PRIMARY KEY (hour, team, key_id, model, provider, route, service)
);
CREATE INDEX rollup_daily_team_hour ON rollup_daily (team, hour);
