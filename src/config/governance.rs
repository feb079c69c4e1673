//! `governance:`, `org:` and `teams:` compiled into `governance::Rules`.

use super::expand::{expand_secret, Env};
use super::raw::{RawBudget, RawConfig, RawLimits};
use super::{positive_duration, ConfigError};
use crate::governance::{Budget, Key, Level, LevelKind, Per, Rules};
use crate::policy::{Pattern, Route};
use ahash::AHashMap;
use std::sync::Arc;
use std::time::Duration;

/// What `governance:` says beyond the rules themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub redis: Option<String>,
    /// Admit (true) or refuse while Redis cannot be reached.
    pub fail_open: bool,
    pub reservation_ttl: Duration,
    pub refresh: Duration,
}

pub(super) fn compile(
    raw: &RawConfig,
    env: &dyn Env,
    model_index: &AHashMap<String, usize>,
    routes: &[Route],
) -> Result<(Rules, Settings), ConfigError> {
    let g = &raw.governance;
    let redis = match &g.redis {
        Some(url) => {
            let url =
                expand_secret(url, env).map_err(|m| ConfigError::new("governance.redis", m))?;
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::new(
                    "governance.redis",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            Some(url)
        }
        None => None,
    };
    let fail_open = match g.on_redis_down.as_str() {
        "open" => true,
        "closed" => false,
        other => {
            return Err(ConfigError::new(
                "governance.on_redis_down",
                format!("{other:?} is not one of open, closed"),
            ))
        }
    };
    let settings = Settings {
        redis,
        fail_open,
        reservation_ttl: positive_duration("governance.reservation_ttl", &g.reservation_ttl)?,
        refresh: positive_duration("governance.refresh", &g.refresh)?,
    };

    let known = |name: &str| {
        model_index.contains_key(name)
            || routes
                .iter()
                .any(|r| r.matcher.model.as_ref().is_some_and(|p| p.matches(name)))
    };
    let route_named = |name: &str| routes.iter().any(|r| &*r.name == name);
    let level = |kind: LevelKind,
                 name: &str,
                 field: &str,
                 models: &[String],
                 limits: &Option<RawLimits>,
                 budget: &Option<RawBudget>|
     -> Result<Level, ConfigError> {
        let mut l = Level::new(kind, Arc::from(name));
        for (i, m) in models.iter().enumerate() {
            let pattern = Pattern::new(m);
            // A plain name must be one clients can ask for; a glob may match future ones.
            if matches!(pattern, Pattern::Exact(_)) && !known(m) {
                return Err(ConfigError::new(
                    format!("{field}.models[{i}]"),
                    format!("unknown model {m:?} (not in models:, and no route matches it)"),
                ));
            }
            l.models.push(pattern);
        }
        if let Some(lim) = limits {
            l.rpm = match lim.rpm {
                Some(0) => {
                    return Err(ConfigError::new(
                        format!("{field}.limits.rpm"),
                        "must be at least 1",
                    ))
                }
                Some(n) if n > 1_000_000 => {
                    return Err(ConfigError::new(
                        format!("{field}.limits.rpm"),
                        "must be at most 1000000",
                    ))
                }
                Some(n) => Some(n as u32),
                None => None,
            };
            if lim.tpm == Some(0) {
                return Err(ConfigError::new(
                    format!("{field}.limits.tpm"),
                    "must be at least 1",
                ));
            }
            l.tpm = lim.tpm;
        }
        if let Some(b) = budget {
            l.budget = Some(compile_budget(
                b,
                &format!("{field}.budget"),
                &known,
                &route_named,
            )?);
        }
        Ok(l)
    };

    let mut rules = Rules {
        require_key: g.require_key,
        org: level(
            LevelKind::Org,
            "org",
            "org",
            &raw.org.models,
            &raw.org.limits,
            &raw.org.budget,
        )?,
        ..Rules::default()
    };
    for (team, t) in &raw.teams {
        let field = format!("teams.{team}");
        let team_name: Arc<str> = Arc::from(team.as_str());
        rules.teams.insert(
            team_name.clone(),
            level(
                LevelKind::Team,
                team,
                &field,
                &t.models,
                &t.limits,
                &t.budget,
            )?,
        );
        for (i, k) in t.keys.iter().enumerate() {
            let field = format!("{field}.keys[{i}]");
            if k.id.is_empty() || k.id.len() > 64 || k.id.chars().any(|c| c.is_control()) {
                return Err(ConfigError::new(
                    format!("{field}.id"),
                    "must be 1 to 64 printable characters",
                ));
            }
            if rules.keys.iter().any(|other| *other.id == *k.id) {
                return Err(ConfigError::new(
                    format!("{field}.id"),
                    format!(
                        "duplicate key id {:?} (ids name keys in events and metrics)",
                        k.id
                    ),
                ));
            }
            let hash = expand_secret(&k.hash, env)
                .map_err(|m| ConfigError::new(format!("{field}.hash"), m))?;
            let digest = parse_digest(hash.trim())
                .map_err(|m| ConfigError::new(format!("{field}.hash"), m))?;
            if !rules.key_index.insert(digest, rules.keys.len()) {
                return Err(ConfigError::new(
                    format!("{field}.hash"),
                    "the same key hash is listed twice",
                ));
            }
            rules.keys.push(Key {
                id: Arc::from(k.id.as_str()),
                team: team_name.clone(),
                level: level(
                    LevelKind::Key,
                    &k.id,
                    &field,
                    &k.models,
                    &k.limits,
                    &k.budget,
                )?,
            });
        }
    }
    rules.active = rules.require_key
        || !rules.key_index.is_empty()
        || rules.org.is_active()
        || rules.teams.values().any(Level::is_active);
    Ok((rules, settings))
}

fn compile_budget(
    b: &RawBudget,
    field: &str,
    known: &dyn Fn(&str) -> bool,
    route_named: &dyn Fn(&str) -> bool,
) -> Result<Budget, ConfigError> {
    let limit = crate::price::atto_of_usd(b.usd).ok_or_else(|| {
        ConfigError::new(
            format!("{field}.usd"),
            "must be a non-negative number of USD",
        )
    })?;
    let per = Per::parse(&b.per).ok_or_else(|| {
        ConfigError::new(
            format!("{field}.per"),
            format!("{:?} is not one of day, week, month", b.per),
        )
    })?;
    let downgrade_to = match (b.on_exceed.as_deref().unwrap_or("reject"), &b.downgrade_to) {
        ("reject", None) => None,
        ("reject", Some(_)) => {
            return Err(ConfigError::new(
                format!("{field}.downgrade_to"),
                "only with on_exceed: downgrade",
            ))
        }
        ("downgrade", Some(to)) if known(to) || route_named(to) => Some(Arc::from(to.as_str())),
        ("downgrade", Some(to)) => {
            return Err(ConfigError::new(
                format!("{field}.downgrade_to"),
                format!("{to:?} is neither a route nor a model clients can ask for"),
            ))
        }
        ("downgrade", None) => {
            return Err(ConfigError::new(
                format!("{field}.downgrade_to"),
                "on_exceed: downgrade needs downgrade_to (a route or model)",
            ))
        }
        (other, _) => {
            return Err(ConfigError::new(
                format!("{field}.on_exceed"),
                format!("{other:?} is not one of reject, downgrade"),
            ))
        }
    };
    let mut alert_at = b.alert_at.clone();
    if alert_at
        .iter()
        .any(|m| !m.is_finite() || *m <= 0.0 || *m > 10.0)
    {
        return Err(ConfigError::new(
            format!("{field}.alert_at"),
            "marks are fractions of the budget, above 0 (e.g. 0.8, 1.0)",
        ));
    }
    alert_at.sort_by(f64::total_cmp);
    alert_at.dedup();
    Ok(Budget {
        limit,
        per,
        downgrade_to,
        alert_at,
    })
}

/// `sha256:` + 64 hex digits.
pub fn parse_digest(s: &str) -> Result<[u8; 32], String> {
    let hex = s.strip_prefix("sha256:").unwrap_or("");
    let mut out = [0u8; 32];
    if hex.len() != 64 || hex::decode_to_slice(hex, &mut out).is_err() {
        return Err(
            "must be \"sha256:\" followed by 64 hex digits (keys are stored hashed; `switchyard keys new` prints one)"
                .into(),
        );
    }
    Ok(out)
}
