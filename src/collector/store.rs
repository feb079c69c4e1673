//! Storage through sqlx: the embedded SQLite file (default, zero setup) or PostgreSQL
//! (production; several collectors may share one database). One set of operations, one
//! migration set per backend, run at start.
//!
//! Ingest is one transaction per batch: the raw events (`ON CONFLICT (id) DO NOTHING`,
//! so a batch delivered twice is stored once) and the roll-ups of exactly the events that
//! were new. The caller acknowledges the batch only after the commit.

use super::config::Database;
use super::query::{Dim, UsageQuery};
use super::rollup::{Delta, Key, Sums};
use crate::events::UsageEvent;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Row};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

pub enum Store {
    Sqlite {
        pool: SqlitePool,
        /// SQLite has one writer: batches take turns here rather than on its busy lock.
        write: tokio::sync::Mutex<()>,
    },
    Postgres(PgPool),
}

/// One parsed line of an ingest batch.
pub struct Incoming {
    pub event: UsageEvent,
    pub line: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub stored: u64,
    pub duplicates: u64,
}

/// One row of `/v1/usage`: the group's keys (in `group_by` order) and its sums.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub keys: Vec<KeyValue>,
    pub sums: Sums,
    /// Latency bucket → count, for percentiles.
    pub latency: BTreeMap<i32, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyValue {
    Text(String),
    /// Unix seconds (the start of a day or an hour).
    Time(i64),
}

/// Rows per INSERT statement (SQLite allows 32 766 bound values; a roll-up row has 17).
const CHUNK: usize = 1000;

