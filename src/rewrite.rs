//! Request rewriting for one attempt: the `model` field spliced in place (every other byte
//! of the client's JSON kept), and the upstream request head written for the provider.

use crate::error::{ErrorCode, ProxyError};
use crate::policy::Provider;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use pingora::http::RequestHeader;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::ops::Range;

/// What the proxy needs from an LLM request body. One parse validates the whole JSON and
/// locates `model`, so the rewrite is a splice rather than a re-serialisation.
#[derive(Debug)]
pub struct BodyProbe {
    pub model: String,
    /// Byte range of the `model` value (quotes included) in the body.
    pub model_span: Range<usize>,
    pub stream: bool,
    /// `None`: no `stream_options` in the request; else its `include_usage`.
    pub include_usage: Option<bool>,
    /// The client's output limit (`max_completion_tokens`, `max_tokens` or
    /// `max_output_tokens`), for the worst case a budget reserves.
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    /// A map, never an array (serde's derived structs would take one): the rewrite below
    /// edits it as an object. Present in stream requests only, so rarely allocated.
    #[serde(default)]
    stream_options: Option<serde_json::Map<String, serde_json::Value>>,
    // Kept raw: a value the provider would refuse (null, a float) is its business, not a
    // reason for the proxy to call the body malformed.
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_output_tokens: Option<&'a RawValue>,
}

/// Parses the body; `Ok(None)` when it is valid JSON without a `model` string.
///
/// JSON text is UTF-8 (RFC 8259 §8.1), and serde does not check the strings it skips:
/// invalid bytes inside a message's content would reach the provider with our key on them.
/// The whole body is validated first (SIMD: ~1 µs per 64 KB of ASCII).
pub fn probe(body: &[u8]) -> Result<Option<BodyProbe>, ProxyError> {
    let text = simdutf8::basic::from_utf8(body).map_err(|_| {
        ProxyError::new(
            ErrorCode::InvalidRequest,
            "request body is not valid UTF-8 (JSON must be)",
        )
    })?;
    // serde's derived struct also accepts an array, field by field (`["gpt-4o", true]`):
    // an LLM request is a JSON object, and anything else is refused here.
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(ProxyError::new(
            ErrorCode::InvalidRequest,
            "request body must be a JSON object",
        ));
    }
    let p: Probe<'_> = serde_json::from_str(text).map_err(|e| {
        ProxyError::new(
            ErrorCode::InvalidRequest,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Some(raw) = p.model else {
        return Ok(None);
    };
    let model: String = serde_json::from_str(raw.get())
        .map_err(|_| ProxyError::new(ErrorCode::InvalidRequest, "`model` must be a string"))?;
    // `raw` borrows from `body`, so its offset is a pointer difference.
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    Ok(Some(BodyProbe {
        model,
        model_span: start..start + raw.get().len(),
        stream: p.stream.unwrap_or(false),
        include_usage: p.stream_options.map(|o| {
            o.get("include_usage")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        }),
        max_tokens: [p.max_completion_tokens, p.max_tokens, p.max_output_tokens]
            .into_iter()
            .flatten()
            .find_map(|v| v.get().parse::<u64>().ok()),
    }))
}

const INCLUDE_USAGE: &[u8] = br#""stream_options":{"include_usage":true},"#;

/// For a stream whose client did not ask for usage: the body with the model swapped and
/// `stream_options.include_usage` turned on, so the provider reports usage. `None` when
/// nothing needs adding.
pub fn with_usage_requested(body: &Bytes, probe: &BodyProbe, model: Option<&str>) -> Option<Bytes> {
    if !probe.stream || probe.include_usage == Some(true) {
        return None;
    }
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    if probe.include_usage.is_some() {
        // `stream_options` present without include_usage: rare, so rebuild the object.
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).ok()?;
        let on = serde_json::Value::Bool(true);
        match v.get_mut("stream_options") {
            Some(serde_json::Value::Object(o)) => {
                o.insert("include_usage".into(), on);
            }
            _ => {
                v.insert(
                    "stream_options".into(),
                    serde_json::json!({ "include_usage": true }),
                );
            }
        }
        if let Some(m) = model {
            v.insert("model".into(), serde_json::Value::String(m.to_string()));
        }
        return serde_json::to_vec(&v).ok().map(Bytes::from);
    }
    let spliced = with_model(body, &probe.model_span, model);
    let mut out = BytesMut::with_capacity(spliced.len() + INCLUDE_USAGE.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(INCLUDE_USAGE);
    // The rest of the spliced body: `{` comes before `"model"`, so its pieces start with it.
    let mut skip = open + 1;
    for piece in spliced.pieces() {
        if skip >= piece.len() {
            skip -= piece.len();
            continue;
        }
        out.extend_from_slice(&piece[skip..]);
        skip = 0;
    }
    Some(out.freeze())
}

