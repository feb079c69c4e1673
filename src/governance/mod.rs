//! Governance: who may call which model, how often, and for how much.
//!
//! The policy's `org:` → `teams:` → `keys:` compile into `Rules` (immutable, part of the
//! policy snapshot). Their counters live in the `Governor` (one per process, kept across
//! reloads, keyed by level): rate windows and budget ledgers. Admission runs before any
//! upstream is contacted, in the order — identity, allowed model, rate limits,
//! budgets — and either refuses the request or hands back a `Ticket` holding its
//! reservations, which the request settles at its end (or releases if it never ran).

pub mod fleet;
mod fleet_admit;
pub mod identity;
mod ledger;
mod limits;
mod period;
pub mod sync;

pub use identity::{Caller, Presented};
pub use period::Per;

use crate::error::{ErrorCode, ProxyError};
use crate::policy::Pattern;
use crate::price::Atto;
use crate::telemetry::GovernanceMetrics;
use ahash::AHashMap;
use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The compiled `governance:`, `org:` and `teams:` of one policy.
#[derive(Default)]
pub struct Rules {
    /// Unknown or missing virtual keys are refused.
    pub require_key: bool,
    pub org: Level,
    /// Team name → its level.
    pub teams: AHashMap<Arc<str>, Level>,
    /// The virtual keys, in policy order.
    pub keys: Vec<Key>,
    pub key_index: identity::Keys,
    /// Whether anything is enforced at all: when not, admission is skipped entirely.
    pub active: bool,
}

pub struct Key {
    pub id: Arc<str>,
    pub team: Arc<str>,
    pub level: Level,
}

/// One level of the hierarchy: what it allows, and the handle of its counters.
pub struct Level {
    pub kind: LevelKind,
    /// `org`, the team's name, or the key's id.
    pub name: Arc<str>,
    /// Allowed model aliases; empty: any.
    pub models: Vec<Pattern>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub budget: Option<Budget>,
    /// The level's counters, found in the `Governor` on first use under this policy.
    state: OnceLock<Arc<LevelState>>,
    /// Its key names in Redis (fleet mode).
    redis_keys: fleet::KeyCache,
}

impl Default for Level {
    fn default() -> Self {
        Level::new(LevelKind::Org, Arc::from("org"))
    }
}

impl Level {
    pub fn new(kind: LevelKind, name: Arc<str>) -> Level {
        Level {
            kind,
            name,
            models: Vec::new(),
            rpm: None,
            tpm: None,
            budget: None,
            state: OnceLock::new(),
            redis_keys: fleet::KeyCache::default(),
        }
    }

    /// Whether the level enforces anything.
    pub fn is_active(&self) -> bool {
        !self.models.is_empty() || self.rpm.is_some() || self.tpm.is_some() || self.budget.is_some()
    }

    fn counts(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.budget.is_some()
    }

    fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|p| p.matches(model))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LevelKind {
    Org,
    Team,
    Key,
}

impl LevelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LevelKind::Org => "org",
            LevelKind::Team => "team",
            LevelKind::Key => "key",
        }
    }
}

pub struct Budget {
    pub limit: Atto,
    pub per: Per,
    /// Where requests go once the budget cannot cover them (`on_exceed: downgrade`);
    /// `None`: they are refused.
    pub downgrade_to: Option<Arc<str>>,
    /// Fractions of `limit` at which an alert is raised, ascending.
    pub alert_at: Vec<f64>,
}

/// The counters of one level, kept across reloads.
struct LevelState {
    inner: Mutex<Counters>,
    gauges: Gauges,
}

/// The level's metric series, looked up once (a label lookup per request per gauge cost
/// more than the admission itself).
struct Gauges {
    rpm: prometheus::IntGauge,
    tpm: prometheus::IntGauge,
    remaining: prometheus::Gauge,
    reserved: prometheus::Gauge,
    spent: prometheus::Gauge,
}

impl Gauges {
    fn new(m: &GovernanceMetrics, kind: LevelKind, name: &str) -> Gauges {
        let labels = [kind.as_str(), name];
        Gauges {
            rpm: m.rate_used.with_label_values(&[kind.as_str(), name, "rpm"]),
            tpm: m.rate_used.with_label_values(&[kind.as_str(), name, "tpm"]),
            remaining: m.remaining.with_label_values(&labels),
            reserved: m.reserved.with_label_values(&labels),
            spent: m.spent.with_label_values(&labels),
        }
    }

