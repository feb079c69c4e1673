//! Steps 1b and 4 of the walk: who is calling (before the body is read, so a bad key costs
//! nothing), then admission against the caller's key, team and org once the body says
//! which model and how much (see `governance`). Settlement happens in `logging`.

use super::{Ctx, Switchyard};
use crate::error::ProxyError;
use crate::governance::{Ask, Verdict};
use crate::policy::Policy;
use crate::price::Atto;
use crate::rewrite::BodyProbe;
use crate::route::Plan;
use crate::usage::Usage;
use pingora::proxy::Session;

/// The output a request may produce when neither it nor the catalog says: the worst case
/// a budget reserves for it.
const DEFAULT_MAX_OUTPUT: u64 = 4096;
/// Bytes of request body per estimated input token (JSON and English prose run 3.5–4.5;
/// the estimate is settled to the provider's count afterwards).
const BYTES_PER_TOKEN: u64 = 4;

impl Switchyard {
    /// The caller, when the policy governs anything (kept in `ctx.caller`, with the key's
    /// id and team recorded for the event).
    pub(super) fn identify(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        policy: &Policy,
    ) -> Result<(), ProxyError> {
        let rules = &policy.governance;
        if !rules.active {
            return Ok(());
        }
        let caller =
            self.state
                .governor
                .identify(rules, &session.req_header().headers, &policy.team)?;
        ctx.team = caller.team.clone();
        ctx.record.key_id = caller.key.map(|i| rules.keys[i].id.clone());
        ctx.caller = Some(caller);
        Ok(())
    }

    /// Admission for the routed request: the plan to forward (another one if a spent
    /// budget downgrades it), with the request's hold kept in `ctx` until `logging`.
    /// Without a caller (nothing governed) the plan passes as it is.
    pub(super) async fn admit(
        &self,
        ctx: &mut Ctx,
        policy: &Policy,
        probe: &BodyProbe,
        body_len: usize,
        plan: Plan,
        replan: impl Fn(&str) -> Result<Plan, ProxyError>,
    ) -> Result<Plan, ProxyError> {
        let Some(caller) = ctx.caller.clone() else {
            return Ok(plan);
        };
        let input_tokens = (body_len as u64).div_ceil(BYTES_PER_TOKEN);
        let mut plan = plan;
        let mut model = probe.model.clone();
        let mut skip = Vec::new();
        // At most one downgrade per level: the loop ends.
        loop {
            let ask = Ask {
                model: &model,
                input_tokens,
                worst_case: worst_case(&plan, input_tokens, probe.max_tokens),
            };
            let verdict = self
                .state
                .governor
                .admit_fleet(
                    &policy.governance,
                    &policy.governance_settings,
                    &caller,
                    &ask,
                    &skip,
                )
                .await;
            match verdict {
                Verdict::Admit(ticket) => {
                    ctx.ticket = Some(ticket);
                    return Ok(plan);
                }
                Verdict::Reject(e) => return Err(e),
                Verdict::Downgrade { to, skip: levels } => {
                    plan = replan(&to)?;
                    model = to.to_string();
                    skip = levels;
                }
            }
        }
    }

    /// The request ended: its hold becomes what it really cost.
    pub(super) fn settle(&self, ctx: &mut Ctx) {
        if let Some(ticket) = ctx.ticket.take() {
            let input = ctx.record.usage.map_or(0, |u| u.input);
            self.state
                .governor
                .settle(ticket, ctx.record.cost.unwrap_or(0), input);
        }
    }
}

/// The most the request can cost on any attempt of its plan: the estimated prompt at the
/// input price plus the whole output limit at the output price.
fn worst_case(plan: &Plan, input_tokens: u64, max_tokens: Option<u64>) -> Atto {
    plan.attempts
        .iter()
        .filter_map(|a| {
            let output = max_tokens
                .or(a.max_tokens.map(u64::from))
                .unwrap_or(DEFAULT_MAX_OUTPUT);
            a.price.map(|p| {
                p.cost(&Usage {
                    input: input_tokens,
                    output,
                    ..Usage::default()
                })
            })
        })
        .max()
        .unwrap_or(0)
}
