//! Upstream keep-alive through `upstream::Pool`, against a hand-written HTTP/1.1 upstream
//! whose connection handling the test controls: connections are reused while open, and one
//! the provider closed while idle is never handed to a request.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ANSWER: &str = r#"{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

/// An OpenAI-shaped upstream answering every request on a connection; with `close_idle`
/// set it closes each connection shortly after answering, as providers do with idle
/// keep-alive connections (without saying so in a `Connection: close` header).
async fn upstream(close_idle: Option<Duration>) -> (u16, Arc<AtomicUsize>) {
    upstream_with(close_idle, "").await
}

/// The same, sending `informational` (1xx answers) ahead of every response.
async fn upstream_with(
    close_idle: Option<Duration>,
    informational: &'static str,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(conn, close_idle, informational));
        }
    });
    (port, accepted)
}

async fn serve(mut conn: TcpStream, close_idle: Option<Duration>, informational: &str) {
    let mut buf = Vec::new();
    loop {
        // One request: header, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        let resp = format!(
            "{informational}HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            ANSWER.len(),
            ANSWER
        );
        if conn.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        if let Some(after) = close_idle {
            tokio::time::sleep(after).await;
            return;
        }
    }
}

fn policy(port: u16) -> String {
    format!(
        r#"
providers:
  up: {{ format: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: sk-up }}
models:
  m: {{ provider: up, name: m }}
routes:
  - {{ name: chat, match: {{ model: "*" }}, strategy: priority, targets: [m] }}
"#
    )
}

async fn ask(client: &reqwest::Client, sc: &Sidecar) -> u16 {
    client
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body("m", false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn sequential_requests_share_one_upstream_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (port, accepted) = upstream(None).await;
    let sc = start_proxy(dir.path(), &policy(port));
    let client = reqwest::Client::new();
    for _ in 0..20 {
        assert_eq!(ask(&client, &sc).await, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        sc.metric("switchyard_upstream_connects_total{provider=\"up\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_provider_closed_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (port, accepted) = upstream(Some(Duration::from_millis(50))).await;
    let sc = start_proxy(dir.path(), &policy(port));
    let client = reqwest::Client::new();
    for round in 1..=5 {
        assert_eq!(ask(&client, &sc).await, 200, "request {round}");
        // The provider closes the idle connection; the next request needs a new one.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    let attempts = sc
        .metric("switchyard_upstream_attempts_total{outcome=\"ok\",provider=\"up\"}")
        .await;
    // Detected when taken from the pool: no attempt was made on a dead connection.
    assert_eq!(attempts, 5.0);
    let failed = sc
        .metric("switchyard_upstream_attempts_total{outcome=\"error\",provider=\"up\"}")
        .await;
    assert_eq!(failed, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn informational_answers_before_the_response_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let early = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n";
    let (port, accepted) = upstream_with(None, early).await;
    let sc = start_proxy(dir.path(), &policy(port));
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let resp = client
            .post(format!("{}/v1/chat/completions", sc.url()))
            .json(&chat_body("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "ok");
    }
    // The connection stayed usable across the informational answers.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
