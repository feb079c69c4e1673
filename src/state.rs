//! What the whole process shares: the policy snapshot and the metrics. Nothing else is
//! mutable across requests.

use crate::policy::Policy;
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct State {
    /// The running policy; a request loads it once and keeps that snapshot.
    pub policy: ArcSwap<Policy>,
    pub metrics: Metrics,
    pub config_path: PathBuf,
    /// Set once the policy is loaded and the proxy listener accepts connections.
    pub ready: AtomicBool,
    /// Set when SIGTERM arrived: readiness fails so the pod leaves its endpoints.
    pub draining: AtomicBool,
}

impl State {
    pub fn new(policy: Policy, config_path: PathBuf) -> Arc<State> {
        let metrics = Metrics::new();
        metrics.config_generation.set(policy.generation as i64);
        Arc::new(State {
            policy: ArcSwap::from_pointee(policy),
            metrics,
            config_path,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> i64 {
        self.metrics.in_flight.get()
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
