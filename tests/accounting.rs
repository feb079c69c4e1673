//! Metering across OpenAI's endpoints: legacy completions (JSON and streamed, usage asked
//! for and hidden again), moderations (free, counted as requests), and an answer with no
//! usage at all, which is counted as unmetered rather than passing silently.

mod common;

use common::*;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn policy(mock: &Mock) -> String {
    format!(
        r#"
providers:
  alpha: {{ format: openai, base_url: "{}/v1", api_key: sk-alpha }}
models:
  small: {{ provider: alpha, name: alpha-small, price: {{ input: 1.0, output: 2.0 }} }}
routes:
  - {{ name: main, match: {{ model: "gpt-*" }}, strategy: priority, targets: [small] }}
"#,
        mock.url()
    )
}

const LABELS: &str = r#"model="small",provider="alpha",team="default""#;

#[tokio::test(flavor = "multi_thread")]
async fn legacy_completions_moderations_and_unmetered_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "5"]);
    let sc = start_proxy(dir.path(), &policy(&mock));
    let post = |path: &str, body: Value| {
        client()
            .post(format!("{}{path}", sc.url()))
            .json(&body)
            .send()
    };

    // Legacy completions: "Say hello" is 3 mock tokens in, 5 words out.
    let r: Value = post(
        "/v1/completions",
        json!({"model": "gpt-x", "prompt": "Say hello"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(r["usage"]["completion_tokens"], 5);
    sc.wait_idle().await;
    let tokens = |kind: &str| format!(r#"switchyard_tokens_total{{{LABELS},type="{kind}"}}"#);
    assert_eq!(sc.metric(&tokens("input")).await, 3.0);
    assert_eq!(sc.metric(&tokens("output")).await, 5.0);

    // Streamed, without include_usage: the proxy asks for usage and hides the extra chunk.
    let text = post(
        "/v1/completions",
        json!({"model": "gpt-x", "prompt": "Say hello", "stream": true}),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(!text.contains("\"usage\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        mock.requests().await[1]["body"]["stream_options"],
        json!({"include_usage": true})
    );
    sc.wait_idle().await;
    assert_eq!(sc.metric(&tokens("output")).await, 10.0);
    // 6 in × $1 + 10 out × $2 per million, exactly.
    let cost = sc
        .metric(&format!("switchyard_cost_usd_total{{{LABELS}}}"))
        .await;
    assert!((cost - 0.000026).abs() < 1e-15, "{cost}");

    // Moderations: free by design, counted as a request, not as a gap.
    let r = post("/v1/moderations", json!({"model": "gpt-x", "input": "hi"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An image generation reports no usage: counted as unmetered, by endpoint.
    let r = post(
        "/v1/images/generations",
        json!({"model": "gpt-x", "prompt": "a cat"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    sc.wait_idle().await;
    assert_eq!(
        sc.metric(
            r#"switchyard_requests_total{model="small",provider="alpha",route="main",status="200"}"#
        )
        .await,
        4.0
    );
    assert_eq!(
        sc.metric(r#"switchyard_unmetered_requests_total{path="/v1/images/generations"}"#)
            .await,
        1.0
    );
    let m = sc.metrics().await;
    assert!(!m.contains(r#"path="/v1/moderations""#), "{m}");
    assert!(!m.contains(r#"path="/v1/completions""#), "{m}");
}