    /// Budget figures in atto-dollars.
    fn budget(&self, limit: Atto, spent: Atto, reserved: Atto) {
        let usd = crate::price::usd_f64;
        self.remaining.set(usd(limit.saturating_sub(spent)));
        self.reserved.set(usd(reserved));
        self.spent.set(usd(spent));
    }
}

#[derive(Default)]
struct Counters {
    requests: limits::RequestLog,
    tokens: limits::TokenWindow,
    ledger: ledger::Ledger,
}

/// A level's identity across reloads.
type LevelKey = (LevelKind, Arc<str>);

/// Every level's counters in this process.
pub struct Governor {
    states: Mutex<AHashMap<LevelKey, Arc<LevelState>>>,
    /// The Redis of `governance.redis`, kept while the URL stays the same.
    fleet: Mutex<Option<Arc<fleet::Fleet>>>,
    /// The collector's spend figures by level: (period start, atto-dollars).
    seeds: Mutex<AHashMap<LevelKey, (i64, Atto)>>,
    metrics: GovernanceMetrics,
}

/// What admission needs to know of the request.
pub struct Ask<'a> {
    /// The model alias the client asked for (what `models:` lists).
    pub model: &'a str,
    /// Input tokens estimated from the body.
    pub input_tokens: u64,
    /// The request's worst-case cost, should it run on `model`.
    pub worst_case: Atto,
}

/// Admission's answer.
pub enum Verdict {
    Admit(Ticket),
    /// A budget is spent and says where to go instead: ask again for that model, with
    /// `skip_budgets` naming the levels whose budget sent it there.
    Downgrade {
        to: Arc<str>,
        skip: Vec<LevelKind>,
    },
    Reject(ProxyError),
}

/// An admitted request's hold on its levels; settled at its end, released if dropped.
pub struct Ticket {
    holds: Vec<Hold>,
    /// In fleet mode, the hold is in Redis.
    fleet: Option<FleetHold>,
    input_tokens: u64,
    reserved: Atto,
    settled: bool,
}

struct FleetHold {
    fleet: Arc<fleet::Fleet>,
    rid: String,
    /// Redis's second of admission (the tpm bucket).
    sec: i64,
    levels: Vec<FleetLevel>,
    metrics: GovernanceMetrics,
}

struct FleetLevel {
    state: Arc<LevelState>,
    kind: LevelKind,
    name: Arc<str>,
    keys: Arc<fleet::Keys>,
    counts_tokens: bool,
    budget: Option<(Atto, Vec<f64>)>,
}

struct Hold {
    state: Arc<LevelState>,
    /// The tpm bucket the request was counted in.
    second: u64,
    kind: LevelKind,
    name: Arc<str>,
    counts_tokens: bool,
    /// The budget's limit and alert marks, when the level has a budget.
    budget: Option<(Atto, Vec<f64>)>,
}

impl Governor {
    pub fn new(metrics: GovernanceMetrics) -> Governor {
        Governor {
            states: Mutex::new(AHashMap::new()),
            fleet: Mutex::new(None),
            seeds: Mutex::new(AHashMap::new()),
            metrics,
        }
    }

    fn state(&self, level: &Level) -> Arc<LevelState> {
        level
            .state
            .get_or_init(|| {
                lock(&self.states)
                    .entry((level.kind, level.name.clone()))
                    .or_insert_with(|| {
                        Arc::new(LevelState {
                            inner: Mutex::default(),
                            gauges: Gauges::new(&self.metrics, level.kind, &level.name),
                        })
                    })
                    .clone()
            })
            .clone()
    }

    /// The caller of a request: its virtual key, else the pod's team.
    pub fn identify(
        &self,
        rules: &Rules,
        headers: &http::HeaderMap,
        pod_team: &Arc<str>,
    ) -> Result<Caller, ProxyError> {
        let refuse = |why: &str| {
            self.metrics
                .rejections
                .with_label_values(&["unauthorized"])
                .inc();
            Err(ProxyError::new(ErrorCode::Unauthorized, why))
        };
        match identity::presented(&rules.key_index, headers) {
            Presented::Known(i) => Ok(Caller {
                team: rules.keys[i].team.clone(),
                key: Some(i),
            }),
            Presented::Unknown => refuse("the virtual key is not valid (unknown or revoked)"),
            Presented::None if rules.require_key => refuse(
                "a virtual key is required: send `Authorization: Bearer sk-sy-…` (or `x-api-key`)",
            ),
            Presented::None => Ok(Caller {
                team: pod_team.clone(),
                key: None,
            }),
        }
    }

