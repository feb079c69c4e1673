//! Loading the YAML policy: parse (`raw`), expand secrets (`expand`), validate and compile
//! into a [`Policy`]. Every error names the field it is about.

pub mod expand;
pub mod raw;

use crate::policy::{
    Format, HostRule, ListenAddrs, Matcher, Model, Pattern, Policy, Provider, Retry, Route,
    Strategy, Timeouts,
};
use crate::price::{Catalog, Price};
use ahash::AHashMap;
use expand::{expand_secret, expand_vars, Env};
use http::header::{HeaderName, HeaderValue};
use pingora::protocols::tls::CaType;
use pingora::tls::x509::X509;
use raw::{RawConfig, RawRoute, RawTarget};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Strategies named in the design that later work will add; rejected by name until then.
const LATER_STRATEGIES: &[&str] = &["complexity", "cheapest", "fastest", "least-busy"];
/// Wire formats named in the design that are not translated yet.
const LATER_FORMATS: &[&str] = &[];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field (`routes[1].targets[0].model`); empty for the file.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and compiles the policy file.
pub fn load(path: &Path, generation: u64) -> Result<Policy, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
    from_str_in(&text, &expand::ProcessEnv, generation, path.parent())
}

pub fn from_str(text: &str, env: &dyn Env, generation: u64) -> Result<Policy, ConfigError> {
    from_str_in(text, env, generation, None)
}

/// `dir` is where relative paths in the file (the price catalog) are resolved.
pub fn from_str_in(
    text: &str,
    env: &dyn Env,
    generation: u64,
    dir: Option<&Path>,
) -> Result<Policy, ConfigError> {
    let raw: RawConfig = serde_yaml::from_str(text).map_err(yaml_error)?;
    let prices = match &raw.prices {
        Some(p) => {
            let path = match dir {
                Some(d) if Path::new(p).is_relative() => d.join(p),
                _ => Path::new(p).to_path_buf(),
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new("prices", format!("cannot read {}: {e}", path.display()))
            })?;
            Catalog::parse(&text).map_err(|m| ConfigError::new("prices", m))?
        }
        None => Catalog::default(),
    };
    compile(raw, env, generation, prices)
}

/// serde_yaml reports `path.to.field: message at line L column C`; split the path off.
fn yaml_error(e: serde_yaml::Error) -> ConfigError {
    let msg = e.to_string();
    match msg.split_once(": ") {
        Some((field, rest))
            if !field.contains(' ') && field.chars().any(|c| c.is_ascii_alphabetic()) =>
        {
            ConfigError::new(field, rest)
        }
        _ => ConfigError::new("", msg),
    }
}

fn parse_duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| ConfigError::new(field, format!("invalid duration {s:?}: {e}")))
}

fn header_name(field: &str, s: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| ConfigError::new(field, format!("invalid header name {s:?}")))
}

fn header_value(field: &str, s: &str) -> Result<HeaderValue, ConfigError> {
    HeaderValue::from_str(s)
        .map_err(|_| ConfigError::new(field, "value is not a valid HTTP header value"))
}

