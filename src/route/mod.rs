//! Route decision: the first matching route and its strategy turn a request into an
//! ordered attempt plan (primary, then fallbacks), skipping targets that are out of
//! service, and say why they chose as they did.

pub mod complexity;
pub mod health;
pub mod retry_budget;
mod strategy;

use crate::error::{ErrorCode, ProxyError};
use crate::policy::{Policy, Retry, Route, Strategy, Timeouts};
use ahash::AHashMap;
use http::HeaderMap;
use prometheus::IntCounter;
use retry_budget::RetryBudget;
use std::sync::{Arc, Mutex};

/// A request's own quality floor, raising the route's `min_quality`.
pub const MIN_QUALITY_HEADER: &str = "x-switchyard-min-quality";

/// What routing looks at.
pub struct RouteInput<'a> {
    pub model: &'a str,
    /// Forward-proxy target host, lowercase; `None` in base-URL mode.
    pub host: Option<&'a str>,
    /// Provider owning `host`, if any.
    pub host_provider: Option<usize>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The request body (validated JSON), for the complexity score and cost estimates.
    pub body: &'a [u8],
    /// The client's output limit, if it set one.
    pub max_tokens: Option<u64>,
    /// The prompt's tokens when already known (`whatif`: the provider's count); `None`:
    /// estimated from `body`.
    pub input_tokens: Option<u64>,
    /// The complexity score when it is already known (`switchyard whatif` replays recorded
    /// ones); `None`: computed from `body` if a strategy needs it.
    pub score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub provider: usize,
    /// Model id to write into the body; `None` keeps the client's.
    pub upstream_model: Option<Arc<str>>,
    /// Catalog name (or the client's model for passthrough), for metrics.
    pub model_label: Arc<str>,
    /// The catalog's default output limit for formats that require one.
    pub max_tokens: Option<u32>,
    pub price: Option<crate::price::Price>,
    /// The catalog entry, whose health the attempt's outcome updates; `None` for
    /// passthrough.
    pub model: Option<usize>,
}

#[derive(Debug)]
pub struct Plan {
    pub route: Arc<str>,
    /// How the plan was chosen, for the usage event's `decision`.
    pub strategy: &'static str,
    pub attempts: Vec<Attempt>,
    pub retry: Retry,
    pub timeouts: Timeouts,
    /// Why the first attempt was chosen (`x-switchyard-decision`, the event's reason); `None`
    /// where nothing was weighed (catalog, passthrough, weighted or priority with every
    /// target available).
    pub explain: Option<Arc<str>>,
    /// The request's complexity score, where the strategy computed one.
    pub score: Option<f64>,
    /// The route's shadow's decision, recorded in the usage event, not acted on.
    pub shadow: Option<crate::events::Shadow>,
    /// The route's retry budget (`None` for the catalog and passthrough: a single attempt).
    pub retry_budget: Option<Arc<RetryBudget>>,
    /// `switchyard_route_decisions_total` of this route, strategy and first model (looked
    /// up once per policy, not per request).
    pub decision: Option<IntCounter>,
}

impl Plan {
    /// The attempt for try number `n` (0-based): the plan in order, the last one repeated
    /// when `retry.attempts` exceeds the plan.
    pub fn attempt(&self, n: usize) -> Option<&Attempt> {
        if n >= self.retry.attempts as usize {
            return None;
        }
        self.attempts.get(n).or_else(|| self.attempts.last())
    }
}

/// What this process has observed, kept across reloads: each target's health and load,
/// each route's retry budget.
#[derive(Default)]
pub struct Observed {
    pub targets: health::Targets,
    budgets: Mutex<AHashMap<Arc<str>, Arc<RetryBudget>>>,
    /// Where decisions are counted; `None` (tests, `whatif`): not counted.
    metrics: Option<crate::telemetry::RoutingMetrics>,
}

impl Observed {
    pub fn with_metrics(metrics: crate::telemetry::RoutingMetrics) -> Observed {
        Observed {
            metrics: Some(metrics),
            ..Observed::default()
        }
    }

    /// The decision counter of (route, strategy, model), for the policy's caches.
    fn decision_counter(&self, route: &str, strategy: &str, model: &str) -> Option<IntCounter> {
        let m = self.metrics.as_ref()?;
        Some(m.decisions.with_label_values(&[route, strategy, model]))
    }

    fn budget(&self, route: &Arc<str>) -> Arc<RetryBudget> {
        let mut m = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(route.clone()).or_default().clone()
    }
}

impl crate::policy::Model {
    /// This model's health and load, found once per policy.
    pub fn target(&self, seen: &Observed) -> Arc<health::Target> {
        self.health
            .get_or_init(|| seen.targets.get(&self.alias))
            .clone()
    }

