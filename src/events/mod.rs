//! Usage events, from the request's end to the collector: the request path hands an event
//! to a bounded queue and moves on; a writer thread appends it to the spool (on disk
//! within milliseconds, fsync'd at least once a second); a shipper thread sends the spool
//! oldest first and deletes what the collector acknowledged. Nothing here ever makes a
//! request wait, and nothing is dropped without being counted.

pub mod event;
pub mod line;
pub mod ship;
pub mod spool;

pub use event::{Decision, PolicyVersion, Shadow, UsageEvent, Usd};

use crate::telemetry::EventMetrics;
use spool::Spool;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events waiting for the writer thread. At 10k requests/s this is seconds of slack for a
/// stalled disk; past it, events are dropped and counted (`reason="queue_full"`).
const QUEUE: usize = 65_536;
/// How long the writer gathers events before one write: the durability rule wants them
/// on disk within 10 ms of the request's end, and each wake-up and write costs the
/// process system calls, so it waits as long as leaves the rule a margin.
const GATHER: Duration = Duration::from_millis(5);
/// How late the writer's tick may fire (see `write_loop`).
const TIMER_SLACK_NS: libc::c_ulong = 3_000_000;
/// The durability rule: written records reach stable storage at least this often.
const SYNC_EVERY: Duration = Duration::from_secs(1);

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

enum Msg {
    Event(Box<UsageEvent>),
    /// Write and sync everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// The request path's handle: `record` never blocks.
pub struct Recorder {
    tx: SyncSender<Msg>,
    metrics: EventMetrics,
    shipper: ship::Handle,
}

impl Recorder {
    /// Opens the spool and starts the writer and shipper threads.
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
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let shipper = ship::start(spool.clone(), settings, metrics.clone(), current)?;
        let writer_spool = spool;
        let writer_metrics = metrics.clone();
        let wake = shipper.clone();
        let max_events = settings.max_events;
        std::thread::Builder::new()
            .name("events-spool".into())
            .spawn(move || write_loop(rx, &writer_spool, &writer_metrics, &wake, max_events))
            .map_err(|e| format!("cannot start the spool writer: {e}"))?;
        Ok(Recorder {
            tx,
            metrics,
            shipper,
        })
    }

    /// Hands one event to the writer; if the queue is full it is dropped and counted.
    pub fn record(&self, event: UsageEvent) {
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => self.metrics.queued.inc(),
            Err(TrySendError::Full(_)) => {
                self.metrics
                    .dropped
                    .with_label_values(&["queue_full"])
                    .inc();
                warn_dropped("the spool writer's queue is full");
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics
                    .dropped
                    .with_label_values(&["writer_stopped"])
                    .inc();
                warn_dropped("the spool writer has stopped");
            }
        }
    }

    /// At shutdown: everything recorded is written and synced, then the shipper gets until
    /// `deadline` to deliver it. What it could not send stays in the spool for next time.
    pub fn flush(&self, deadline: Instant) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(done_tx)).is_ok() {
            let wait = deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(wait).is_err() {
                tracing::warn!("spool: the writer did not finish in time");
            }
        }
        self.shipper.drain(deadline);
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

fn write_loop(
    rx: Receiver<Msg>,
    spool: &Spool,
    metrics: &EventMetrics,
    shipper: &ship::Handle,
    max_events: usize,
) {
    // Events are serialised straight into the framed write, in a buffer kept across writes.
    let mut batch = spool::Frames::default();
    let mut lines = line::Writer::default();
    let mut flushes = Vec::new();
    // Let the tick's timer fire up to 3 ms late (8 ms after the events it waits for, still
    // inside the rule), so that the kernel can serve it with another wake-up already due.
    // SAFETY: sets a number on the calling thread; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS) };
    // Idle, the thread blocks on the queue and the first event's sender wakes it. Busy, it
    // writes once a tick without blocking on the queue, so no sender has to wake it: one
    // timer wake-up per tick however many events come (wake-ups, not the writing, were
    // most of what shipping cost a sidecar at a few hundred requests a second).
    let mut busy = false;
    loop {
        let first = if busy {
            None
        } else {
            match rx.recv_timeout(SYNC_EVERY) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        if busy || first.is_some() {
            // Let more arrive: one write for all of them, inside the 10 ms the rule allows.
            std::thread::sleep(GATHER);
        }
        busy = false;
        for msg in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            busy = true;
            match msg {
                Msg::Event(e) => batch.push(|buf| lines.write(&e, buf)),
                Msg::Flush(done) => flushes.push(done),
            }
            if batch.len() >= 4096 {
                break;
            }
        }
        if !batch.is_empty() {
            let n = (batch.len() as u64 + batch.rejected()) as i64;
            match spool.append_framed(&batch) {
                Ok(out) => {
                    // `queued` counts events from `record` until the collector acknowledges
                    // them; dropped ones leave it here.
                    metrics.queued.sub(out.dropped as i64);
                    if out.dropped > 0 {
                        metrics
                            .dropped
                            .with_label_values(&["spool_full"])
                            .inc_by(out.dropped);
                        warn_dropped("the spool is full (telemetry.spool_max_bytes)");
                    }
                }
                Err(e) => {
                    metrics
                        .dropped
                        .with_label_values(&["write_error"])
                        .inc_by(n as u64);
                    metrics.queued.sub(n);
                    tracing::error!("{e}; {n} usage events dropped");
                }
            }
            metrics.spooled_bytes.set(spool.bytes() as i64);
            batch.clear();
            if spool.pending() as usize >= max_events {
                shipper.wake();
            }
        }
        if !flushes.is_empty() || spool.since_sync() >= SYNC_EVERY {
            if let Err(e) = spool.sync() {
                tracing::error!("{e}");
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }
}
