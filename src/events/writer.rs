//! When usage events reach the spool. The durability rule wants each on disk within 10 ms
//! of its request's end, and the sidecar's CPU is the budget.
//!
//! A thread woken to write costs more than the writing: each wake-up is a context switch
//! in and out and a cold cache (~18 µs of CPU on the bench machine, ~90 µs a tick for the
//! writer thread this replaced), where a `write()` of a few KB from a thread already
//! running costs ~2 µs. So the proxy's workers write: at a request's end the event is
//! framed into a shared buffer, and the worker that finds the buffer's oldest event
//! `GATHER` old writes the lot. The events no later request comes to write (traffic
//! stopped) are the fallback thread's: it sleeps on a timerfd armed for the oldest
//! pending event + `FALLBACK` and re-armed by every write, so under traffic it does not
//! wake. It also does what waits on the disk: the once-a-second fdatasync and rotating a
//! full segment.
//!
//! A worker never waits for the disk or for another writer: it only try-locks the
//! segment, leaving the events for whoever holds it, and after a write slower than
//! `SLOW_WRITE` it leaves writing to the thread for `SLOW_PAUSE`.

use super::line;
use super::ship;
use super::spool::{Appender, Frames, Spool};
use crate::telemetry::EventMetrics;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Events framed and not yet written. Past it (a disk stalled for seconds), events are
/// dropped and counted (`reason="queue_full"`).
const QUEUE: usize = 65_536;
/// How old the oldest pending event is when a worker writes: one write for all events
/// of that long, well inside the rule's 10 ms.
const GATHER: Duration = Duration::from_millis(5);
/// When the thread writes what no worker did.
const FALLBACK: Duration = Duration::from_millis(8);
/// Written records reach stable storage at least this often (the durability rule).
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// A worker's write slower than this (memory pressure, a stalled disk) and...
const SLOW_WRITE: Duration = Duration::from_millis(1);
/// ...the workers leave writing to the thread for this long.
const SLOW_PAUSE: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pending: Mutex<Pending>,
    spool: Arc<Spool>,
    /// Wakes the fallback thread; armed under `pending`'s lock.
    timer: OwnedFd,
    metrics: EventMetrics,
    shipper: ship::Handle,
    max_events: usize,
    /// Workers do not write before this (nanoseconds after `epoch`), after a slow write.
    workers_paused_until: AtomicU64,
    epoch: Instant,
    closed: AtomicBool,
}

#[derive(Default)]
struct Pending {
    frames: Frames,
    /// The other buffer: `frames` is swapped out to be written without the lock.
    spare: Frames,
    lines: line::Writer,
    /// When the oldest pending event was recorded.
    oldest: Option<Instant>,
    /// When the first write since the last fdatasync was made.
    unsynced_since: Option<Instant>,
    /// The active segment is full and the thread is to rotate it.
    rotate: bool,
    /// After a failed rotation (say, no inode left), the next try waits until then.
    rotate_after: Option<Instant>,
    /// What the timer is set to.
    armed: Option<Instant>,
}

impl Writer {
    /// The writer, and its fallback thread started.
    pub(super) fn start(
        spool: Arc<Spool>,
        metrics: EventMetrics,
        shipper: ship::Handle,
        max_events: usize,
    ) -> Result<Arc<Writer>, String> {
        let writer = Writer::new(spool, metrics, shipper, max_events)?;
        let thread = writer.clone();
        std::thread::Builder::new()
            .name("events-spool".into())
            .spawn(move || thread.fallback_loop())
            .map_err(|e| format!("cannot start the spool writer: {e}"))?;
        Ok(writer)
    }

