//! Routing end to end against mock upstreams: the fault matrix (429 with Retry-After, 5xx
//! bursts, a slow first byte, a dead host, recovery) with the exact sequence of targets
//! chosen, ejection and readmission, the retry budget stopping a retry storm; and the
//! strategies — fastest converging and moving away, cheapest with min_quality,
//! least-busy balancing, complexity tiers — each explained in `x-switchyard-decision`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Two mocks as two providers, `a` and `b`, each with a model of its name.
fn two(a: &Mock, b: &Mock, rest: &str) -> String {
    format!(
        r#"
providers:
  pa: {{ format: openai, base_url: "{}/v1", api_key: sk-a }}
  pb: {{ format: openai, base_url: "{}/v1", api_key: sk-b }}
models:
  a: {{ provider: pa, quality: 60, price: {{ input: 0.15, output: 0.6 }} }}
  b: {{ provider: pb, quality: 90, price: {{ input: 2.5, output: 10 }} }}
{rest}"#,
        a.url(),
        b.url()
    )
}

/// Two mocks (started with their own arguments) as `a` and `b`, behind a sidecar on `rest`.
fn setup(a_args: &[&str], b_args: &[&str], rest: &str) -> (tempfile::TempDir, Mock, Mock, Sidecar) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Mock::start(dir.path(), a_args),
        Mock::start(dir.path(), b_args),
    );
    let sc = start_proxy(dir.path(), &two(&a, &b, rest));
    (dir, a, b, sc)
}

/// A priority route over a then b.
const PRIORITY: &str =
    "routes:\n  - { name: r, match: { model: m }, strategy: priority, targets: [a, b] }\n";

struct Answer {
    status: u16,
    model: String,
    decision: String,
}

async fn ask(sc: &Sidecar, model: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body(model, false));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let h = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (model, decision) = (h("x-switchyard-model"), h("x-switchyard-decision"));
    Answer {
        status: r.status().as_u16(),
        model,
        decision,
    }
}

/// Which model answered each of `n` requests, one after another.
async fn sequence(sc: &Sidecar, model: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let a = ask(sc, model, &[]).await;
        assert_eq!(a.status, 200, "{}", a.decision);
        out.push(a.model);
    }
    out
}

