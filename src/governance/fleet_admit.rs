//! Admission and settlement when `governance.redis` is set: the same rules as in-process
//! admission, decided by one Redis script for the whole fleet (see `fleet`). Budgets are
//! kept there in nano-dollars: reservations and costs rounded up, limits down, so rounding
//! can only make a budget stricter, by under a nano-dollar a request.

use super::fleet::{Answer, Fleet, LevelAsk, LevelSettle};
use super::{
    levels_of, lock, Ask, Caller, FleetHold, FleetLevel, Governor, Level, LevelKind, Rules, Ticket,
    Verdict,
};
use crate::error::{ErrorCode, ProxyError};
use crate::price::Atto;
use chrono::Utc;
use std::sync::Arc;

const ATTO_PER_NANO: Atto = 1_000_000_000;

fn nano_up(atto: Atto) -> i64 {
    i64::try_from(atto.div_ceil(ATTO_PER_NANO)).unwrap_or(i64::MAX)
}

fn nano_down(atto: Atto) -> i64 {
    i64::try_from(atto / ATTO_PER_NANO).unwrap_or(i64::MAX)
}

fn atto(nano: i64) -> Atto {
    Atto::from(nano.max(0) as u64) * ATTO_PER_NANO
}

/// `<kind>:<name>`, the level's part of its Redis keys.
fn level_key(level: &Level) -> String {
    super::fleet::level_id(level.kind.as_str(), &level.name)
}

impl Governor {
    fn fleet_for(&self, url: &str) -> Result<Arc<Fleet>, String> {
        let mut current = lock(&self.fleet);
        if let Some(f) = current.as_ref().filter(|f| f.url == url) {
            return Ok(f.clone());
        }
        let f = Arc::new(Fleet::new(url)?);
        *current = Some(f.clone());
        Ok(f)
    }

    /// Admission: through Redis when `governance.redis` is set, else in this process
    /// (`admit`). Should Redis not answer, `fail_open` admits (uncounted)
    /// or refuses (503 `governance_unavailable`); both are counted and logged.
    pub async fn admit_fleet(
        &self,
        rules: &Rules,
        settings: &crate::config::governance::Settings,
        caller: &Caller,
        ask: &Ask<'_>,
        skip_budgets: &[LevelKind],
    ) -> Verdict {
        let Some(url) = settings.redis.as_deref() else {
            return self.admit(rules, caller, ask, skip_budgets);
        };
        let levels = levels_of(rules, caller);
        if let Some(refused) = self.check_models(&levels, ask.model, skip_budgets) {
            return refused;
        }
        let counted: Vec<&Level> = levels.into_iter().filter(|l| l.counts()).collect();
        if counted.is_empty() {
            return Verdict::Admit(Ticket::empty(ask.input_tokens));
        }
        let wall = Utc::now();
        let asks: Vec<LevelAsk> = counted
            .iter()
            .map(|l| {
                let (period, life) = match &l.budget {
                    Some(b) => {
                        let (start, end) = b.per.period(wall);
                        (
                            start.timestamp(),
                            (end - wall).num_seconds().max(0) + 86_400,
                        )
                    }
                    None => (0, 0),
                };
                LevelAsk {
                    keys: l.redis_keys.get(|| level_key(l), period),
                    rpm: l.rpm.unwrap_or(0),
                    tpm: l.tpm.unwrap_or(0),
                    tokens: ask.input_tokens,
                    limit: l.budget.as_ref().map(|b| nano_down(b.limit)),
                    worst: nano_up(ask.worst_case),
                    skip: skip_budgets.contains(&l.kind),
                    seed: l
                        .budget
                        .as_ref()
                        .and_then(|_| self.seed_of(l.kind, &l.name, period))
                        .map(nano_up),
                    life,
                }
            })
            .collect();
        let rid = format!("{:032x}", fastrand::u128(..));
        let answer = match self.fleet_for(url) {
            Ok(fleet) => fleet
                .admit(&rid, settings.reservation_ttl, &asks)
                .await
                .map(|a| (fleet, a)),
            Err(e) => Err(e),
        };
        let (fleet, answer) = match answer {
            Ok(a) => a,
            Err(e) => return self.redis_down(settings.fail_open, &e, ask.input_tokens),
        };
        match answer {
            Answer::Refused { index, what, wait } => {
                let Some(level) = counted.get(index) else {
                    return self.redis_down(
                        settings.fail_open,
                        "bad level index",
                        ask.input_tokens,
                    );
                };
                match (what.as_str(), &level.budget) {
                    ("budget", Some(b)) => match &b.downgrade_to {
                        Some(to) => self.downgrade(level, to, skip_budgets),
                        None => self.budget_exceeded(level, b, ask.worst_case, wall),
                    },
                    (limit @ ("rpm" | "tpm"), _) => self.rate_limited(level, limit, wait),
                    _ => {
                        self.redis_down(settings.fail_open, "unexpected refusal", ask.input_tokens)
                    }
                }
            }
            Answer::Admitted { sec, budgets } => {
                let mut figures = budgets.into_iter();
                let mut held = Vec::with_capacity(counted.len());
                for (l, a) in counted.iter().zip(&asks) {
                    let state = self.state(l);
                    if let Some(b) = &l.budget {
                        if let Some((spent, reserved)) = figures.next() {
                            state.gauges.budget(b.limit, atto(spent), atto(reserved));
                        }
                    }
                    held.push(FleetLevel {
                        state,
                        kind: l.kind,
                        name: l.name.clone(),
                        keys: a.keys.clone(),
                        counts_tokens: l.tpm.is_some(),
                        budget: l.budget.as_ref().map(|b| (b.limit, b.alert_at.clone())),
                    });
                }
                let mut ticket = Ticket::empty(ask.input_tokens);
                ticket.reserved = ask.worst_case;
                ticket.fleet = Some(FleetHold {
                    fleet,
                    rid,
                    sec,
                    levels: held,
                    metrics: self.metrics.clone(),
                });
                Verdict::Admit(ticket)
            }
        }
    }

