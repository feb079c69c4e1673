//! Hostile and careless clients, on raw sockets: slow and silent connections, bad framing,
//! secrets in config errors, hop-by-hop headers, invalid UTF-8, memory pressure. Each test
//! is a defect found by hand that the proxy must not have.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const KEY: &str = "sk-upstream-Abc123Def456Ghi789";

fn policy(mock: &Mock, server: &str) -> String {
    format!(
        r#"
server: {{ {server} }}
providers:
  alpha: {{ format: openai, base_url: "{}/v1", api_key: "{KEY}", intercept: [api.openai.com] }}
models:
  small: {{ provider: alpha, name: alpha-small-2024 }}
routes:
  - {{ name: chat, match: {{ model: "gpt-4o*" }}, strategy: priority, targets: [small] }}
"#,
        mock.url()
    )
}

/// Short client limits so slow-client tests take seconds, not minutes.
const SHORT: &str = "header_timeout: 1s, body_timeout: 1s, idle_timeout: 1s";

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response (head and a Content-Length body); `None` on EOF before a response.
fn read_response(s: &mut TcpStream) -> Option<(u16, String, Value)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some((status, head, json))
}

/// Sends raw bytes on a new connection and reads the answer.
fn raw(port: u16, bytes: &[u8]) -> (u16, String, Value) {
    let mut s = connect(port);
    s.write_all(bytes).unwrap();
    read_response(&mut s).expect("an answer")
}

/// True once the peer has closed the connection (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn chat(model: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&chat_body(model, false)).unwrap();
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