fn repeat(model: &str, n: usize) -> Vec<String> {
    vec![model.to_string(); n]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_burst_ejects_a_target_and_a_probe_readmits_it() {
    let (_dir, a, _b, sc) = setup(
        &[],
        &[],
        &format!("outlier_detection: {{ base_ejection: 1s }}\n{PRIORITY}"),
    );
    a.set(json!({"status": 500})).await;
    // Five failures in a row, each retried on b; then a is out and b answers alone.
    assert_eq!(sequence(&sc, "m", 8).await, repeat("b", 8));
    assert_eq!(a.requests().await.len(), 5, "a is not called once ejected");
    let skipped = ask(&sc, "m", &[]).await;
    assert_eq!(skipped.decision, "priority; chose b; skipped a (ejected)");
    assert_eq!(
        sc.metric("switchyard_target_ejections_total{model=\"a\"}")
            .await,
        1.0
    );
    assert_eq!(
        sc.metric("switchyard_target_health{model=\"a\"}").await,
        2.0
    );
    // a recovers; after the ejection, one probe readmits it and it leads again.
    a.set(json!({})).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(sequence(&sc, "m", 3).await, repeat("a", 3));
    assert_eq!(a.requests().await.len(), 8);
    assert_eq!(
        sc.metric("switchyard_target_health{model=\"a\"}").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_probe_ejects_again_for_longer() {
    let (_dir, a, _b, sc) = setup(
        &[],
        &[],
        &format!("outlier_detection: {{ base_ejection: 1s }}\n{PRIORITY}"),
    );
    a.set(json!({"status": 503})).await;
    assert_eq!(sequence(&sc, "m", 5).await, repeat("b", 5));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The probe fails (still 503): out again, now for 2 s.
    assert_eq!(sequence(&sc, "m", 1).await, repeat("b", 1));
    assert_eq!(a.requests().await.len(), 6);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(sequence(&sc, "m", 3).await, repeat("b", 3));
    assert_eq!(
        a.requests().await.len(),
        6,
        "still out 1.1 s into a 2 s ejection"
    );
    assert_eq!(
        sc.metric("switchyard_target_ejections_total{model=\"a\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_with_retry_after_is_skipped_until_then() {
    let (_dir, a, _b, sc) = setup(&[], &[], PRIORITY);
    a.set(json!({"status": 429, "retry_after": 2})).await;
    assert_eq!(sequence(&sc, "m", 1).await, repeat("b", 1));
    a.set(json!({})).await;
    // Within its Retry-After, a is not asked, though it would answer now.
    let within = ask(&sc, "m", &[]).await;
    assert_eq!(within.model, "b");
    assert_eq!(
        within.decision,
        "priority; chose b; skipped a (retry-after)"
    );
    assert_eq!(a.requests().await.len(), 1);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(sequence(&sc, "m", 2).await, repeat("a", 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_host_and_a_slow_first_byte_fall_back_and_count_as_failures() {
    let dir = tempfile::tempdir().unwrap();
    let b = Mock::start(dir.path(), &[]);
    let slow = Mock::start(dir.path(), &["--latency-ms", "2000"]);
    let dead = free_port();
    let sc = start_proxy(
        dir.path(),
        &format!(
            r#"
providers:
  dead: {{ format: openai, base_url: "http://127.0.0.1:{dead}/v1" }}
  slow: {{ format: openai, base_url: "{}/v1" }}
  pb: {{ format: openai, base_url: "{}/v1" }}
models:
  d: {{ provider: dead }}
  s: {{ provider: slow }}
  b: {{ provider: pb }}
outlier_detection: {{ consecutive_failures: 2, base_ejection: 30s }}
routes:
  - {{ name: r, match: {{ model: m }}, strategy: priority, targets: [d, s, b], timeouts: {{ first_byte: 200ms }} }}
"#,
            slow.url(),
            b.url()
        ),
    );
    // Each of the first two requests: d refused, s too slow, b answers; then d and s are
    // both ejected. At most half of three targets may be skipped, so the one that failed
    // longest ago, d, comes back — after the healthy b; s is skipped.
    assert_eq!(sequence(&sc, "m", 2).await, repeat("b", 2));
    assert_eq!(slow.requests().await.len(), 2);
    let next = ask(&sc, "m", &[]).await;
    assert_eq!(next.model, "b");
    assert_eq!(next.decision, "priority; chose b; skipped s (ejected)");
    assert_eq!(slow.requests().await.len(), 2, "s is out");
    let m = sc.metrics().await;
    assert_eq!(
        metric_value(&m, "switchyard_target_ejections_total{model=\"d\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&m, "switchyard_target_ejections_total{model=\"s\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_budget_stops_a_retry_storm() {
    // Ejection off, so only the budget limits retries.
    let off = "outlier_detection: { consecutive_failures: 0, failure_rate: 0 }\n";
    let (_dir, a, b, sc) = setup(&[], &[], &format!("{off}{PRIORITY}"));
    a.set(json!({"status": 500})).await;
    b.set(json!({"status": 500})).await;
    let start = Instant::now();
    for _ in 0..100 {
        assert_eq!(ask(&sc, "m", &[]).await.status, 500);
    }
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "within one budget window"
    );
    // 100 first attempts on a; retries on b while retries < 10 + 20 % of requests:
    // requests 1–13 retry, then one in five: 13 + 17 = 30.
    assert_eq!(a.requests().await.len(), 100);
    assert_eq!(b.requests().await.len(), 30);
    assert_eq!(
        sc.metric("switchyard_retry_budget_exhausted_total{route=\"r\"}")
            .await,
        70.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fastest_converges_on_the_faster_and_moves_away_when_it_slows() {
    let (_dir, _a, b, sc) = setup(
        &["--latency-ms", "150"],
        &["--latency-ms", "10"],
        "routes:\n  - { name: r, match: { model: m }, strategy: fastest, targets: [a, b] }\n",
    );
    // Each is tried once while unmeasured; from then on b, the faster.
    let first = sequence(&sc, "m", 20).await;
    assert_eq!(first.iter().filter(|m| *m == "a").count(), 1, "{first:?}");
    assert_eq!(first[2..], repeat("b", 18));
    let why = ask(&sc, "m", &[]).await.decision;
    assert!(why.starts_with("fastest; chose b; b "), "{why}");
    // b slows to 400 ms: its next answer shows it, and traffic moves to a.
    b.set(json!({"latency_ms": 400})).await;
    let after = sequence(&sc, "m", 10).await;
    assert_eq!(after[0], "b");
    assert_eq!(after[1..], repeat("a", 9), "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cheapest_picks_by_price_and_respects_min_quality() {
    let (_dir, _a, _b, sc) = setup(&[], &[], "routes:\n  - { name: r, match: { model: m }, strategy: cheapest, targets: [b, a] }\n  - { name: good, match: { model: good }, strategy: cheapest, targets: [b, a], min_quality: 80 }\n");
    let cheap = ask(&sc, "m", &[]).await;
    assert_eq!(cheap.model, "a");
    assert!(
        cheap.decision.starts_with("cheapest; chose a; expected "),
        "{}",
        cheap.decision
    );
    let good = ask(&sc, "good", &[]).await;
    assert_eq!(good.model, "b");
    assert!(
        good.decision
            .ends_with("min_quality 80; skipped a (below min_quality)"),
        "{}",
        good.decision
    );
    // A request raises the floor itself.
    let raised = ask(&sc, "m", &[("x-switchyard-min-quality", "85")]).await;
    assert_eq!(raised.model, "b");
    let refused = ask(&sc, "m", &[("x-switchyard-min-quality", "95")]).await;
    assert_eq!(refused.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn least_busy_balances_requests_in_flight() {
    let (_dir, a, b, sc) = setup(
        &["--latency-ms", "300"],
        &["--latency-ms", "300"],
        "routes:\n  - { name: r, match: { model: m }, strategy: least-busy, targets: [a, b] }\n",
    );
    // Twenty at once, 20 ms apart so each sees the others in flight.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = sc.url();
        tasks.push(tokio::spawn(async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat_body("m", false))
                .send()
                .await
                .unwrap()
                .status()
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Ties go either way, so the split may be off by one.
    let (na, nb) = (a.requests().await.len(), b.requests().await.len());
    assert_eq!(na + nb, 20);
    assert!((9..=11).contains(&na), "a {na}, b {nb}");
}

#[tokio::test(flavor = "multi_thread")]
async fn complexity_sends_easy_requests_low_and_hard_ones_high() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Mock::start(dir.path(), &[]), Mock::start(dir.path(), &[]));
    let collector = Collector::start(
        dir.path(),
        &format!("sqlite://{}/usage.db", dir.path().display()),
    );
    let sc = start_proxy(
        dir.path(),
        &two(
            &a,
            &b,
            &format!(
                "routes:\n  - name: auto\n    match: {{ model: auto }}\n    strategy: complexity\n    tiers: [ {{ model: a, up_to: 0.5 }}, b ]\n  - {{ name: main, match: {{ model: m }}, strategy: priority, targets: [b], shadow: auto }}\n{}",
                telemetry_yaml(collector.port, &dir.path().join("spool"), "")
            ),
        ),
    );
    let send = |content: &str| {
        client()
            .post(format!("{}/v1/chat/completions", sc.url()))
            .json(&json!({"model": "auto", "messages": [{"role": "user", "content": content}]}))
            .send()
    };
    let easy = send("hi there!").await.unwrap();
    assert_eq!(easy.headers()["x-switchyard-model"], "a");
    let why = easy.headers()["x-switchyard-decision"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(why.starts_with("complexity; chose a; score 0.0"), "{why}");
    let hard = "Prove that if n is an integer and n^2 is even then n is even. Explain why each step holds, derive the general case for a prime p where p | n^2 implies p | n, and calculate how many integers below 1000 satisfy it. ".repeat(4);
    let r = send(&hard).await.unwrap();
    assert_eq!(r.headers()["x-switchyard-model"], "b");
    let why = r.headers()["x-switchyard-decision"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(why.starts_with("complexity; chose b; score 0.98"), "{why}");
    let v: Value = r.json().await.unwrap();
    assert!(v["choices"].is_array());
    // A route with a shadow: served by its own choice, the shadow's only recorded.
    let shadowed = ask(&sc, "m", &[]).await;
    assert_eq!(
        (shadowed.model.as_str(), shadowed.decision.as_str()),
        ("b", "")
    );
    // The usage events carry the same decisions, with the scores.
    collector
        .wait_requests(3, "the three requests stored")
        .await;
    let (_, events) = collector.get(ADMIN_TOKEN, "/v1/events").await;
    let events: Value = serde_json::from_str(&events).unwrap();
    let decisions: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["decision"])
        .collect();
    assert_eq!(decisions[0]["strategy"], "complexity");
    assert!((decisions[0]["score"].as_f64().unwrap() - 0.016090526442150876).abs() < 1e-12);
    assert!(decisions[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("complexity; chose a; score 0.016 -> tier 1 (a)"));
    assert!(decisions[1]["score"].as_f64().unwrap() > 0.98);
    assert_eq!(decisions[2]["strategy"], "priority");
    let shadow = &decisions[2]["shadow"];
    assert_eq!(
        (&shadow["route"], &shadow["strategy"]),
        (&json!("auto"), &json!("complexity"))
    );
    // "Say hello." is easy: the shadow would have sent it to the first tier.
    assert_eq!(shadow["model"], "a");
    assert!(shadow["score"].as_f64().unwrap() < 0.5);
}

#[tokio::test(flavor = "multi_thread")]
async fn whatif_reprices_and_reroutes_recorded_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let collector = Collector::start(
        dir.path(),
        &format!("sqlite://{}/usage.db", dir.path().display()),
    );
    // Recorded under the running policy: input free, 10 output tokens a request; small at
    // $1000 per million output tokens (0.01 a request), big at $3000 (0.03).
    let catalog = |small: u32, key: &str| {
        format!(
            "providers:\n  p: {{ format: openai, base_url: \"{}/v1\", api_key: \"{key}\" }}\nmodels:\n  small: {{ provider: p, price: {{ input: 0, output: {small} }} }}\n  big: {{ provider: p, price: {{ input: 0, output: 3000 }} }}\n",
            mock.url()
        )
    };
    let sc = start_proxy(
        dir.path(),
        &format!(
            "{}{}",
            catalog(1000, "sk-test"),
            telemetry_yaml(collector.port, &dir.path().join("spool"), "")
        ),
    );
    for model in ["small", "small", "small", "small", "big", "big"] {
        assert_eq!(ask(&sc, model, &[]).await.status, 200);
    }
    collector.wait_requests(6, "six requests stored").await;

    // The policy to try: small doubles its price, and requests for big go to the cheapest.
    // Its provider key names a variable the analyst's shell does not have: no matter.
    let new = dir.path().join("new.yaml");
    std::fs::write(
        &new,
        format!(
            "{}routes:\n  - {{ name: cheapen, match: {{ model: big }}, strategy: cheapest, targets: [big, small] }}\n",
            catalog(2000, "${WHATIF_TEST_UNSET_KEY}")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "whatif",
            "--collector",
            &collector.url(),
            "--token",
            ADMIN_TOKEN,
            "--since",
            "1d",
            "--config",
        ])
        .arg(&new)
        .env_remove("WHATIF_TEST_UNSET_KEY")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |section: &str, name: &str| -> Vec<String> {
        let at = text.find(&format!("by {section}:")).unwrap();
        text[at..]
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // By hand: before 4 × 0.01 + 2 × 0.03 = 0.10; after 4 × 0.02 (small at $2000) + the two
    // big requests moved to small, 2 × 0.02 = 0.12.
    assert_eq!(
        row("route", "TOTAL")[1..6],
        ["6", "2", "0.1", "0.12", "+0.02"],
        "{text}"
    );
    assert_eq!(
        row("route", "catalog")[1..6],
        ["4", "0", "0.04", "0.08", "+0.04"],
        "{text}"
    );
    assert_eq!(
        row("route", "cheapen")[1..6],
        ["2", "2", "0.06", "0.04", "-0.02"],
        "{text}"
    );
    assert_eq!(
        row("team", "default")[1..6],
        ["6", "2", "0.1", "0.12", "+0.02"],
        "{text}"
    );
    assert!(text.contains("big -> small: 2"), "{text}");
    assert!(text.starts_with("6 events, 6 routed"), "{text}");
}
