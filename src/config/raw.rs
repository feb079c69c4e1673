//! The YAML policy exactly as written: serde structs, no meaning attached yet.
//! `deny_unknown_fields` everywhere so a typo is an error, not a silently ignored key.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub server: ServerOpts,
    #[serde(default)]
    pub identity: Identity,
    #[serde(default)]
    pub providers: IndexMap<String, RawProvider>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Hosts forwarded unchanged (not metered), e.g. `pypi.org` or `internal.svc:8080`.
    #[serde(default)]
    pub passthrough: Vec<String>,
    /// How `org:` and `teams:` are enforced (Redis, key requirement).
    #[serde(default)]
    pub governance: RawGovernance,
    /// When a target is taken out of service for failing, and for how long.
    #[serde(default)]
    pub outlier_detection: RawOutlier,
    /// Rules every request passes, whatever its team.
    #[serde(default)]
    pub org: RawLevel,
    #[serde(default)]
    pub teams: BTreeMap<String, RawTeam>,
    #[serde(default)]
    pub telemetry: Option<RawTelemetry>,
    /// Price catalog file (`conf/prices.yaml`), relative to this file's directory.
    #[serde(default)]
    pub prices: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "default_proxy_addr")]
    pub proxy: String,
    #[serde(default = "default_admin_addr")]
    pub admin: String,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            proxy: default_proxy_addr(),
            admin: default_admin_addr(),
        }
    }
}

fn default_proxy_addr() -> String {
    "127.0.0.1:4000".into()
}
fn default_admin_addr() -> String {
    "127.0.0.1:9901".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOpts {
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// How long SIGTERM waits for in-flight requests (streams included).
    #[serde(default = "default_grace")]
    pub grace_period: String,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// CA bundle that upstream TLS certificates are verified against. Default: the
    /// system bundle (`$SSL_CERT_FILE`, else the usual Debian/RHEL/Alpine paths).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Longest a client may take to send a whole request header block.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: String,
    /// Longest a client may take to send a whole request body.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: String,
    /// How long a kept-alive client connection may sit idle between requests.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    /// Largest request header block, in bytes.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
    /// Memory all request bodies being read or held may take together, in bytes. Beyond it
    /// a request is refused with 503 `overloaded` and `Retry-After`.
    #[serde(default = "default_body_memory")]
    pub max_body_memory_bytes: u64,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            max_body_bytes: default_max_body(),
            grace_period: default_grace(),
            threads: default_threads(),
            ca_file: None,
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            idle_timeout: default_idle_timeout(),
            max_header_bytes: default_max_header(),
            max_body_memory_bytes: default_body_memory(),
        }
    }
}

fn default_header_timeout() -> String {
    "10s".into()
}
fn default_body_timeout() -> String {
    "60s".into()
}
fn default_idle_timeout() -> String {
    "60s".into()
}
fn default_max_header() -> usize {
    64 * 1024
}
fn default_body_memory() -> u64 {
    128 * 1024 * 1024
}

fn default_max_body() -> u64 {
    32 * 1024 * 1024
}
fn default_grace() -> String {
    "25s".into()
}
fn default_threads() -> usize {
    2
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default = "default_team")]
    pub team: String,
    #[serde(default = "default_service")]
    pub service: String,
    /// The pod's place, for usage events: Kubernetes' downward API sets these variables.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Empty: the host name.
    #[serde(default = "default_pod")]
    pub pod: String,
    #[serde(default = "default_node")]
    pub node: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            team: default_team(),
            service: default_service(),
            namespace: default_namespace(),
            pod: default_pod(),
            node: default_node(),
        }
    }
}

fn default_namespace() -> String {
    "${POD_NAMESPACE:-}".into()
}
fn default_pod() -> String {
    "${POD_NAME:-}".into()
}
fn default_node() -> String {
    "${NODE_NAME:-}".into()
}

