//! Storage through sqlx: the embedded SQLite file (default, zero setup) or PostgreSQL
//! (production; several collectors may share one database). One set of operations, one
//! migration set per backend, run at start.
//!
//! Ingest is one transaction per batch: the raw events (`ON CONFLICT (id) DO NOTHING`,
//! so a batch delivered twice is stored once) and the roll-ups of exactly the events that
//! were new. The caller acknowledges the batch only after the commit.

mod governance;
mod rollups;

pub use governance::{Alert, Held};

use super::config::Database;
use super::query::UsageQuery;
use super::rollup::{Delta, Sums};
use crate::events::UsageEvent;
use rollups::Level;
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

/// One row of `/v1/usage`: the group's keys (in `group_by` order) and its sums (the
/// latency histogram among them, for percentiles).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub keys: Vec<KeyValue>,
    pub sums: Sums,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyValue {
    Text(String),
    /// Unix seconds (the start of a day or an hour).
    Time(i64),
}

/// Rows per INSERT statement (SQLite allows 32 766 bound values; a roll-up row has 18).
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
        let stored = self.ingest_new(batch).await?.len() as u64;
        Ok(Stored {
            stored,
            duplicates: batch.len() as u64 - stored,
        })
    }

    /// Stores a batch in one transaction; returns the ids that were new.
    pub async fn ingest_new(
        &self,
        batch: &mut [Incoming],
    ) -> Result<HashSet<uuid::Uuid>, sqlx::Error> {
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
                rollups::upsert_sqlite(&mut tx, &delta, Level::Hourly).await?;
                rollups::upsert_sqlite(&mut tx, &delta.daily(), Level::Daily).await?;
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
                rollups::upsert_postgres(&mut tx, &delta, Level::Hourly).await?;
                rollups::upsert_postgres(&mut tx, &delta.daily(), Level::Daily).await?;
                tx.commit().await?;
                new_ids
            }
        };
        Ok(new_ids)
    }

    /// Sums and latency per group, from the roll-ups: whole days from the daily level, the
    /// hours at either end from the hourly one, added together (exact either way).
    pub async fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, sqlx::Error> {
        let mut rows = BTreeMap::new();
        for (level, from, to) in rollups::plan(q) {
            rollups::read(self, q, level, from, to, &mut rows).await?;
        }
        Ok(rows.into_values().collect())
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
        let mut ph = placeholders(postgres);
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

/// A bound value of a dynamically built query.
pub enum Bind {
    Int(i64),
    Text(String),
}

/// Bind placeholders in order: `?` for SQLite, `$1`, `$2`, … for PostgreSQL.
fn placeholders(postgres: bool) -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        if postgres {
            format!("${n}")
        } else {
            "?".to_string()
        }
    }
}
