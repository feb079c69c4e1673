//! What this proxy has seen of each target (a catalog model): requests in flight, a
//! peak-EWMA of its response time, and its passive health — outlier ejection after
//! consecutive failures or a high failure rate, a half-open probe before readmission, and
//! `Retry-After` honoured. Kept across reloads, keyed by the model's alias, as the
//! governor keeps its counters; nothing here waits on the network.

use ahash::AHashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Outlier detection (`outlier_detection:` in the policy), with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Failures in a row that eject a target; 0: never on this count.
    pub consecutive_failures: u32,
    /// The share of failures over the last `WINDOW` outcomes that ejects a target, once
    /// the window holds at least `MIN_REQUESTS`; 0: never on the rate.
    pub failure_rate: f64,
    /// The first ejection's length; each repeat adds as much again, up to `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of a route's targets is skipped for being out of service.
    pub max_ejected_percent: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            consecutive_failures: 5,
            failure_rate: 0.5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

const WINDOW: usize = 20;
const MIN_REQUESTS: usize = 10;
/// The time constant of the response-time average: a sample weighs e^(−Δt/τ) less after Δt.
const TAU: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured (a provider asking for hours is treated as ejected).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Every target's state in this process.
#[derive(Default)]
pub struct Targets {
    map: Mutex<AHashMap<Arc<str>, Arc<Target>>>,
}

impl Targets {
    /// The state of the target named `alias`, made on first use.
    pub fn get(&self, alias: &Arc<str>) -> Arc<Target> {
        let mut map = lock(&self.map);
        if let Some(t) = map.get(alias) {
            return t.clone();
        }
        let t = Arc::new(Target::default());
        map.insert(alias.clone(), t.clone());
        t
    }

    /// Every target seen, with its health, for metrics and `/config`.
    pub fn snapshot(&self) -> Vec<(Arc<str>, Health)> {
        let now = Instant::now();
        let map = lock(&self.map);
        let mut out: Vec<_> = map
            .iter()
            .map(|(k, t)| (k.clone(), t.health(now)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[derive(Default)]
pub struct Target {
    in_flight: AtomicU32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Peak-EWMA of response time in microseconds, as of `stamp`; `None` before a sample.
    ewma_us: Option<f64>,
    stamp: Option<Instant>,
    consecutive: u32,
    /// The last outcomes, true for a failure.
    recent: VecDeque<bool>,
    ejected_until: Option<Instant>,
    /// Ejections so far (the next lasts `base_ejection` × this + 1); reset by a success.
    ejections: u32,
    /// Set while the half-open probe after an ejection is in flight.
    probing: bool,
    /// A `Retry-After` from the target: skip it until then.
    retry_after_until: Option<Instant>,
    last_failure: Option<Instant>,
}

/// Where a target stands, as a plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Ejected until then.
    Ejected(Instant),
    /// Its ejection ran out: the next request is the probe that readmits it (or not).
    Probation,
    /// A probe is in flight: others wait for its answer.
    Probing,
    /// It asked (`Retry-After`) not to be called until then.
    RetryAfter(Instant),
}

impl Health {
    pub fn is_available(self) -> bool {
        matches!(self, Health::Healthy | Health::Probation)
    }

    /// A few words for a decision's `skipped` list.
    pub fn reason(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Ejected(_) => "ejected",
            Health::Probation => "probation",
            Health::Probing => "probing",
            Health::RetryAfter(_) => "retry-after",
        }
    }

    /// For the health gauge: 0 healthy, 1 probation or probing, 2 ejected or retry-after.
    pub fn gauge(self) -> i64 {
        match self {
            Health::Healthy => 0,
            Health::Probation | Health::Probing => 1,
            Health::Ejected(_) | Health::RetryAfter(_) => 2,
        }
    }
}

/// What one attempt came to, for the target's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer that is not a 429 or 5xx, after `elapsed` (to its response head).
    Success(Duration),
    /// 429 or 5xx, with the `Retry-After` it carried.
    Refused { retry_after: Option<Duration> },
    /// Connect error, timeout or a broken exchange.
    Failed,
}

/// What a recorded outcome changed, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Ejected for this long.
    Ejected(Duration),
    /// Its probe succeeded: back in service.
    Readmitted,
}

impl Target {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn health(&self, now: Instant) -> Health {
        let s = lock(&self.state);
        if let Some(until) = s.retry_after_until.filter(|u| *u > now) {
            return Health::RetryAfter(until);
        }
        match s.ejected_until {
            Some(until) if until > now => Health::Ejected(until),
            Some(_) if s.probing => Health::Probing,
            Some(_) => Health::Probation,
            None => Health::Healthy,
        }
    }

