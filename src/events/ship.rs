//! The shipper: reads the spool oldest first and POSTs it to the collector as NDJSON
//! (zstd-compressed by default, or gzip, or plain),
//! on a thread and runtime of its own. A batch is acknowledged in the spool only after the
//! collector answered 2xx (its transaction committed); failures back off exponentially
//! with jitter and the same batch is sent again — the collector stores an id once.

use super::spool::{Batch, Damage, Spool};
use super::{Compression, Settings};
use crate::telemetry::EventMetrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Wakes the shipper, and at shutdown waits for it to deliver what is pending.
#[derive(Clone)]
pub struct Handle(Arc<Shared>);

struct Shared {
    wake: tokio::sync::Notify,
    draining: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    /// Set by the shipper once a drain is over (spool empty or deadline passed).
    drained: (Mutex<bool>, Condvar),
}

impl Handle {
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// Sends what is pending until the spool is empty or `deadline` passes.
    pub fn drain(&self, deadline: Instant) {
        *self.0.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        self.0.draining.store(true, Ordering::Release);
        self.0.wake.notify_one();
        let (lock, cv) = &self.0.drained;
        let mut done = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            done = cv
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn past_deadline(&self) -> bool {
        self.0
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|d| Instant::now() >= d)
    }

    fn finish_drain(&self) {
        let (lock, cv) = &self.0.drained;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

impl Handle {
    fn new() -> Handle {
        Handle(Arc::new(Shared {
            wake: tokio::sync::Notify::new(),
            draining: AtomicBool::new(false),
            deadline: Mutex::new(None),
            drained: (Mutex::new(false), Condvar::new()),
        }))
    }

    /// A handle no shipper listens to, for tests of what feeds it.
    #[cfg(test)]
    pub(super) fn unattended() -> Handle {
        Handle::new()
    }
}

pub fn start(
    spool: Arc<Spool>,
    settings: &Settings,
    metrics: EventMetrics,
    current: Arc<dyn Fn() -> Option<Settings> + Send + Sync>,
) -> Result<Handle, String> {
    let handle = Handle::new();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot build the collector client: {e}"))?;
    let shipper = Shipper {
        spool,
        client,
        fallback: settings.clone(),
        current,
        metrics,
        handle: handle.clone(),
        gzip: None,
        zstd: None,
    };
    std::thread::Builder::new()
        .name("events-ship".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(shipper.run()),
                Err(e) => tracing::error!("cannot start the shipper runtime: {e}"),
            }
        })
        .map_err(|e| format!("cannot start the shipper: {e}"))?;
    Ok(handle)
}

struct Shipper {
    spool: Arc<Spool>,
    client: reqwest::Client,
    /// The settings at start; `current` gives the running policy's (collector URL and
    /// token follow reloads; the spool's place and size are fixed at start).
    fallback: Settings,
    current: Arc<dyn Fn() -> Option<Settings> + Send + Sync>,
    metrics: EventMetrics,
    handle: Handle,
    /// Each encoder made on first use and kept (a reload may switch between them).
    gzip: Option<Gzip>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

/// Gzip with one deflate state for the shipper's life: a new one per batch would cost more
/// than compressing the batch (zlib-ng allocates and clears its tables on init).
struct Gzip(flate2::Compress);

impl Gzip {
    fn new() -> Gzip {
        Gzip(flate2::Compress::new(flate2::Compression::fast(), false))
    }

    /// RFC 1952: a fixed header, the raw deflate stream, CRC-32 and length.
    fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        self.0.reset();
        let mut out = Vec::with_capacity(data.len() / 3 + 64);
        out.extend_from_slice(&HEADER);
        let start = self.0.total_in();
        loop {
            let consumed = (self.0.total_in() - start) as usize;
            if out.capacity() - out.len() < 4096 {
                out.reserve(data.len() / 4 + 4096);
            }
            match self
                .0
                .compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Finish)
            {
                Ok(flate2::Status::StreamEnd) => break,
                Ok(_) => continue,
                // Deflate of an in-memory buffer does not fail; should it, send plainly.
                Err(_) => return Vec::new(),
            }
        }
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }
}

impl Shipper {
    /// The batch compressed, with its `Content-Encoding`; `None` to send it as it is.
    fn encode(
        &mut self,
        compression: Compression,
        ndjson: &[u8],
    ) -> Option<(&'static str, Vec<u8>)> {
        match compression {
            Compression::None => None,
            Compression::Gzip => {
                let body = self.gzip.get_or_insert_with(Gzip::new).compress(ndjson);
                (!body.is_empty()).then_some(("gzip", body))
            }
            Compression::Zstd => {
                if self.zstd.is_none() {
                    self.zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
                }
                // Compressing memory does not fail; should it, send plainly.
                let body = self.zstd.as_mut()?.compress(ndjson).ok()?;
                Some(("zstd", body))
            }
        }
    }
}

/// One of zstd's fast levels (`zstd --fast=3`): on a batch of usage NDJSON half the
/// instructions of gzip's fastest level for a ratio near its (about 16:1 to 19:1); level 1
/// reaches 28:1 for a third more CPU, which the sidecar pays and the network does not need.
const ZSTD_LEVEL: i32 = -3;

