//! Routes: match conditions, strategy and targets, fallbacks, retry and timeouts.

use super::raw::{RawRoute, RawTarget, RawTier};
use super::{header_name, parse_duration, ConfigError};
use crate::policy::{Matcher, Model, Pattern, Retry, Route, Strategy, Timeouts};

const STRATEGIES: &str =
    "weighted, priority, passthrough, complexity, cheapest, fastest, least-busy";
use ahash::AHashMap;
use std::sync::Arc;

fn resolve_model(
    field: &str,
    name: &str,
    model_index: &AHashMap<String, usize>,
) -> Result<usize, ConfigError> {
    model_index
        .get(name)
        .copied()
        .ok_or_else(|| ConfigError::new(field, format!("unknown model {name:?} (not in models:)")))
}

/// `outlier_detection:`, over Envoy-like defaults.
pub(super) fn compile_outlier(
    raw: &super::raw::RawOutlier,
) -> Result<crate::route::health::Settings, ConfigError> {
    let mut s = crate::route::health::Settings::default();
    if let Some(n) = raw.consecutive_failures {
        s.consecutive_failures = n;
    }
    if let Some(r) = raw.failure_rate {
        if !(0.0..=1.0).contains(&r) {
            return Err(ConfigError::new(
                "outlier_detection.failure_rate",
                "must be between 0 (off) and 1",
            ));
        }
        s.failure_rate = r;
    }
    if let Some(d) = &raw.base_ejection {
        s.base_ejection = super::positive_duration("outlier_detection.base_ejection", d)?;
    }
    if let Some(d) = &raw.max_ejection {
        s.max_ejection = super::positive_duration("outlier_detection.max_ejection", d)?;
    }
    let day = std::time::Duration::from_secs(86_400);
    if s.base_ejection > day || s.max_ejection > day {
        return Err(ConfigError::new(
            "outlier_detection",
            "base_ejection and max_ejection are at most 24h",
        ));
    }
    if s.max_ejection < s.base_ejection {
        return Err(ConfigError::new(
            "outlier_detection.max_ejection",
            "must be at least base_ejection",
        ));
    }
    if let Some(p) = raw.max_ejected_percent {
        if p > 100 {
            return Err(ConfigError::new(
                "outlier_detection.max_ejected_percent",
                "must be between 0 and 100",
            ));
        }
        s.max_ejected_percent = p;
    }
    Ok(s)
}

/// `[{model, up_to}, …, model]`: bounds strictly rising within (0, 1]; the last tier has
/// none (held as infinity).
fn compile_tiers(
    raw: &[RawTier],
    field: &str,
    model_index: &AHashMap<String, usize>,
) -> Result<Vec<(usize, f64)>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new(field, "at least one tier is required"));
    }
    let mut tiers = Vec::with_capacity(raw.len());
    let mut below = 0.0;
    for (i, t) in raw.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let last = i + 1 == raw.len();
        let (name, up_to) = match t {
            RawTier::Name(n) => (n.as_str(), None),
            RawTier::Bounded(b) => (b.model.as_str(), b.up_to),
        };
        let model = resolve_model(&format!("{at}.model"), name, model_index)?;
        let bound = match (up_to, last) {
            (None, true) => f64::INFINITY,
            (None, false) => {
                return Err(ConfigError::new(
                    format!("{at}.up_to"),
                    "every tier but the last needs up_to (a score in (0, 1])",
                ))
            }
            (Some(_), true) => {
                return Err(ConfigError::new(
                    format!("{at}.up_to"),
                    "the last tier takes every score above the others: leave up_to out",
                ))
            }
            (Some(u), false) if u > below && u <= 1.0 => u,
            (Some(_), false) => {
                return Err(ConfigError::new(
                    format!("{at}.up_to"),
                    format!("must be above {below} and at most 1 (tiers go from easy to hard)"),
                ))
            }
        };
        below = bound;
        tiers.push((model, bound));
    }
    Ok(tiers)
}