/// A request body as the pieces it goes out in: the client's bytes either side of a
/// spliced-in model are shared with the client's body, not copied (a 256 KB body was
/// copied whole just to change a dozen bytes).
#[derive(Clone, Debug, Default)]
pub struct Body([Bytes; 3]);

impl Body {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pieces(&self) -> &[Bytes; 3] {
        &self.0
    }

    /// One contiguous copy, for the paths that need the body as a whole.
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            [whole, b, c] if b.is_empty() && c.is_empty() => whole.clone(),
            pieces => {
                let mut out = BytesMut::with_capacity(self.len());
                for p in pieces {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

impl From<Bytes> for Body {
    fn from(whole: Bytes) -> Body {
        Body([whole, Bytes::new(), Bytes::new()])
    }
}

/// The body with the model value replaced; the original bytes when there is nothing to swap.
pub fn with_model(body: &Bytes, span: &Range<usize>, model: Option<&str>) -> Body {
    let Some(model) = model else {
        return body.clone().into();
    };
    let quoted = match serde_json::to_string(model) {
        Ok(q) => q,
        Err(_) => return body.clone().into(),
    };
    if body.get(span.clone()) == Some(quoted.as_bytes()) || span.end > body.len() {
        return body.clone().into();
    }
    Body([
        body.slice(..span.start),
        Bytes::from(quoted),
        body.slice(span.end..),
    ])
}

/// Headers never forwarded: hop-by-hop ones, the client's credentials, and those the proxy
/// sets itself.
const DROPPED: &[HeaderName] = &[
    header::CONNECTION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::EXPECT,
    header::PROXY_AUTHORIZATION,
    header::AUTHORIZATION,
    header::ACCEPT_ENCODING,
];

fn dropped(name: &HeaderName) -> bool {
    DROPPED.contains(name)
        || matches!(
            name.as_str(),
            "keep-alive" | "proxy-connection" | "x-api-key" | "api-key" | "x-goog-api-key"
        )
}

/// Headers the client named in `Connection` (`Connection: keep-alive, X-Hop`): hop-by-hop
/// by declaration, never forwarded (RFC 9110 §7.6.1). Empty, and unallocated, for the usual
/// `keep-alive` / `close`.
pub fn connection_named(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    named
}

/// Maps the client's path onto the provider's base path. OpenAI-style clients address
/// `/v1/...`; a provider's base_url already ends with its API root, so `/v1` is replaced.
pub fn upstream_path(provider: &Provider, client_path_and_query: &str) -> String {
    let rest = client_path_and_query
        .strip_prefix("/v1")
        .filter(|r| r.is_empty() || r.starts_with('/') || r.starts_with('?'))
        .unwrap_or(client_path_and_query);
    let mut p = String::with_capacity(provider.base_path.len() + rest.len() + 1);
    p.push_str(&provider.base_path);
    if !rest.starts_with('/') {
        p.push('/');
    }
    p.push_str(rest);
    p
}

/// Bodies up to this size are sent in one write behind the header, so the head is allocated
/// with room for them.
pub const COALESCE_MAX: usize = 64 * 1024;

/// Headers the proxy sets on one upstream request, replacing any the client sent.
pub type Set<'a> = &'a [(&'a str, &'a str)];

/// The request line and header block sent to `provider` for one attempt, in HTTP/1.1 wire
/// form. Written straight from the client's header, with no intermediate header map: the
/// forwarded headers are copied once, into the buffer that is sent.
///
/// `set` replaces client headers of the same name; `skip` names client headers that this
/// request must not carry. Credentials, host and framing are always the proxy's.
pub fn upstream_head(
    client: &RequestHeader,
    provider: &Provider,
    path: &str,
    body_len: usize,
    set: Set<'_>,
    skip: &[&str],
) -> Result<Vec<u8>, ProxyError> {
    // A path from config plus the client's request target: refuse anything that could
    // break the request line rather than trust every source to be clean.
    if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProxyError::new(
            ErrorCode::InvalidRequest,
            "the upstream path would not be a valid request target",
        ));
    }
    let hop = connection_named(&client.headers);
    let overridden = |name: &HeaderName| {
        let n = name.as_str();
        dropped(name)
            || hop.contains(name)
            || skip.contains(&n)
            || set.iter().any(|(s, _)| *s == n)
            || provider.auth.as_ref().is_some_and(|(a, _)| a == name)
            || provider.extra_headers.iter().any(|(e, _)| e == name)
    };
    let forwarded: usize = client
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let body_room = if body_len <= COALESCE_MAX {
        body_len
    } else {
        0
    };
    let mut w = Vec::with_capacity(256 + path.len() + forwarded + body_room);
    w.extend_from_slice(client.method.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(path.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        w.extend_from_slice(name);
        w.extend_from_slice(b": ");
        w.extend_from_slice(value);
        w.extend_from_slice(b"\r\n");
    };
    line(b"host", provider.authority.as_bytes());
    for (name, value) in client.headers.iter() {
        if !overridden(name) {
            line(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if let Some((name, value)) = &provider.auth {
        line(name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in &provider.extra_headers {
        line(name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in set {
        line(name.as_bytes(), value.as_bytes());
    }
    // Usage is read from the response, so it must not arrive compressed.
    line(b"accept-encoding", b"identity");
    if body_len > 0 || client.method == http::Method::POST || client.method == http::Method::PUT {
        let mut n = itoa::Buffer::new();
        line(b"content-length", n.format(body_len).as_bytes());
    }
    w.extend_from_slice(b"\r\n");
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_finds_model_and_stream() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model" : "gpt-4o","stream":true}"#;
        let p = probe(body).unwrap().unwrap();
        assert_eq!(p.model, "gpt-4o");
        assert!(p.stream);
        assert_eq!(&body[p.model_span.clone()], b"\"gpt-4o\"");
    }

    #[test]
    fn invalid_utf8_inside_strings_is_refused() {
        for bad in [
            &b"\xff\xfe"[..],
            b"\xc0\xaf",     // overlong '/'
            b"\xed\xa0\x80", // a UTF-16 surrogate
        ] {
            let mut body = br#"{"model":"m","messages":[{"role":"user","content":""#.to_vec();
            body.extend_from_slice(bad);
            body.extend_from_slice(br#""}]}"#);
            assert_eq!(probe(&body).unwrap_err().code, ErrorCode::InvalidRequest);
        }
    }

    #[test]
    fn probe_errors() {
        assert_eq!(
            probe(b"{not json").unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            probe(br#"{"model": 5}"#).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            probe(br#"{"model":"a","model":"b"}"#).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        assert!(probe(br#"{"input":"x"}"#).unwrap().is_none());
        assert!(probe(b"[1,2]").is_err());
        // Found by the `probe` fuzz target: an array fills the struct positionally.
        assert!(probe(br#"["gpt-4o", true]"#).is_err());
        // … and `stream_options` as an array, which the rewrite then indexed as an object.
        assert!(probe(br#"{"model":"m","stream":true,"stream_options":[]}"#).is_err());
    }

    #[test]
    fn usage_is_requested_for_streams_that_did_not_ask() {
        let body = Bytes::from_static(br#" {"model":"a","stream":true,"messages":[]}"#);
        let p = probe(&body).unwrap().unwrap();
        let out = with_usage_requested(&body, &p, Some("b")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "b");
        assert_eq!(v["messages"], serde_json::json!([]));

        let asked = Bytes::from_static(
            br#"{"model":"a","stream":true,"stream_options":{"include_usage":true}}"#,
        );
        assert!(with_usage_requested(&asked, &probe(&asked).unwrap().unwrap(), None).is_none());
        let no_stream = Bytes::from_static(br#"{"model":"a"}"#);
        assert!(
            with_usage_requested(&no_stream, &probe(&no_stream).unwrap().unwrap(), None).is_none()
        );
        let other = Bytes::from_static(br#"{"model":"a","stream":true,"stream_options":{"x":1}}"#);
        let out =
            with_usage_requested(&other, &probe(&other).unwrap().unwrap(), Some("c")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        assert_eq!(v["model"], "c");
    }

    #[test]
    fn splice_keeps_every_other_byte() {
        let body =
            Bytes::from_static(br#"{ "model":"gpt-4o",  "temperature":0.70, "x":"\u00e9" }"#);
        let p = probe(&body).unwrap().unwrap();
        let out = with_model(&body, &p.model_span, Some("llama \"3\""));
        assert_eq!(
            &out.to_bytes()[..],
            br#"{ "model":"llama \"3\"",  "temperature":0.70, "x":"\u00e9" }"#
        );
        // The client's bytes are shared, not copied.
        assert_eq!(out.pieces()[0].as_ptr(), body.as_ptr());
        // unchanged model: the body as it came
        let same = with_model(&body, &p.model_span, Some("gpt-4o"));
        assert_eq!(same.to_bytes().as_ptr(), body.as_ptr());
        let keep = with_model(&body, &p.model_span, None);
        assert_eq!(keep.to_bytes().as_ptr(), body.as_ptr());
    }

    fn provider(base: &str) -> Provider {
        let yaml = format!(
            "providers:\n  p: {{ format: openai, base_url: \"{base}\", api_key: sk-prov }}\n"
        );
        let mut pol =
            crate::config::from_str(&yaml, &crate::config::expand::ProcessEnv, 1).unwrap();
        pol.providers.remove(0)
    }

    #[test]
    fn paths_map_onto_base_url() {
        let p = provider("https://api.groq.com/openai/v1");
        assert_eq!(
            upstream_path(&p, "/v1/chat/completions"),
            "/openai/v1/chat/completions"
        );
        assert_eq!(upstream_path(&p, "/v1/models?x=1"), "/openai/v1/models?x=1");
        assert_eq!(
            upstream_path(&p, "/chat/completions"),
            "/openai/v1/chat/completions"
        );
        let root = provider("http://127.0.0.1:9000");
        assert_eq!(
            upstream_path(&root, "/v1/chat/completions"),
            "/chat/completions"
        );
        assert_eq!(upstream_path(&root, "/v1x"), "/v1x");
    }

    #[test]
    fn header_swaps_credentials_and_host() {
        let p = provider("https://api.openai.com/v1");
        let mut client = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        client
            .insert_header("authorization", "Bearer sk-client")
            .unwrap();
        client.insert_header("x-api-key", "sk-client").unwrap();
        client.insert_header("host", "127.0.0.1:4000").unwrap();
        client.insert_header("content-length", "999").unwrap();
        client.insert_header("expect", "100-continue").unwrap();
        client.insert_header("accept-encoding", "gzip").unwrap();
        client
            .insert_header("openai-beta", "assistants=v2")
            .unwrap();
        client.insert_header("content-type", "text/plain").unwrap();
        client.insert_header("anthropic-beta", "x").unwrap();
        client
            .insert_header("connection", "keep-alive, X-Hop-Only")
            .unwrap();
        client.insert_header("x-hop-only", "secret-ish").unwrap();
        let path = upstream_path(&p, "/v1/chat/completions");
        let set = [("content-type", "application/json")];
        let head = upstream_head(&client, &p, &path, 42, &set, &["anthropic-beta"]).unwrap();
        let head = String::from_utf8(head).unwrap();
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("POST /v1/chat/completions HTTP/1.1"));
        let headers: Vec<&str> = lines.collect();
        for want in [
            "authorization: Bearer sk-prov",
            "host: api.openai.com",
            "content-length: 42",
            "accept-encoding: identity",
            "openai-beta: assistants=v2",
            "content-type: application/json",
        ] {
            assert!(headers.contains(&want), "{want} missing from {headers:?}");
        }
        for gone in [
            "x-api-key",
            "expect",
            "anthropic-beta",
            "content-type: text/plain",
            "x-hop-only",
            "connection",
        ] {
            assert!(!head.contains(gone), "{gone} forwarded: {head}");
        }
        assert!(head.ends_with("\r\n\r\n"));
        // One header line per name, and a head that cannot break the request line.
        assert_eq!(head.matches("authorization").count(), 1);
        assert!(upstream_head(&client, &p, "/a b", 0, &[], &[]).is_err());
    }
}
