//! Step 7 of the walk: what the request's usage event says, gathered as the walk goes and
//! built once in the logging phase. Building it is a handful of clones of shared strings;
//! serialising it happens on the spool writer's thread, off the request path.

use super::Ctx;
use crate::error::ErrorCode;
use crate::events::{Decision, UsageEvent, Usd};
use crate::policy::Policy;
use crate::price::Atto;
use crate::usage::Usage;
use chrono::SubsecRound;
use std::sync::Arc;
use std::time::Duration;

/// The parts of the event that the proxy's phases learn one by one.
#[derive(Default)]
pub(crate) struct Record {
    /// The policy snapshot the request ran under (identity, version).
    pub policy: Option<Arc<Policy>>,
    /// The virtual key's id, when a key identified the caller.
    pub key_id: Option<Arc<str>>,
    pub requested_model: Option<Arc<str>>,
    pub strategy: &'static str,
    /// Why the plan chose its first target (`route::Plan::explain`).
    pub explain: Option<Arc<str>>,
    /// The request's complexity score, where its route computed one.
    pub score: Option<f64>,
    /// The route's shadow's decision.
    pub shadow: Option<crate::events::Shadow>,
    pub attempts: u32,
    pub fallback: bool,
    pub stream: bool,
    pub error_code: Option<ErrorCode>,
    pub usage: Option<Usage>,
    pub partial: bool,
    pub cost: Option<Atto>,
    pub ttft: Option<Duration>,
    /// Answered by the proxy from its own catalog (`GET /v1/models`): not an LLM call.
    pub local: bool,
}

/// The request's usage event; `None` for what is not an LLM call.
pub(super) fn event(ctx: &Ctx, status: u16) -> Option<UsageEvent> {
    let r = &ctx.record;
    if r.local {
        return None;
    }
    let policy = r.policy.as_deref()?;
    let usage = r.usage.unwrap_or_default();
    let reason: Option<Arc<str>> = match (&r.explain, r.fallback) {
        (Some(e), true) => Some(Arc::from(format!(
            "{e}; attempt {} of the plan, after failures",
            r.attempts
        ))),
        (None, true) => Some(Arc::from(format!(
            "attempt {} of the plan, after failures",
            r.attempts
        ))),
        (e, false) => e.clone(),
    };
    let ts = chrono::Utc::now().trunc_subsecs(3);
    Some(UsageEvent {
        v: crate::events::event::VERSION,
        id: crate::events::event::new_id(&ts),
        ts,
        namespace: policy.pod.namespace.clone(),
        pod: policy.pod.pod.clone(),
        service: policy.pod.service.clone(),
        node: policy.pod.node.clone(),
        team: ctx.team.clone(),
        key_id: r.key_id.clone(),
        route: ctx.route.clone(),
        requested_model: r.requested_model.clone(),
        model: ctx.model.clone(),
        provider: ctx.provider.clone(),
        attempts: r.attempts,
        fallback: r.fallback,
        status,
        error_code: r.error_code.map(|c| c.as_str().into()),
        stream: r.stream,
        partial: r.partial,
        input_tokens: usage.input,
        output_tokens: usage.output,
        cached_tokens: usage.cached_input,
        cache_write_tokens: usage.cache_write,
        reasoning_tokens: usage.reasoning,
        cost_usd: Usd(r.cost.unwrap_or(0)),
        latency_ms: ctx.start.elapsed().as_millis() as u64,
        ttft_ms: r.ttft.map(|d| d.as_millis() as u64),
        overhead_us: ctx.overhead.as_micros() as u64,
        policy_version: policy.version.clone(),
        decision: Decision {
            strategy: if r.strategy.is_empty() {
                "none"
            } else {
                r.strategy
            }
            .into(),
            reason,
            score: r.score,
            shadow: r.shadow.clone(),
        },
    })
}