fn compile(
    raw: RawConfig,
    env: &dyn Env,
    generation: u64,
    prices: Catalog,
) -> Result<Policy, ConfigError> {
    let redacted = redact(&raw);

    for (field, addr) in [
        ("listen.proxy", &raw.listen.proxy),
        ("listen.admin", &raw.listen.admin),
    ] {
        addr.parse::<SocketAddr>()
            .map_err(|_| ConfigError::new(field, format!("{addr:?} is not an ip:port address")))?;
    }
    if raw.server.max_body_bytes == 0 {
        return Err(ConfigError::new(
            "server.max_body_bytes",
            "must be greater than 0",
        ));
    }
    let grace_period = parse_duration("server.grace_period", &raw.server.grace_period)?;
    if raw.server.threads == 0 {
        return Err(ConfigError::new("server.threads", "must be at least 1"));
    }
    let ca_file = match &raw.server.ca_file {
        Some(path) => {
            load_pem(path).map_err(|m| ConfigError::new("server.ca_file", m))?;
            Some(path.clone())
        }
        None => system_ca_bundle(env),
    };

    let team =
        expand_vars(&raw.identity.team, env).map_err(|m| ConfigError::new("identity.team", m))?;
    let service = expand_vars(&raw.identity.service, env)
        .map_err(|m| ConfigError::new("identity.service", m))?;

    // Providers
    let mut providers = Vec::with_capacity(raw.providers.len());
    let mut provider_index = AHashMap::new();
    let mut hosts: AHashMap<String, HostRule> = AHashMap::new();
    let mut explicit: AHashMap<String, usize> = AHashMap::new();
    let mut implicit: AHashMap<String, usize> = AHashMap::new();
    for (name, rp) in &raw.providers {
        let field = format!("providers.{name}");
        let idx = providers.len();
        let provider = compile_provider(name, rp, env, &field)?;
        for (i, h) in rp.intercept.iter().enumerate() {
            let f = format!("{field}.intercept[{i}]");
            let key = host_key(&f, h)?;
            if let Some(&other) = explicit.get(&key) {
                let other: &Provider = &providers[other];
                return Err(ConfigError::new(
                    f,
                    format!(
                        "host {key} is already intercepted by provider {}",
                        other.name
                    ),
                ));
            }
            explicit.insert(key, idx);
        }
        // Several providers may share a base_url host (two accounts on one API): the first
        // declared answers for it in forward-proxy mode, unless an `intercept` names it.
        implicit.entry(provider_host_key(&provider)).or_insert(idx);
        provider_index.insert(name.clone(), idx);
        providers.push(provider);
    }
    for (key, idx) in implicit.into_iter().chain(explicit) {
        hosts.insert(key, HostRule::Provider(idx));
    }
    for (i, h) in raw.passthrough.iter().enumerate() {
        let field = format!("passthrough[{i}]");
        let key = host_key(&field, h)?;
        let (host, port) = split_host_port(&key)
            .map(|(h, p)| (h.to_string(), p))
            .ok_or_else(|| ConfigError::new(&field, format!("{h:?} is not a host or host:port")))?;
        if let Some(HostRule::Provider(p)) = hosts.get(&key) {
            return Err(ConfigError::new(
                field,
                format!("host {key} is owned by provider {}", providers[*p].name),
            ));
        }
        hosts.insert(
            key,
            HostRule::Passthrough {
                host,
                port: port.unwrap_or(80),
            },
        );
    }

    // Model catalog
    let mut models = Vec::with_capacity(raw.models.len());
    let mut model_index = AHashMap::new();
    for (alias, rm) in &raw.models {
        let field = format!("models.{alias}");
        let provider = *provider_index.get(&rm.provider).ok_or_else(|| {
            ConfigError::new(
                format!("{field}.provider"),
                format!("unknown provider {:?}", rm.provider),
            )
        })?;
        if let Some(price) = &rm.price {
            let checks = [
                ("input", Some(price.input)),
                ("output", Some(price.output)),
                ("cached_input", price.cached_input),
            ];
            for (k, v) in checks {
                if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err(ConfigError::new(
                        format!("{field}.price.{k}"),
                        "must be a non-negative number",
                    ));
                }
            }
        }
        let upstream = rm.name.clone().unwrap_or_else(|| alias.clone());
        if upstream.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        model_index.insert(alias.clone(), models.len());
        models.push(Model {
            alias: Arc::from(alias.as_str()),
            provider,
            price: match &rm.price {
                Some(p) => Price::from_usd(p.input, p.output, p.cached_input),
                None => prices.lookup(&upstream),
            },
            upstream: Arc::from(upstream),
            max_tokens: rm.max_tokens,
        });
    }

    // Routes
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut seen_names = AHashMap::new();
    for (i, rr) in raw.routes.iter().enumerate() {
        let field = format!("routes[{i}]");
        if rr.name.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        if seen_names.insert(rr.name.clone(), i).is_some() {
            return Err(ConfigError::new(
                format!("{field}.name"),
                format!("duplicate route name {:?}", rr.name),
            ));
        }
        routes.push(compile_route(rr, &field, &model_index, &provider_index)?);
    }

    // Teams and telemetry are validated now and enforced by later work.
    for (name, team) in &raw.teams {
        let field = format!("teams.{name}");
        for (i, m) in team.models.iter().enumerate() {
            if !model_index.contains_key(m) {
                return Err(ConfigError::new(
                    format!("{field}.models[{i}]"),
                    format!("unknown model {m:?}"),
                ));
            }
        }
        for (i, k) in team.keys.iter().enumerate() {
            let hex = k.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::new(
                    format!("{field}.keys[{i}]"),
                    "must be \"sha256:\" followed by 64 hex digits (keys are stored hashed)",
                ));
            }
        }
        if let Some(b) = &team.budget {
            if !b.usd.is_finite() || b.usd < 0.0 {
                return Err(ConfigError::new(
                    format!("{field}.budget.usd"),
                    "must be a non-negative number",
                ));
            }
            if !matches!(b.per.as_str(), "day" | "week" | "month") {
                return Err(ConfigError::new(
                    format!("{field}.budget.per"),
                    format!("{:?} is not one of day, week, month", b.per),
                ));
            }
        }
    }
    if let Some(t) = &raw.telemetry {
        if let Some(c) = &t.collector {
            let c = expand_vars(c, env).map_err(|m| ConfigError::new("telemetry.collector", m))?;
            parse_base_url(&c).map_err(|m| ConfigError::new("telemetry.collector", m))?;
        }
    }

    Ok(Policy {
        generation,
        listen: ListenAddrs {
            proxy: raw.listen.proxy.clone(),
            admin: raw.listen.admin.clone(),
        },
        max_body_bytes: raw.server.max_body_bytes,
        grace_period,
        threads: raw.server.threads,
        ca_file,
        team: Arc::from(team),
        service,
        providers,
        models,
        model_index,
        routes,
        hosts,
        redacted,
        prices,
    })
}