    /// The decision counter of the catalog route to this model, found once per policy.
    fn catalog_decision(&self, seen: &Observed) -> Option<IntCounter> {
        self.decision
            .get_or_init(|| seen.decision_counter(DEFAULT_ROUTE, "catalog", &self.alias))
            .clone()
    }
}

impl Route {
    /// The route's retry budget, found once per policy.
    pub fn retry_budget(&self, seen: &Observed) -> Arc<RetryBudget> {
        self.budget.get_or_init(|| seen.budget(&self.name)).clone()
    }

    /// The decision counter for `model` chosen first, from counters made once per policy
    /// for each of the route's targets.
    fn decision(&self, policy: &Policy, seen: &Observed, model: usize) -> Option<IntCounter> {
        let counters = self.decisions.get_or_init(|| {
            self.targets
                .iter()
                .chain(&self.fallbacks)
                .copied()
                .filter_map(|m| {
                    let alias = &policy.models.get(m)?.alias;
                    Some((
                        m,
                        seen.decision_counter(&self.name, self.strategy.name(), alias)?,
                    ))
                })
                .collect()
        });
        counters
            .iter()
            .find(|(m, _)| *m == model)
            .map(|(_, c)| c.clone())
    }
}

const DEFAULT_ROUTE: &str = "catalog";

pub fn plan(policy: &Policy, seen: &Observed, input: &RouteInput<'_>) -> Result<Plan, ProxyError> {
    match policy.routes.iter().find(|r| matches(r, input)) {
        Some(route) => plan_route(policy, seen, route, input),
        None => match policy.model_index.get(input.model) {
            Some(&m) => Ok(Plan {
                decision: policy.models[m].catalog_decision(seen),
                route: Arc::from(DEFAULT_ROUTE),
                strategy: "catalog",
                attempts: vec![catalog_attempt(policy, m)],
                retry: Retry {
                    attempts: 1,
                    on_connect: true,
                    on_timeout: true,
                    on_429: true,
                    on_5xx: true,
                },
                timeouts: Timeouts::default(),
                explain: None,
                score: None,
                shadow: None,
                retry_budget: None,
            }),
            None => Err(model_not_found(input.model)),
        },
    }
}

/// The plan for a spent budget's `downgrade_to`: the route of that name, else the route
/// (or catalog entry) a request for that model would get.
pub fn plan_downgrade(
    policy: &Policy,
    seen: &Observed,
    to: &str,
    input: &RouteInput<'_>,
) -> Result<Plan, ProxyError> {
    match policy.routes.iter().find(|r| &*r.name == to) {
        Some(route) => plan_route(policy, seen, route, input),
        None => plan(policy, seen, input),
    }
}

fn model_not_found(model: &str) -> ProxyError {
    ProxyError::new(
        ErrorCode::ModelNotFound,
        format!(
            "The model `{}` does not exist or no route serves it",
            crate::error::clip(model)
        ),
    )
}

fn matches(route: &Route, input: &RouteInput<'_>) -> bool {
    let m = &route.matcher;
    m.model.as_ref().is_none_or(|p| p.matches(input.model))
        && m.host
            .as_ref()
            .is_none_or(|p| input.host.is_some_and(|h| p.matches(h)))
        && m.path.as_ref().is_none_or(|p| p.matches(input.path))
        && m.headers.iter().all(|(name, p)| {
            input
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| p.matches(v))
        })
}

pub(crate) fn catalog_attempt(policy: &Policy, model: usize) -> Attempt {
    let m = &policy.models[model];
    Attempt {
        provider: m.provider,
        upstream_model: Some(m.upstream.clone()),
        model_label: m.alias.clone(),
        max_tokens: m.max_tokens,
        price: m.price,
        model: Some(model),
    }
}

