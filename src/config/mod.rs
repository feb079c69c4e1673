//! Loading the YAML policy: parse (`raw`), expand secrets (`expand`), validate and compile
//! into a [`Policy`]. Every error names the field it is about.

pub mod expand;
pub mod governance;
mod provider;
pub mod raw;
mod route;

use crate::policy::{ClientLimits, HostRule, ListenAddrs, Model, PodIdentity, Policy, Provider};
use crate::price::{Catalog, Price};
use ahash::AHashMap;
use expand::{expand_secret, expand_vars, Env};
use http::header::{HeaderName, HeaderValue};
use provider::{
    compile_provider, host_key, load_pem, parse_base_url, provider_host_key, split_host_port,
    system_ca_bundle,
};
use raw::RawConfig;
use route::{compile_outlier, compile_route};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Wire formats named in the design that are not translated yet.
const LATER_FORMATS: &[&str] = &[];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field (`routes[1].targets[0].model`); empty for the file.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// Every config error passes here: a quoted value or a path segment that looks like a
    /// credential is hidden, whichever message echoed it (a key pasted into the wrong field
    /// is the usual way a secret reaches an error).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: hide_secret_words(&scrub_path(&field.into())),
            message: hide_secret_words(&scrub_with(&message.into(), |v| !looks_secret(v))),
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
    compile(raw, env, generation, prices, sha256_hex(text.as_bytes()))
}

/// serde_yaml reports `path.to.field: message at line L column C`; split the path off.
/// Its messages quote the offending value (`invalid type: string "sk-…"`), and a secret
/// whose line was mis-indented is exactly such a value: every value and every name that
/// does not look like a config key is scrubbed before the error is logged or printed.
pub(crate) fn yaml_error(e: serde_yaml::Error) -> ConfigError {
    let msg = e.to_string();
    match msg.split_once(": ") {
        Some((field, rest))
            if !field.contains(' ') && field.chars().any(|c| c.is_ascii_alphabetic()) =>
        {
            ConfigError::new(scrub_path(field), scrub(rest))
        }
        _ => ConfigError::new("", scrub(&msg)),
    }
}

/// Whether a value could be a credential: an API key's prefix, more than 64 characters, or
/// a run of 16+ letters and digits mixed (a random token: Azure's keys are 32 hex digits).
/// Model and route names (`claude-3-5-haiku-20241022`) do not look like this.
fn looks_secret(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    if v.len() > 64
        || ["sk-", "sk_", "key-", "aiza", "bearer "]
            .iter()
            .any(|p| lower.starts_with(p))
    {
        return true;
    }
    v.split(|c: char| !c.is_ascii_alphanumeric()).any(|run| {
        run.len() >= 16
            && run.bytes().any(|b| b.is_ascii_digit())
            && run.bytes().any(|b| b.is_ascii_alphabetic())
    })
}

/// The last net, whatever the message's shape (a name with quotes or backticks of its own
/// defeats any parse of it): every word made of key characters that looks like a secret.
fn hide_secret_words(text: &str) -> String {
    let word_char = |c: char| c.is_ascii_alphanumeric() || "-_.+/=~".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(word_char) {
        out.push_str(&rest[..start]);
        let word_len = rest[start..]
            .find(|c: char| !word_char(c))
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        out.push_str(if looks_secret(word) { "<hidden>" } else { word });
        rest = &rest[start + word_len..];
    }
    out.push_str(rest);
    out
}

/// A name safe to echo: shaped like a config key, not like a credential.
fn key_like(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*'))
        && !looks_secret(name)
}

fn scrub_path(path: &str) -> String {
    path.split('.')
        .map(|seg| {
            let name = seg.split('[').next().unwrap_or(seg);
            if name.is_empty() || key_like(name) {
                seg
            } else {
                "<hidden>"
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A serde message: every `"quoted value"` hidden (the value is what was wrong, and may be
/// a mis-placed secret), `` `names` `` kept when they look like config keys.
fn scrub(msg: &str) -> String {
    scrub_with(msg, |_| false)
}

/// Replaces the `"quoted values"` that `keep` refuses and the non-key-like `` `names` ``.
fn scrub_with(msg: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // To the closing quote, honouring backslash escapes.
                let mut value = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            value.push(c);
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
                if keep(&value) {
                    out.push('"');
                    out.push_str(&value);
                    out.push('"');
                } else {
                    out.push_str("<value hidden>");
                }
            }
            '`' => {
                let name: String = chars.by_ref().take_while(|&c| c != '`').collect();
                out.push('`');
                out.push_str(if key_like(&name) { &name } else { "<hidden>" });
                out.push('`');
            }
            c => out.push(c),
        }
    }
    out
}

fn parse_duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| ConfigError::new(field, format!("invalid duration {s:?}: {e}")))
}