fn default_team() -> String {
    "default".into()
}
fn default_service() -> String {
    "unknown".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub format: String,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<String>,
    /// Extra hosts this provider answers for in forward-proxy mode (`api.openai.com`).
    #[serde(default)]
    pub intercept: Vec<String>,
    /// Extra headers sent upstream on every request (e.g. `OpenAI-Organization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PEM file of the CA(s) that sign this provider's certificate (private endpoints);
    /// replaces the system bundle for this provider.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Azure OpenAI only: the `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: String,
    /// The provider's own model id; defaults to the catalog name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub price: Option<RawPrice>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The operator's rating, 0–100 (e.g. from a public leaderboard), for `min_quality`.
    #[serde(default)]
    pub quality: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the provider's cache; defaults to `input`.
    #[serde(default)]
    pub cache_write: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: RawMatch,
    pub strategy: String,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    /// For `complexity`: `[{model, up_to: 0.35}, …, {model}]`, easiest first.
    #[serde(default)]
    pub tiers: Vec<RawTier>,
    /// Targets rated below this `quality` are not chosen.
    #[serde(default)]
    pub min_quality: Option<f64>,
    /// Another route evaluated for every request, its decision recorded, never acted on.
    #[serde(default)]
    pub shadow: Option<String>,
    /// For `passthrough`: the provider to use when the request's host names none.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub timeouts: Option<RawTimeouts>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A complexity tier: a bare model name (the last, unbounded tier) or `{ model, up_to }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawTier {
    Name(String),
    Bounded(RawBoundedTier),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoundedTier {
    pub model: String,
    #[serde(default)]
    pub up_to: Option<f64>,
}

/// A target is either a bare model name or `{ model, weight }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawTarget {
    Name(String),
    Weighted(RawWeighted),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeighted {
    pub model: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub on: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default)]
    pub connect: Option<String>,
    #[serde(default)]
    pub first_byte: Option<String>,
    /// Longest silence between two body chunks once the response started.
    #[serde(default)]
    pub idle: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGovernance {
    /// `redis://host:6379`: limits and budgets shared by the fleet; absent: this process.
    #[serde(default)]
    pub redis: Option<String>,
    /// `closed` (reject) or `open` (admit) while Redis cannot be reached.
    #[serde(default = "default_on_redis_down")]
    pub on_redis_down: String,
    /// Unknown or missing virtual keys are refused (401) instead of using the pod's team.
    #[serde(default)]
    pub require_key: bool,
    /// A reservation whose sidecar never settled it (killed) is released after this.
    #[serde(default = "default_reservation_ttl")]
    pub reservation_ttl: String,
    /// How often the period's spend is read from the collector (`/v1/spend`), and the
    /// reservations reported to it.
    #[serde(default = "default_budget_refresh")]
    pub refresh: String,
}

impl Default for RawGovernance {
    fn default() -> Self {
        RawGovernance {
            redis: None,
            on_redis_down: default_on_redis_down(),
            require_key: false,
            reservation_ttl: default_reservation_ttl(),
            refresh: default_budget_refresh(),
        }
    }
}

fn default_on_redis_down() -> String {
    "closed".into()
}
fn default_reservation_ttl() -> String {
    "10m".into()
}
fn default_budget_refresh() -> String {
    "30s".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Failures in a row that eject a target (0: never on this count); default 5.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// Share of failures in the last 20 outcomes that ejects (0: never); default 0.5.
    #[serde(default)]
    pub failure_rate: Option<f64>,
    /// The first ejection's length (default 30s); each repeat adds as much again.
    #[serde(default)]
    pub base_ejection: Option<String>,
    /// The longest ejection (default 5m).
    #[serde(default)]
    pub max_ejection: Option<String>,
    /// At most this share of a route's targets is skipped as out of service (default 50).
    #[serde(default)]
    pub max_ejected_percent: Option<u32>,
}

/// What any level of the hierarchy (org, team, key) may say about its requests.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLevel {
    /// Allowed model aliases (globs); empty: any.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub budget: Option<RawBudget>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    #[serde(default)]
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub budget: Option<RawBudget>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
}

/// A virtual key: its id (what events and metrics name) and the SHA-256 of the key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    /// `sha256:<64 hex>`, or `${VAR}` / `file:/path` holding it.
    pub hash: String,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub budget: Option<RawBudget>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub usd: f64,
    pub per: String,
    /// `reject` (default) or `downgrade` (to `downgrade_to`).
    #[serde(default)]
    pub on_exceed: Option<String>,
    /// A route name or catalog model that takes the requests once the budget is spent.
    #[serde(default)]
    pub downgrade_to: Option<String>,
    /// Fractions of the budget at which an alert is logged and recorded (e.g. 0.8, 1.0).
    #[serde(default)]
    pub alert_at: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// The collector's base URL; without it no usage events are recorded or shipped.
    #[serde(default)]
    pub collector: Option<String>,
    /// Bearer token for `POST /v1/events` (`${VAR}` or `file:/path`).
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default = "default_spool_dir")]
    pub spool_dir: String,
    #[serde(default = "default_spool_max")]
    pub spool_max_bytes: u64,
    #[serde(default)]
    pub batch: RawBatch,
    /// `none` (default), `zstd` or `gzip`: see `events::Compression`.
    #[serde(default = "default_compression")]
    pub compression: String,
}

fn default_compression() -> String {
    "none".into()
}

fn default_spool_dir() -> String {
    "/var/lib/switchyard/spool".into()
}
fn default_spool_max() -> u64 {
    256 << 20
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    #[serde(default = "default_batch_events")]
    pub max_events: usize,
    #[serde(default = "default_batch_wait")]
    pub max_wait: String,
}

impl Default for RawBatch {
    fn default() -> Self {
        RawBatch {
            max_events: default_batch_events(),
            max_wait: default_batch_wait(),
        }
    }
}

fn default_batch_events() -> usize {
    500
}
fn default_batch_wait() -> String {
    "1s".into()
}
