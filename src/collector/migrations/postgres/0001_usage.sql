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

-- Hourly roll-ups, written in the same transaction as the events they sum.
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
    PRIMARY KEY (hour, team, key_id, model, provider, route, service)
);
CREATE INDEX rollup_team_hour ON rollup_hourly (team, hour);

-- Latency per roll-up row as counts in log-spaced buckets (collector/rollup.rs).
CREATE TABLE rollup_latency (
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
