//! The collector: `switchyard collector --config FILE`. Takes usage events from the
//! sidecars (`POST /v1/events`), stores them idempotently with their roll-ups (SQLite by
//! default, PostgreSQL in production), and answers analytics, budgets and the dashboard.
//! One binary serves every role: this is a subcommand, not a separate program.

mod api;
pub mod auth;
pub mod budgets;
pub mod config;
mod dashboard;
mod ingest;
pub mod query;
pub mod report;
pub mod rollup;
pub mod store;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct App {
    pub cfg: config::CollectorConfig,
    pub store: Arc<store::Store>,
    pub ingest: ingest::Ingestor,
    pub metrics: Metrics,
    /// The policy's `governance.redis`, for the reservations held there.
    pub redis: std::sync::Mutex<Option<Arc<crate::governance::fleet::Fleet>>>,
}

pub struct Metrics {
    registry: Registry,
    /// Events by result: stored, duplicate, rejected.
    pub events: IntCounterVec,
    /// Ingest requests by result: ok, unauthorized, too_large, bad_body, db_error.
    pub batches: IntCounterVec,
    pub ingest_seconds: HistogramVec,
    pub retention_deleted: IntCounter,
    /// Budget alerts recorded, by level.
    pub budget_alerts: IntCounterVec,
}

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new(
                "switchyard_collector_events_total",
                "Usage events received, by result (stored, duplicate, rejected)",
            ),
            &["result"],
        )?;
        let batches = IntCounterVec::new(
            Opts::new(
                "switchyard_collector_batches_total",
                "Ingest requests by result (ok, unauthorized, too_large, bad_body, db_error)",
            ),
            &["result"],
        )?;
        let ingest_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_collector_ingest_seconds",
                "Time from a batch's arrival to its commit (the group commit it joined included)",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
            &["backend"],
        )?;
        let retention_deleted = IntCounter::new(
            "switchyard_collector_retention_deleted_total",
            "Raw events deleted by retention (roll-ups are kept)",
        )?;
        let budget_alerts = IntCounterVec::new(
            Opts::new(
                "switchyard_collector_budget_alerts_total",
                "Budgets that crossed an alert_at mark (each level, mark and period once)",
            ),
            &["level"],
        )?;
        registry.register(Box::new(budget_alerts.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(ingest_seconds.clone()))?;
        registry.register(Box::new(retention_deleted.clone()))?;
        Ok(Metrics {
            registry,
            events,
            batches,
            ingest_seconds,
            retention_deleted,
            budget_alerts,
        })
    }

    pub fn render(&self) -> Vec<u8> {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("encoding metrics failed: {e}");
        }
        buf
    }
}

/// Runs the collector until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> Result<(), String> {
    let cfg = config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(serve(cfg))
}

pub async fn serve(cfg: config::CollectorConfig) -> Result<(), String> {
    let store = Arc::new(store::Store::open(&cfg.database).await?);
    // SQLite has one writer; PostgreSQL takes two group commits at once.
    let workers = match *store {
        store::Store::Sqlite { .. } => 1,
        store::Store::Postgres(_) => 2,
    };
    let ingest = ingest::Ingestor::start(store.clone(), workers);
    let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    tracing::info!(
        listen = %cfg.listen,
        database = %cfg.database.describe(),
        "switchyard collector starting"
    );
    let app = Arc::new(App {
        cfg,
        store,
        ingest,
        metrics,
        redis: std::sync::Mutex::new(None),
    });
    tokio::spawn(retention(app.clone()));
    tokio::spawn(budget_alerts(app.clone()));
    axum::serve(listener, api::router(app))
        .with_graceful_shutdown(stop_signal())
        .await
        .map_err(|e| format!("collector: {e}"))
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
    tracing::info!("collector stopping: finishing requests in progress");
}

/// Deletes raw events past `retention.raw_days`, hourly; roll-ups are kept.
async fn retention(app: Arc<App>) {
    loop {
        let cutoff = chrono::Utc::now().timestamp_millis()
            - i64::try_from(app.cfg.raw_retention.as_millis()).unwrap_or(i64::MAX);
        match app.store.delete_before(cutoff).await {
            Ok(0) => {}
            Ok(n) => {
                app.metrics.retention_deleted.inc_by(n);
                tracing::info!(deleted = n, "retention: raw events removed");
            }
            Err(e) => tracing::warn!("retention: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Every `budget_check`, records the `alert_at` marks the stored spend crossed: each once
/// per level and period (the database's key decides, so replicas agree), with a warning
/// line and a count.
async fn budget_alerts(app: Arc<App>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(app.cfg.budget_check).await;
        let Some(path) = &app.cfg.policy else { return };
        let result = match budgets::read(path) {
            Ok(policy) => budgets::check_alerts(&app, &policy)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match result {
            Ok(new) => {
                failing = false;
                for a in new {
                    app.metrics
                        .budget_alerts
                        .with_label_values(&[&a.level])
                        .inc();
                    tracing::warn!(
                        level = a.level,
                        name = a.name,
                        spend_usd = %crate::price::usd_decimal(query::usd(a.spend_pico).0),
                        budget_usd = %crate::price::usd_decimal(query::usd(a.budget_pico).0),
                        "budget alert: {} % of the period's budget is spent",
                        a.mark_ppm as f64 / 1e4
                    );
                }
            }
            Err(e) if !std::mem::replace(&mut failing, true) => {
                tracing::warn!("budget alerts: {e}");
            }
            Err(_) => {}
        }
    }
}
