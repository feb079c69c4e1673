//! `${VAR}`, `${VAR:-default}` and `file:/path` in config values.
//! Applied per field after parsing, so an environment value can never inject YAML structure.

use std::fmt::Write as _;

/// Where values come from; a trait so tests need not touch the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;

    /// What an unset variable without a default becomes; `None` (the rule): an error.
    fn unset(&self, _name: &str) -> Option<String> {
        None
    }
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Expands `${VAR}` / `${VAR:-default}`; an unset variable without default is an error.
pub fn expand_vars(value: &str, env: &dyn Env) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${` (value not shown)".to_string())?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?}"));
        }
        match (env.var(name), default) {
            (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (None, None) => match env.unset(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable {name} is not set")),
            },
            (Some(_), None) => unreachable!("covered by the first arm"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A secret: variables expanded, then `file:/path` replaced by the file's trimmed contents.
pub fn expand_secret(value: &str, env: &dyn Env) -> Result<String, String> {
    let expanded = expand_vars(value, env)?;
    match expanded.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                let mut msg = String::new();
                let _ = write!(msg, "cannot read secret file {path}: {e}");
                msg
            }),
        None => Ok(expanded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
    }

    fn env() -> MapEnv {
        MapEnv(HashMap::from([("KEY", "sk-1"), ("EMPTY", "")]))
    }

    #[test]
    fn plain_and_vars() {
        assert_eq!(expand_vars("abc", &env()).unwrap(), "abc");
        assert_eq!(expand_vars("${KEY}", &env()).unwrap(), "sk-1");
        assert_eq!(expand_vars("a-${KEY}-b", &env()).unwrap(), "a-sk-1-b");
        assert_eq!(expand_vars("${NOPE:-dflt}", &env()).unwrap(), "dflt");
        assert_eq!(expand_vars("${EMPTY:-dflt}", &env()).unwrap(), "dflt");
        assert_eq!(expand_vars("${EMPTY}", &env()).unwrap(), "");
    }

    #[test]
    fn errors() {
        assert!(expand_vars("${NOPE}", &env()).unwrap_err().contains("NOPE"));
        assert!(expand_vars("${KEY", &env()).is_err());
        assert!(expand_vars("${BAD-NAME}", &env()).is_err());
    }

    #[test]
    fn file_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "sk-from-file\n").unwrap();
        let v = expand_secret(&format!("file:{}", p.display()), &env()).unwrap();
        assert_eq!(v, "sk-from-file");
        assert!(expand_secret("file:/nonexistent/x", &env()).is_err());
    }
}
