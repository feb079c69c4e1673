//! What the whole process shares: the policy snapshot and the metrics. Nothing else is
//! mutable across requests.

use crate::policy::Policy;
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct State {
    /// The running policy; a request loads it once and keeps that snapshot.
    pub policy: ArcSwap<Policy>,
    pub metrics: Metrics,
    pub config_path: PathBuf,
    /// Set once the policy is loaded and the proxy listener accepts connections.
    pub ready: AtomicBool,
    /// Set when SIGTERM arrived: readiness fails so the pod leaves its endpoints.
    pub draining: AtomicBool,
    /// One permit per byte of request body held in memory (`server.max_body_memory_bytes`).
    pub body_memory: Arc<Semaphore>,
    body_memory_cap: usize,
    /// Usage-event recorder, started once when the policy names a collector.
    pub events: std::sync::OnceLock<crate::events::Recorder>,
    /// Rate windows and budget ledgers of every governance level, kept across reloads.
    pub governor: crate::governance::Governor,
    /// Each target's health and load, each route's retry budget, kept across reloads.
    pub observed: crate::route::Observed,
}

impl State {
    pub fn new(policy: Policy, config_path: PathBuf) -> Arc<State> {
        let metrics = Metrics::new();
        metrics.config_generation.set(policy.generation as i64);
        // Bounded by the config check (≤ 1 TiB), far below the semaphore's maximum.
        let body_memory_cap =
            usize::try_from(policy.max_body_memory_bytes).unwrap_or(Semaphore::MAX_PERMITS);
        let governor = crate::governance::Governor::new(metrics.governance.clone());
        let observed = crate::route::Observed::with_metrics(metrics.routing.clone());
        Arc::new(State {
            body_memory: Arc::new(Semaphore::new(body_memory_cap.min(Semaphore::MAX_PERMITS))),
            body_memory_cap,
            policy: ArcSwap::from_pointee(policy),
            metrics,
            config_path,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            events: std::sync::OnceLock::new(),
            governor,
            observed,
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> i64 {
        self.metrics.in_flight.get()
    }

    /// Bytes of request bodies held now.
    pub fn body_memory_used(&self) -> usize {
        self.body_memory_cap
            .saturating_sub(self.body_memory.available_permits())
    }
}

/// Counts a request as in flight for as long as it lives (streams included).
pub struct InFlight(prometheus::IntGauge);

impl InFlight {
    pub fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
