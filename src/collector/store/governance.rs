//! The governance tables: what sidecars hold reserved (reported by those that keep their
//! budgets in process, without a shared Redis) and budget alerts (each recorded once).

use super::{placeholders, Store};
use sqlx::Row;

/// One level's reservations on one sidecar, as it reports them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    /// `org`, `team` or `key`.
    pub level: String,
    pub name: String,
    /// The budget period's start, Unix seconds.
    pub period_start: i64,
    pub pico: i64,
}

/// A budget crossed one of its `alert_at` marks in a period.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    pub level: String,
    pub name: String,
    /// The team of a team or key level; empty for the org.
    pub team: String,
    pub period_start: i64,
    /// Millionths of the budget (0.8 is 800000): exact, so a mark is one row.
    pub mark_ppm: i64,
    pub spend_pico: i64,
    pub budget_pico: i64,
    pub ts_ms: i64,
}

impl Store {
    /// Replaces what `sidecar` reported before with `held`, valid until `expires_ms`.
    /// Reports expired for an hour are removed on the way.
    pub async fn put_reservations(
        &self,
        sidecar: &str,
        held: &[Held],
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let postgres = matches!(self, Store::Postgres(_));
        let mut ph = placeholders(postgres);
        let insert = format!(
            "INSERT INTO reservations (sidecar, level, name, period_start, reserved_pico, expires_ms) \
             VALUES ({}, {}, {}, {}, {}, {})",
            ph(),
            ph(),
            ph(),
            ph(),
            ph(),
            ph()
        );
        let p1 = placeholders(postgres)();
        let delete = format!("DELETE FROM reservations WHERE sidecar = {p1}");
        let expired = format!("DELETE FROM reservations WHERE expires_ms < {p1}");
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query(&delete).bind(sidecar).execute(&mut *tx).await?;
                for h in held.iter().filter(|h| h.pico > 0) {
                    sqlx::query(&insert)
                        .bind(sidecar)
                        .bind(&h.level)
                        .bind(&h.name)
                        .bind(h.period_start)
                        .bind(h.pico)
                        .bind(expires_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(&expired)
                    .bind(now_ms - 3_600_000)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }};
        }
        match self {
            Store::Sqlite { pool, write } => {
                let _turn = write.lock().await;
                run!(pool)
            }
            Store::Postgres(pool) => run!(pool),
        }
    }

    /// Every level's reservations across the sidecars whose report is still valid.
    pub async fn reservations(&self, now_ms: i64) -> Result<Vec<Held>, sqlx::Error> {
        let rows = match self {
            Store::Sqlite { pool, .. } => sqlx::query(
                "SELECT level, name, period_start, SUM(reserved_pico) FROM reservations \
                     WHERE expires_ms > ? GROUP BY level, name, period_start",
            )
            .bind(now_ms)
            .fetch_all(pool)
            .await?
            .iter()
            .map(held_of)
            .collect(),
            Store::Postgres(pool) => sqlx::query(
                "SELECT level, name, period_start, SUM(reserved_pico)::BIGINT FROM reservations \
                 WHERE expires_ms > $1 GROUP BY level, name, period_start",
            )
            .bind(now_ms)
            .fetch_all(pool)
            .await?
            .iter()
            .map(held_of)
            .collect(),
        };
        rows
    }

    /// Records an alert unless that level's mark was already recorded this period;
    /// whether it is new.
    pub async fn record_alert(&self, a: &Alert) -> Result<bool, sqlx::Error> {
        let postgres = matches!(self, Store::Postgres(_));
        let mut ph = placeholders(postgres);
        let sql = format!(
            "INSERT INTO budget_alerts \
             (level, name, period_start, mark_ppm, team, spend_pico, budget_pico, ts_ms) \
             VALUES ({}, {}, {}, {}, {}, {}, {}, {}) ON CONFLICT DO NOTHING",
            ph(),
            ph(),
            ph(),
            ph(),
            ph(),
            ph(),
            ph(),
            ph()
        );
        macro_rules! run {
            ($pool:expr) => {
                sqlx::query(&sql)
                    .bind(&a.level)
                    .bind(&a.name)
                    .bind(a.period_start)
                    .bind(a.mark_ppm)
                    .bind(&a.team)
                    .bind(a.spend_pico)
                    .bind(a.budget_pico)
                    .bind(a.ts_ms)
                    .execute($pool)
                    .await?
                    .rows_affected()
            };
        }
        let n = match self {
            Store::Sqlite { pool, write } => {
                let _turn = write.lock().await;
                run!(pool)
            }
            Store::Postgres(pool) => run!(pool),
        };
        Ok(n == 1)
    }

    /// Alerts recorded since `from_ms`, newest first; only `team`'s when given.
    pub async fn alerts(
        &self,
        from_ms: i64,
        team: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Alert>, sqlx::Error> {
        let postgres = matches!(self, Store::Postgres(_));
        let mut ph = placeholders(postgres);
        let mut sql = format!(
            "SELECT level, name, team, period_start, mark_ppm, spend_pico, budget_pico, ts_ms \
             FROM budget_alerts WHERE ts_ms >= {}",
            ph()
        );
        if team.is_some() {
            sql += &format!(" AND team = {}", ph());
        }
        // Newest first: a long history must not hide the latest alerts.
        sql += &format!(
            " ORDER BY ts_ms DESC, level, name, mark_ppm DESC LIMIT {}",
            ph()
        );
        macro_rules! run {
            ($pool:expr) => {{
                let mut q = sqlx::query(&sql).bind(from_ms);
                if let Some(t) = team {
                    q = q.bind(t);
                }
                q.bind(limit)
                    .fetch_all($pool)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(Alert {
                            level: r.try_get(0)?,
                            name: r.try_get(1)?,
                            team: r.try_get(2)?,
                            period_start: r.try_get(3)?,
                            mark_ppm: r.try_get(4)?,
                            spend_pico: r.try_get(5)?,
                            budget_pico: r.try_get(6)?,
                            ts_ms: r.try_get(7)?,
                        })
                    })
                    .collect()
            }};
        }
        match self {
            Store::Sqlite { pool, .. } => run!(pool),
            Store::Postgres(pool) => run!(pool),
        }
    }
}

fn held_of<R: Row>(r: &R) -> Result<Held, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Held {
        level: r.try_get(0)?,
        name: r.try_get(1)?,
        period_start: r.try_get(2)?,
        pico: r.try_get(3)?,
    })
}