    /// When it last failed, for choosing among targets that are all out.
    pub fn last_failure(&self) -> Option<Instant> {
        lock(&self.state).last_failure
    }

    /// An attempt about to be sent to this target carries the half-open probe if the
    /// target is on probation and no other request has it. The probe is held until the
    /// guard drops, so an attempt that never reports (its client gone) cannot keep the
    /// target waiting forever.
    pub fn take_probe(self: &Arc<Self>, now: Instant) -> Option<Probe> {
        let mut s = lock(&self.state);
        match s.ejected_until {
            Some(until) if until <= now && !s.probing => {
                s.probing = true;
                Some(Probe(self.clone()))
            }
            _ => None,
        }
    }

    /// The response-time average (µs) decayed to `now`; `None` before any sample.
    /// Reading decays it toward zero, so a target left alone is tried again in time
    /// (as Finagle's peak-EWMA does).
    pub fn latency_us(&self, now: Instant) -> Option<f64> {
        let s = lock(&self.state);
        let (ewma, stamp) = (s.ewma_us?, s.stamp?);
        Some(ewma * decay(now.saturating_duration_since(stamp)))
    }

    /// Records an attempt's outcome; `penalty` is the response time a refusal counts as,
    /// so a target answering 429 fast never looks fast. `probe`: the attempt carried the
    /// half-open probe (only its outcome readmits or re-ejects a target still ejected).
    pub fn record(
        &self,
        outcome: Outcome,
        penalty: Duration,
        now: Instant,
        rules: &Settings,
        probe: bool,
    ) -> Change {
        let mut s = lock(&self.state);
        let (sample, failed) = match outcome {
            Outcome::Success(d) => (d, false),
            Outcome::Refused { .. } | Outcome::Failed => (penalty, true),
        };
        observe(&mut s, sample, now);
        if let Outcome::Refused {
            retry_after: Some(d),
        } = outcome
        {
            s.retry_after_until = Some(now + d.min(MAX_RETRY_AFTER));
        }
        s.recent.push_back(failed);
        if s.recent.len() > WINDOW {
            s.recent.pop_front();
        }
        if probe {
            s.probing = false;
        }
        let ejected_now = s.ejected_until.is_some_and(|u| u > now);
        if !failed {
            s.consecutive = 0;
            // A request sent before the ejection that answers well now readmits nothing:
            // only the probe, or any request once the ejection has run out.
            if s.ejected_until.is_some() && (probe || !ejected_now) {
                s.ejected_until = None;
                s.ejections = 0;
                s.recent.clear();
                return Change::Readmitted;
            }
            return Change::None;
        }
        s.consecutive += 1;
        s.last_failure = Some(now);
        let rate_exceeded = rules.failure_rate > 0.0
            && s.recent.len() >= MIN_REQUESTS
            && s.recent.iter().filter(|f| **f).count() as f64
                >= rules.failure_rate * s.recent.len() as f64;
        let run = rules.consecutive_failures > 0 && s.consecutive >= rules.consecutive_failures;
        if probe || (!ejected_now && (run || rate_exceeded)) {
            s.ejections = s.ejections.saturating_add(1);
            let length = rules
                .base_ejection
                .saturating_mul(s.ejections)
                .min(rules.max_ejection);
            s.ejected_until = Some(now.checked_add(length).unwrap_or(now));
            s.recent.clear();
            return Change::Ejected(length);
        }
        Change::None
    }
}

/// Peak-EWMA: a slower sample replaces the average at once; a faster one is blended in by
/// the time since the last.
fn observe(s: &mut State, sample: Duration, now: Instant) {
    let x = sample.as_secs_f64() * 1e6;
    let ewma = match (s.ewma_us, s.stamp) {
        (Some(e), Some(t)) if x < e => {
            let w = decay(now.saturating_duration_since(t));
            e * w + x * (1.0 - w)
        }
        _ => x,
    };
    s.ewma_us = Some(ewma);
    s.stamp = Some(now);
}

fn decay(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / TAU.as_secs_f64()).exp()
}

/// The half-open probe, held by the attempt that carries it.
pub struct Probe(Arc<Target>);

impl Drop for Probe {
    fn drop(&mut self) {
        lock(&self.0.state).probing = false;
    }
}

