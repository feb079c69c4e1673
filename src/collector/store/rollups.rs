//! The roll-up tables: adding a batch's delta (hourly and daily, one transaction with the
//! raw events) and reading groups back. Rows are read whole — sums and latency histogram —
//! and grouped here, so a percentile over any grouping needs no second query.

use super::{Bind, KeyValue, Store, UsageRow, CHUNK};
use crate::collector::query::{Dim, UsageQuery};
use crate::collector::rollup::{Delta, Histogram, Key, Sums};
use sqlx::{QueryBuilder, Row};
use std::collections::{BTreeMap, HashMap};

/// The two roll-up levels: the same columns, `hour` holding the hour's or the day's start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Level {
    Hourly,
    Daily,
}

impl Level {
    fn table(self) -> &'static str {
        match self {
            Level::Hourly => "rollup_hourly",
            Level::Daily => "rollup_daily",
        }
    }
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

/// `ON CONFLICT` for the sums: added to what the row holds.
fn add_sums(t: &str) -> String {
    SUMS.iter()
        .map(|c| format!("{c} = {t}.{c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which level answers which part of a query's range: whole UTC days from the daily
/// level, unless the query groups by hour.
pub(super) fn plan(q: &UsageQuery) -> Vec<(Level, i64, i64)> {
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

/// SQLite: the histograms are blobs, merged here. Batches take turns on the store's write
/// lock, so reading the rows' current histograms and writing the sums is race-free.
pub(super) async fn upsert_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    d: &Delta,
    level: Level,
) -> Result<(), sqlx::Error> {
    let t = level.table();
    let rows: Vec<(&Key, &Sums)> = d.sums.iter().collect();
    for chunk in rows.chunks(CHUNK) {
        let mut q = QueryBuilder::new(format!(
            "SELECT {DIMS}, latency FROM {t} WHERE ({DIMS}) IN (VALUES "
        ));
        let mut sep = q.separated(", ");
        for (k, _) in chunk {
            sep.push("(");
            sep.push_bind_unseparated(k.hour);
            for v in [
                &k.team,
                &k.key_id,
                &k.model,
                &k.provider,
                &k.route,
                &k.service,
            ] {
                sep.push_unseparated(", ");
                sep.push_bind_unseparated(v.as_str());
            }
            sep.push_unseparated(")");
        }
        q.push(")");
        let mut old: HashMap<Key, Histogram> = HashMap::new();
        for row in q.build().fetch_all(&mut **tx).await? {
            old.insert(
                key_of(&row)?,
                Histogram::from_blob(&row.try_get::<Vec<u8>, _>(7)?),
            );
        }
        let mut q = QueryBuilder::new(format!(
            "INSERT INTO {t} ({DIMS}, {}, latency) ",
            SUMS.join(", ")
        ));
        q.push_values(chunk, |mut b, (k, s)| {
            b.push_bind(k.hour)
                .push_bind(k.team.as_str())
                .push_bind(k.key_id.as_str())
                .push_bind(k.model.as_str())
                .push_bind(k.provider.as_str())
                .push_bind(k.route.as_str())
                .push_bind(k.service.as_str());
            for v in sums_of(s) {
                b.push_bind(v);
            }
            let mut h = old.remove(*k).unwrap_or_default();
            h.merge(&s.latency);
            b.push_bind(h.to_blob());
        });
        q.push(format!(
            " ON CONFLICT ({DIMS}) DO UPDATE SET {}, latency = excluded.latency",
            add_sums(t)
        ));
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// PostgreSQL: one `UNNEST` insert per level; the histograms (`bigint[]`) are added
/// element by element in SQL, so collectors writing the same row at once both count.
pub(super) async fn upsert_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    d: &Delta,
    level: Level,
) -> Result<(), sqlx::Error> {
    if d.sums.is_empty() {
        return Ok(());
    }
    let t = level.table();
    let keys: Vec<&Key> = d.sums.keys().collect();
    let mut cols: Vec<Vec<i64>> = vec![Vec::with_capacity(keys.len()); SUMS.len()];
    let mut latency = Vec::with_capacity(keys.len());
    for s in d.sums.values() {
        for (c, v) in cols.iter_mut().zip(sums_of(s)) {
            c.push(v);
        }
        latency.push(s.latency.to_pg_text());
    }
    let names: Vec<String> = (0..SUMS.len()).map(|i| format!("c{i}")).collect();
    let arrays: Vec<String> = (8..8 + SUMS.len())
        .map(|i| format!("${i}::bigint[]"))
        .collect();
    let l = 8 + SUMS.len();
    let sql = format!(
        "INSERT INTO {t} ({DIMS}, {sums}, latency) \
         SELECT h, te, k, m, p, r, s, {names}, l::bigint[] FROM UNNEST($1::bigint[], \
         $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], {arrays}, \
         ${l}::text[]) AS u(h, te, k, m, p, r, s, {names}, l) \
         ON CONFLICT ({DIMS}) DO UPDATE SET {add}, latency = ARRAY( \
           SELECT COALESCE(a, 0) + COALESCE(b, 0) \
           FROM unnest({t}.latency, excluded.latency) WITH ORDINALITY AS x(a, b, i) ORDER BY i)",
        sums = SUMS.join(", "),
        names = names.join(", "),
        arrays = arrays.join(", "),
        add = add_sums(t),
    );
    let text = |f: fn(&Key) -> &str| keys.iter().map(|k| f(k).to_string()).collect::<Vec<_>>();
    let mut q = sqlx::query(&sql)
        .bind(keys.iter().map(|k| k.hour).collect::<Vec<_>>())
        .bind(text(|k| &k.team))
        .bind(text(|k| &k.key_id))
        .bind(text(|k| &k.model))
        .bind(text(|k| &k.provider))
        .bind(text(|k| &k.route))
        .bind(text(|k| &k.service));
    for c in &cols {
        q = q.bind(c);
    }
    q.bind(&latency).execute(&mut **tx).await?;
    Ok(())
}

fn key_of<R: Row>(row: &R) -> Result<Key, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Key {
        hour: row.try_get(0)?,
        team: row.try_get(1)?,
        key_id: row.try_get(2)?,
        model: row.try_get(3)?,
        provider: row.try_get(4)?,
        route: row.try_get(5)?,
        service: row.try_get(6)?,
    })
}

/// The group a roll-up row belongs to under `group_by`.
fn group_of(k: &Key, dims: &[Dim]) -> Vec<KeyValue> {
    dims.iter()
        .map(|d| match d {
            Dim::Team => KeyValue::Text(k.team.clone()),
            Dim::Model => KeyValue::Text(k.model.clone()),
            Dim::Provider => KeyValue::Text(k.provider.clone()),
            Dim::Route => KeyValue::Text(k.route.clone()),
            Dim::Service => KeyValue::Text(k.service.clone()),
            Dim::Key => KeyValue::Text(k.key_id.clone()),
            Dim::Day => KeyValue::Time(k.hour - k.hour.rem_euclid(86_400)),
            Dim::Hour => KeyValue::Time(k.hour),
        })
        .collect()
}

/// Adds the rows of one level between `from` and `to` into `rows`, grouped.
pub(super) async fn read(
    store: &Store,
    q: &UsageQuery,
    level: Level,
    from: i64,
    to: i64,
    rows: &mut BTreeMap<Vec<KeyValue>, UsageRow>,
) -> Result<(), sqlx::Error> {
    let mut ph = super::placeholders(matches!(store, Store::Postgres(_)));
    let mut sql = format!(
        "SELECT {DIMS}, {}, latency FROM {} WHERE hour >= {} AND hour < {}",
        SUMS.join(", "),
        level.table(),
        ph(),
        ph()
    );
    let mut binds = vec![Bind::Int(from), Bind::Int(to)];
    if let Some(t) = &q.team {
        sql += &format!(" AND team = {}", ph());
        binds.push(Bind::Text(t.clone()));
    }
    if let Some(m) = &q.model {
        sql += &format!(" AND model = {}", ph());
        binds.push(Bind::Text(m.clone()));
    }
    macro_rules! run {
        ($pool:expr, $latency:expr) => {{
            let mut query = sqlx::query(&sql);
            for b in &binds {
                query = match b {
                    Bind::Int(v) => query.bind(*v),
                    Bind::Text(v) => query.bind(v.as_str()),
                };
            }
            for row in query.fetch_all($pool).await? {
                let key = key_of(&row)?;
                let get = |i: usize| row.try_get::<i64, _>(7 + i);
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
                    latency: $latency(&row)?,
                };
                let keys = group_of(&key, &q.group_by);
                rows.entry(keys.clone())
                    .or_insert_with(|| UsageRow {
                        keys,
                        sums: Sums::default(),
                    })
                    .sums
                    .merge(&add);
            }
        }};
    }
    match store {
        Store::Sqlite { pool, .. } => run!(pool, |r: &sqlx::sqlite::SqliteRow| {
            r.try_get::<Vec<u8>, _>(17)
                .map(|b| Histogram::from_blob(&b))
        }),
        Store::Postgres(pool) => run!(pool, |r: &sqlx::postgres::PgRow| {
            r.try_get::<Vec<i64>, _>(17).map(Histogram)
        }),
    }
    Ok(())
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