fn compile_provider(
    name: &str,
    rp: &raw::RawProvider,
    env: &dyn Env,
    field: &str,
) -> Result<Provider, ConfigError> {
    let format = match rp.format.as_str() {
        "openai" => Format::OpenAi,
        "azure-openai" => Format::AzureOpenAi,
        "anthropic" => Format::Anthropic,
        "gemini" => Format::Gemini,
        f if LATER_FORMATS.contains(&f) => {
            return Err(ConfigError::new(
                format!("{field}.format"),
                format!("format {f:?} is not supported yet"),
            ))
        }
        f => {
            return Err(ConfigError::new(
                format!("{field}.format"),
                format!("unknown format {f:?} (openai, azure-openai, anthropic, gemini)"),
            ))
        }
    };
    let base_url = expand_vars(&rp.base_url, env)
        .map_err(|m| ConfigError::new(format!("{field}.base_url"), m))?;
    let (tls, host, port, base_path) =
        parse_base_url(&base_url).map_err(|m| ConfigError::new(format!("{field}.base_url"), m))?;
    let literal_addr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port));
    let default_port = if tls { 443 } else { 80 };
    let authority = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let auth = match &rp.api_key {
        None => None,
        Some(k) => {
            let key = expand_secret(k, env)
                .map_err(|m| ConfigError::new(format!("{field}.api_key"), m))?;
            if key.is_empty() {
                None
            } else {
                let f = format!("{field}.api_key");
                Some(match format {
                    Format::OpenAi => (
                        http::header::AUTHORIZATION,
                        header_value(&f, &format!("Bearer {key}"))?,
                    ),
                    Format::AzureOpenAi => {
                        (HeaderName::from_static("api-key"), header_value(&f, &key)?)
                    }
                    Format::Anthropic => (
                        HeaderName::from_static("x-api-key"),
                        header_value(&f, &key)?,
                    ),
                    Format::Gemini => (
                        HeaderName::from_static("x-goog-api-key"),
                        header_value(&f, &key)?,
                    ),
                })
            }
        }
    };
    let mut extra_headers = Vec::new();
    for (k, v) in &rp.headers {
        let f = format!("{field}.headers.{k}");
        let v = expand_secret(v, env).map_err(|m| ConfigError::new(&f, m))?;
        extra_headers.push((header_name(&f, k)?, header_value(&f, &v)?));
    }
    let ca = match &rp.ca_file {
        Some(path) => {
            Some(Arc::new(load_pem(path).map_err(|m| {
                ConfigError::new(format!("{field}.ca_file"), m)
            })?))
        }
        None => None,
    };
    if rp.api_version.is_some() && format != Format::AzureOpenAi {
        return Err(ConfigError::new(
            format!("{field}.api_version"),
            "only azure-openai providers take an api_version",
        ));
    }
    Ok(Provider {
        ca,
        api_version: rp.api_version.clone(),
        name: Arc::from(name),
        format,
        tls,
        authority: header_value(&format!("{field}.base_url"), &authority)?,
        host,
        port,
        base_path,
        literal_addr,
        auth,
        extra_headers,
    })
}

