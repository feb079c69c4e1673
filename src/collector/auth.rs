//! Bearer tokens: stored as SHA-256 only, compared in constant time against every
//! configured hash (no early exit, so timing says nothing about which one matched).

use super::config::{CollectorConfig, Role};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

fn digest(headers: &HeaderMap) -> Option<[u8; 32]> {
    bearer(headers).map(|t| Sha256::digest(t.as_bytes()).into())
}

/// Whether the request carries an ingest token.
pub fn ingest(cfg: &CollectorConfig, headers: &HeaderMap) -> bool {
    let Some(d) = digest(headers) else {
        return false;
    };
    let mut ok = subtle::Choice::from(0);
    for h in &cfg.ingest {
        ok |= h.ct_eq(&d);
    }
    ok.into()
}

/// The role of the request's reader token, if it carries one.
pub fn reader(cfg: &CollectorConfig, headers: &HeaderMap) -> Option<Role> {
    let d = digest(headers)?;
    let mut found = None;
    for r in &cfg.readers {
        if bool::from(r.hash.ct_eq(&d)) && found.is_none() {
            found = Some(r.role.clone());
        }
    }
    found
}

/// A new random token: `sy-` and 32 bytes from the OS's generator, hex.
pub fn new_token() -> String {
    format!("sy-{}", uuid::Uuid::new_v4().simple()) + &uuid::Uuid::new_v4().simple().to_string()
}

/// `sha256:<hex>` of a token, as the config wants it.
pub fn hash_line(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::config::{parse, Reader};
    use crate::config::expand::ProcessEnv;

    #[test]
    fn tokens_match_by_hash_only() {
        let mut cfg = parse("{}", &ProcessEnv, None).unwrap();
        cfg.ingest
            .push(super::super::config::parse_hash(&hash_line("ingest-secret")).unwrap());
        cfg.readers.push(Reader {
            hash: super::super::config::parse_hash(&hash_line("team-secret")).unwrap(),
            role: Role::Team("research".into()),
        });
        let h = |t: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
            m
        };
        assert!(ingest(&cfg, &h("ingest-secret")));
        assert!(!ingest(&cfg, &h("team-secret")));
        assert!(!ingest(&cfg, &HeaderMap::new()));
        assert_eq!(
            reader(&cfg, &h("team-secret")),
            Some(Role::Team("research".into()))
        );
        assert_eq!(reader(&cfg, &h("ingest-secret")), None);
    }
}
