//! End to end: the real proxy binary in front of the real mock upstream, over loopback.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn policy(a: &Mock, b: &Mock, extra: &str) -> String {
    format!(
        r#"
providers:
  alpha: {{ format: openai, base_url: "{a}/v1", api_key: sk-alpha, intercept: [api.openai.com] }}
  beta:  {{ format: openai, base_url: "{b}/v1", api_key: sk-beta }}
models:
  small: {{ provider: alpha, name: alpha-small-2024, price: {{ input: 1.0, output: 2.0 }} }}
  big:   {{ provider: alpha, name: alpha-big-2024 }}
  beta-small: {{ provider: beta, name: beta-small-v1 }}
routes:
  - name: chat
    match: {{ model: "gpt-4o*" }}
    strategy: priority
    targets: [small]
    fallbacks: [beta-small]
    retry: {{ attempts: 2, on: [connect, timeout, "429", "5xx"] }}
{extra}"#,
        a = a.url(),
        b = b.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn base_url_mode_rewrites_model_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &[]);
    let b = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&a, &b, ""));

    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .bearer_auth("sk-app-should-never-reach-upstream")
        .json(&json!({"model": "gpt-4o", "temperature": 0.25, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-route"], "chat");
    assert_eq!(resp.headers()["x-switchyard-provider"], "alpha");
    assert_eq!(resp.headers()["x-switchyard-model"], "small");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "alpha-small-2024");

    let seen = a.requests().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["model"], "alpha-small-2024");
    assert_eq!(seen[0]["path"], "/v1/chat/completions");
    assert_eq!(seen[0]["headers"]["authorization"], "Bearer sk-alpha");
    assert_eq!(seen[0]["headers"]["host"], format!("127.0.0.1:{}", a.port));
    assert!(b.requests().await.is_empty());

    // A catalog model with no route of its own goes to its provider.
    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body("beta-small", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-route"], "catalog");
    let seen = b.requests().await;
    assert_eq!(seen[0]["model"], "beta-small-v1");
    assert_eq!(seen[0]["headers"]["authorization"], "Bearer sk-beta");

    // GET /v1/models lists the catalog.
    let models: Value = client()
        .get(format!("{}/v1/models", sc.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"small") && ids.contains(&"beta-small"),
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_proxy_mode_reaches_the_owning_provider() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &[]);
    let b = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&a, &b, ""));
    let via_proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(sc.url()).unwrap())
        .build()
        .unwrap();

    // What an SDK sends with HTTP_PROXY set and an http:// base URL.
    let resp = via_proxy
        .post("http://api.openai.com/v1/chat/completions")
        .bearer_auth("sk-app")
        .json(&chat_body("gpt-4o-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = a.requests().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["model"], "alpha-small-2024");
    assert_eq!(seen[0]["headers"]["authorization"], "Bearer sk-alpha");

    // Model-less calls to a provider's host are forwarded to it, credentials swapped.
    let resp = via_proxy
        .get("http://api.openai.com/v1/models")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let listed: Value = resp.json().await.unwrap();
    assert_eq!(listed["object"], "list");
    let seen = a.requests().await;
    assert_eq!(seen[1]["path"], "/v1/models");
    assert_eq!(seen[1]["headers"]["authorization"], "Bearer sk-alpha");

    // A HEAD answer carries a Content-Length but no body: relayed without waiting for one.
    let head = via_proxy.head("http://api.openai.com/v1/models").send();
    let resp = tokio::time::timeout(Duration::from_secs(5), head)
        .await
        .expect("HEAD answered without waiting for a body")
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Never an open proxy.
    let resp = via_proxy
        .post("http://evil.example.com/v1/chat/completions")
        .json(&chat_body("gpt-4o", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "host_not_allowed");
    assert_eq!(
        sc.metric("switchyard_errors_total{code=\"host_not_allowed\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_openai_shaped_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &[]);
    let b = Mock::start(dir.path(), &[]);
    let sc = start_proxy(
        dir.path(),
        &policy(&a, &b, "server: { max_body_bytes: 65536 }\n"),
    );
    let url = format!("{}/v1/chat/completions", sc.url());

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client().post(&url).body("{\"model\": \"gpt-4o\", "),
            400,
            "invalid_request",
        ),
        (
            client().post(&url).body("not json at all"),
            400,
            "invalid_request",
        ),
        (
            client().post(&url).body("{\"model\": 42}"),
            400,
            "invalid_request",
        ),
        (
            client().post(&url).body("{\"messages\": []}"),
            400,
            "invalid_request",
        ),
        (
            client().post(&url).json(&chat_body("no-such-model", false)),
            404,
            "model_not_found",
        ),
        (
            client().post(&url).body(format!(
                "{{\"model\":\"gpt-4o\",\"pad\":\"{}\"}}",
                "x".repeat(70_000)
            )),
            413,
            "payload_too_large",
        ),
    ];
    for (req, status, code) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // A chunked body over the limit (no Content-Length to reject it early).
    let chunks =
        futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 8192])));
    let resp = client()
        .post(&url)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    assert_eq!(
        sc.metric("switchyard_errors_total{code=\"invalid_request\"}")
            .await,
        4.0
    );
    assert_eq!(
        sc.metric("switchyard_errors_total{code=\"payload_too_large\"}")
            .await,
        2.0
    );
    assert!(
        a.requests().await.is_empty(),
        "nothing bad reached the upstream"
    );
    // Still alive and serving.
    let resp = client()
        .post(&url)
        .json(&chat_body("gpt-4o", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_pass_through_unbuffered() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &["--chunks", "5", "--chunk-delay-ms", "250"]);
    let b = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&a, &b, ""));

    let start = Instant::now();
    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body("gpt-4o", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    let mut first_at = None;
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        first_at.get_or_insert_with(|| start.elapsed());
        text.extend_from_slice(&chunk.unwrap());
    }
    let total = start.elapsed();
    let first = first_at.unwrap();
    // The mock spends 6 × 250 ms between events: a buffering proxy would deliver the first
    // event only at the end.
    assert!(
        total - first >= Duration::from_millis(1000),
        "first event at {first:?}, end at {total:?}"
    );
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.matches("data: ").count(), 5 + 3);
    assert!(text.ends_with("data: [DONE]\n\n"));
    // The proxy asked the upstream for usage; the client, who did not, never sees it…
    assert!(!text.contains("\"choices\":[]"), "{text}");
    assert_eq!(
        a.requests().await[0]["body"]["stream_options"]["include_usage"],
        true
    );
    // …but it is counted.
    let out = "switchyard_tokens_total{model=\"small\",provider=\"alpha\",team=\"default\",type=\"output\"}";
    assert_eq!(sc.metric(out).await, 5.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_stream_is_accounted() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &["--chunks", "50", "--chunk-delay-ms", "40"]);
    let b = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&a, &b, ""));
    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body("gpt-4o", true))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut seen = 0;
    while let Some(Ok(c)) = stream.next().await {
        seen += String::from_utf8_lossy(&c)
            .matches("\"content\":\"")
            .count();
        if seen >= 4 {
            break;
        }
    }
    drop(stream);
    let start = Instant::now();
    while sc
        .metric("switchyard_streams_interrupted_total{side=\"client\"}")
        .await
        < 1.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "client cut never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sc.metric("switchyard_partial_usage_total{model=\"small\",provider=\"alpha\"}")
            .await,
        1.0
    );
    let out = sc
        .metric("switchyard_tokens_total{model=\"small\",provider=\"alpha\",team=\"default\",type=\"output\"}")
        .await;
    assert!((4.0..50.0).contains(&out), "partial output tokens {out}");
    assert_eq!(sc.metric("switchyard_in_flight_requests").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn falls_back_from_a_dead_provider_and_from_a_503_with_a_1mib_body() {
    let dir = tempfile::tempdir().unwrap();
    let dead_port = free_port(); // nothing listens here
    let failing = Mock::start(dir.path(), &["--status", "503", "--retry-after", "7"]);
    let good = Mock::start(dir.path(), &[]);
    let yaml = format!(
        r#"
providers:
  dead: {{ format: openai, base_url: "http://127.0.0.1:{dead_port}/v1", api_key: sk-dead }}
  failing: {{ format: openai, base_url: "{f}/v1", api_key: sk-failing }}
  good: {{ format: openai, base_url: "{g}/v1", api_key: sk-good }}
models:
  m-dead: {{ provider: dead, name: dead-model }}
  m-failing: {{ provider: failing, name: failing-model }}
  m-good: {{ provider: good, name: good-model }}
  # The same provider under other names: each name has health of its own, and the 503
  # above (Retry-After: 7) takes m-failing out of service for 7 s.
  m-failing-b: {{ provider: failing, name: failing-model }}
  m-failing-c: {{ provider: failing, name: failing-model }}
routes:
  - name: from-dead
    match: {{ model: dead-first }}
    strategy: priority
    targets: [m-dead]
    fallbacks: [m-good]
  - name: from-503
    match: {{ model: failing-first }}
    strategy: priority
    targets: [m-failing, m-good]
  - name: all-failing
    match: {{ model: only-failing }}
    strategy: priority
    targets: [m-dead, m-failing-b]
  - name: no-retry-on-5xx
    match: {{ model: strict }}
    strategy: priority
    targets: [m-failing-c, m-good]
    retry: {{ on: [connect] }}
"#,
        f = failing.url(),
        g = good.url()
    );
    let sc = start_proxy(dir.path(), &yaml);
    let url = format!("{}/v1/chat/completions", sc.url());

    let resp = client()
        .post(&url)
        .json(&chat_body("dead-first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "good");

    // 1 MiB of prompt: far beyond Pingora's 64 KiB retry buffer.
    let big = "lorem ipsum ".repeat(1024 * 1024 / 12 + 1);
    let body = json!({"model": "failing-first", "messages": [{"role": "user", "content": big}]});
    let resp = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "good");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "good-model");

    let f_seen = failing.requests().await;
    assert_eq!(f_seen.len(), 1);
    assert_eq!(f_seen[0]["model"], "failing-model");
    assert_eq!(f_seen[0]["headers"]["authorization"], "Bearer sk-failing");
    let g_seen = good.requests().await;
    assert_eq!(g_seen.len(), 2);
    assert_eq!(g_seen[1]["model"], "good-model");
    assert_eq!(g_seen[1]["headers"]["authorization"], "Bearer sk-good");
    assert!(g_seen[1]["body_bytes"].as_u64().unwrap() > 1024 * 1024);

    // The final attempt's upstream error passes through unchanged.
    let resp = client()
        .post(&url)
        .json(&chat_body("only-failing", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "mock upstream forced status 503");

    // retry.on without 5xx: the 503 is the answer.
    let resp = client()
        .post(&url)
        .json(&chat_body("strict", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);

    let m = sc.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "switchyard_upstream_attempts_total{outcome=\"connect_error\",provider=\"dead\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &m,
            "switchyard_upstream_attempts_total{outcome=\"status_5xx\",provider=\"failing\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_value(&m, "switchyard_fallbacks_total{route=\"from-503\"}"),
        1.0
    );

    // Every target dead: 502 upstream_unavailable from the proxy itself.
    let yaml2 = yaml.replace("targets: [m-dead, m-failing-b]", "targets: [m-dead]");
    write_policy(&sc.config, sc.port, sc.admin, &yaml2);
    sc.wait_generation(2).await;
    let resp = client()
        .post(&url)
        .json(&chat_body("only-failing", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_byte_timeout_is_a_504() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Mock::start(dir.path(), &["--latency-ms", "3000"]);
    let b = Mock::start(dir.path(), &[]);
    let yaml = format!(
        r#"
providers:
  slow: {{ format: openai, base_url: "{s}/v1" }}
  fast: {{ format: openai, base_url: "{b}/v1" }}
models:
  m-slow: {{ provider: slow }}
  m-fast: {{ provider: fast }}
routes:
  - name: slow-only
    match: {{ model: slow-only }}
    strategy: priority
    targets: [m-slow]
    timeouts: {{ first_byte: 300ms }}
  - name: slow-then-fast
    match: {{ model: slow-then-fast }}
    strategy: priority
    targets: [m-slow, m-fast]
    timeouts: {{ first_byte: 300ms }}
"#,
        s = slow.url(),
        b = b.url()
    );
    let sc = start_proxy(dir.path(), &yaml);
    let url = format!("{}/v1/chat/completions", sc.url());
    let resp = client()
        .post(&url)
        .json(&chat_body("slow-only", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    let resp = client()
        .post(&url)
        .json(&chat_body("slow-then-fast", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "fast");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_dying_mid_stream_cuts_the_client_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(
        dir.path(),
        &[
            "--chunks",
            "10",
            "--drop-after",
            "3",
            "--chunk-delay-ms",
            "20",
        ],
    );
    let b = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&a, &b, ""));
    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body("gpt-4o", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed,
        "the client must see the stream break, not a clean end"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("[DONE]"));
    assert_eq!(
        sc.metric("switchyard_streams_interrupted_total{side=\"upstream\"}")
            .await,
        1.0
    );
    // Still accounted: the three content deltas that reached the client, flagged partial.
    assert_eq!(
        sc.metric("switchyard_partial_usage_total{model=\"small\",provider=\"alpha\"}")
            .await,
        1.0
    );
    assert_eq!(
        sc.metric("switchyard_tokens_total{model=\"small\",provider=\"alpha\",team=\"default\",type=\"output\"}").await,
        3.0
    );
    // The proxy is still fine.
    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .header("x-mock-drop-after", "1000")
        .json(&chat_body("gpt-4o", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_hosts_are_forwarded_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &[]);
    let b = Mock::start(dir.path(), &[]);
    let other = Mock::start(dir.path(), &[]);
    let extra = format!("passthrough: [\"localhost:{}\"]\n", other.port);
    let sc = start_proxy(dir.path(), &policy(&a, &b, &extra));
    let via_proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(sc.url()).unwrap())
        .build()
        .unwrap();
    let resp = via_proxy
        .post(format!(
            "http://localhost:{}/v1/chat/completions",
            other.port
        ))
        .bearer_auth("sk-app-own-key")
        .json(&chat_body("whatever-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = other.requests().await;
    assert_eq!(seen[0]["model"], "whatever-model");
    assert_eq!(seen[0]["headers"]["authorization"], "Bearer sk-app-own-key");
    assert_eq!(
        sc.metric("switchyard_passthrough_requests_total{status=\"200\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &[]);
    let b = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&a, &b, ""));
    client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body("gpt-4o", false))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sc.wait_idle().await;
    let m = sc.metrics().await;
    for name in [
        "switchyard_requests_total{model=\"small\",provider=\"alpha\",route=\"chat\",status=\"200\"} 1",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_upstream_attempts_total{outcome=\"ok\",provider=\"alpha\"} 1",
        "switchyard_in_flight_requests 0",
        "switchyard_config_generation 1",
        "switchyard_proxy_overhead_seconds_count{route=\"chat\"} 1",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    // Tokens as the upstream reported them: JSON body, then an SSE stream's usage chunk.
    let out = "switchyard_tokens_total{model=\"small\",provider=\"alpha\",team=\"default\",type=\"output\"}";
    let input = "switchyard_tokens_total{model=\"small\",provider=\"alpha\",team=\"default\",type=\"input\"}";
    assert_eq!(metric_value(&m, out), 8.0, "{m}");
    assert_eq!(metric_value(&m, input), 10.0);
    // 10 input × $1/M + 8 output × $2/M = 26 micro-dollars.
    let cost = "switchyard_cost_usd_total{model=\"small\",provider=\"alpha\",team=\"default\"}";
    assert!((metric_value(&m, cost) - 0.000026).abs() < 1e-12, "{m}");
    let mut body = chat_body("gpt-4o", true);
    body["stream_options"] = json!({"include_usage": true});
    let text = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .header("x-mock-chunks", "5")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    sc.wait_idle().await;
    assert_eq!(sc.metric(out).await, 13.0);
    assert_eq!(
        sc.metric("switchyard_time_to_first_token_seconds_count{route=\"chat\"}")
            .await,
        1.0
    );
    assert_eq!(sc.metric(input).await, 20.0);
    let cfg: Value = reqwest::get(format!("{}/config", sc.admin_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["generation"], 1);
    assert_eq!(cfg["policy"]["providers"]["alpha"]["api_key"], "<redacted>");
    assert!(!cfg.to_string().contains("sk-alpha"));
    assert_eq!(
        reqwest::get(format!("{}/healthz", sc.admin_url()))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", sc.admin_url()))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn check_prints_the_table_or_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "providers:\n  p: { format: openai, base_url: \"http://127.0.0.1:1/v1\" }\nmodels:\n  m: { provider: p }\nroutes:\n  - { name: r, match: { model: \"x*\" }, strategy: priority, targets: [m] }\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("routes (first match wins)") && text.contains("model=x*"),
        "{text}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "providers:\n  p: { format: openai, base_url: \"http://127.0.0.1:1/v1\" }\nmodels:\n  m: { provider: p }\nroutes:\n  - { name: r, strategy: priority, targets: [nope] }\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0].targets[0].model") && err.contains("nope"),
        "{err}"
    );

    // The shipped examples (policy and collector) validate.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/example.yaml");
    let collector = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/collector.yaml");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", example, "--collector", collector])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_answered_before_the_body() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &[]);
    let b = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&a, &b, ""));
    let body = serde_json::to_vec(
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "y".repeat(2 << 20)}]}),
    )
    .unwrap();
    let port = sc.port;
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .unwrap();
        let mut buf = [0u8; 25];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(&body).unwrap();
        let mut resp = [0u8; 12];
        s.read_exact(&mut resp).unwrap();
        assert_eq!(&resp, b"HTTP/1.1 200");
    })
    .await
    .unwrap();
    let seen = a.requests().await;
    assert!(
        seen[0]["headers"].get("expect").is_none(),
        "Expect is never forwarded"
    );
}