pub(crate) fn positive_duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(field, s)?;
    if d.is_zero() {
        return Err(ConfigError::new(field, "must be greater than 0"));
    }
    Ok(d)
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
    sha256: String,
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
    let client = ClientLimits {
        header_timeout: positive_duration("server.header_timeout", &raw.server.header_timeout)?,
        body_timeout: positive_duration("server.body_timeout", &raw.server.body_timeout)?,
        idle_timeout: positive_duration("server.idle_timeout", &raw.server.idle_timeout)?,
        max_header_bytes: raw.server.max_header_bytes,
    };
    if !(1024..=1 << 20).contains(&client.max_header_bytes) {
        return Err(ConfigError::new(
            "server.max_header_bytes",
            "must be between 1024 and 1048576",
        ));
    }
    // Permits are taken a body (or a chunk) at a time, as u32.
    if raw.server.max_body_bytes > u64::from(u32::MAX) {
        return Err(ConfigError::new(
            "server.max_body_bytes",
            "must be below 4 GiB",
        ));
    }
    if raw.server.max_body_memory_bytes < raw.server.max_body_bytes
        || raw.server.max_body_memory_bytes > 1 << 40
    {
        return Err(ConfigError::new(
            "server.max_body_memory_bytes",
            "must be at least server.max_body_bytes (one largest body) and at most 1 TiB",
        ));
    }
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
                ("cache_write", price.cache_write),
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
                Some(p) => Price::from_usd(p.input, p.output, p.cached_input, p.cache_write),
                None => prices.lookup(&upstream),
            },
            upstream: Arc::from(upstream),
            max_tokens: rm.max_tokens,
            quality: match rm.quality {
                Some(q) if !(0.0..=100.0).contains(&q) => {
                    return Err(ConfigError::new(
                        format!("models.{alias}.quality"),
                        "must be between 0 and 100",
                    ))
                }
                q => q,
            },
            health: std::sync::OnceLock::new(),
            decision: std::sync::OnceLock::new(),
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
        routes.push(compile_route(
            rr,
            &field,
            &models,
            &model_index,
            &provider_index,
        )?);
    }
    // Shadows name other routes, so they are resolved once every route exists.
    for (i, rr) in raw.routes.iter().enumerate() {
        let Some(name) = &rr.shadow else { continue };
        let j = routes
            .iter()
            .position(|r| &*r.name == name.as_str())
            .filter(|j| *j != i)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("routes[{i}].shadow"),
                    format!("{name:?} is not another route's name"),
                )
            })?;
        routes[i].shadow = Some(j);
    }

    let (governance, governance_settings) = governance::compile(&raw, env, &model_index, &routes)?;
    let telemetry = match &raw.telemetry {
        Some(t) => compile_telemetry(t, env)?,
        None => None,
    };
    let pod = {
        let field = |name: &str, v: &str| {
            expand_vars(v, env).map_err(|m| ConfigError::new(format!("identity.{name}"), m))
        };
        let pod = field("pod", &raw.identity.pod)?;
        PodIdentity {
            namespace: Arc::from(field("namespace", &raw.identity.namespace)?),
            pod: Arc::from(if pod.is_empty() { host_name() } else { pod }),
            service: Arc::from(service.as_str()),
            node: Arc::from(field("node", &raw.identity.node)?),
        }
    };

    Ok(Policy {
        generation,
        listen: ListenAddrs {
            proxy: raw.listen.proxy.clone(),
            admin: raw.listen.admin.clone(),
        },
        max_body_bytes: raw.server.max_body_bytes,
        client,
        max_body_memory_bytes: raw.server.max_body_memory_bytes,
        grace_period,
        threads: raw.server.threads,
        ca_file,
        team: Arc::from(team),
        service,
        pod,
        telemetry,
        governance,
        governance_settings,
        outlier: compile_outlier(&raw.outlier_detection)?,
        version: crate::events::PolicyVersion {
            generation,
            sha256: Arc::from(sha256),
        },
        providers,
        models,
        model_index,
        routes,
        hosts,
        redacted,
        prices,
    })
}

fn compile_telemetry(
    t: &raw::RawTelemetry,
    env: &dyn Env,
) -> Result<Option<crate::events::Settings>, ConfigError> {
    let Some(c) = &t.collector else {
        return Ok(None);
    };
    let collector = expand_vars(c, env).map_err(|m| ConfigError::new("telemetry.collector", m))?;
    parse_base_url(&collector).map_err(|m| ConfigError::new("telemetry.collector", m))?;
    let token = match &t.token {
        Some(v) => Some(expand_secret(v, env).map_err(|m| ConfigError::new("telemetry.token", m))?),
        None => None,
    };
    let spool_dir =
        expand_vars(&t.spool_dir, env).map_err(|m| ConfigError::new("telemetry.spool_dir", m))?;
    if spool_dir.is_empty() {
        return Err(ConfigError::new("telemetry.spool_dir", "must not be empty"));
    }
    if t.spool_max_bytes < 4096 {
        return Err(ConfigError::new(
            "telemetry.spool_max_bytes",
            "must be at least 4096",
        ));
    }
    if !(1..=10_000).contains(&t.batch.max_events) {
        return Err(ConfigError::new(
            "telemetry.batch.max_events",
            "must be between 1 and 10000",
        ));
    }
    let max_wait = parse_duration("telemetry.batch.max_wait", &t.batch.max_wait)?;
    if max_wait < Duration::from_millis(10) || max_wait > Duration::from_secs(60) {
        return Err(ConfigError::new(
            "telemetry.batch.max_wait",
            "must be between 10ms and 60s",
        ));
    }
    let Some(compression) = crate::events::Compression::parse(&t.compression) else {
        return Err(ConfigError::new(
            "telemetry.compression",
            format!("{:?} is not one of zstd, gzip, none", t.compression),
        ));
    };
    Ok(Some(crate::events::Settings {
        compression,
        collector: collector.trim_end_matches('/').to_string(),
        token,
        spool_dir: spool_dir.into(),
        spool_max_bytes: t.spool_max_bytes,
        max_events: t.batch.max_events,
        max_wait,
    }))
}

/// Hex SHA-256, for the policy's version in usage events.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
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
    if let Some(t) = raw.telemetry.as_mut() {
        if t.token.is_some() {
            t.token = Some(REDACTED.into());
        }
    }
    for t in raw.teams.values_mut() {
        for k in t.keys.iter_mut() {
            k.hash = REDACTED.into();
        }
    }
    if raw.governance.redis.is_some() {
        // The URL may carry a password.
        raw.governance.redis = Some(REDACTED.into());
    }
    serde_json::to_value(&raw).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests;
