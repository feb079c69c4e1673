//! What a request header must be before Pingora sees it. Pingora refuses a malformed or
//! ambiguous header with a bare, empty-bodied 400 (405 for CONNECT); a client of
//! Switchyard gets the documented JSON instead, so the front door (`conn`) checks the
//! header block here first, with the same parser Pingora uses (httparse) and at least
//! Pingora's rules. The fuzz target `head` holds it to that: whatever this accepts,
//! Pingora's own reader accepts too.

use crate::error::{ErrorCode, ProxyError};
use std::mem::MaybeUninit;

/// As many header lines as Pingora's reader takes.
const MAX_HEADERS: usize = 256;

#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The header block is complete and acceptable; it is this many bytes long.
    Complete(usize),
    /// More bytes are needed.
    Partial,
}

/// Checks the bytes read so far from a connection.
pub fn check(buf: &[u8]) -> Result<Head, ProxyError> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Head::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::new(
                ErrorCode::HeaderTooLarge,
                format!("more than {MAX_HEADERS} header lines"),
            ))
        }
        Err(e) => return Err(bad(format!("malformed request header: {e}"))),
    };
    let method = req.method.unwrap_or("");
    if method == "CONNECT" {
        return Err(ProxyError::new(
            ErrorCode::MethodNotAllowed,
            "CONNECT tunnels are not supported: send plain http:// requests through \
             HTTP_PROXY, or point the SDK's base URL at Switchyard",
        ));
    }
    let http11 = req.version == Some(1);
    let mut host: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(bad("more than one Host header"));
            }
            host = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',') {
                let n = parse_length(v.trim_ascii())
                    .ok_or_else(|| bad("Content-Length is not a number"))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(bad("conflicting Content-Length values"));
                }
                content_length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last header's last coding is the one that frames the body.
            transfer_encoding = Some(h.value);
        }
    }
    if let Some(te) = transfer_encoding {
        if !http11 {
            return Err(bad("HTTP/1.0 requests cannot use Transfer-Encoding"));
        }
        let last = te.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
        if !last.eq_ignore_ascii_case(b"chunked") {
            return Err(bad("the final Transfer-Encoding must be chunked"));
        }
    }
    match host {
        // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
        None if http11 => return Err(bad("HTTP/1.1 request without a Host header")),
        Some(h) if !h.is_empty() && !is_authority(h) => {
            return Err(bad("the Host header is not a valid host[:port]"))
        }
        _ => {}
    }
    check_target(req.path.unwrap_or("").as_bytes(), host)?;
    Ok(Head::Complete(len))
}

fn bad(message: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::InvalidRequest, message)
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Origin-form (`/v1/...`), asterisk-form, or an absolute `http://` URL whose authority is
/// exactly the Host header (what every HTTP_PROXY client sends).
fn check_target(target: &[u8], host: Option<&[u8]>) -> Result<(), ProxyError> {
    if !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(bad("the request target must be printable ASCII"));
    }
    if target == b"*" {
        return Ok(());
    }
    if target.first() == Some(&b'/') {
        return check_path(target);
    }
    use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
    match raw_target_authority(target) {
        RawTargetAuthority::Absolute {
            scheme,
            authority,
            path_and_query,
        } if scheme.eq_ignore_ascii_case(b"http") => {
            if !path_and_query.is_empty() && path_and_query[0] == b'/' {
                check_path(path_and_query)?;
            } else if !path_and_query.is_empty() {
                // `http://host?q`: Pingora anchors the query to `/`.
                let mut rooted = Vec::with_capacity(path_and_query.len() + 1);
                rooted.push(b'/');
                rooted.extend_from_slice(path_and_query);
                check_path(&rooted)?;
            }
            if authority.contains(&b'@') {
                return Err(bad(
                    "credentials (user@) in the request URL are not accepted",
                ));
            }
            if authority.is_empty() || !is_authority(authority) {
                return Err(bad("the request URL's host is not a valid host[:port]"));
            }
            if host.is_some_and(|h| h != authority) {
                return Err(bad("the Host header differs from the request URL's host"));
            }
            Ok(())
        }
        RawTargetAuthority::Absolute { .. } => Err(bad(
            "only http:// request URLs are proxied (no https://: use the SDK's base URL)",
        )),
        _ => Err(bad("the request target must be a path or an http:// URL")),
    }
}