impl Store {
    pub async fn open(db: &Database) -> Result<Store, String> {
        match db {
            Database::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // A batch is acknowledged after its commit: the commit must be durable.
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts)
                    .await
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                sqlx::migrate!("src/collector/migrations/sqlite")
                    .run(&pool)
                    .await
                    .map_err(|e| format!("migrating {}: {e}", path.display()))?;
                Ok(Store::Sqlite {
                    pool,
                    write: tokio::sync::Mutex::new(()),
                })
            }
            Database::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await
                    // sqlx's message does not carry the URL's password.
                    .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
                // The migrator holds an advisory lock: replicas starting together are safe.
                sqlx::migrate!("src/collector/migrations/postgres")
                    .run(&pool)
                    .await
                    .map_err(|e| format!("migrating PostgreSQL: {e}"))?;
                Ok(Store::Postgres(pool))
            }
        }
    }

    pub async fn ping(&self) -> bool {
        match self {
            Store::Sqlite { pool, .. } => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
            Store::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
        }
    }

    /// Stores a batch in one transaction; returns how many were new.
    pub async fn ingest(&self, batch: &mut [Incoming]) -> Result<Stored, sqlx::Error> {
        // One order for every writer: concurrent batches lock rows the same way round.
        batch.sort_unstable_by_key(|i| i.event.id);
        let mut seen = HashSet::with_capacity(batch.len());
        let unique: Vec<&Incoming> = batch.iter().filter(|i| seen.insert(i.event.id)).collect();
        let new_ids = match self {
            Store::Sqlite { pool, write } => {
                let _turn = write.lock().await;
                let mut tx = pool.begin().await?;
                let mut new_ids = HashSet::new();
                for chunk in unique.chunks(CHUNK) {
                    let mut q = QueryBuilder::new("INSERT INTO events (id, ts_ms, team, body) ");
                    q.push_values(chunk, |mut b, i| {
                        b.push_bind(i.event.id.to_string())
                            .push_bind(i.event.ts.timestamp_millis())
                            .push_bind(&*i.event.team)
                            .push_bind(&i.line);
                    });
                    q.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
                    for row in q.build().fetch_all(&mut *tx).await? {
                        let id: String = row.try_get(0)?;
                        if let Ok(id) = uuid::Uuid::parse_str(&id) {
                            new_ids.insert(id);
                        }
                    }
                }
                let delta = delta_of(&unique, &new_ids);
                upsert_sqlite(&mut tx, &delta, Level::Hourly).await?;
                upsert_sqlite(&mut tx, &delta.daily(), Level::Daily).await?;
                tx.commit().await?;
                new_ids
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let ids: Vec<uuid::Uuid> = unique.iter().map(|i| i.event.id).collect();
                let ts: Vec<i64> = unique
                    .iter()
                    .map(|i| i.event.ts.timestamp_millis())
                    .collect();
                let teams: Vec<&str> = unique.iter().map(|i| &*i.event.team).collect();
                let bodies: Vec<&str> = unique.iter().map(|i| i.line.as_str()).collect();
                let rows = sqlx::query(
                    "INSERT INTO events (id, ts_ms, team, body) \
                     SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[]) \
                     ON CONFLICT (id) DO NOTHING RETURNING id",
                )
                .bind(&ids)
                .bind(&ts)
                .bind(&teams)
                .bind(&bodies)
                .fetch_all(&mut *tx)
                .await?;
                let mut new_ids = HashSet::with_capacity(rows.len());
                for row in rows {
                    new_ids.insert(row.try_get::<uuid::Uuid, _>(0)?);
                }
                let delta = delta_of(&unique, &new_ids);
                upsert_postgres(&mut tx, &delta, Level::Hourly).await?;
                upsert_postgres(&mut tx, &delta.daily(), Level::Daily).await?;
                tx.commit().await?;
                new_ids
            }
        };
        let stored = new_ids.len() as u64;
        Ok(Stored {
            stored,
            duplicates: batch.len() as u64 - stored,
        })
    }

    /// Sums (and latency buckets) per group, from the roll-ups: whole days from the daily
    /// level, the hours at either end from the hourly one, added together (exact either way).
    pub async fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, sqlx::Error> {
        let mut rows: BTreeMap<Vec<KeyValue>, UsageRow> = BTreeMap::new();
        for (level, from, to) in plan(q) {
            let part = UsageQuery {
                from_hour: from,
                to_hour: to,
                ..q.clone()
            };
            self.usage_part(&part, level, &mut rows).await?;
        }
        Ok(rows.into_values().collect())
    }

    async fn usage_part(
        &self,
        q: &UsageQuery,
        level: Level,
        rows: &mut BTreeMap<Vec<KeyValue>, UsageRow>,
    ) -> Result<(), sqlx::Error> {
        let postgres = matches!(self, Store::Postgres(_));
        let (sums_sql, lat_sql) = usage_sql(q, postgres, level);
        let binds = q.binds();
        macro_rules! run {
            ($pool:expr) => {{
                let mut s = sqlx::query(&sums_sql);
                let mut l = sqlx::query(&lat_sql);
                for b in &binds {
                    s = match b {
                        Bind::Int(v) => s.bind(*v),
                        Bind::Text(v) => s.bind(v.as_str()),
                    };
                    l = match b {
                        Bind::Int(v) => l.bind(*v),
                        Bind::Text(v) => l.bind(v.as_str()),
                    };
                }
                for row in s.fetch_all($pool).await? {
                    let keys = read_keys(&row, &q.group_by)?;
                    let n = q.group_by.len();
                    let get = |i: usize| row.try_get::<i64, _>(n + i);
                    let add = Sums {
                        requests: get(0)?,
                        errors: get(1)?,
                        fallbacks: get(2)?,
                        partials: get(3)?,
                        input_tokens: get(4)?,
                        output_tokens: get(5)?,
                        cached_tokens: get(6)?,
                        reasoning_tokens: get(7)?,
                        cost_pico: get(8)?,
                        latency_ms_sum: get(9)?,
                    };
                    let row = rows.entry(keys.clone()).or_insert_with(|| UsageRow {
                        keys,
                        sums: Sums::default(),
                        latency: BTreeMap::new(),
                    });
                    row.sums.merge(&add);
                }
                for row in l.fetch_all($pool).await? {
                    let keys = read_keys(&row, &q.group_by)?;
                    let n = q.group_by.len();
                    let bucket: i32 = row.try_get(n)?;
                    let count: i64 = row.try_get(n + 1)?;
                    if let Some(r) = rows.get_mut(&keys) {
                        *r.latency.entry(bucket).or_default() += count;
                    }
                }
            }};
        }
        match self {
            Store::Sqlite { pool, .. } => run!(pool),
            Store::Postgres(pool) => run!(pool),
        }
        Ok(())
    }

    /// Raw events in id (= time) order, after `after`, for replay and audit.
    pub async fn events(
        &self,
        from_ms: i64,
        to_ms: i64,
        team: Option<&str>,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        let postgres = matches!(self, Store::Postgres(_));
        let mut n = 0;
        let mut ph = || {
            n += 1;
            if postgres {
                format!("${n}")
            } else {
                "?".to_string()
            }
        };
        let id = if postgres { "id::text" } else { "id" };
        let mut sql = format!(
            "SELECT {id}, body FROM events WHERE ts_ms >= {} AND ts_ms < {}",
            ph(),
            ph()
        );
        if team.is_some() {
            sql += &format!(" AND team = {}", ph());
        }
        if after.is_some() {
            let p = ph();
            sql += &if postgres {
                format!(" AND id > {p}::uuid")
            } else {
                format!(" AND id > {p}")
            };
        }
        sql += &format!(" ORDER BY id LIMIT {}", ph());
        macro_rules! run {
            ($pool:expr) => {{
                let mut q = sqlx::query(&sql).bind(from_ms).bind(to_ms);
                if let Some(t) = team {
                    q = q.bind(t);
                }
                if let Some(a) = after {
                    q = q.bind(a.to_string());
                }
                q.bind(limit)
                    .fetch_all($pool)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            }};
        }
        match self {
            Store::Sqlite { pool, .. } => run!(pool),
            Store::Postgres(pool) => run!(pool),
        }
    }

    /// Retention: raw events before `ts_ms` go, a chunk at a time; roll-ups stay.
    pub async fn delete_before(&self, ts_ms: i64) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let n = match self {
                Store::Sqlite { pool, write } => {
                    let _turn = write.lock().await;
                    sqlx::query(
                        "DELETE FROM events WHERE id IN \
                         (SELECT id FROM events WHERE ts_ms < ? LIMIT 10000)",
                    )
                    .bind(ts_ms)
                    .execute(pool)
                    .await?
                    .rows_affected()
                }
                Store::Postgres(pool) => sqlx::query(
                    "DELETE FROM events WHERE id IN \
                     (SELECT id FROM events WHERE ts_ms < $1 LIMIT 10000)",
                )
                .bind(ts_ms)
                .execute(pool)
                .await?
                .rows_affected(),
            };
            total += n;
            if n < 10000 {
                return Ok(total);
            }
        }
    }
}

