//! The running policy: the YAML compiled into typed, validated lookup tables.
//! One `Policy` is immutable; a reload builds a new one and swaps the `ArcSwap`.

use ahash::AHashMap;
use http::header::{HeaderName, HeaderValue};
use pingora::protocols::tls::CaType;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use wildmatch::WildMatch;

pub struct Policy {
    /// Increases by one on every successful load; exported as a metric.
    pub generation: u64,
    pub listen: ListenAddrs,
    pub max_body_bytes: u64,
    /// How long a client connection may idle, trickle a header or a body.
    pub client: ClientLimits,
    /// Memory all request bodies may hold together (the semaphore is sized at start).
    pub max_body_memory_bytes: u64,
    pub grace_period: Duration,
    pub threads: usize,
    /// CA bundle for upstream TLS (read once at start; `None` = OpenSSL's defaults).
    pub ca_file: Option<String>,
    pub team: Arc<str>,
    pub service: String,
    /// Where this sidecar runs, for usage events.
    pub pod: PodIdentity,
    /// Usage-event shipping (`telemetry:` with a `collector`); `None`: no events.
    pub telemetry: Option<crate::events::Settings>,
    /// `org:`, `teams:` and their keys, compiled for admission.
    pub governance: crate::governance::Rules,
    pub governance_settings: crate::config::governance::Settings,
    /// When a target is taken out of service (`outlier_detection:`).
    pub outlier: crate::route::health::Settings,
    /// Reload generation and SHA-256 of the policy text, carried by every usage event.
    pub version: crate::events::PolicyVersion,
    pub providers: Vec<Provider>,
    pub models: Vec<Model>,
    pub model_index: AHashMap<String, usize>,
    pub routes: Vec<Route>,
    /// Forward-proxy host (lowercase, `host` or `host:port`) → what to do with it.
    pub hosts: AHashMap<String, HostRule>,
    /// The policy as loaded, secrets redacted, for `/config`.
    pub redacted: serde_json::Value,
    /// List prices, for models routed by name without a catalog entry (passthrough).
    pub prices: crate::price::Catalog,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodIdentity {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub service: Arc<str>,
    pub node: Arc<str>,
}

/// What a client connection is allowed before it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The whole request header block, from its first byte (or the connection's start).
    pub header_timeout: Duration,
    /// The whole request body.
    pub body_timeout: Duration,
    /// Between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrs {
    pub proxy: String,
    pub admin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    AzureOpenAi,
    Anthropic,
    Gemini,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::OpenAi => "openai",
            Format::AzureOpenAi => "azure-openai",
            Format::Anthropic => "anthropic",
            Format::Gemini => "gemini",
        }
    }
}

pub struct Provider {
    pub name: Arc<str>,
    pub format: Format,
    pub tls: bool,
    /// Lowercase host name or IP literal, as used for DNS and SNI.
    pub host: String,
    pub port: u16,
    /// Value of the `Host` header sent upstream.
    pub authority: HeaderValue,
    /// Path prefix of `base_url` without a trailing slash (`/v1`, `/openai/v1`, or empty).
    pub base_path: String,
    /// Set when the host is an IP literal: no DNS needed.
    pub literal_addr: Option<SocketAddr>,
    /// Credential header injected upstream, replacing whatever the client sent.
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Trust anchors for this provider only (`ca_file`), else the process-wide bundle.
    pub ca: Option<Arc<CaType>>,
    /// Azure OpenAI `api-version` query value.
    pub api_version: Option<String>,
}

pub struct Model {
    /// Catalog name, what clients ask for.
    pub alias: Arc<str>,
    pub provider: usize,
    /// The provider's model id written into the upstream body.
    pub upstream: Arc<str>,
    /// Default output limit, for formats that require one (Anthropic's `max_tokens`).
    pub max_tokens: Option<u32>,
    /// From the model entry, else the price catalog by provider model id.
    pub price: Option<crate::price::Price>,
    /// The operator's rating, 0–100 (`quality:`), for `min_quality`.
    pub quality: Option<f64>,
    /// Its health and load in this process (`route::Observed`), found on first use.
    pub health: std::sync::OnceLock<Arc<crate::route::health::Target>>,
    /// Its decision counter as the `catalog` route's target, found on first use.
    pub decision: std::sync::OnceLock<Option<prometheus::IntCounter>>,
}

#[derive(Debug, Clone)]
pub enum HostRule {
    Provider(usize),
    Passthrough { host: String, port: u16 },
}

