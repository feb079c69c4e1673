//! The collector's YAML, parsed once into typed, validated settings. `${VAR}` and
//! `file:/path` work as in the policy; unknown keys are errors.

use crate::config::expand::{expand_secret, expand_vars, Env, ProcessEnv};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_database")]
    database: String,
    /// The sidecars' policy file: its budgets (org, teams, keys) for `/v1/budgets` and
    /// budget alerts, and its `governance.redis` for the reservations held there.
    #[serde(default)]
    policy: Option<String>,
    /// How often budgets are checked against their `alert_at` marks.
    #[serde(default = "default_budget_check")]
    budget_check: String,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    retention: RawRetention,
    /// Largest ingest body accepted, decompressed.
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
}

fn default_listen() -> String {
    "127.0.0.1:7070".into()
}
fn default_database() -> String {
    "sqlite:///var/lib/switchyard/usage.db".into()
}
fn default_budget_check() -> String {
    "10s".into()
}
fn default_max_body() -> usize {
    64 << 20
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    #[serde(default)]
    ingest: Vec<String>,
    #[serde(default)]
    readers: Vec<RawReader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReader {
    hash: String,
    role: String,
    #[serde(default)]
    team: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    #[serde(default = "default_raw_days")]
    raw_days: u32,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            raw_days: default_raw_days(),
        }
    }
}

fn default_raw_days() -> u32 {
    90
}

/// Who a reader token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// All usage, read only.
    Finance,
    /// Only this team's rows, through every endpoint.
    Team(String),
}

#[derive(Debug, Clone)]
pub struct Reader {
    pub hash: [u8; 32],
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub listen: SocketAddr,
    /// `sqlite://…` (a file path) or `postgres://…`.
    pub database: Database,
    pub policy: Option<PathBuf>,
    pub ingest: Vec<[u8; 32]>,
    pub readers: Vec<Reader>,
    pub raw_retention: Duration,
    pub max_body_bytes: usize,
    pub budget_check: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "sqlite {}", p.display()),
            // The URL may hold a password.
            Database::Postgres(_) => write!(f, "postgres"),
        }
    }
}

impl Database {
    pub fn describe(&self) -> String {
        format!("{self:?}")
    }
}

pub fn load(path: &Path) -> Result<CollectorConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, &ProcessEnv, path.parent())
}

pub fn parse(text: &str, env: &dyn Env, dir: Option<&Path>) -> Result<CollectorConfig, String> {
    let raw: Raw =
        serde_yaml::from_str(text).map_err(|e| crate::config::yaml_error(e).to_string())?;
    // Through the policy's error type, which hides anything shaped like a secret.
    let field = |name: &str, m: String| crate::config::ConfigError::new(name, m).to_string();
    let listen = expand_vars(&raw.listen, env).map_err(|m| field("listen", m))?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| field("listen", format!("{listen:?} is not an address:port")))?;
    let database = expand_secret(&raw.database, env).map_err(|m| field("database", m))?;
    let database = parse_database(&database).map_err(|m| field("database", m))?;
    let policy = match &raw.policy {
        Some(p) => {
            let p = expand_vars(p, env).map_err(|m| field("policy", m))?;
            let p = match dir {
                Some(d) if Path::new(&p).is_relative() => d.join(p),
                _ => PathBuf::from(p),
            };
            Some(p)
        }
        None => None,
    };
    let mut ingest = Vec::new();
    for (i, h) in raw.tokens.ingest.iter().enumerate() {
        let h = expand_secret(h, env).map_err(|m| field(&format!("tokens.ingest[{i}]"), m))?;
        ingest.push(parse_hash(&h).map_err(|m| field(&format!("tokens.ingest[{i}]"), m))?);
    }
    let mut readers = Vec::new();
    for (i, r) in raw.tokens.readers.iter().enumerate() {
        let name = format!("tokens.readers[{i}]");
        let h = expand_secret(&r.hash, env).map_err(|m| field(&format!("{name}.hash"), m))?;
        let hash = parse_hash(&h).map_err(|m| field(&format!("{name}.hash"), m))?;
        let role = match (r.role.as_str(), &r.team) {
            ("admin", None) => Role::Admin,
            ("finance", None) => Role::Finance,
            ("team", Some(t)) if !t.is_empty() => Role::Team(t.clone()),
            ("team", _) => return Err(field(&name, "role team needs `team: <name>`".into())),
            ("admin" | "finance", Some(_)) => {
                return Err(field(&name, "`team` applies only to role team".into()))
            }
            (other, _) => {
                return Err(field(
                    &format!("{name}.role"),
                    format!(
                        "{:?} is not one of admin, finance, team",
                        crate::error::clip(other)
                    ),
                ))
            }
        };
        readers.push(Reader { hash, role });
    }
    if raw.retention.raw_days == 0 {
        return Err(field("retention.raw_days", "must be at least 1".into()));
    }
    if raw.max_body_bytes < 1 << 16 {
        return Err(field("max_body_bytes", "must be at least 65536".into()));
    }
    let budget_check = crate::config::positive_duration("budget_check", &raw.budget_check)
        .map_err(|e| e.to_string())?;
    Ok(CollectorConfig {
        listen,
        budget_check,
        database,
        policy,
        ingest,
        readers,
        raw_retention: Duration::from_secs(u64::from(raw.retention.raw_days) * 86_400),
        max_body_bytes: raw.max_body_bytes,
    })
}