fn delta_of(batch: &[&Incoming], new_ids: &HashSet<uuid::Uuid>) -> Delta {
    let mut d = Delta::default();
    for i in batch.iter().filter(|i| new_ids.contains(&i.event.id)) {
        d.add(&i.event);
    }
    d
}

const DIMS: &str = "hour, team, key_id, model, provider, route, service";
const SUMS: [&str; 10] = [
    "requests",
    "errors",
    "fallbacks",
    "partials",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_pico",
    "latency_ms_sum",
];

fn sums_of(s: &Sums) -> [i64; 10] {
    [
        s.requests,
        s.errors,
        s.fallbacks,
        s.partials,
        s.input_tokens,
        s.output_tokens,
        s.cached_tokens,
        s.reasoning_tokens,
        s.cost_pico,
        s.latency_ms_sum,
    ]
}

/// The two roll-up levels: the same columns, `hour` holding the hour's or the day's start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Hourly,
    Daily,
}

impl Level {
    fn sums(self) -> &'static str {
        match self {
            Level::Hourly => "rollup_hourly",
            Level::Daily => "rollup_daily",
        }
    }

    fn latency(self) -> &'static str {
        match self {
            Level::Hourly => "rollup_latency",
            Level::Daily => "rollup_latency_daily",
        }
    }
}

fn upsert_tail(level: Level) -> String {
    let t = level.sums();
    let set: Vec<String> = SUMS
        .iter()
        .map(|c| format!("{c} = {t}.{c} + excluded.{c}"))
        .collect();
    format!(" ON CONFLICT ({DIMS}) DO UPDATE SET {}", set.join(", "))
}

fn latency_tail(level: Level) -> String {
    let t = level.latency();
    format!(
        " ON CONFLICT (hour, team, key_id, model, provider, route, service, bucket) \
         DO UPDATE SET count = {t}.count + excluded.count"
    )
}

