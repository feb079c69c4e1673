-- Raw usage events: the line as the sidecar sent it, keyed by its UUIDv7 (idempotent
-- ingest), with the columns that paging, team isolation and retention filter on.
CREATE TABLE events (
    id TEXT PRIMARY KEY NOT NULL,
    ts_ms INTEGER NOT NULL,
    team TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts_ms);
CREATE INDEX events_team_ts ON events (team, ts_ms);

-- Hourly roll-ups, written in the same transaction as the events they sum. `latency`
-- holds the latencies' histogram (each count as 8 bytes, little-endian; collector/rollup.rs).
CREATE TABLE rollup_hourly (
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
    latency BLOB NOT NULL,
    PRIMARY KEY (hour, team, key_id, model, provider, route, service)
) WITHOUT ROWID;
CREATE INDEX rollup_hourly_team_hour ON rollup_hourly (team, hour);

-- Daily roll-ups, the same columns (`hour` holds the day's start): a query over weeks
-- or months reads one row per day and group instead of 24.
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
    latency BLOB NOT NULL,
    PRIMARY KEY (hour, team, key_id, model, provider, route, service)
) WITHOUT ROWID;
CREATE INDEX rollup_daily_team_hour ON rollup_daily (team, hour);