pub struct Route {
    pub name: Arc<str>,
    pub matcher: Matcher,
    pub strategy: Strategy,
    /// The strategy's targets, each once, in the policy's order (`Strategy::targets`,
    /// made once here rather than per request).
    pub targets: Vec<usize>,
    /// Catalog model indices tried after the strategy's own choice, in order.
    pub fallbacks: Vec<usize>,
    /// Targets rated below this (`quality:`) are not chosen; a request may raise it with
    /// `x-switchyard-min-quality`.
    pub min_quality: Option<f64>,
    pub retry: Retry,
    pub timeouts: Timeouts,
    /// A route (index) evaluated beside this one for every request, its decision
    /// recorded in the usage event and never acted on.
    pub shadow: Option<usize>,
    /// Its retry budget in this process (`route::Observed`), found on first use.
    pub budget: std::sync::OnceLock<Arc<crate::route::retry_budget::RetryBudget>>,
    /// Its decision counters by target model, made on first use.
    pub decisions: std::sync::OnceLock<Vec<(usize, prometheus::IntCounter)>>,
}

#[derive(Default)]
pub struct Matcher {
    pub model: Option<Pattern>,
    pub host: Option<Pattern>,
    pub path: Option<Pattern>,
    pub headers: Vec<(HeaderName, Pattern)>,
}

pub enum Pattern {
    Exact(String),
    Glob(WildMatch),
}

impl Pattern {
    pub fn new(s: &str) -> Pattern {
        if s.contains('*') || s.contains('?') {
            Pattern::Glob(WildMatch::new(s))
        } else {
            Pattern::Exact(s.to_string())
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Exact(e) => e == s,
            Pattern::Glob(g) => g.matches(s),
        }
    }
}

pub enum Strategy {
    /// One target drawn by weight; the others follow as fallbacks in listed order.
    Weighted {
        targets: Vec<(usize, u32)>,
        total: u32,
    },
    /// Targets tried in listed order.
    Priority { targets: Vec<usize> },
    /// The client's model name is kept; the provider comes from the request's host,
    /// else from the route's `provider`.
    Passthrough { provider: Option<usize> },
    /// The request's complexity score picks the first tier whose `up_to` holds it; a tier
    /// that is unavailable moves up. The last tier has no bound.
    Complexity { tiers: Vec<(usize, f64)> },
    /// The lowest expected cost among available targets.
    Cheapest { targets: Vec<usize> },
    /// Power of two choices over peak-EWMA response time × (requests in flight + 1).
    Fastest { targets: Vec<usize> },
    /// Power of two choices over requests in flight.
    LeastBusy { targets: Vec<usize> },
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Weighted { .. } => "weighted",
            Strategy::Priority { .. } => "priority",
            Strategy::Passthrough { .. } => "passthrough",
            Strategy::Complexity { .. } => "complexity",
            Strategy::Cheapest { .. } => "cheapest",
            Strategy::Fastest { .. } => "fastest",
            Strategy::LeastBusy { .. } => "least-busy",
        }
    }

    /// The catalog models the strategy chooses among, in the policy's order.
    pub fn targets(&self) -> Vec<usize> {
        match self {
            Strategy::Weighted { targets, .. } => targets.iter().map(|(m, _)| *m).collect(),
            Strategy::Complexity { tiers } => tiers.iter().map(|(m, _)| *m).collect(),
            Strategy::Priority { targets }
            | Strategy::Cheapest { targets }
            | Strategy::Fastest { targets }
            | Strategy::LeastBusy { targets } => targets.clone(),
            Strategy::Passthrough { .. } => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Total attempts, first included.
    pub attempts: u32,
    pub on_connect: bool,
    pub on_timeout: bool,
    pub on_429: bool,
    pub on_5xx: bool,
}

impl Retry {
    pub fn retries_status(&self, status: u16) -> bool {
        (status == 429 && self.on_429) || (status >= 500 && self.on_5xx)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(120),
        }
    }
}