    fn new(
        spool: Arc<Spool>,
        metrics: EventMetrics,
        shipper: ship::Handle,
        max_events: usize,
    ) -> Result<Arc<Writer>, String> {
        let timer = rustix::time::timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC)
            .map_err(|e| format!("cannot create the spool writer's timer: {e}"))?;
        Ok(Arc::new(Writer {
            pending: Mutex::default(),
            spool,
            timer,
            metrics,
            shipper,
            max_events,
            workers_paused_until: AtomicU64::new(0),
            epoch: Instant::now(),
            closed: AtomicBool::new(false),
        }))
    }

    /// At a request's end, on the proxy's worker: frames the event, and writes what is
    /// pending if the oldest of it is due. Never blocks on the disk.
    pub(super) fn record(&self, event: &super::UsageEvent) {
        let now = Instant::now();
        let mut p = self.lock_pending();
        if p.frames.len() >= QUEUE {
            drop(p);
            // Never queued, so not taken off `queued`.
            self.metrics
                .dropped
                .with_label_values(&["queue_full"])
                .inc();
            super::warn_dropped("the spool writer is behind (the disk is stalled)");
            return;
        }
        let Pending { frames, lines, .. } = &mut *p;
        frames.push(|buf| lines.write(event, buf));
        self.metrics.queued.inc();
        match p.oldest {
            None => {
                p.oldest = Some(now);
                self.rearm(&mut p);
            }
            Some(oldest) if now.duration_since(oldest) >= GATHER && !self.workers_paused(now) => {
                self.write_from_worker(p, now);
            }
            Some(_) => {}
        }
    }

    /// Everything pending written and synced, on the caller's thread (at shutdown).
    pub(super) fn flush(&self) {
        self.write_pending(self.spool.appender());
        self.sync();
    }

    /// Stops the fallback thread after a last flush.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut p = self.lock_pending();
        p.armed = None;
        self.arm(Some(Duration::ZERO));
    }

    fn write_from_worker(&self, p: MutexGuard<'_, Pending>, now: Instant) {
        let Some(appender) = self.spool.try_appender() else {
            // Another writer holds the segment; these wait for the next one (or the timer).
            return;
        };
        let took = self.write_locked(p, appender);
        if took >= SLOW_WRITE {
            let until = (now + SLOW_PAUSE).duration_since(self.epoch).as_nanos() as u64;
            self.workers_paused_until.store(until, Ordering::Relaxed);
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                "spool: a slow write; the proxy's workers leave writing to the spool thread for a second"
            );
        }
    }

    fn workers_paused(&self, now: Instant) -> bool {
        let until = self.workers_paused_until.load(Ordering::Relaxed);
        until != 0 && (now.duration_since(self.epoch).as_nanos() as u64) < until
    }

    /// Waits for the segment first, then the buffer: a writer holding the segment never
    /// waits for the buffer's lock while holding it (`record` only try-locks the segment).
    fn write_pending(&self, appender: Appender<'_>) {
        let p = self.lock_pending();
        self.write_locked(p, appender);
    }

    /// Writes the pending frames with the buffer's lock released during the write; returns
    /// how long the write took.
    fn write_locked(&self, mut p: MutexGuard<'_, Pending>, mut appender: Appender<'_>) -> Duration {
        if p.frames.is_empty() {
            return Duration::ZERO;
        }
        let spare = std::mem::take(&mut p.spare);
        let mut frames = std::mem::replace(&mut p.frames, spare);
        p.oldest = None;
        drop(p);
        let start = Instant::now();
        let result = appender.append(&frames);
        let took = start.elapsed();
        drop(appender);
        let framed = (frames.len() as u64) + frames.rejected();
        frames.clear();
        let now = Instant::now();
        let mut p = self.lock_pending();
        p.spare = frames;
        if let Ok(out) = &result {
            if out.written > 0 && p.unsynced_since.is_none() {
                p.unsynced_since = Some(now);
            }
            p.rotate |= out.segment_full && p.rotate_after.is_none_or(|t| now >= t);
        }
        self.rearm(&mut p);
        drop(p);
        // Counted and logged with the buffer let go: a log line may wait on its pipe.
        match result {
            Ok(out) => {
                self.dropped("rejected", out.rejected);
                if out.dropped > 0 {
                    self.dropped("spool_full", out.dropped);
                    super::warn_dropped("the spool is full (telemetry.spool_max_bytes)");
                }
            }
            Err(e) => {
                self.dropped("write_error", framed);
                tracing::error!("{e}; {framed} usage events dropped");
            }
        }
        self.metrics.spooled_bytes.set(self.spool.bytes() as i64);
        if self.spool.pending() as usize >= self.max_events {
            self.shipper.wake();
        }
        took
    }

    /// `queued` counts events from `record` until the collector acknowledges them; queued
    /// ones dropped leave it here.
    fn dropped(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.metrics.queued.sub(n as i64);
        self.metrics.dropped.with_label_values(&[reason]).inc_by(n);
    }

    fn fallback_loop(&self) {
        let mut expirations = [0u8; 8];
        loop {
            if self.closed.load(Ordering::Acquire) {
                self.flush();
                return;
            }
            // Blocks until the timer fires. A signal just looks again; any other error
            // (none is expected of a timerfd) turns the thread into an 8 ms poll, which
            // still keeps the rule, rather than a spin.
            if let Err(e) = rustix::io::read(&self.timer, &mut expirations) {
                if e != rustix::io::Errno::INTR {
                    tracing::error!("spool: the writer's timer failed ({e}); polling instead");
                    std::thread::sleep(FALLBACK);
                }
            }
            if self.closed.load(Ordering::Acquire) {
                self.flush();
                return;
            }
            let now = Instant::now();
            let (write, rotate, sync) = {
                let mut p = self.lock_pending();
                p.armed = None;
                (
                    p.oldest.is_some_and(|t| now >= t + FALLBACK),
                    std::mem::take(&mut p.rotate),
                    p.unsynced_since.is_some_and(|t| now >= t + SYNC_EVERY),
                )
            };
            if write || rotate {
                let mut appender = self.spool.appender();
                let mut sealed = None;
                if rotate && appender.segment_full() {
                    match appender.rotate() {
                        Ok(s) => sealed = Some(s),
                        Err(e) => {
                            tracing::error!("{e}; trying again in a second");
                            self.lock_pending().rotate_after = Some(now + SYNC_EVERY);
                        }
                    }
                }
                self.write_pending(appender);
                if let Some(Err(e)) = sealed.map(super::spool::Sealed::sync) {
                    tracing::error!("{e}");
                }
            }
            if sync {
                self.sync();
            }
            let mut p = self.lock_pending();
            self.rearm(&mut p);
        }
    }

    fn sync(&self) {
        self.lock_pending().unsynced_since = None;
        if let Err(e) = self.spool.sync() {
            tracing::error!("{e}");
            // Try again at the next deadline.
            self.lock_pending().unsynced_since = Some(Instant::now());
        }
    }

    /// Sets the timer to the earliest of what the thread owes: a rotation, the pending
    /// events' fallback write, the fdatasync.
    fn rearm(&self, p: &mut Pending) {
        let next = if p.rotate {
            Some(Instant::now())
        } else {
            let write = p.oldest.map(|t| t + FALLBACK);
            let sync = p.unsynced_since.map(|t| t + SYNC_EVERY);
            match (write, sync) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        if next == p.armed {
            return;
        }
        p.armed = next;
        self.arm(next.map(|t| t.saturating_duration_since(Instant::now())));
    }

    /// Fires the timer after `after` (at once for zero), or disarms it (`None`).
    fn arm(&self, after: Option<Duration>) {
        let value = match after {
            // A zero value disarms a timerfd; "at once" is the smallest non-zero one.
            Some(d) => Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos().max(u32::from(d.is_zero()))),
            },
            None => Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        if let Err(e) =
            rustix::time::timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec)
        {
            // Only a bad descriptor or value fails; the events still go with the next
            // request's write or at shutdown.
            tracing::error!("spool: cannot set the writer's timer: {e}");
        }
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::event::tests::sample;

    /// A writer on a fresh spool; `thread`: with its fallback thread (else only the
    /// calls a test makes write).
    fn writer(
        dir: &std::path::Path,
        max_bytes: u64,
        thread: bool,
    ) -> (Arc<Writer>, Arc<Spool>, EventMetrics) {
        let (spool, _) = Spool::open(dir, max_bytes).unwrap();
        let metrics = crate::telemetry::Metrics::new().events;
        let shipper = ship::Handle::unattended();
        let w = if thread {
            Writer::start(spool.clone(), metrics.clone(), shipper, 50)
        } else {
            Writer::new(spool.clone(), metrics.clone(), shipper, 50)
        };
        (w.unwrap(), spool, metrics)
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn the_request_that_finds_events_due_writes_them_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (w, spool, metrics) = writer(dir.path(), 1 << 30, false);
        w.record(&sample());
        assert_eq!(spool.pending(), 0, "gathered, not written");
        std::thread::sleep(GATHER);
        w.record(&sample());
        assert_eq!(spool.pending(), 2, "written by the second request's end");
        w.record(&sample());
        assert_eq!(spool.pending(), 2, "the next one gathers again");
        assert_eq!(metrics.queued.get(), 3);
        let (batch, damage) = spool.read(10).unwrap();
        assert_eq!((batch.events, damage), (2, Default::default()));
    }

    #[test]
    fn after_a_slow_write_the_workers_leave_writing_to_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (w, spool, _) = writer(dir.path(), 1 << 30, false);
        // As `write_from_worker` marks it after a write slower than `SLOW_WRITE`.
        let until = (Instant::now() + SLOW_PAUSE).duration_since(w.epoch);
        w.workers_paused_until
            .store(until.as_nanos() as u64, Ordering::Relaxed);
        w.record(&sample());
        std::thread::sleep(GATHER);
        w.record(&sample());
        assert_eq!(spool.pending(), 0, "left for the thread");
        w.flush();
        assert_eq!(spool.pending(), 2);
    }

    #[test]
    fn an_event_too_large_for_a_record_is_dropped_as_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (w, spool, metrics) = writer(dir.path(), 1 << 30, false);
        let mut huge = sample();
        huge.route = "r".repeat(super::super::spool::MAX_RECORD).into();
        w.record(&huge);
        w.record(&sample());
        w.flush();
        assert_eq!(spool.pending(), 1);
        assert_eq!(metrics.dropped.with_label_values(&["rejected"]).get(), 1);
        assert_eq!(metrics.dropped.with_label_values(&["spool_full"]).get(), 0);
        assert_eq!(metrics.queued.get(), 1);
    }

    #[test]
    fn a_lone_event_is_written_by_the_timer_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (w, spool, _) = writer(dir.path(), 1 << 30, true);
        w.record(&sample());
        wait_for("written by the fallback thread", || spool.pending() == 1);
        wait_for("due for a sync", || {
            w.lock_pending().unsynced_since.is_some()
        });
        wait_for("synced a second later", || {
            w.lock_pending().unsynced_since.is_none()
        });
        wait_for("nothing left to wake for", || {
            w.lock_pending().armed.is_none()
        });
        assert_eq!(spool.pending(), 1);
    }

    #[test]
    fn flush_writes_everything_pending_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (w, spool, _) = writer(dir.path(), 1 << 30, true);
        for _ in 0..7 {
            w.record(&sample());
        }
        w.flush();
        assert_eq!(spool.pending(), 7);
        assert!(w.lock_pending().unsynced_since.is_none());
        w.close();
    }

    #[test]
    fn a_stalled_segment_fills_the_queue_and_the_excess_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (w, spool, metrics) = writer(dir.path(), 1 << 34, false);
        let held = spool.appender();
        for _ in 0..QUEUE + 3 {
            w.record(&sample());
        }
        let dropped = || metrics.dropped.with_label_values(&["queue_full"]).get();
        assert_eq!(dropped(), 3);
        assert_eq!(metrics.queued.get(), QUEUE as i64);
        assert_eq!(spool.pending(), 0, "no worker waited for the segment");
        drop(held);
        w.flush();
        assert_eq!(spool.pending(), QUEUE as u64);
        assert_eq!(dropped(), 3);
    }

    #[test]
    fn a_full_segment_is_rotated_by_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (w, spool, _) = writer(dir.path(), 1 << 34, true);
        let one = sample().to_json().len() as u64 + 8;
        let n = super::super::spool::SEGMENT_BYTES / one + 2;
        for _ in 0..n {
            w.record(&sample());
        }
        w.flush();
        wait_for("rotated", || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_str().unwrap().starts_with("seg-")
                })
                .count()
                == 2
        });
        // Every record still reads, across both segments.
        let mut read = 0;
        while read < n as usize {
            let (batch, damage) = spool.read(10_000).unwrap();
            assert_eq!(damage, Default::default());
            assert!(batch.events > 0);
            read += batch.events;
            spool.ack(batch.end, batch.events as u64);
        }
        assert_eq!(read, n as usize);
    }
}
