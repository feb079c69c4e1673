//! Graceful stop. Pingora, on SIGTERM, closes its listeners and then sleeps out the whole
//! grace period; this watch also starts a monitor that exits as soon as the last in-flight
//! request (streams included) has finished, or when the grace period runs out.

use crate::state::State;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

pub struct GracefulStop {
    pub state: Arc<State>,
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for GracefulStop {
    async fn recv(&self) -> ShutdownSignal {
        let (mut term, mut int, mut quit) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) {
            (Ok(t), Ok(i), Ok(q)) => (t, i, q),
            _ => {
                tracing::error!("cannot install signal handlers; stopping");
                return ShutdownSignal::FastShutdown;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = quit.recv() => tracing::info!("SIGQUIT: draining"),
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                return ShutdownSignal::FastShutdown;
            }
        }
        self.state.draining.store(true, Ordering::Release);
        let state = self.state.clone();
        let grace = self.grace;
        let spawned = std::thread::Builder::new()
            .name("drain-monitor".into())
            .spawn(move || exit_when_idle(&state, grace));
        if let Err(e) = spawned {
            tracing::error!("cannot start the drain monitor ({e}); Pingora's grace period applies");
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// The longest a stop waits for the collector to take the spool.
const EVENTS_ON_STOP: Duration = Duration::from_secs(10);
/// Time the usage events get after a grace period ran out: the spool write and sync.
const EVENTS_AFTER_GRACE: Duration = Duration::from_millis(500);

/// Writes and syncs every usage event, then lets the shipper deliver until `deadline`
/// (what it cannot send stays in the spool for the next start).
fn flush_events(state: &State, deadline: Instant) {
    if let Some(events) = state.events.get() {
        let deadline = deadline.max(Instant::now() + EVENTS_AFTER_GRACE);
        events.flush(deadline);
    }
}

fn exit_when_idle(state: &State, grace: Duration) {
    let start = Instant::now();
    // Let Pingora close its listeners before the count can be trusted to only go down.
    std::thread::sleep(Duration::from_millis(50));
    loop {
        let in_flight = state.in_flight();
        if in_flight <= 0 {
            tracing::info!("drained after {:?}; exiting", start.elapsed());
            // A pod's spool may be an emptyDir that goes with the pod: deliver now, within
            // the grace period, but do not hold the pod long for a collector that is down.
            flush_events(state, (start + grace).min(Instant::now() + EVENTS_ON_STOP));
            std::process::exit(0);
        }
        if start.elapsed() >= grace {
            tracing::warn!(
                in_flight,
                "grace period over; exiting with requests still in flight"
            );
            flush_events(state, Instant::now() + EVENTS_AFTER_GRACE);
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