    /// Admission for `ask` at every level above `caller`, all or nothing.
    pub fn admit(
        &self,
        rules: &Rules,
        caller: &Caller,
        ask: &Ask,
        skip_budgets: &[LevelKind],
    ) -> Verdict {
        let levels = levels_of(rules, caller);
        if let Some(refused) = self.check_models(&levels, ask.model, skip_budgets) {
            return refused;
        }
        let counted: Vec<&Level> = levels.into_iter().filter(|l| l.counts()).collect();
        let states: Vec<Arc<LevelState>> = counted.iter().map(|l| self.state(l)).collect();
        // Always org → team → key, so two admissions never wait on each other in a cycle.
        let mut guards: Vec<MutexGuard<Counters>> = states.iter().map(|s| lock(&s.inner)).collect();
        let now = Instant::now();
        let wall = Utc::now();

        for (level, c) in counted.iter().zip(guards.iter_mut()) {
            let second = c.tokens.second(now);
            if let Some(rpm) = level.rpm {
                if let Err(wait) = c.requests.check(rpm, now) {
                    return self.rate_limited(level, "rpm", wait);
                }
            }
            if let Some(tpm) = level.tpm {
                if let Err(wait) = c.tokens.check(tpm, ask.input_tokens, second) {
                    return self.rate_limited(level, "tpm", wait);
                }
            }
        }
        for (level, c) in counted.iter().zip(guards.iter_mut()) {
            let Some(b) = &level.budget else { continue };
            let (start, _) = b.per.period(wall);
            c.ledger.roll(start);
            if skip_budgets.contains(&level.kind) || ask.worst_case <= c.ledger.available(b.limit) {
                continue;
            }
            return match &b.downgrade_to {
                Some(to) => self.downgrade(level, to, skip_budgets),
                None => self.budget_exceeded(level, b, ask.worst_case, wall),
            };
        }

        // Admitted: count it everywhere, under the same locks.
        let mut holds = Vec::with_capacity(counted.len());
        for ((level, c), state) in counted.iter().zip(guards.iter_mut()).zip(&states) {
            // Each level's window counts seconds from its own first use.
            let second = c.tokens.second(now);
            if level.rpm.is_some() {
                c.requests.admit(now);
            }
            if level.tpm.is_some() {
                c.tokens.add(ask.input_tokens, second);
            }
            if level.budget.is_some() {
                c.ledger.reserve(ask.worst_case);
            }
            holds.push(Hold {
                state: state.clone(),
                second,
                kind: level.kind,
                name: level.name.clone(),
                counts_tokens: level.tpm.is_some(),
                budget: level.budget.as_ref().map(|b| (b.limit, b.alert_at.clone())),
            });
            publish(level, state, c);
        }
        drop(guards);
        Verdict::Admit(Ticket {
            holds,
            fleet: None,
            input_tokens: ask.input_tokens,
            reserved: ask.worst_case,
            settled: false,
        })
    }

    /// 403 unless every level allows the model. A downgraded request (some budget sent it
    /// on) is the policy's choice, not the caller's, and is not checked again.
    fn check_models(
        &self,
        levels: &[&Level],
        model: &str,
        skip_budgets: &[LevelKind],
    ) -> Option<Verdict> {
        if !skip_budgets.is_empty() {
            return None;
        }
        let level = levels.iter().find(|l| !l.allows(model))?;
        self.metrics
            .rejections
            .with_label_values(&["model_not_allowed"])
            .inc();
        Some(Verdict::Reject(ProxyError::new(
            ErrorCode::ModelNotAllowed,
            format!(
                "model {:?} is not allowed for {} {:?}",
                crate::error::clip(model),
                level.kind.as_str(),
                &*level.name
            ),
        )))
    }