/// A request in flight on a target; counted until dropped.
pub struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PENALTY: Duration = Duration::from_secs(30);
    const BASE_EJECTION: Duration = Duration::from_secs(30);
    const RULES: Settings = Settings {
        consecutive_failures: 5,
        failure_rate: 0.5,
        base_ejection: BASE_EJECTION,
        max_ejection: Duration::from_secs(300),
        max_ejected_percent: 50,
    };

    #[test]
    fn five_failures_in_a_row_eject_and_a_probe_readmits() {
        let t = Arc::new(Target::default());
        let now = Instant::now();
        for i in 0..4 {
            assert_eq!(
                t.record(Outcome::Failed, PENALTY, now, &RULES, false),
                Change::None,
                "{i}"
            );
        }
        assert_eq!(
            t.record(Outcome::Failed, PENALTY, now, &RULES, false),
            Change::Ejected(BASE_EJECTION)
        );
        assert_eq!(t.health(now), Health::Ejected(now + BASE_EJECTION));
        // A request sent before the ejection that succeeds now does not readmit it.
        let ok = Outcome::Success(Duration::from_millis(10));
        assert_eq!(t.record(ok, PENALTY, now, &RULES, false), Change::None);
        assert_eq!(t.health(now), Health::Ejected(now + BASE_EJECTION));
        let later = now + BASE_EJECTION;
        assert_eq!(t.health(later), Health::Probation);
        let probe = t.take_probe(later).unwrap();
        assert!(t.take_probe(later).is_none(), "one probe at a time");
        assert_eq!(t.health(later), Health::Probing);
        assert_eq!(
            t.record(ok, PENALTY, later, &RULES, true),
            Change::Readmitted
        );
        drop(probe);
        assert_eq!(t.health(later), Health::Healthy);
    }

    #[test]
    fn a_failed_probe_ejects_again_for_longer() {
        let t = Arc::new(Target::default());
        let now = Instant::now();
        for _ in 0..5 {
            t.record(Outcome::Failed, PENALTY, now, &RULES, false);
        }
        let later = now + BASE_EJECTION;
        let _probe = t.take_probe(later).unwrap();
        assert_eq!(
            t.record(Outcome::Failed, PENALTY, later, &RULES, true),
            Change::Ejected(BASE_EJECTION * 2)
        );
        assert_eq!(t.health(later), Health::Ejected(later + BASE_EJECTION * 2));
    }

    #[test]
    fn a_failure_rate_ejects_without_a_run_of_failures() {
        let t = Arc::new(Target::default());
        let now = Instant::now();
        let ok = Outcome::Success(Duration::from_millis(10));
        let mut changes = Vec::new();
        for _ in 0..5 {
            changes.push(t.record(ok, PENALTY, now, &RULES, false));
            changes.push(t.record(Outcome::Failed, PENALTY, now, &RULES, false));
        }
        assert_eq!(changes.last(), Some(&Change::Ejected(BASE_EJECTION)));
        assert!(changes[..9].iter().all(|c| *c == Change::None));
    }

    #[test]
    fn a_probe_that_never_reports_gives_the_probe_back() {
        let t = Arc::new(Target::default());
        let now = Instant::now();
        for _ in 0..5 {
            t.record(Outcome::Failed, PENALTY, now, &RULES, false);
        }
        let later = now + BASE_EJECTION;
        drop(t.take_probe(later).unwrap());
        assert_eq!(t.health(later), Health::Probation);
    }

    #[test]
    fn retry_after_is_honoured() {
        let t = Arc::new(Target::default());
        let now = Instant::now();
        let refused = Outcome::Refused {
            retry_after: Some(Duration::from_secs(7)),
        };
        t.record(refused, PENALTY, now, &RULES, false);
        assert_eq!(
            t.health(now),
            Health::RetryAfter(now + Duration::from_secs(7))
        );
        assert_eq!(t.health(now + Duration::from_secs(7)), Health::Healthy);
    }

    #[test]
    fn peak_ewma_jumps_up_decays_down_and_counts_refusals_as_slow() {
        let t = Arc::new(Target::default());
        let now = Instant::now();
        assert_eq!(t.latency_us(now), None);
        t.record(
            Outcome::Success(Duration::from_millis(100)),
            PENALTY,
            now,
            &RULES,
            false,
        );
        assert_eq!(t.latency_us(now), Some(100_000.0));
        // A slower sample is taken at once.
        t.record(
            Outcome::Success(Duration::from_millis(400)),
            PENALTY,
            now,
            &RULES,
            false,
        );
        assert_eq!(t.latency_us(now), Some(400_000.0));
        // Left alone for one τ, it reads e⁻¹ of that.
        let later = now + TAU;
        let read = t.latency_us(later).unwrap();
        assert!(
            (read - 400_000.0 / std::f64::consts::E).abs() < 1.0,
            "{read}"
        );
        // A refusal counts as the penalty, however fast it came.
        t.record(
            Outcome::Refused { retry_after: None },
            PENALTY,
            later,
            &RULES,
            false,
        );
        assert_eq!(t.latency_us(later), Some(PENALTY.as_secs_f64() * 1e6));
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let t = Arc::new(Target::default());
        let a = t.start();
        let b = t.start();
        assert_eq!(t.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(t.in_flight(), 0);
    }
}
