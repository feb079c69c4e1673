//! Step 1 of the walk: what the client asked for. Forward-proxy requests carry an
//! absolute-form target (`POST http://api.openai.com/v1/...`); base-URL requests carry
//! only a path.

use pingora::http::RequestHeader;

pub struct Target<'a> {
    /// The forward-proxy host (`api.openai.com`, `127.0.0.1:9000`), `None` in base-URL mode.
    pub host: Option<&'a str>,
    /// Origin-form path and query (`/v1/chat/completions?x=1`).
    pub path_and_query: &'a str,
}

pub fn target(req: &RequestHeader) -> Result<Target<'_>, &'static str> {
    let raw = std::str::from_utf8(req.raw_path()).map_err(|_| "request target is not UTF-8")?;
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("HTTP://"));
    match rest {
        Some(rest) => {
            let (authority, path) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            // userinfo is never honoured: `http://user@host` must not smuggle another host.
            if authority.is_empty() || authority.contains('@') {
                return Err("invalid host in request target");
            }
            let path = if path.starts_with('?') { "/" } else { path };
            Ok(Target {
                host: Some(authority),
                path_and_query: path,
            })
        }
        None if raw.starts_with('/') => Ok(Target {
            host: None,
            path_and_query: raw,
        }),
        None => Err("request target must be a path or an http:// URL"),
    }
}

/// The path without its query, for route matching.
pub fn path_only(path_and_query: &str) -> &str {
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str) -> RequestHeader {
        RequestHeader::build("POST", target.as_bytes(), None).unwrap()
    }

    #[test]
    fn absolute_and_origin_form() {
        let r = req("http://api.openai.com/v1/chat/completions?a=1");
        let t = target(&r).unwrap();
        assert_eq!(t.host, Some("api.openai.com"));
        assert_eq!(t.path_and_query, "/v1/chat/completions?a=1");
        assert_eq!(path_only(t.path_and_query), "/v1/chat/completions");

        let r = req("http://127.0.0.1:9000");
        let t = target(&r).unwrap();
        assert_eq!(t.host, Some("127.0.0.1:9000"));
        assert_eq!(t.path_and_query, "/");

        let r = req("/v1/embeddings");
        let t = target(&r).unwrap();
        assert_eq!(t.host, None);
        assert_eq!(t.path_and_query, "/v1/embeddings");

        assert!(target(&req("http://user@evil.com/x")).is_err());
        assert!(target(&req("*")).is_err());
    }
}
