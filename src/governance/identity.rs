//! Who is calling: a virtual key (`Authorization: Bearer sk-sy-…`, or `x-api-key` from
//! Anthropic clients) when the request carries one, else the pod's team.
//!
//! Keys exist here only as SHA-256 digests. The presented key is hashed and the digest
//! looked up in a table; the entry found is then compared in constant time. Looking up by
//! digest reveals nothing usable about a key (timing depends on the hash of its SHA-256),
//! and keeps the cost flat however many keys the policy holds.

use ahash::AHashMap;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Virtual keys start with this, which is how they are told apart from a provider key an
/// application may still send (stripped before the request goes upstream anyway).
pub const KEY_PREFIX: &str = "sk-sy-";

/// The keys of one policy, by digest.
#[derive(Default)]
pub struct Keys {
    by_digest: AHashMap<[u8; 32], usize>,
}

impl Keys {
    pub fn insert(&mut self, digest: [u8; 32], index: usize) -> bool {
        self.by_digest.insert(digest, index).is_none()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The index of the key whose digest is `digest`.
    fn find(&self, digest: &[u8; 32]) -> Option<usize> {
        let (stored, &i) = self.by_digest.get_key_value(digest)?;
        bool::from(stored.ct_eq(digest)).then_some(i)
    }
}

/// What the request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// No virtual key (perhaps a provider key, or none at all).
    None,
    /// A virtual key, known: its index in the policy's key list.
    Known(usize),
    /// Something shaped like a virtual key that the policy does not hold (revoked, mistyped).
    Unknown,
}

/// The virtual key in the request's headers, if any.
pub fn presented(keys: &Keys, headers: &HeaderMap) -> Presented {
    let Some(key) = key_in(headers) else {
        return Presented::None;
    };
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    match keys.find(&digest) {
        Some(i) => Presented::Known(i),
        None => Presented::Unknown,
    }
}

fn key_in(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        if let Some((scheme, token)) = v.split_once(' ') {
            let token = token.trim();
            if scheme.eq_ignore_ascii_case("bearer") && token.starts_with(KEY_PREFIX) {
                return Some(token);
            }
        }
    }
    let v = headers.get("x-api-key")?.to_str().ok()?.trim();
    v.starts_with(KEY_PREFIX).then_some(v)
}

/// A new virtual key: the prefix and 32 bytes from the OS's generator, hex.
pub fn new_key() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("{KEY_PREFIX}{}{}", a.simple(), b.simple())
}

/// `sha256:<hex>` of a key, as the policy holds it.
pub fn hash_line(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// The caller a request's admission is decided for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub team: Arc<str>,
    /// Index into the policy's keys, when a virtual key identified the caller.
    pub key: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn keys_are_found_by_hash_in_either_header() {
        let key = new_key();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
        let line = hash_line(&key);
        let digest: [u8; 32] = hex::decode(line.strip_prefix("sha256:").unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let mut keys = Keys::default();
        keys.insert(digest, 7);
        let bearer = format!("Bearer {key}");
        assert_eq!(
            presented(&keys, &headers(&[("authorization", &bearer)])),
            Presented::Known(7)
        );
        assert_eq!(
            presented(&keys, &headers(&[("x-api-key", &key)])),
            Presented::Known(7)
        );
        let other = format!("Bearer {}", new_key());
        assert_eq!(
            presented(&keys, &headers(&[("authorization", &other)])),
            Presented::Unknown
        );
        // A provider key or no key at all is not a virtual key.
        assert_eq!(
            presented(&keys, &headers(&[("authorization", "Bearer sk-proj-abc")])),
            Presented::None
        );
        assert_eq!(presented(&keys, &HeaderMap::new()), Presented::None);
    }
}
