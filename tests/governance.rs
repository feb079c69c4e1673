//! Governance end to end, one sidecar enforcing locally: virtual keys, allowed models, rate
//! limits and budgets (reserve, then settle), each ending in exact counts.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// One completion as the tests send it: the mock answers 10 output tokens (`--chunks 10`),
/// and `max_tokens: 10` makes the worst case exactly the real cost when input is free.
fn ask(model: &str) -> Value {
    json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "Say hello."}]})
}

/// `small` costs nothing for input and 1000 USD per million output tokens: 0.01 USD a
/// request of 10 output tokens.
fn catalog(mock: &Mock) -> String {
    format!(
        r#"
providers:
  alpha: {{ format: openai, base_url: "{}/v1", api_key: sk-alpha }}
models:
  small: {{ provider: alpha, name: alpha-small, price: {{ input: 0, output: 1000 }} }}
  big:   {{ provider: alpha, name: alpha-big, price: {{ input: 0, output: 1000 }} }}
"#,
        mock.url()
    )
}

async fn post(sc: &Sidecar, body: &Value, key: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

/// Statuses (and error codes) of `n` requests sent at once.
async fn burst(sc: &Sidecar, n: usize, body: &Value, key: Option<&str>) -> BTreeMap<String, usize> {
    let all = futures_util::future::join_all((0..n).map(|_| post(sc, body, key))).await;
    let mut out = BTreeMap::new();
    for (status, _, v) in all {
        let what = match v["error"]["code"].as_str() {
            Some(code) => format!("{status} {code}"),
            None => status.to_string(),
        };
        *out.entry(what).or_default() += 1;
    }
    out
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn new_key() -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["keys", "new", "--team", "research", "--id", "k"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("sk-sy-"))
        .unwrap()
        .to_string();
    let hash = text
        .split('"')
        .find(|w| w.starts_with("sha256:"))
        .unwrap()
        .to_string();
    (key, hash)
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_allowed_models() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let (alice, alice_hash) = new_key();
    let (bob, bob_hash) = new_key();
    let collector = Collector::start(
        dir.path(),
        &format!("sqlite://{}/usage.db", dir.path().display()),
    );
    let policy = format!(
        "{}governance: {{ require_key: true }}\nteams:\n  research:\n    models: [\"sm*\"]\n    keys:\n      - {{ id: alice-laptop, hash: \"{alice_hash}\" }}\n      - {{ id: bob-ci, hash: \"{bob_hash}\", models: [big] }}\n{}",
        catalog(&mock),
        telemetry_yaml(collector.port, &dir.path().join("spool"), "")
    );
    let sc = start_proxy(dir.path(), &policy);

    // No key, and a key the policy does not hold: 401.
    let (status, _, v) = post(&sc, &ask("small"), None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _, v) = post(&sc, &ask("small"), Some("sk-sy-0000")).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    // Alice may use what her team allows; not `big`.
    assert_eq!(post(&sc, &ask("small"), Some(&alice)).await.0, 200);
    let (status, _, v) = post(&sc, &ask("big"), Some(&alice)).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    // Bob's key allows only `big`, his team only `sm*`: every level must pass.
    let (status, _, v) = post(&sc, &ask("big"), Some(&bob)).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    let (status, _, v) = post(&sc, &ask("small"), Some(&bob)).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    // An Anthropic client's x-api-key works the same way.
    let r = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .header("x-api-key", &alice)
        .json(&ask("small"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sc.wait_idle().await;

    let rejected = |reason: &str| format!(r#"switchyard_rejections_total{{reason="{reason}"}}"#);
    assert_eq!(sc.metric(&rejected("unauthorized")).await, 2.0);
    assert_eq!(sc.metric(&rejected("model_not_allowed")).await, 3.0);

    // Every request, refused or not, is an event with the key's id (never the key).
    collector
        .wait_requests(7, "all seven requests reach the collector")
        .await;
    let (_, events) = collector.get(ADMIN_TOKEN, "/v1/events?limit=100").await;
    let events: Value = serde_json::from_str(&events).unwrap();
    let mut by_key: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for e in events["events"].as_array().unwrap() {
        by_key
            .entry(e["key_id"].as_str().unwrap_or("-").to_string())
            .or_default()
            .push((
                e["status"].as_u64().unwrap(),
                e["error_code"].as_str().unwrap_or("").to_string(),
            ));
    }
    assert_eq!(by_key["-"].len(), 2, "{by_key:?}");
    assert!(by_key["alice-laptop"].contains(&(403, "model_not_allowed".into())));
    assert_eq!(
        by_key["alice-laptop"]
            .iter()
            .filter(|(s, _)| *s == 200)
            .count(),
        2
    );
    assert_eq!(by_key["bob-ci"].len(), 2);

    // The keys appear nowhere: not in /config, metrics, events or the log.
    let config = reqwest::get(format!("{}/config", sc.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = sc.metrics().await;
    let (_, collector_metrics) = collector.get(ADMIN_TOKEN, "/metrics").await;
    let mut proc = sc.proc;
    proc.signal(libc::SIGTERM);
    proc.wait_exit(std::time::Duration::from_secs(20));
    let hex = |h: &str| h.trim_start_matches("sha256:").to_string();
    for (what, text) in [
        ("/config", config),
        ("metrics", metrics),
        ("collector metrics", collector_metrics),
        ("events", events.to_string()),
        ("log", proc.log_text()),
    ] {
        for secret in [&alice, &bob, &hex(&alice_hash), &hex(&bob_hash)] {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows a key or its hash"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rpm_admits_exactly_the_limit_of_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let policy = format!(
        "{}identity: {{ team: research }}\nteams:\n  research: {{ limits: {{ rpm: 60 }} }}\n",
        catalog(&mock)
    );
    let sc = start_proxy(dir.path(), &policy);
    let got = burst(&sc, 100, &ask("small"), None).await;
    assert_eq!(got, counts(&[("200", 60), ("429 rate_limited", 40)]));
    let (status, retry, _) = post(&sc, &ask("small"), None).await;
    assert_eq!(status, 429);
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    sc.wait_idle().await;
    assert_eq!(
        sc.metric(r#"switchyard_rate_limit_rejections_total{level="team",limit="rpm"}"#)
            .await,
        41.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tpm_counts_the_estimate_at_admission_and_the_real_count_after() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let policy = format!(
        "{}identity: {{ team: research }}\nteams:\n  research: {{ limits: {{ tpm: 1000 }} }}\n",
        catalog(&mock)
    );
    let sc = start_proxy(dir.path(), &policy);
    // One after another, each settles to its 10 real tokens before the next asks: ten
    // fit, where ten estimates (~7,800) would not.
    for i in 0..10 {
        let (status, _, v) = post(&sc, &padded_body(), None).await;
        assert_eq!(status, 200, "request {i}: {v}");
        assert_eq!(v["usage"]["prompt_tokens"], 10);
    }
    // Five at once, held 500 ms upstream so none settles while the others ask: 100
    // settled + one estimate fit in 1,000; a second estimate does not.
    mock.set(json!({"chunks": 10, "latency_ms": 500})).await;
    let got = burst(&sc, 5, &padded_body(), None).await;
    assert_eq!(got, counts(&[("200", 1), ("429 rate_limited", 4)]));
    assert_eq!(
        sc.metric(r#"switchyard_rate_limit_rejections_total{level="team",limit="tpm"}"#)
            .await,
        4.0
    );
}

const SPENT: &str = r#"switchyard_budget_spent_usd{level="team",name="research"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_team_budget_is_never_overspent_and_never_refuses_early() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    // 1.00 USD a day at 0.01 USD a request: exactly 100 requests.
    let policy = format!(
        "{}identity: {{ team: research }}\nteams:\n  research: {{ budget: {{ usd: 1.0, per: day, alert_at: [0.5, 1.0] }} }}\n",
        catalog(&mock)
    );
    let sc = start_proxy(dir.path(), &policy);
    let got = burst(&sc, 200, &ask("small"), None).await;
    assert_eq!(got, counts(&[("200", 100), ("429 budget_exceeded", 100)]));
    sc.wait_idle().await;
    // One by one: the budget is spent to the cent, so the next is refused, with the time
    // to the period's end.
    let (status, retry, v) = post(&sc, &ask("small"), None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("budget_exceeded"))
    );
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry));
    sc.wait_idle().await;
    assert!((sc.metric(SPENT).await - 1.0).abs() < 1e-9);
    assert_eq!(
        sc.metric(r#"switchyard_budget_reserved_usd{level="team",name="research"}"#)
            .await,
        0.0
    );
    assert_eq!(
        sc.metric(r#"switchyard_budget_alerts_total{level="team",mark="0.5",name="research"}"#)
            .await,
        1.0
    );
    assert_eq!(
        mock.requests().await.len(),
        100,
        "no refused request reached the provider"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_budget_under_a_team_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let (alice, alice_hash) = new_key();
    let (bob, bob_hash) = new_key();
    // The team has 1.00 USD, Alice's key 0.30 of it: 30 for Alice, the other 70 for Bob.
    let policy = format!(
        "{}teams:\n  research:\n    budget: {{ usd: 1.0, per: month }}\n    keys:\n      - {{ id: alice, hash: \"{alice_hash}\", budget: {{ usd: 0.3, per: day }} }}\n      - {{ id: bob, hash: \"{bob_hash}\" }}\n",
        catalog(&mock)
    );
    let sc = start_proxy(dir.path(), &policy);
    let got = burst(&sc, 50, &ask("small"), Some(&alice)).await;
    assert_eq!(got, counts(&[("200", 30), ("429 budget_exceeded", 20)]));
    let got = burst(&sc, 100, &ask("small"), Some(&bob)).await;
    assert_eq!(got, counts(&[("200", 70), ("429 budget_exceeded", 30)]));
    sc.wait_idle().await;
    assert!((sc.metric(SPENT).await - 1.0).abs() < 1e-9);
    assert!(
        (sc.metric(r#"switchyard_budget_spent_usd{level="key",name="alice"}"#)
            .await
            - 0.3)
            .abs()
            < 1e-9
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_budget_can_downgrade_instead_of_refusing() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let policy = format!(
        "{}  free: {{ provider: alpha, name: alpha-free, price: {{ input: 0, output: 0 }} }}\nidentity: {{ team: research }}\nteams:\n  research: {{ budget: {{ usd: 0.05, per: day, on_exceed: downgrade, downgrade_to: free }} }}\n",
        catalog(&mock)
    );
    let sc = start_proxy(dir.path(), &policy);
    for _ in 0..8 {
        assert_eq!(post(&sc, &ask("small"), None).await.0, 200);
    }
    sc.wait_idle().await;
    let models: Vec<String> = mock
        .requests()
        .await
        .iter()
        .map(|r| r["body"]["model"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(models.iter().filter(|m| *m == "alpha-small").count(), 5);
    assert_eq!(models.iter().filter(|m| *m == "alpha-free").count(), 3);
    assert!((sc.metric(SPENT).await - 0.05).abs() < 1e-9);
    assert_eq!(
        sc.metric(r#"switchyard_budget_downgrades_total{level="team",name="research"}"#)
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_sidecar_remembers_the_periods_spend_from_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let collector = Collector::start(
        dir.path(),
        &format!("sqlite://{}/usage.db", dir.path().display()),
    );
    // 0.10 USD a day at 0.01 USD a request; the spend is read from the collector each second.
    let policy = format!(
        "{}identity: {{ team: research }}\ngovernance: {{ refresh: 1s }}\nteams:\n  research: {{ budget: {{ usd: 0.1, per: day }} }}\n{}",
        catalog(&mock),
        telemetry_yaml(collector.port, &dir.path().join("spool"), "")
    );
    let mut sc = start_proxy(dir.path(), &policy);
    for _ in 0..6 {
        assert_eq!(post(&sc, &ask("small"), None).await.0, 200);
    }
    collector
        .wait_requests(6, "six requests reach the collector")
        .await;
    // A team reader may not read every team's spend; the ingest token (sidecars) may.
    assert_eq!(
        collector.get(RESEARCH_TOKEN, "/v1/spend?per=day").await.0,
        401
    );
    let (status, body) = collector.get(INGEST_TOKEN, "/v1/spend?per=day").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["teams"]["research"], 60_000_000_000i64,
        "0.06 USD in pico-dollars"
    );

    // Killed and started again: its own count is gone, the collector's is not.
    sc.restart();
    sc.wait_ready();
    sc.wait_metric(
        SPENT,
        0.06 - 1e-9,
        "the spend is read back from the collector",
    )
    .await;
    let got = burst(&sc, 10, &ask("small"), None).await;
    assert_eq!(got, counts(&[("200", 4), ("429 budget_exceeded", 6)]));
}

/// Waits until `/v1/budgets` shows `field` of a level at `usd` (to the atto-dollar).
async fn wait_budget(c: &Collector, level: &str, name: &str, field: &str, usd: f64) {
    c.wait_budget(level, name, field, usd).await;
}

async fn alerts(c: &Collector, token: &str) -> Vec<(String, String, f64)> {
    let (status, body) = c.get(token, "/v1/alerts").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["level"].as_str().unwrap().to_string(),
                a["name"].as_str().unwrap().to_string(),
                a["mark"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_collector_shows_every_levels_spend_reservations_and_alerts_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/usage.db", dir.path().display());
    budgets_at_the_collector(dir.path(), &db, false).await;
}

/// On PostgreSQL, with a second collector replica checking the same budgets: each alert
/// is still recorded once.
#[tokio::test(flavor = "multi_thread")]
async fn the_collector_shows_every_levels_spend_reservations_and_alerts_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    budgets_at_the_collector(dir.path(), &db.url(), true).await;
}

async fn budgets_at_the_collector(dir: &std::path::Path, db: &str, replica: bool) {
    let mock = Mock::start(dir, &["--chunks", "10"]);
    let check = "budget_check: 200ms\n";
    let collector = Collector::start_with(dir, db, free_port(), check);
    let second = replica.then(|| Collector::start_with(dir, db, free_port(), check));
    let (key, hash) = new_key();
    let policy = format!(
        "{}identity: {{ team: research }}\ngovernance: {{ refresh: 300ms }}\norg: {{ budget: {{ usd: 1, per: month }} }}\nteams:\n  research:\n    budget: {{ usd: 0.1, per: day, alert_at: [0.2, 0.5] }}\n    keys:\n      - {{ id: k, hash: \"{hash}\", budget: {{ usd: 0.05, per: week }} }}\n  ops: {{ budget: {{ usd: 3, per: day }} }}\n{}",
        catalog(&mock),
        telemetry_yaml(collector.port, &dir.join("spool"), "")
    );
    let sc = start_proxy(dir, &policy);

    // Three slow requests through the key hold their worst case (0.01 USD) at every level,
    // and the sidecar reports it.
    mock.set(json!({"chunks": 10, "latency_ms": 3_000})).await;
    let body = ask("small");
    let slow = futures_util::future::join_all((0..3).map(|_| post(&sc, &body, Some(&key))));
    let watch = async {
        for (level, name) in [("org", "org"), ("team", "research"), ("key", "k")] {
            wait_budget(&collector, level, name, "reserved_usd", 0.03).await;
        }
        let row = collector.budget(ADMIN_TOKEN, "key", "k").await;
        assert_eq!(row["reserved_from"], "sidecars");
        assert_eq!(row["team"], "research");
        assert_eq!(row["per"], "week");
        assert_eq!(row["remaining_usd"].as_f64(), Some(0.02));
    };
    let (answers, ()) = tokio::join!(slow, watch);
    assert!(answers.iter().all(|a| a.0 == 200));
    mock.set(json!({"chunks": 10, "latency_ms": 0})).await;

    // Settled: nothing reserved, 0.03 spent at each level.
    collector.wait_requests(3, "three requests stored").await;
    for (level, name, budget) in [
        ("org", "org", 1.0),
        ("team", "research", 0.1),
        ("key", "k", 0.05),
    ] {
        wait_budget(&collector, level, name, "reserved_usd", 0.0).await;
        let row = collector.budget(ADMIN_TOKEN, level, name).await;
        assert_eq!(row["spend_usd"].as_f64(), Some(0.03), "{row}");
        assert_eq!(row["budget_usd"].as_f64(), Some(budget), "{row}");
        assert!((row["remaining_usd"].as_f64().unwrap() - (budget - 0.03)).abs() < 1e-12);
        assert_eq!(row["requests"], 3);
    }
    let ops = collector.budget(ADMIN_TOKEN, "team", "ops").await;
    assert_eq!(
        (ops["spend_usd"].as_f64(), ops["requests"].as_i64()),
        (Some(0.0), Some(0))
    );

    // 0.03 of 0.10 crossed the team's 20 % mark: one alert. Two more requests cross 50 %.
    let start = std::time::Instant::now();
    while alerts(&collector, ADMIN_TOKEN).await.is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no alert"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for _ in 0..2 {
        assert_eq!(post(&sc, &ask("small"), None).await.0, 200);
    }
    collector.wait_requests(5, "five requests stored").await;
    // Newest first.
    let want = vec![
        ("team".to_string(), "research".to_string(), 0.5),
        ("team".to_string(), "research".to_string(), 0.2),
    ];
    let start = std::time::Instant::now();
    while alerts(&collector, ADMIN_TOKEN).await.len() < 2 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no second alert"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Checked again and again (every 200 ms), each mark stays one alert.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(alerts(&collector, ADMIN_TOKEN).await, want);
    assert_eq!(alerts(&collector, RESEARCH_TOKEN).await, want);
    let mut recorded = 0.0;
    for c in std::iter::once(&collector).chain(second.as_ref()) {
        let (_, metrics) = c.get("", "/metrics").await;
        recorded += metric_value(
            &metrics,
            "switchyard_collector_budget_alerts_total{level=\"team\"}",
        );
    }
    assert_eq!(recorded, 2.0, "each alert recorded by one replica only");

    // A team reader sees its team and its keys, not the org nor other teams.
    let (_, body) = collector.get(RESEARCH_TOKEN, "/v1/budgets").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let seen: Vec<(&str, &str)> = v["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["level"].as_str().unwrap(), l["name"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, vec![("team", "research"), ("key", "k")]);
    // Reports need the ingest token, and are checked.
    let r = client()
        .post(format!("{}/v1/reservations", collector.url()))
        .bearer_auth(RESEARCH_TOKEN)
        .json(&json!({"sidecar": "x", "ttl_s": 5, "held": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(format!("{}/v1/reservations", collector.url()))
        .bearer_auth(INGEST_TOKEN)
        .json(&json!({"sidecar": "x", "ttl_s": 5, "held": [{"level": "galaxy", "name": "x", "period_start": 0, "pico": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