fn plan_route(
    policy: &Policy,
    seen: &Observed,
    route: &Route,
    input: &RouteInput<'_>,
) -> Result<Plan, ProxyError> {
    if let Strategy::Passthrough { provider } = &route.strategy {
        let provider = input.host_provider.or(*provider).ok_or_else(|| {
            ProxyError::new(
                ErrorCode::ModelNotFound,
                format!(
                    "route `{}` passes the model through but the request names no provider host",
                    route.name
                ),
            )
        })?;
        return Ok(Plan {
            route: route.name.clone(),
            strategy: route.strategy.name(),
            attempts: vec![Attempt {
                provider,
                upstream_model: None,
                model_label: Arc::from(input.model),
                max_tokens: None,
                price: policy.prices.lookup(input.model),
                model: None,
            }],
            retry: route.retry,
            timeouts: route.timeouts,
            explain: None,
            score: None,
            shadow: None,
            retry_budget: Some(route.retry_budget(seen)),
            // Passthrough models are the clients' own names: not a bounded label.
            decision: None,
        });
    }
    let choice = strategy::choose(policy, seen, route, input, None)?;
    let shadow = route.shadow.and_then(|j| {
        let r = &policy.routes[j];
        // Nothing is counted for a choice that is not acted on.
        let c = strategy::choose(policy, seen, r, input, choice.score).ok()?;
        Some(crate::events::Shadow {
            route: r.name.clone(),
            strategy: Arc::from(r.strategy.name()),
            model: policy.models[*c.order.first()?].alias.clone(),
            reason: c.explain.map(Arc::from),
            score: c.score,
        })
    });
    let attempts: Vec<Attempt> = choice
        .order
        .iter()
        .map(|m| catalog_attempt(policy, *m))
        .collect();
    if attempts.is_empty() {
        return Err(ProxyError::new(
            ErrorCode::UpstreamUnavailable,
            format!("route `{}` has no target left to try", route.name),
        ));
    }
    Ok(Plan {
        route: route.name.clone(),
        strategy: route.strategy.name(),
        attempts,
        retry: route.retry,
        timeouts: route.timeouts,
        explain: choice.explain.map(Arc::from),
        score: choice.score,
        shadow,
        retry_budget: Some(route.retry_budget(seen)),
        decision: choice
            .order
            .first()
            .and_then(|m| route.decision(policy, seen, *m)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::expand::ProcessEnv;

    const POLICY: &str = r#"
providers:
  a: { format: openai, base_url: "http://127.0.0.1:9001/v1" }
  b: { format: openai, base_url: "http://127.0.0.1:9002/v1", intercept: [api.b.test] }
models:
  m-a: { provider: a, name: real-a }
  m-b: { provider: b }
routes:
  - name: by-header
    match: { headers: { x-team: research } }
    strategy: priority
    targets: [m-b]
  - name: glob
    match: { model: "gpt-*", path: "/v1/chat/*" }
    strategy: weighted
    targets: [ { model: m-a, weight: 1 }, { model: m-b, weight: 0 } ]
    fallbacks: [m-b]
    retry: { attempts: 5 }
  - name: pass
    match: { host: "api.b.test" }
    strategy: passthrough
"#;

    fn policy() -> Policy {
        crate::config::from_str(POLICY, &ProcessEnv, 1).unwrap()
    }

    fn input<'a>(model: &'a str, path: &'a str, headers: &'a HeaderMap) -> RouteInput<'a> {
        RouteInput {
            model,
            host: None,
            host_provider: None,
            path,
            headers,
            body: b"{}",
            max_tokens: None,
            input_tokens: None,
            score: None,
        }
    }

    fn plan_fresh(p: &Policy, input: &RouteInput<'_>) -> Result<Plan, ProxyError> {
        super::plan(p, &Observed::default(), input)
    }

    #[test]
    fn first_match_wins_and_globs() {
        let p = policy();
        let h = HeaderMap::new();
        let plan = plan_fresh(&p, &input("gpt-4o", "/v1/chat/completions", &h)).unwrap();
        assert_eq!(&*plan.route, "glob");
        // weight 0 never drawn first
        assert_eq!(plan.attempts[0].upstream_model.as_deref(), Some("real-a"));
        assert_eq!(plan.attempts.len(), 3);
        assert_eq!(plan.attempt(4), plan.attempts.last());
        assert_eq!(plan.attempt(5), None);
        // path must match too
        let e = plan_fresh(&p, &input("gpt-4o", "/v1/embeddings", &h)).unwrap_err();
        assert_eq!(e.code, ErrorCode::ModelNotFound);

        let mut h2 = HeaderMap::new();
        h2.insert("x-team", "research".parse().unwrap());
        let plan = plan_fresh(&p, &input("gpt-4o", "/v1/chat/completions", &h2)).unwrap();
        assert_eq!(&*plan.route, "by-header");
    }

    #[test]
    fn catalog_fallthrough_and_passthrough() {
        let p = policy();
        let h = HeaderMap::new();
        let plan = plan_fresh(&p, &input("m-a", "/v1/chat/completions", &h)).unwrap();
        assert_eq!(&*plan.route, "catalog");
        assert_eq!(plan.attempts[0].upstream_model.as_deref(), Some("real-a"));

        let b = p.providers.iter().position(|x| &*x.name == "b").unwrap();
        let inp = RouteInput {
            model: "whatever-model",
            host: Some("api.b.test"),
            host_provider: Some(b),
            path: "/v1/chat/completions",
            headers: &h,
            body: b"{}",
            max_tokens: None,
            input_tokens: None,
            score: None,
        };
        let plan = plan_fresh(&p, &inp).unwrap();
        assert_eq!(&*plan.route, "pass");
        assert_eq!(plan.attempts[0].provider, b);
        assert_eq!(plan.attempts[0].upstream_model, None);
    }
}