impl Policy {
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.model_index.get(name).map(|&i| &self.models[i])
    }

    /// What a forward-proxy `Host` value maps to; `:80` is the default port and optional.
    pub fn host_rule(&self, host: &str) -> Option<&HostRule> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        self.hosts
            .get(host)
            .or_else(|| host.strip_suffix(":80").and_then(|h| self.hosts.get(h)))
    }

    /// A human-readable dump of the compiled table, printed by `switchyard check`.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "listen: proxy {} admin {}",
            self.listen.proxy, self.listen.admin
        );
        match &self.telemetry {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "usage events: to {} (token {}, {}), spool {} up to {} bytes, batches of {} or every {:?}",
                    t.collector,
                    if t.token.is_some() { "set" } else { "none" },
                    t.compression.name(),
                    t.spool_dir.display(),
                    t.spool_max_bytes,
                    t.max_events,
                    t.max_wait
                );
            }
            None => {
                let _ = writeln!(s, "usage events: off (no telemetry.collector)");
            }
        }
        let _ = writeln!(s, "providers:");
        for p in &self.providers {
            let scheme = if p.tls { "https" } else { "http" };
            let _ = writeln!(
                s,
                "  {:<16} {:<8} {scheme}://{}:{}{}  credentials: {}",
                p.name,
                p.format.as_str(),
                p.host,
                p.port,
                p.base_path,
                if p.auth.is_some() { "injected" } else { "none" }
            );
        }
        let _ = writeln!(s, "models:");
        for m in &self.models {
            let _ = writeln!(
                s,
                "  {:<24} -> {}/{}",
                m.alias, self.providers[m.provider].name, m.upstream
            );
        }
        let _ = writeln!(s, "routes (first match wins):");
        for (i, r) in self.routes.iter().enumerate() {
            let mut conds = Vec::new();
            if let Some(p) = &r.matcher.model {
                conds.push(format!("model={}", pattern_str(p)));
            }
            if let Some(p) = &r.matcher.host {
                conds.push(format!("host={}", pattern_str(p)));
            }
            if let Some(p) = &r.matcher.path {
                conds.push(format!("path={}", pattern_str(p)));
            }
            for (h, p) in &r.matcher.headers {
                conds.push(format!("{h}={}", pattern_str(p)));
            }
            let cond = if conds.is_empty() {
                "*".to_string()
            } else {
                conds.join(" ")
            };
            let alias = |m: &usize| {
                let m = &self.models[*m];
                match m.quality {
                    Some(q) => format!("{}(q{q})", m.alias),
                    None => m.alias.to_string(),
                }
            };
            let list = |ms: &[usize], sep: &str| ms.iter().map(alias).collect::<Vec<_>>().join(sep);
            let mut targets = match &r.strategy {
                Strategy::Weighted { targets, .. } => targets
                    .iter()
                    .map(|(m, w)| format!("{}({w})", self.models[*m].alias))
                    .collect::<Vec<_>>()
                    .join(", "),
                Strategy::Priority { targets } => list(targets, " > "),
                Strategy::Passthrough { provider } => match provider {
                    Some(p) => format!("request host, else {}", self.providers[*p].name),
                    None => "request host".to_string(),
                },
                Strategy::Complexity { tiers } => tiers
                    .iter()
                    .map(|(m, up_to)| {
                        if up_to.is_finite() {
                            format!("score<={up_to}: {}", alias(m))
                        } else {
                            format!("else: {}", alias(m))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Strategy::Cheapest { targets } => {
                    let priced = targets
                        .iter()
                        .map(|m| match &self.models[*m].price {
                            Some(p) => format!(
                                "{} (${}/${} per Mtok)",
                                alias(m),
                                p.input as f64 / 1e12,
                                p.output as f64 / 1e12
                            ),
                            None => format!("{} (no price)", alias(m)),
                        })
                        .collect::<Vec<_>>();
                    priced.join(", ")
                }
                Strategy::Fastest { targets } | Strategy::LeastBusy { targets } => {
                    list(targets, ", ")
                }
            };
            if let Some(q) = r.min_quality {
                targets.push_str(&format!("; min_quality {q}"));
            }
            if let Some(j) = r.shadow {
                targets.push_str(&format!("; shadow: {}", self.routes[j].name));
            }
            let fallbacks = r
                .fallbacks
                .iter()
                .map(|m| &*self.models[*m].alias)
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "  {}. {:<16} [{}] {} -> {}{}  attempts={}",
                i + 1,
                r.name,
                cond,
                r.strategy.name(),
                targets,
                if fallbacks.is_empty() {
                    String::new()
                } else {
                    format!("; fallbacks: {fallbacks}")
                },
                r.retry.attempts
            );
        }
        let mut hosts: Vec<_> = self.hosts.iter().collect();
        hosts.sort_by(|a, b| a.0.cmp(b.0));
        let _ = writeln!(s, "hosts (forward-proxy mode):");
        for (h, rule) in hosts {
            let what = match rule {
                HostRule::Provider(p) => format!("provider {}", self.providers[*p].name),
                HostRule::Passthrough { host, port } => format!("passthrough to {host}:{port}"),
            };
            let _ = writeln!(s, "  {h:<32} {what}");
        }
        s
    }
}

fn pattern_str(p: &Pattern) -> String {
    match p {
        Pattern::Exact(s) => s.clone(),
        Pattern::Glob(g) => g.to_string(),
    }
}