pub(super) fn compile_route(
    rr: &RawRoute,
    field: &str,
    models: &[Model],
    model_index: &AHashMap<String, usize>,
    provider_index: &AHashMap<String, usize>,
) -> Result<Route, ConfigError> {
    let mut matcher = Matcher {
        model: rr.matcher.model.as_deref().map(Pattern::new),
        host: rr
            .matcher
            .host
            .as_deref()
            .map(|h| Pattern::new(&h.to_ascii_lowercase())),
        path: rr.matcher.path.as_deref().map(Pattern::new),
        headers: Vec::new(),
    };
    for (k, v) in &rr.matcher.headers {
        let name = header_name(&format!("{field}.match.headers.{k}"), k)?;
        matcher.headers.push((name, Pattern::new(v)));
    }

    let targets_field = format!("{field}.targets");
    let resolve_targets = || -> Result<Vec<(usize, u32)>, ConfigError> {
        if rr.targets.is_empty() {
            return Err(ConfigError::new(
                &targets_field,
                "at least one target is required",
            ));
        }
        let mut resolved = Vec::with_capacity(rr.targets.len());
        for (i, t) in rr.targets.iter().enumerate() {
            let (name, weight) = match t {
                RawTarget::Name(n) => (n.as_str(), 1),
                RawTarget::Weighted(w) => (w.model.as_str(), w.weight),
            };
            let idx = resolve_model(&format!("{targets_field}[{i}].model"), name, model_index)?;
            resolved.push((idx, weight));
        }
        Ok(resolved)
    };
    let names = |v: Vec<(usize, u32)>| v.into_iter().map(|(m, _)| m).collect::<Vec<_>>();
    let strategy = match rr.strategy.as_str() {
        "weighted" => {
            let targets = resolve_targets()?;
            let total: u32 = targets.iter().map(|(_, w)| *w).sum();
            if total == 0 {
                return Err(ConfigError::new(
                    &targets_field,
                    "weights must not all be zero",
                ));
            }
            Strategy::Weighted { targets, total }
        }
        "priority" => Strategy::Priority {
            targets: names(resolve_targets()?),
        },
        "cheapest" => Strategy::Cheapest {
            targets: names(resolve_targets()?),
        },
        "fastest" => Strategy::Fastest {
            targets: names(resolve_targets()?),
        },
        "least-busy" => Strategy::LeastBusy {
            targets: names(resolve_targets()?),
        },
        "complexity" => {
            if !rr.targets.is_empty() {
                return Err(ConfigError::new(
                    &targets_field,
                    "the complexity strategy takes tiers, not targets",
                ));
            }
            Strategy::Complexity {
                tiers: compile_tiers(&rr.tiers, &format!("{field}.tiers"), model_index)?,
            }
        }
        "passthrough" => {
            if !rr.targets.is_empty() {
                return Err(ConfigError::new(
                    &targets_field,
                    "passthrough routes keep the client's model; use `provider:` instead of targets",
                ));
            }
            let provider = match &rr.provider {
                None => None,
                Some(p) => Some(*provider_index.get(p).ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.provider"),
                        format!("unknown provider {p:?}"),
                    )
                })?),
            };
            Strategy::Passthrough { provider }
        }
        s => {
            return Err(ConfigError::new(
                format!("{field}.strategy"),
                format!("unknown strategy {s:?} ({STRATEGIES})"),
            ))
        }
    };
    if !rr.tiers.is_empty() && !matches!(strategy, Strategy::Complexity { .. }) {
        return Err(ConfigError::new(
            format!("{field}.tiers"),
            "tiers belong to the complexity strategy",
        ));
    }
    if rr.provider.is_some() && !matches!(strategy, Strategy::Passthrough { .. }) {
        return Err(ConfigError::new(
            format!("{field}.provider"),
            "only passthrough routes take a provider",
        ));
    }

    let mut fallbacks = Vec::with_capacity(rr.fallbacks.len());
    for (i, f) in rr.fallbacks.iter().enumerate() {
        fallbacks.push(resolve_model(
            &format!("{field}.fallbacks[{i}]"),
            f,
            model_index,
        )?);
    }

    let plan_len = match &strategy {
        Strategy::Passthrough { .. } => 1,
        s => s.targets().len(),
    } + fallbacks.len();
    let min_quality = match rr.min_quality {
        None => None,
        Some(q) if !(0.0..=100.0).contains(&q) => {
            return Err(ConfigError::new(
                format!("{field}.min_quality"),
                "must be between 0 and 100",
            ))
        }
        Some(q) => {
            let meets = |m: &usize| models[*m].quality.is_some_and(|mq| mq >= q);
            if !strategy.targets().iter().any(meets) {
                return Err(ConfigError::new(
                    format!("{field}.min_quality"),
                    format!("no target is rated {q} or more (quality in models)"),
                ));
            }
            Some(q)
        }
    };
    let mut retry = Retry {
        attempts: plan_len as u32,
        on_connect: true,
        on_timeout: true,
        on_429: true,
        on_5xx: true,
    };
    if let Some(r) = &rr.retry {
        if let Some(a) = r.attempts {
            if a == 0 {
                return Err(ConfigError::new(
                    format!("{field}.retry.attempts"),
                    "must be at least 1 (the first try counts)",
                ));
            }
            retry.attempts = a;
        }
        if let Some(on) = &r.on {
            retry.on_connect = false;
            retry.on_timeout = false;
            retry.on_429 = false;
            retry.on_5xx = false;
            for (i, cond) in on.iter().enumerate() {
                match cond.as_str() {
                    "connect" => retry.on_connect = true,
                    "timeout" => retry.on_timeout = true,
                    "429" => retry.on_429 = true,
                    "5xx" => retry.on_5xx = true,
                    other => {
                        return Err(ConfigError::new(
                            format!("{field}.retry.on[{i}]"),
                            format!("{other:?} is not one of connect, timeout, \"429\", \"5xx\""),
                        ))
                    }
                }
            }
        }
    }

    let mut timeouts = Timeouts::default();
    if let Some(t) = &rr.timeouts {
        if let Some(s) = &t.connect {
            timeouts.connect = parse_duration(&format!("{field}.timeouts.connect"), s)?;
        }
        if let Some(s) = &t.first_byte {
            timeouts.first_byte = parse_duration(&format!("{field}.timeouts.first_byte"), s)?;
        }
        if let Some(s) = &t.idle {
            timeouts.idle = parse_duration(&format!("{field}.timeouts.idle"), s)?;
        }
    }

    let mut targets = Vec::new();
    for m in strategy.targets() {
        if !targets.contains(&m) {
            targets.push(m);
        }
    }
    Ok(Route {
        name: Arc::from(rr.name.as_str()),
        matcher,
        targets,
        strategy,
        fallbacks,
        min_quality,
        retry,
        timeouts,
        shadow: None,
        budget: std::sync::OnceLock::new(),
        decisions: std::sync::OnceLock::new(),
    })
}
