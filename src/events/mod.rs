//! Usage events, from the request's end to the collector: the request path frames the
//! event into a shared buffer and moves on; the next request's end a few milliseconds
//! later, or a timer when none comes, appends the buffer to the spool (on disk within
//! 10 ms, fsync'd at least once a second; see `writer`); a shipper thread sends the spool
//! oldest first and deletes what the collector acknowledged. Nothing here makes a request
//! wait on the disk or the collector, and nothing is dropped without being counted.

pub mod event;
pub mod line;
pub mod ship;
pub mod spool;
mod writer;

pub use event::{Decision, PolicyVersion, Shadow, UsageEvent, Usd};

use crate::telemetry::EventMetrics;
use spool::Spool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use writer::Writer;

/// What `telemetry:` asks for, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The collector's base URL (`http://collector:7070`).
    pub collector: String,
    pub token: Option<String>,
    pub spool_dir: std::path::PathBuf,
    pub spool_max_bytes: u64,
    pub max_events: usize,
    pub max_wait: Duration,
    pub compression: Compression,
}

/// How a batch's NDJSON is encoded on the wire (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The default: no CPU, about 700 bytes an event. zstd would add half again to
    /// what spooling and shipping cost the sidecar (docs/collector.md); inside a cluster
    /// the bytes are the cheaper of the two.
    None,
    /// For links where bytes cost: half of gzip's CPU for about its ratio.
    Zstd,
    /// For collectors behind something that knows only gzip.
    Gzip,
}

impl Compression {
    pub fn parse(name: &str) -> Option<Compression> {
        match name {
            "zstd" => Some(Compression::Zstd),
            "gzip" => Some(Compression::Gzip),
            "none" => Some(Compression::None),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "uncompressed",
        }
    }
}

/// The request path's handle: `record` never waits on the disk or the collector.
pub struct Recorder {
    writer: Arc<Writer>,
    shipper: ship::Handle,
}

impl Recorder {
    /// Opens the spool and starts the writer's and the shipper's threads.
    pub fn start(
        settings: &Settings,
        metrics: EventMetrics,
        current: Arc<dyn Fn() -> Option<Settings> + Send + Sync>,
    ) -> Result<Recorder, String> {
        let (spool, damage) = Spool::open(&settings.spool_dir, settings.spool_max_bytes)?;
        if damage != spool::Damage::default() {
            tracing::warn!(
                corrupt_records = damage.corrupt_records,
                torn_tails = damage.torn_tails,
                "spool: damaged records found after a crash; they will be skipped"
            );
        }
        metrics.spooled_bytes.set(spool.bytes() as i64);
        metrics.queued.set(spool.pending() as i64);
        let shipper = ship::start(spool.clone(), settings, metrics.clone(), current)?;
        let writer = Writer::start(spool, metrics, shipper.clone(), settings.max_events)?;
        Ok(Recorder { writer, shipper })
    }

    /// Spools one event (at the latest within the durability rule's 10 ms); if the spool
    /// cannot take it, it is dropped and counted.
    pub fn record(&self, event: UsageEvent) {
        self.writer.record(&event);
    }

    /// At shutdown: everything recorded is written and synced, then the shipper gets until
    /// `deadline` to deliver it. What it could not send stays in the spool for next time.
    pub fn flush(&self, deadline: Instant) {
        // On a thread of its own, so that a stalled disk cannot hold shutdown past its
        // deadline (what is not written by then is lost with the process, and logged).
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let writer = self.writer.clone();
        let flushing = std::thread::Builder::new()
            .name("events-flush".into())
            .spawn(move || {
                writer.flush();
                let _ = done_tx.send(());
            });
        match flushing {
            Ok(_) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                if done_rx.recv_timeout(wait).is_err() {
                    tracing::warn!("spool: the last events were not written in time");
                }
            }
            Err(_) => self.writer.flush(),
        }
        self.shipper.drain(deadline);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.writer.close();
    }
}

/// At most one log line a second about drops; the metric has the exact count.
fn warn_dropped(why: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::error!(
            "usage events dropped: {why} (switchyard_events_dropped_total counts them)"
        );
    }
}