/// Certificates of a PEM file; an unreadable or empty file is an error here rather than a
/// panic inside the TLS connector later.
fn load_pem(path: &str) -> Result<CaType, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| format!("{path} is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no certificate"));
    }
    Ok(certs.into_boxed_slice())
}

/// The system's CA bundle. The vendored OpenSSL looks in its own build prefix, which holds
/// no certificates on a normal machine, so the bundle is located explicitly.
fn system_ca_bundle(env: &dyn Env) -> Option<String> {
    let candidates = [
        env.var("SSL_CERT_FILE"),
        Some("/etc/ssl/certs/ca-certificates.crt".into()), // Debian, Ubuntu, Alpine
        Some("/etc/pki/tls/certs/ca-bundle.crt".into()),   // RHEL, Fedora
        Some("/etc/ssl/cert.pem".into()),                  // macOS, BSD
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| std::path::Path::new(p).is_file())
}

/// `https://host[:port][/prefix]` → (tls, host, port, prefix without trailing slash).
fn parse_base_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if uri.query().is_some() {
        return Err(format!("{url:?} must not carry a query string"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok((tls, host, port, base_path))
}

/// The key a provider's own base_url host is found under in forward-proxy mode.
/// Clients reach it with plain HTTP (`HTTP_PROXY` + `http://` URL), so port 80 is implied.
fn provider_host_key(p: &Provider) -> String {
    let default = if p.tls { 443 } else { 80 };
    if p.port == default || p.port == 80 {
        p.host.clone()
    } else {
        format!("{}:{}", p.host, p.port)
    }
}

fn host_key(field: &str, h: &str) -> Result<String, ConfigError> {
    let key = h.trim().to_ascii_lowercase();
    match split_host_port(&key) {
        Some((_, Some(80))) => Ok(key.trim_end_matches(":80").to_string()),
        Some(_) => Ok(key),
        None => Err(ConfigError::new(
            field,
            format!("{h:?} is not a host or host:port"),
        )),
    }
}

fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if s.is_empty() || s.contains('/') || s.contains(char::is_whitespace) {
        return None;
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => p.parse().ok().map(|p| (h, Some(p))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

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

fn compile_route(
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

const REDACTED: &str = "<redacted>";

/// The raw policy as JSON with every secret replaced, for the admin `/config` page.
fn redact(raw: &RawConfig) -> serde_json::Value {
    let mut raw = raw.clone();
    for p in raw.providers.values_mut() {
        if p.api_key.is_some() {
            p.api_key = Some(REDACTED.into());
        }
        for v in p.headers.values_mut() {
            *v = REDACTED.into();
        }
    }
    for t in raw.teams.values_mut() {
        for k in t.keys.iter_mut() {
            *k = REDACTED.into();
        }
    }
    serde_json::to_value(&raw).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests;