    fn budget_exceeded(
        &self,
        level: &Level,
        b: &Budget,
        worst: Atto,
        wall: DateTime<Utc>,
    ) -> Verdict {
        self.metrics
            .rejections
            .with_label_values(&["budget_exceeded"])
            .inc();
        let (_, end) = b.per.period(wall);
        Verdict::Reject(
            ProxyError::new(
                ErrorCode::BudgetExceeded,
                format!(
                    "the {} {:?} budget of {} USD per {} cannot cover this request (worst case {} USD); it resets at {}",
                    level.kind.as_str(),
                    &*level.name,
                    crate::price::usd_decimal(b.limit),
                    b.per.as_str(),
                    crate::price::usd_decimal(worst),
                    end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
            )
            .retry_after(seconds_until(wall, end)),
        )
    }

    fn downgrade(&self, level: &Level, to: &Arc<str>, skip_budgets: &[LevelKind]) -> Verdict {
        self.metrics
            .downgrades
            .with_label_values(&[level.kind.as_str(), &level.name])
            .inc();
        let mut skip = skip_budgets.to_vec();
        skip.push(level.kind);
        Verdict::Downgrade {
            to: to.clone(),
            skip,
        }
    }

    fn rate_limited(&self, level: &Level, limit: &str, wait: Duration) -> Verdict {
        self.metrics
            .rejections
            .with_label_values(&["rate_limited"])
            .inc();
        self.metrics
            .rate_limited
            .with_label_values(&[level.kind.as_str(), limit])
            .inc();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Verdict::Reject(
            ProxyError::new(
                ErrorCode::RateLimited,
                format!(
                    "the {} {:?} {limit} limit is reached; retry in {secs} s",
                    level.kind.as_str(),
                    &*level.name
                ),
            )
            .retry_after(secs.max(1)),
        )
    }

    /// A request ended: its reservations become its real cost and input tokens.
    pub fn settle(&self, mut ticket: Ticket, cost: Atto, input_tokens: u64) {
        ticket.settled = true;
        if let Some(f) = ticket.fleet.take() {
            f.settle(cost, ticket.input_tokens, input_tokens);
            return;
        }
        for h in &ticket.holds {
            let mut c = lock(&h.state.inner);
            if h.counts_tokens {
                c.tokens.settle(h.second, ticket.input_tokens, input_tokens);
            }
            if let Some((limit, marks)) = &h.budget {
                for mark in c.ledger.settle(ticket.reserved, cost, *limit, marks) {
                    alert(
                        &self.metrics,
                        h.kind,
                        &h.name,
                        mark,
                        c.ledger.spent(),
                        *limit,
                    );
                }
                h.state
                    .gauges
                    .budget(*limit, c.ledger.spent(), c.ledger.reserved);
            }
        }
    }
}

impl Ticket {
    /// A ticket that holds nothing (nothing counted, or Redis down with `open`).
    fn empty(input_tokens: u64) -> Ticket {
        Ticket {
            holds: Vec::new(),
            fleet: None,
            input_tokens,
            reserved: 0,
            settled: false,
        }
    }
}

impl Drop for Ticket {
    /// A request that ended without settling (its task was dropped) gives back its hold.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(f) = self.fleet.take() {
            f.settle(0, self.input_tokens, 0);
            return;
        }
        for h in &self.holds {
            let mut c = lock(&h.state.inner);
            if h.counts_tokens {
                c.tokens.settle(h.second, self.input_tokens, 0);
            }
            if h.budget.is_some() {
                c.ledger.release(self.reserved);
            }
        }
    }
}

impl Rules {
    /// Every level: the org, each team, each key.
    pub fn levels(&self) -> impl Iterator<Item = &Level> {
        std::iter::once(&self.org)
            .chain(self.teams.values())
            .chain(self.keys.iter().map(|k| &k.level))
    }
}

/// The levels a caller's request passes, top down.
fn levels_of<'r>(rules: &'r Rules, caller: &Caller) -> Vec<&'r Level> {
    let mut out = Vec::with_capacity(3);
    out.push(&rules.org);
    if let Some(team) = rules.teams.get(&caller.team) {
        out.push(team);
    }
    if let Some(k) = caller.key.and_then(|i| rules.keys.get(i)) {
        out.push(&k.level);
    }
    out
}

/// The level's gauges after an admission.
fn publish(level: &Level, state: &LevelState, c: &Counters) {
    if level.rpm.is_some() {
        state.gauges.rpm.set(c.requests.used() as i64);
    }
    if level.tpm.is_some() {
        state.gauges.tpm.set(c.tokens.used() as i64);
    }
    if let Some(b) = &level.budget {
        state
            .gauges
            .budget(b.limit, c.ledger.spent(), c.ledger.reserved);
    }
}

/// A budget crossed an `alert_at` mark: one log line and one count, per period.
fn alert(m: &GovernanceMetrics, kind: LevelKind, name: &str, mark: f64, spent: Atto, limit: Atto) {
    m.alerts
        .with_label_values(&[kind.as_str(), name, &mark.to_string()])
        .inc();
    tracing::warn!(
        level = kind.as_str(),
        name,
        spent_usd = %crate::price::usd_decimal(spent),
        limit_usd = %crate::price::usd_decimal(limit),
        "budget alert: {:.0} % of the period's budget is spent",
        mark * 100.0
    );
}

/// At most one warning a second, whatever the request rate (the metrics count them all).
fn warn_rarely(message: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!("{message}");
    }
}

fn seconds_until(now: DateTime<Utc>, end: DateTime<Utc>) -> u64 {
    (end - now).num_seconds().max(1) as u64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