/// The path and query as the `http` crate (and so Pingora) parses them: a few printable
/// characters (a backtick, `<`, `>`…) are not allowed in a URL.
fn check_path(path_and_query: &[u8]) -> Result<(), ProxyError> {
    http::uri::PathAndQuery::try_from(path_and_query)
        .map(drop)
        .map_err(|_| bad("the request path has characters a URL may not carry"))
}

/// `host[:port]`: a registered name, IPv4 or bracketed IPv6, and an optional numeric port.
pub fn is_authority(a: &[u8]) -> bool {
    let (host, port) = match a.first() {
        Some(b'[') => match a.iter().position(|&b| b == b']') {
            Some(end) => {
                let inner = &a[1..end];
                if inner.is_empty()
                    || !inner
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                {
                    return false;
                }
                (&a[..=end], &a[end + 1..])
            }
            None => return false,
        },
        _ => match a.iter().position(|&b| b == b':') {
            Some(i) => (&a[..i], &a[i..]),
            None => (a, &a[a.len()..]),
        },
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    let host_ok = !host.is_empty()
        && (host[0] == b'['
            || host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(req: &str) -> &'static str {
        match check(req.as_bytes()) {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        }
    }

    #[test]
    fn accepts_what_clients_send() {
        let req = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:4000\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            check(req.as_bytes()).unwrap(),
            Head::Complete(req.len() - 2)
        );
        assert_eq!(
            code("POST http://api.openai.com/v1/x HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"),
            "ok"
        );
        assert_eq!(code("GET /x HTTP/1.0\r\n\r\n"), "ok");
        assert_eq!(code("GET /x HTTP/1.1\r\nHost: [::1]:4000\r\n\r\n"), "ok");
        assert_eq!(
            code("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
            "ok"
        );
        assert_eq!(
            code("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            "ok"
        );
        assert_eq!(
            check(b"POST /v1/chat HTTP/1.1\r\nHo").unwrap(),
            Head::Partial
        );
    }

    #[test]
    fn refuses_with_a_code() {
        for (req, want) in [
            (
                "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n",
                "method_not_allowed",
            ),
            ("POST /x HTTP/1.1\r\n\r\n", "invalid_request"),
            ("POST /x HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid_request"),
            (
                "POST /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "invalid_request",
            ),
            (
                "POST http://u:p@api.openai.com/x HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
                "invalid_request",
            ),
            (
                "POST http://api.openai.com/x HTTP/1.1\r\nHost: evil.com\r\n\r\n",
                "invalid_request",
            ),
            (
                "POST https://api.openai.com/x HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
                "invalid_request",
            ),
            (
                "POST http:/\\evil.com/x HTTP/1.1\r\nHost: evil.com\r\n\r\n",
                "invalid_request",
            ),
            (
                "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
                "invalid_request",
            ),
            (
                "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                "invalid_request",
            ),
            (
                "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "invalid_request",
            ),
            (
                "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "invalid_request",
            ),
            (
                "POST /x HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
                "invalid_request",
            ),
            ("GARBAGE\r\n\r\n", "invalid_request"),
            ("POST /v`1/x HTTP/1.1\r\nHost: a\r\n\r\n", "invalid_request"),
            (
                "POST hTtp://a/v`1 HTTP/1.1\r\nHost: a\r\n\r\n",
                "invalid_request",
            ),
        ] {
            assert_eq!(code(req), want, "{req:?}");
        }
        let many: String = (0..300).map(|i| format!("x-{i}: y\r\n")).collect();
        assert_eq!(
            code(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            "header_too_large"
        );
    }
}