    fn redis_down(&self, fail_open: bool, why: &str, input_tokens: u64) -> Verdict {
        let outcome = if fail_open { "admitted" } else { "refused" };
        self.metrics
            .redis_errors
            .with_label_values(&[outcome])
            .inc();
        super::warn_rarely(&format!(
            "governance: Redis unavailable ({why}); requests are {outcome} (on_redis_down)"
        ));
        if fail_open {
            return Verdict::Admit(Ticket::empty(input_tokens));
        }
        self.metrics
            .rejections
            .with_label_values(&["redis_down"])
            .inc();
        Verdict::Reject(
            ProxyError::new(
                ErrorCode::GovernanceUnavailable,
                "limits and budgets cannot be checked (Redis is unreachable) and governance.on_redis_down is closed",
            )
            .retry_after(1),
        )
    }
}

impl FleetHold {
    /// Settles in the background: the request's answer never waits on Redis. If Redis
    /// cannot be reached, the reservation expires after `reservation_ttl`.
    pub(super) fn settle(self, cost: Atto, estimated: u64, real: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let levels: Vec<LevelSettle> = self
                .levels
                .iter()
                .map(|l| LevelSettle {
                    keys: l.keys.clone(),
                    estimated,
                    real,
                    counts_tokens: l.counts_tokens,
                    cost: l.budget.as_ref().map(|_| nano_up(cost)),
                })
                .collect();
            match self.fleet.settle(&self.rid, self.sec, &levels).await {
                Ok(figures) => {
                    let with_budget = self.levels.iter().filter_map(|l| l.budget.as_ref().map(|b| (l, b)));
                    for ((l, (limit, marks)), (spent, reserved)) in with_budget.zip(figures) {
                        l.state.gauges.budget(*limit, atto(spent), atto(reserved));
                        let before = atto(spent - nano_up(cost));
                        for mark in marks {
                            let at = (*limit as f64 * mark) as Atto;
                            if before < at && atto(spent) >= at {
                                super::alert(&self.metrics, l.kind, &l.name, *mark, atto(spent), *limit);
                            }
                        }
                    }
                }
                Err(e) => {
                    self.metrics.redis_errors.with_label_values(&["settle"]).inc();
                    super::warn_rarely(&format!(
                        "governance: a settlement did not reach Redis ({e}); its reservation expires by itself"
                    ));
                }
            }
        });
    }
}