async fn upsert_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    d: &Delta,
    level: Level,
) -> Result<(), sqlx::Error> {
    let sums: Vec<(&Key, &Sums)> = d.sums.iter().collect();
    for chunk in sums.chunks(CHUNK) {
        let mut q = QueryBuilder::new(format!(
            "INSERT INTO {} ({DIMS}, {}) ",
            level.sums(),
            SUMS.join(", ")
        ));
        q.push_values(chunk, |mut b, (k, s)| {
            push_key(&mut b, k);
            for v in sums_of(s) {
                b.push_bind(v);
            }
        });
        q.push(upsert_tail(level));
        q.build().execute(&mut **tx).await?;
    }
    let lat: Vec<(&(Key, i32), &i64)> = d.latency.iter().collect();
    for chunk in lat.chunks(CHUNK) {
        let mut q = QueryBuilder::new(format!(
            "INSERT INTO {} ({DIMS}, bucket, count) ",
            level.latency()
        ));
        q.push_values(chunk, |mut b, ((k, bucket), n)| {
            push_key(&mut b, k);
            b.push_bind(*bucket).push_bind(**n);
        });
        q.push(latency_tail(level));
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

fn push_key<'a>(
    b: &mut sqlx::query_builder::Separated<'_, 'a, sqlx::Sqlite, &'static str>,
    k: &'a Key,
) {
    b.push_bind(k.hour)
        .push_bind(k.team.as_str())
        .push_bind(k.key_id.as_str())
        .push_bind(k.model.as_str())
        .push_bind(k.provider.as_str())
        .push_bind(k.route.as_str())
        .push_bind(k.service.as_str());
}

async fn upsert_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    d: &Delta,
    level: Level,
) -> Result<(), sqlx::Error> {
    if d.sums.is_empty() {
        return Ok(());
    }
    let keys: Vec<&Key> = d.sums.keys().collect();
    let mut cols: Vec<Vec<i64>> = vec![Vec::with_capacity(keys.len()); SUMS.len()];
    for s in d.sums.values() {
        for (c, v) in cols.iter_mut().zip(sums_of(s)) {
            c.push(v);
        }
    }
    let arrays: Vec<String> = (8..8 + SUMS.len())
        .map(|i| format!("${i}::bigint[]"))
        .collect();
    let sql = format!(
        "INSERT INTO {} ({DIMS}, {}) SELECT * FROM UNNEST($1::bigint[], $2::text[], \
         $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], {}){}",
        level.sums(),
        SUMS.join(", "),
        arrays.join(", "),
        upsert_tail(level)
    );
    let mut q = bind_keys(sqlx::query(&sql), &keys);
    for c in &cols {
        q = q.bind(c);
    }
    q.execute(&mut **tx).await?;

    let lkeys: Vec<&Key> = d.latency.keys().map(|(k, _)| k).collect();
    let buckets: Vec<i32> = d.latency.keys().map(|(_, b)| *b).collect();
    let counts: Vec<i64> = d.latency.values().copied().collect();
    let sql = format!(
        "INSERT INTO {} ({DIMS}, bucket, count) SELECT * FROM UNNEST($1::bigint[], \
         $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[], \
         $9::bigint[]){}",
        level.latency(),
        latency_tail(level)
    );
    bind_keys(sqlx::query(&sql), &lkeys)
        .bind(&buckets)
        .bind(&counts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn bind_keys<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    keys: &[&Key],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let text = |f: fn(&Key) -> &str| keys.iter().map(|k| f(k).to_string()).collect::<Vec<_>>();
    q.bind(keys.iter().map(|k| k.hour).collect::<Vec<_>>())
        .bind(text(|k| &k.team))
        .bind(text(|k| &k.key_id))
        .bind(text(|k| &k.model))
        .bind(text(|k| &k.provider))
        .bind(text(|k| &k.route))
        .bind(text(|k| &k.service))
}

pub enum Bind {
    Int(i64),
    Text(String),
}

/// Which roll-up level answers which part of a query's range: whole UTC days from the
/// daily level, unless the query groups by hour.
fn plan(q: &UsageQuery) -> Vec<(Level, i64, i64)> {
    const DAY: i64 = 86_400;
    let first_day = (q.from_hour + DAY - 1).div_euclid(DAY) * DAY;
    let last_day = q.to_hour.div_euclid(DAY) * DAY;
    if q.group_by.contains(&Dim::Hour) || last_day <= first_day {
        return vec![(Level::Hourly, q.from_hour, q.to_hour)];
    }
    let mut parts = vec![(Level::Daily, first_day, last_day)];
    if q.from_hour < first_day {
        parts.push((Level::Hourly, q.from_hour, first_day));
    }
    if last_day < q.to_hour {
        parts.push((Level::Hourly, last_day, q.to_hour));
    }
    parts
}

/// The two statements of a usage query: sums per group, and latency buckets per group.
fn usage_sql(q: &UsageQuery, postgres: bool, level: Level) -> (String, String) {
    let keys: Vec<String> = q
        .group_by
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{} AS k{i}", d.column()))
        .collect();
    let group: Vec<String> = (0..q.group_by.len()).map(|i| format!("k{i}")).collect();
    let mut n = 0;
    let mut ph = || {
        n += 1;
        if postgres {
            format!("${n}")
        } else {
            "?".into()
        }
    };
    let mut filter = format!("hour >= {} AND hour < {}", ph(), ph());
    if q.team.is_some() {
        filter += &format!(" AND team = {}", ph());
    }
    if q.model.is_some() {
        filter += &format!(" AND model = {}", ph());
    }
    let cast = if postgres { "::bigint" } else { "" };
    let sums: Vec<String> = SUMS
        .iter()
        .map(|c| format!("COALESCE(SUM({c}), 0){cast}"))
        .collect();
    let lead = |extra: &str| {
        let mut cols = keys.clone();
        cols.push(extra.to_string());
        cols.join(", ")
    };
    let group_by = |extra: &str| {
        let mut g = group.clone();
        if !extra.is_empty() {
            g.push(extra.to_string());
        }
        if g.is_empty() {
            String::new()
        } else {
            format!(" GROUP BY {}", g.join(", "))
        }
    };
    let sums_sql = format!(
        "SELECT {} FROM {} WHERE {filter}{} HAVING COUNT(*) > 0",
        lead(&sums.join(", ")),
        level.sums(),
        group_by("")
    );
    let lat_sql = format!(
        "SELECT {} FROM {} WHERE {filter}{}",
        lead(&format!("bucket, SUM(count){cast}")),
        level.latency(),
        group_by("bucket")
    );
    (sums_sql, lat_sql)
}

fn read_keys<R: Row>(row: &R, dims: &[Dim]) -> Result<Vec<KeyValue>, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    dims.iter()
        .enumerate()
        .map(|(i, d)| {
            Ok(if d.is_time() {
                KeyValue::Time(row.try_get::<i64, _>(i)?)
            } else {
                KeyValue::Text(row.try_get::<String, _>(i)?)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: i64, to: i64, group_by: Vec<Dim>) -> UsageQuery {
        UsageQuery {
            from_hour: from,
            to_hour: to,
            group_by,
            team: None,
            model: None,
        }
    }

    #[test]
    fn whole_days_come_from_the_daily_level() {
        let d = 86_400;
        // 10:00 on day 1 to 05:00 on day 4: days 2 and 3 daily, the ends hourly.
        let parts = plan(&q(d + 36_000, 3 * d + 18_000, vec![Dim::Team]));
        assert_eq!(
            parts,
            vec![
                (Level::Daily, 2 * d, 3 * d),
                (Level::Hourly, d + 36_000, 2 * d),
                (Level::Hourly, 3 * d, 3 * d + 18_000)
            ]
        );
        // Aligned: one part.
        assert_eq!(plan(&q(d, 3 * d, vec![])), vec![(Level::Daily, d, 3 * d)]);
        // Less than a day, or grouped by hour: hourly only.
        assert_eq!(plan(&q(d + 3600, d + 7200, vec![])).len(), 1);
        assert_eq!(plan(&q(d, 5 * d, vec![Dim::Hour]))[0].0, Level::Hourly);
    }
}