fn parse_database(url: &str) -> Result<Database, String> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        if rest.is_empty() {
            return Err(
                "sqlite:// needs a file path (sqlite:///var/lib/switchyard/usage.db)".into(),
            );
        }
        return Ok(Database::Sqlite(PathBuf::from(rest)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Database::Postgres(url.to_string()));
    }
    if !url.contains("://") && !url.is_empty() {
        // A bare path: the embedded default.
        return Ok(Database::Sqlite(PathBuf::from(url)));
    }
    Err("must be sqlite:///path/to/file.db, a file path, or postgres://user:pass@host/db (value not shown)".into())
}

/// `sha256:` + 64 hex digits, as `switchyard` prints for a new token.
pub fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s.strip_prefix("sha256:").unwrap_or("");
    let mut out = [0u8; 32];
    if hex.len() != 64 || hex::decode_to_slice(hex, &mut out).is_err() {
        return Err(
            "must be \"sha256:\" followed by 64 hex digits (tokens are stored hashed)".into(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Vars(HashMap<&'static str, &'static str>);
    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    const H: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn parses_the_documented_shape() {
        let text = format!(
            "listen: 127.0.0.1:7070\ndatabase: \"${{DB}}\"\npolicy: policy.yaml\ntokens:\n  ingest: [\"{H}\"]\n  readers:\n    - {{ hash: \"{H}\", role: admin }}\n    - {{ hash: \"{H}\", role: team, team: research }}\nretention: {{ raw_days: 30 }}\n"
        );
        let env = Vars(HashMap::from([("DB", "postgres://u:p@localhost/test")]));
        let c = parse(&text, &env, Some(Path::new("/etc/sy"))).unwrap();
        assert_eq!(
            c.database,
            Database::Postgres("postgres://u:p@localhost/test".into())
        );
        assert_eq!(
            format!("{:?}", c.database),
            "postgres",
            "no password in Debug"
        );
        assert_eq!(c.policy.unwrap(), PathBuf::from("/etc/sy/policy.yaml"));
        assert_eq!(c.readers[1].role, Role::Team("research".into()));
        assert_eq!(c.raw_retention, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn refuses_what_is_wrong() {
        let env = Vars(HashMap::new());
        for bad in [
            "lisen: 1.2.3.4:1\n",
            "database: mysql://x\n",
            "tokens: { ingest: [\"plaintext-token\"] }\n",
            &format!("tokens: {{ readers: [ {{ hash: \"{H}\", role: team }} ] }}\n"),
            &format!("tokens: {{ readers: [ {{ hash: \"{H}\", role: root }} ] }}\n"),
            "retention: { raw_days: 0 }\n",
        ] {
            assert!(parse(bad, &env, None).is_err(), "{bad}");
        }
        let c = parse("database: /tmp/usage.db\n", &env, None).unwrap();
        assert_eq!(c.database, Database::Sqlite("/tmp/usage.db".into()));
    }
}
