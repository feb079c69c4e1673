-- What sidecars without a shared Redis hold reserved for their requests in flight, per
-- budget level: each sidecar replaces its own rows at every report; a row past
-- `expires_ms` (its sidecar stopped reporting) no longer counts.
CREATE TABLE reservations (
    sidecar TEXT NOT NULL,
    level TEXT NOT NULL,
    name TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    reserved_pico BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (sidecar, level, name)
);

-- Budget alerts: a level's spend crossed one of its `alert_at` marks (in millionths of
-- the budget) in a period. The key makes each one exactly once, whatever the replicas.
CREATE TABLE budget_alerts (
    level TEXT NOT NULL,
    name TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    mark_ppm BIGINT NOT NULL,
    team TEXT NOT NULL,
    spend_pico BIGINT NOT NULL,
    budget_pico BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL,
    PRIMARY KEY (level, name, period_start, mark_ppm)
);
CREATE INDEX budget_alerts_ts ON budget_alerts (ts_ms);
