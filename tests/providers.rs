//! End to end across wire formats: Azure OpenAI paths and keys, and a route that falls
//! back from an OpenAI-format provider to an Anthropic one, each attempt with its own body.

mod common;

use common::*;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_openai_deployment_path_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mock::start(dir.path(), &[]);
    let yaml = format!(
        r#"
providers:
  azure: {{ format: azure-openai, base_url: "{u}", api_key: az-secret, api_version: "2024-06-01" }}
models:
  gpt-4o: {{ provider: azure, name: prod-gpt4o }}
  embed: {{ provider: azure, name: prod-embed }}
"#,
        u = m.url()
    );
    let sc = start_proxy(dir.path(), &yaml);
    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .bearer_auth("sk-app")
        .json(&chat_body("gpt-4o", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .post(format!("{}/v1/embeddings", sc.url()))
        .json(&json!({"model": "embed", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = m.requests().await;
    assert_eq!(
        seen[0]["path"],
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-06-01"
    );
    assert_eq!(seen[0]["headers"]["api-key"], "az-secret");
    assert!(seen[0]["headers"].get("authorization").is_none());
    assert_eq!(
        seen[1]["path"],
        "/openai/deployments/prod-embed/embeddings?api-version=2024-06-01"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn falls_back_from_openai_format_to_anthropic() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Mock::start(dir.path(), &["--status", "503"]);
    let anth = Mock::start(dir.path(), &[]);
    let yaml = format!(
        r#"
providers:
  openai: {{ format: openai, base_url: "{f}/v1", api_key: sk-openai }}
  claude: {{ format: anthropic, base_url: "{a}", api_key: sk-ant }}
models:
  gpt-4o-mini: {{ provider: openai }}
  claude-haiku: {{ provider: claude, name: claude-3-5-haiku-20241022 }}
routes:
  - name: chat
    match: {{ model: "gpt-*" }}
    strategy: priority
    targets: [gpt-4o-mini]
    fallbacks: [claude-haiku]
"#,
        f = failing.url(),
        a = anth.url()
    );
    let sc = start_proxy(dir.path(), &yaml);
    for stream in [false, true] {
        let resp = client()
            .post(format!("{}/v1/chat/completions", sc.url()))
            .json(&chat_body("gpt-4o", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-switchyard-provider"], "claude");
        let text = resp.text().await.unwrap();
        if stream {
            assert!(
                text.contains("chat.completion.chunk") && text.ends_with("data: [DONE]\n\n"),
                "{text}"
            );
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["object"], "chat.completion");
            assert_eq!(v["model"], "claude-3-5-haiku-20241022");
        }
    }
    let f_seen = failing.requests().await;
    assert_eq!(f_seen[0]["body"]["model"], "gpt-4o-mini");
    assert!(f_seen[0]["body"]["messages"].is_array());
    let a_seen = anth.requests().await;
    assert_eq!(a_seen[0]["path"], "/v1/messages");
    assert_eq!(a_seen[0]["body"]["model"], "claude-3-5-haiku-20241022");
    assert_eq!(a_seen[0]["body"]["max_tokens"], 4096);
    assert_eq!(a_seen[0]["headers"]["x-api-key"], "sk-ant");

    // The Anthropic error shape reaches OpenAI clients in OpenAI's shape.
    anth.set(json!({"status": 529, "retry_after": 3})).await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body("claude-haiku", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 529);
    assert_eq!(resp.headers()["retry-after"], "3");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded_error");

    // Embeddings cannot go to an Anthropic model: a clear client error.
    let resp = client()
        .post(format!("{}/v1/embeddings", sc.url()))
        .json(&json!({"model": "claude-haiku", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_request");
}