enum SendError {
    /// The batch is larger than the collector takes: send it in halves.
    TooLarge,
    Failed(String),
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    #[test]
    fn gzip_is_standard_and_reusable() {
        let mut gz = super::Gzip::new();
        for text in ["", "{\"a\":1}\n", &"x".repeat(300_000)] {
            let packed = gz.compress(text.as_bytes());
            let mut back = String::new();
            flate2::read::GzDecoder::new(&packed[..])
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, text);
        }
    }
}

#[derive(serde::Deserialize, Default)]
struct IngestAnswer {
    #[serde(default)]
    rejected: u64,
}

impl Shipper {
    async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        let mut max_events = self.fallback.max_events;
        let mut failing = false;
        // One batch's memory for the shipper's life.
        let mut batch = Batch::default();
        loop {
            let settings = (self.current)().unwrap_or_else(|| self.fallback.clone());
            // Woken early only when a full batch is waiting; otherwise every max_wait.
            let timed_out = self.handle.0.draining.load(Ordering::Acquire)
                || tokio::time::timeout(settings.max_wait, self.handle.0.wake.notified())
                    .await
                    .is_err();
            loop {
                let settings = (self.current)().unwrap_or_else(|| self.fallback.clone());
                let damage = match self.spool.read_into(max_events, &mut batch) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!("{e}");
                        break;
                    }
                };
                if batch.events == 0 {
                    if damage != Damage::default() {
                        self.acknowledged(&batch, damage, 0);
                    }
                    break;
                }
                // A partial batch waits for its max_wait (or the stop), unless it is a
                // retry: fewer, larger batches cost the sidecar and the collector less.
                let draining = self.handle.0.draining.load(Ordering::Acquire);
                if batch.events < max_events && !timed_out && !draining && !failing {
                    break;
                }
                match self.send(&settings, &mut batch).await {
                    Ok(rejected) => {
                        if failing {
                            tracing::info!("collector reachable again; sending the spool");
                            failing = false;
                        }
                        self.acknowledged(&batch, damage, rejected);
                        backoff = BACKOFF_FIRST;
                        max_events = settings.max_events;
                        if batch.events < max_events {
                            break;
                        }
                    }
                    Err(e) => {
                        self.metrics.retried.inc_by(batch.events as u64);
                        match e {
                            SendError::TooLarge if max_events > 1 => {
                                max_events /= 2;
                                continue;
                            }
                            SendError::TooLarge => {
                                if !failing {
                                    tracing::error!("collector refuses a single event as too large; it stays in the spool");
                                }
                            }
                            SendError::Failed(msg) => {
                                if !failing {
                                    tracing::warn!(
                                        "cannot deliver usage events ({msg}); they stay in the spool and are retried"
                                    );
                                }
                            }
                        }
                        failing = true;
                        if self.handle.0.draining.load(Ordering::Acquire)
                            && self.handle.past_deadline()
                        {
                            break;
                        }
                        // Full jitter on half the step: spread a fleet's retries.
                        let jitter = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
                        tokio::time::sleep(jitter).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            if self.handle.0.draining.load(Ordering::Acquire)
                && (self.spool.pending() == 0 || self.handle.past_deadline())
            {
                if self.spool.pending() > 0 {
                    tracing::warn!(
                        pending = self.spool.pending(),
                        "stopping with usage events unsent; they stay in the spool for the next start"
                    );
                }
                self.handle.finish_drain();
                return;
            }
        }
    }

    fn acknowledged(&self, batch: &Batch, damage: Damage, rejected: u64) {
        self.spool.ack(batch.end, batch.events as u64);
        let m = &self.metrics;
        m.sent
            .inc_by(batch.events as u64 - rejected.min(batch.events as u64));
        m.queued.sub(batch.events as i64);
        m.spooled_bytes.set(self.spool.bytes() as i64);
        if rejected > 0 {
            m.dropped.with_label_values(&["rejected"]).inc_by(rejected);
            tracing::error!(rejected, "the collector rejected malformed usage events");
        }
        if damage.corrupt_records > 0 {
            m.dropped
                .with_label_values(&["corrupt"])
                .inc_by(damage.corrupt_records);
        }
        if damage.torn_tails > 0 {
            m.dropped
                .with_label_values(&["torn_tail"])
                .inc_by(damage.torn_tails);
        }
        if damage != Damage::default() {
            tracing::warn!(
                corrupt_records = damage.corrupt_records,
                torn_tails = damage.torn_tails,
                "spool: damaged records skipped"
            );
        }
    }

    /// One POST; returns how many lines the collector rejected as malformed. Plain NDJSON
    /// is handed over, not copied: a retry reads the spool again.
    async fn send(&mut self, settings: &Settings, batch: &mut Batch) -> Result<u64, SendError> {
        let url = format!("{}/v1/events", settings.collector.trim_end_matches('/'));
        let req = self
            .client
            .post(url)
            .header("content-type", "application/x-ndjson");
        let mut req = match self.encode(settings.compression, &batch.ndjson) {
            Some((coding, body)) => req.header("content-encoding", coding).body(body),
            None => req.body(std::mem::take(&mut batch.ndjson)),
        };
        if let Some(t) = &settings.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SendError::Failed(without_url(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            return Err(SendError::TooLarge);
        }
        if !status.is_success() {
            return Err(SendError::Failed(format!("collector answered {status}")));
        }
        let answer: IngestAnswer = resp.json().await.unwrap_or_default();
        Ok(answer.rejected)
    }
}

/// reqwest's errors name the URL; ours is in the config already, and may carry a query.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}