fn assert_json_error(resp: &(u16, String, Value), status: u16, code: &str) {
    assert_eq!(resp.0, status, "{}\n{}", resp.1, resp.2);
    assert_eq!(resp.2["error"]["code"], code, "{}", resp.2);
    assert!(
        resp.1
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        resp.1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_silent_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&mock, SHORT));
    let port = sc.port;
    tokio::task::spawn_blocking(move || {
        // A kept-alive connection that starts a second header and goes silent.
        let mut s = connect(port);
        s.write_all(&chat("gpt-4o")).unwrap();
        assert_eq!(read_response(&mut s).unwrap().0, 200);
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHo")
            .unwrap();
        let start = Instant::now();
        let resp = read_response(&mut s).expect("a 408 before the close");
        assert_json_error(&resp, 408, "request_timeout");
        assert!(closed_within(&mut s, Duration::from_secs(3)));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );

        // An idle kept-alive connection is closed after idle_timeout.
        let mut s = connect(port);
        s.write_all(&chat("gpt-4o")).unwrap();
        assert_eq!(read_response(&mut s).unwrap().0, 200);
        let start = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(4)));
        assert!(start.elapsed() < Duration::from_secs(3));

        // Header tricklers, one byte every 200 ms: every read makes progress, so only a
        // deadline on the whole header block stops them.
        let mut tricklers: Vec<TcpStream> = (0..50).map(|_| connect(port)).collect();
        let start = Instant::now();
        let text =
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaa";
        let mut open = tricklers.len();
        'outer: for &b in text.iter() {
            open = 0;
            for s in tricklers.iter_mut() {
                if s.write_all(&[b]).is_ok() {
                    open += 1;
                }
            }
            if start.elapsed() > Duration::from_secs(4) {
                break 'outer;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = open;
        for s in tricklers.iter_mut() {
            assert!(
                closed_within(s, Duration::from_millis(500)),
                "a trickling client is still held after {:?}",
                start.elapsed()
            );
        }

        // A body trickled past body_timeout: 408 too.
        let mut s = connect(port);
        s.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mo",
        )
        .unwrap();
        let resp = read_response(&mut s).expect("a 408 for the body");
        assert_json_error(&resp, 408, "request_timeout");
    })
    .await
    .unwrap();
    assert!(
        sc.metric("switchyard_client_connections_closed_total{reason=\"header_timeout\"}")
            .await
            >= 51.0
    );
    assert_eq!(
        sc.metric("switchyard_client_connections_closed_total{reason=\"idle_timeout\"}")
            .await,
        1.0
    );
    // Nothing reached the upstream but the two complete requests.
    assert_eq!(mock.requests().await.len(), 2);
    // Slow clients are counted, not logged as errors.
    let log = sc.proc.log_text();
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_json_and_framing_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&mock, ""));
    let port = sc.port;
    let admin = sc.admin;
    tokio::task::spawn_blocking(move || {
        let cases: &[(&[u8], u16, &str)] = &[
            (b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n", 405, "method_not_allowed"),
            (b"POST http://user:sk-x@api.openai.com/v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 2\r\n\r\n{}", 400, "invalid_request"),
            (b"POST http://api.openai.com/v1/chat/completions HTTP/1.1\r\nHost: evil.example.com\r\nContent-Length: 2\r\n\r\n{}", 400, "invalid_request"),
            (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400, "invalid_request"),
            (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a b\r\nContent-Length: 2\r\n\r\n{}", 400, "invalid_request"),
            (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "invalid_request"),
            (b"NOT HTTP AT ALL\r\n\r\n", 400, "invalid_request"),
        ];
        for (req, status, code) in cases {
            let resp = raw(port, req);
            assert_json_error(&resp, *status, code);
            assert!(!resp.2["error"]["message"].as_str().unwrap().is_empty());
        }
        // Anthropic clients get Anthropic's error shape, code kept.
        let resp = raw(port, b"POST /v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(resp.0, 400);
        assert_eq!(resp.2["type"], "error");
        assert_eq!(resp.2["error"]["code"], "invalid_request");
        // A header block over the limit.
        let big = format!("GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(70_000));
        assert_json_error(&raw(port, big.as_bytes()), 431, "header_too_large");

        // The admin listener: the same checks, GET and HEAD only.
        let resp = raw(admin, b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_json_error(&resp, 405, "method_not_allowed");
        assert!(resp.1.to_ascii_lowercase().contains("allow: get, head"), "{}", resp.1);
        let junk = format!("GET /{} HTTP/1.1\r\nHost: \x01\r\n\r\n", "x".repeat(3000));
        assert_json_error(&raw(admin, junk.as_bytes()), 400, "invalid_request");
        assert_eq!(raw(admin, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").0, 200);
    })
    .await
    .unwrap();
    assert!(
        mock.requests().await.is_empty(),
        "nothing refused reached the upstream"
    );
    let log = sc.proc.log_text();
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_and_invalid_utf8_never_reach_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&mock, ""));
    let port = sc.port;
    tokio::task::spawn_blocking(move || {
        let body = serde_json::to_vec(&chat_body("gpt-4o", false)).unwrap();
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop-Only\r\nX-Hop-Only: private\r\nX-Kept: yes\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        assert_eq!(raw(port, &req).0, 200);

        for bad in [&b"\xff\xfe"[..], b"\xc0\xaf", b"\xed\xa0\x80"] {
            let mut body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"#.to_vec();
            body.extend_from_slice(bad);
            body.extend_from_slice(br#""}]}"#);
            let mut req = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(&body);
            assert_json_error(&raw(port, &req), 400, "invalid_request");
        }

        // An unknown model a megabyte long is not echoed whole.
        let long = "m".repeat(1 << 20);
        let body = serde_json::to_vec(&chat_body(&long, false)).unwrap();
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let resp = raw(port, &req);
        assert_json_error(&resp, 404, "model_not_found");
        assert!(resp.2.to_string().len() < 1024, "{}", resp.2.to_string().len());
    })
    .await
    .unwrap();
    let seen = mock.requests().await;
    assert_eq!(seen.len(), 1, "only the valid request was forwarded");
    assert!(
        seen[0]["headers"].get("x-hop-only").is_none(),
        "{}",
        seen[0]
    );
    assert_eq!(seen[0]["headers"]["x-kept"], "yes");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_share_a_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let sc = start_proxy(
        dir.path(),
        &policy(
            &mock,
            "max_body_bytes: 1000000, max_body_memory_bytes: 1500000, body_timeout: 30s",
        ),
    );
    let port = sc.port;
    tokio::task::spawn_blocking(move || {
        // One client declares a large body and stalls after a few bytes: its declared
        // length is held for it.
        let mut staller = connect(port);
        staller
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 900000\r\n\r\n{\"model\":")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // A second that would go past the shared cap is refused at once, retryable.
        let pad = "p".repeat(700_000);
        let body = format!(r#"{{"model":"gpt-4o","messages":[],"pad":"{pad}"}}"#);
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let resp = raw(port, req.as_bytes());
        assert_json_error(&resp, 503, "overloaded");
        assert!(resp.1.to_ascii_lowercase().contains("retry-after: 1"), "{}", resp.1);
        // A small one still fits beside the staller.
        assert_eq!(raw(port, &chat("gpt-4o")).0, 200);
        // Once the staller is gone, its memory is free again.
        drop(staller);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(raw(port, req.as_bytes()).0, 200);
    })
    .await
    .unwrap();
    sc.wait_idle().await;
    assert_eq!(sc.metric("switchyard_request_body_memory_bytes").await, 0.0);
}

/// `switchyard check` on a policy file: its exit code and what it printed on stderr.
fn check(path: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn config_errors_never_print_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "sk-proj-Zyx987Wvu654Tsr321";
    let path = dir.path().join("p.yaml");
    // The api_key line dedented by two spaces.
    std::fs::write(
        &path,
        format!("providers:\n  openai:\n    format: openai\n    base_url: https://api.openai.com/v1\n  api_key: \"{secret}\"\n"),
    )
    .unwrap();
    let (code, err) = check(&path);
    assert_eq!(code, Some(1));
    assert!(err.contains("providers.api_key"), "{err}");
    assert!(!err.contains("Zyx987"), "{err}");

    // Credentials inside base_url: refused, and not echoed.
    std::fs::write(
        &path,
        format!("providers:\n  p: {{ format: openai, base_url: \"http://me:{secret}@api.example.com/v1\" }}\n"),
    )
    .unwrap();
    let (code, err) = check(&path);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("providers.p.base_url") && err.contains("credentials"),
        "{err}"
    );
    assert!(!err.contains("Zyx987"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_error_does_not_log_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&mock, ""));
    let broken = format!(
        "providers:\n  alpha:\n    format: openai\n    base_url: {}/v1\n  api_key: \"{KEY}\"\n",
        mock.url()
    );
    write_policy(&sc.config, sc.port, sc.admin, &broken);
    sc.wait_metric(
        "switchyard_config_reloads_total{result=\"error\"}",
        1.0,
        "reload never tried",
    )
    .await;
    let log = sc.proc.log_text();
    assert!(log.contains("providers.api_key"), "{log}");
    assert!(!log.contains("Abc123"), "{log}");
}
