//! Routes: match conditions, strategy and targets, fallbacks, retry and timeouts.

use super::raw::{RawRoute, RawTarget};
use super::{header_name, parse_duration, ConfigError, LATER_STRATEGIES};
use crate::policy::{Matcher, Pattern, Retry, Route, Strategy, Timeouts};
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

pub(super) fn compile_route(
    rr: &RawRoute,
    field: &str,
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
    let strategy = match rr.strategy.as_str() {
        "weighted" | "priority" => {
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
            if rr.strategy == "weighted" {
                let total: u32 = resolved.iter().map(|(_, w)| *w).sum();
                if total == 0 {
                    return Err(ConfigError::new(
                        &targets_field,
                        "weights must not all be zero",
                    ));
                }
                Strategy::Weighted {
                    targets: resolved,
                    total,
                }
            } else {
                Strategy::Priority {
                    targets: resolved.into_iter().map(|(m, _)| m).collect(),
                }
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
        s if LATER_STRATEGIES.contains(&s) => {
            return Err(ConfigError::new(
                format!("{field}.strategy"),
                format!("strategy {s:?} is not supported yet (weighted, priority, passthrough)"),
            ))
        }
        s => {
            return Err(ConfigError::new(
                format!("{field}.strategy"),
                format!("unknown strategy {s:?} (weighted, priority, passthrough)"),
            ))
        }
    };
    if !rr.tiers.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.tiers"),
            "tiers belong to the complexity strategy, which is not supported yet",
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
        Strategy::Weighted { targets, .. } => targets.len(),
        Strategy::Priority { targets } => targets.len(),
        Strategy::Passthrough { .. } => 1,
    } + fallbacks.len();
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

    Ok(Route {
        name: Arc::from(rr.name.as_str()),
        matcher,
        strategy,
        fallbacks,
        retry,
        timeouts,
    })
}
