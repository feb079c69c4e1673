//! Usage events from the sidecar to the collector, end to end: the real binary in every
//! role (mock upstream, sidecar, collector), real SQLite and PostgreSQL, and faults —
//! a collector down or SIGKILLed, a sidecar SIGKILLed, duplicate deliveries, a damaged or
//! full spool. Every test ends by counting what was stored.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

/// Prices of the one model (USD per million tokens), in pico-dollars per token.
const INPUT_PICO: u64 = 150_000;
const OUTPUT_PICO: u64 = 600_000;

fn policy(mock: &Mock, team: &str, telemetry: &str) -> String {
    format!(
        "identity: {{ team: {team}, service: checkout, namespace: shop, pod: checkout-1, node: node-a }}\n\
         providers:\n  openai: {{ format: openai, base_url: \"{}/v1\", api_key: sk-test }}\n\
         models:\n  gpt-4o-mini: {{ provider: openai, price: {{ input: 0.15, output: 0.60 }} }}\n\
         teams:\n  research: {{ budget: {{ usd: 10, per: day }} }}\n  ops: {{ budget: {{ usd: 5, per: month }} }}\n\
         {telemetry}",
        mock.url()
    )
}

/// What the client was told it used.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Used {
    requests: u64,
    input: u64,
    output: u64,
}

impl Used {
    fn add(&mut self, other: Used) {
        self.requests += other.requests;
        self.input += other.input;
        self.output += other.output;
    }

    /// The exact cost, as the decimal the collector must print.
    fn cost(&self) -> String {
        let pico = self.input * INPUT_PICO + self.output * OUTPUT_PICO;
        switchyard::price::usd_decimal(u128::from(pico) * 1_000_000)
    }
}

/// One chat call through the sidecar; streams ask for usage so the client knows it too.
async fn chat(client: &reqwest::Client, proxy: &str, stream: bool) -> Used {
    let mut body = chat_body("gpt-4o-mini", stream);
    if stream {
        body["stream_options"] = serde_json::json!({ "include_usage": true });
    }
    let r = client
        .post(format!("{proxy}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let usage = if stream {
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .find(|v| v["usage"].is_object())
            .expect("stream carried usage");
        last["usage"].clone()
    } else {
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["usage"].clone()
    };
    Used {
        requests: 1,
        input: usage["prompt_tokens"].as_u64().unwrap(),
        output: usage["completion_tokens"].as_u64().unwrap(),
    }
}

async fn traffic(proxy: &str, n: usize) -> Used {
    let client = reqwest::Client::new();
    let mut used = Used::default();
    for i in 0..n {
        used.add(chat(&client, proxy, i % 3 == 0).await);
    }
    used
}

/// The collector's totals as CSV text (exact decimals), checked against the client's.
async fn assert_totals(c: &Collector, used: Used) {
    let (status, csv) = c.get(ADMIN_TOKEN, "/v1/usage?from=30d&format=csv").await;
    assert_eq!(status, 200);
    let row: Vec<String> = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    // requests,errors,fallbacks,partial,input,output,cached,reasoning,cost,p50,p95
    assert_eq!(row[0], used.requests.to_string(), "{csv}");
    assert_eq!(row[1], "0", "{csv}");
    assert_eq!(row[4], used.input.to_string(), "{csv}");
    assert_eq!(row[5], used.output.to_string(), "{csv}");
    assert_eq!(row[8], used.cost(), "{csv}");
}

/// A sidecar of `team` in its own folder `dir/name`, shipping to the collector on `port`.
fn sidecar_in(dir: &std::path::Path, name: &str, mock: &Mock, team: &str, port: u16) -> Sidecar {
    let own = dir.join(name);
    std::fs::create_dir_all(&own).unwrap();
    start_proxy(
        &own,
        &policy(mock, team, &telemetry_yaml(port, &own.join("spool"), "")),
    )
}

async fn sent(s: &Sidecar) -> f64 {
    s.metric("switchyard_events_sent_total").await
}

async fn events_flow(database: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let collector = Collector::start(dir.path(), database);
    let spool = dir.path().join("spool");
    let sidecar = start_proxy(
        dir.path(),
        &policy(
            &mock,
            "research",
            &telemetry_yaml(collector.port, &spool, ""),
        ),
    );
    let used = traffic(&sidecar.url(), 30).await;
    collector.wait_requests(30, "all events stored").await;
    assert_totals(&collector, used).await;
    sidecar
        .wait_metric("switchyard_events_sent_total", 30.0, "acknowledged")
        .await;
    assert_eq!(sidecar.metric("switchyard_events_queued").await, 0.0);

    // One stored event, as the sidecar wrote it: identity, route, policy version.
    let (_, page) = collector.get(ADMIN_TOKEN, "/v1/events?limit=1").await;
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let e = &page["events"][0];
    for (k, v) in [
        ("team", "research"),
        ("service", "checkout"),
        ("namespace", "shop"),
        ("pod", "checkout-1"),
        ("node", "node-a"),
        ("model", "gpt-4o-mini"),
        ("provider", "openai"),
        ("requested_model", "gpt-4o-mini"),
    ] {
        assert_eq!(e[k], v, "{k} in {e}");
    }
    assert_eq!(e["v"], 1);
    assert_eq!(e["policy_version"]["generation"], 1);
    assert_eq!(e["policy_version"]["sha256"].as_str().unwrap().len(), 64);
    assert!(page["next"].is_string());

    // Paging through every raw event yields each request once.
    let mut after = String::new();
    let mut ids = std::collections::HashSet::new();
    loop {
        let q = if after.is_empty() {
            "/v1/events?limit=7".to_string()
        } else {
            format!("/v1/events?limit=7&after={after}")
        };
        let (_, page) = collector.get(ADMIN_TOKEN, &q).await;
        let page: serde_json::Value = serde_json::from_str(&page).unwrap();
        for e in page["events"].as_array().unwrap() {
            assert!(ids.insert(e["id"].as_str().unwrap().to_string()));
        }
        match page["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(ids.len(), 30);

    // The CLI shows the same numbers.
    let out = std::process::Command::new(BIN)
        .args([
            "usage",
            "--collector",
            &collector.url(),
            "--group-by",
            "team,model",
            "--format",
            "csv",
        ])
        .env("SWITCHYARD_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().nth(1).unwrap().starts_with(&format!(
            "research,gpt-4o-mini,30,0,0,0,{},{},0,0,{}",
            used.input,
            used.output,
            used.cost()
        )),
        "{text}"
    );
    let table = std::process::Command::new(BIN)
        .args([
            "usage",
            "--collector",
            &collector.url(),
            "--token",
            ADMIN_TOKEN,
        ])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.starts_with("team      model        requests"),
        "{table}"
    );

    // Budgets: the team's spend this period against the policy's budget.
    let (_, b) = collector.get(ADMIN_TOKEN, "/v1/budgets").await;
    let b: serde_json::Value = serde_json::from_str(&b).unwrap();
    let research = b["levels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["level"] == "team" && t["name"] == "research")
        .unwrap();
    assert_eq!(research["per"], "day");
    assert_eq!(research["requests"], 30);
    assert_eq!(research["budget_usd"], 10);

    // A model no route knows: refused, and its event still names what was asked for.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", sidecar.url()))
        .json(&chat_body("no-such-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    collector
        .wait_requests(31, "the refusal's event stored")
        .await;
    let (_, page) = collector.get(ADMIN_TOKEN, "/v1/events?limit=100").await;
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let refused = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["error_code"] == "model_not_found")
        .expect("the refusal's event");
    assert_eq!(refused["requested_model"], "no-such-model", "{refused}");
    assert_eq!(refused["status"], 404, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_sqlite_with_exact_tokens_and_cost() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("usage.db").display());
    events_flow(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_postgres_with_exact_tokens_and_cost() {
    let db = PgDb::create();
    events_flow(&db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_at_first_then_started() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let port = free_port();
    let spool = dir.path().join("spool");
    // (zstd here, gzip in the SIGKILL test; plain NDJSON, the default, everywhere else.)
    let sidecar = start_proxy(
        dir.path(),
        &policy(
            &mock,
            "research",
            &telemetry_yaml(port, &spool, "  compression: zstd\n"),
        ),
    );
    let mut used = traffic(&sidecar.url(), 20).await;
    sidecar.wait_idle().await;
    sidecar
        .wait_metric("switchyard_events_queued", 20.0, "queued while down")
        .await;
    assert!(sidecar.metric("switchyard_events_spooled_bytes").await > 0.0);
    sidecar
        .wait_metric("switchyard_events_retried_total", 1.0, "a failed delivery")
        .await;
    assert_eq!(sent(&sidecar).await, 0.0);

    let db = format!("sqlite://{}", dir.path().join("usage.db").display());
    let collector = Collector::start_on(dir.path(), &db, port);
    used.add(traffic(&sidecar.url(), 10).await);
    collector
        .wait_requests(30, "spool delivered once the collector came up")
        .await;
    assert_totals(&collector, used).await;
    sidecar
        .wait_metric("switchyard_events_sent_total", 30.0, "acknowledged")
        .await;
    assert_eq!(sidecar.metric("switchyard_events_spooled_bytes").await, 0.0);
}

async fn collector_killed_mid_run(database: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let mut collector = Collector::start(dir.path(), database);
    let spool = dir.path().join("spool");
    let sidecar = start_proxy(
        dir.path(),
        &policy(
            &mock,
            "research",
            &telemetry_yaml(collector.port, &spool, ""),
        ),
    );
    let url = sidecar.url();
    let load = tokio::spawn(async move { traffic(&url, 150).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    collector.proc.signal(libc::SIGKILL);
    collector.proc.wait_exit(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(700)).await;
    collector.restart();
    let used = load.await.unwrap();
    collector
        .wait_requests(150, "every event after the collector's SIGKILL")
        .await;
    assert_totals(&collector, used).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_and_restarted_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("usage.db").display());
    collector_killed_mid_run(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_and_restarted_postgres() {
    let db = PgDb::create();
    collector_killed_mid_run(&db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_what_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let db = format!("sqlite://{}", dir.path().join("usage.db").display());
    let collector = Collector::start(dir.path(), &db);
    let spool = dir.path().join("spool");
    // Batches that would not go out for a minute on their own.
    let telemetry = format!(
        "telemetry:\n  collector: \"{}\"\n  token: \"{INGEST_TOKEN}\"\n  spool_dir: \"{}\"\n  batch: {{ max_events: 10000, max_wait: 60s }}\n",
        collector.url(),
        spool.display()
    );
    let mut sidecar = start_proxy(dir.path(), &policy(&mock, "research", &telemetry));
    let used = traffic(&sidecar.url(), 25).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        collector.requests().await,
        0,
        "nothing shipped before the stop"
    );
    sidecar.proc.signal(libc::SIGTERM);
    let status = sidecar
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("exits");
    assert!(status.success(), "{}", sidecar.proc.log_text());
    collector
        .wait_requests(25, "delivered while stopping")
        .await;
    assert_totals(&collector, used).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_database_loses_nothing() {
    let db = PgDb::create();
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let collector = Collector::start(dir.path(), &db.url());
    let spool = dir.path().join("spool");
    let sidecar = start_proxy(
        dir.path(),
        &policy(
            &mock,
            "research",
            &telemetry_yaml(collector.port, &spool, ""),
        ),
    );
    let mut used = traffic(&sidecar.url(), 20).await;
    collector.wait_requests(20, "before the outage").await;

    // The database goes away under the collector: its connections cut, new ones refused.
    psql(&format!(
        "ALTER DATABASE {0} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
        db.name
    ));
    // The request path does not notice; the events wait in the spool.
    used.add(traffic(&sidecar.url(), 20).await);
    sidecar
        .wait_metric("switchyard_events_retried_total", 1.0, "deliveries failing")
        .await;
    let ready = reqwest::get(format!("{}/readyz", collector.url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "readyz follows the database");
    let m = reqwest::get(format!("{}/metrics", collector.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_value(
            &m,
            "switchyard_collector_batches_total{result=\"db_error\"}"
        ) >= 1.0
    );

    psql(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    ));
    collector
        .wait_requests(40, "every event once the database is back")
        .await;
    assert_totals(&collector, used).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_killed_mid_traffic_replays_its_spool() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let db = format!("sqlite://{}", dir.path().join("usage.db").display());
    let mut collector = Collector::start(dir.path(), &db);
    let spool = dir.path().join("spool");
    // (gzip here; zstd in the collector-down test; the default, plain, elsewhere.)
    let mut sidecar = start_proxy(
        dir.path(),
        &policy(
            &mock,
            "research",
            &telemetry_yaml(collector.port, &spool, "  compression: gzip\n"),
        ),
    );
    // Part delivered, part still in the spool: the collector goes away first.
    let mut used = traffic(&sidecar.url(), 20).await;
    collector.wait_requests(20, "first part").await;
    collector.proc.signal(libc::SIGKILL);
    collector.proc.wait_exit(Duration::from_secs(5));
    used.add(traffic(&sidecar.url(), 25).await);
    // The durability rule: every request that ended 50 ms before the kill is on disk.
    tokio::time::sleep(Duration::from_millis(50)).await;
    sidecar.proc.signal(libc::SIGKILL);
    sidecar.proc.wait_exit(Duration::from_secs(5));

    collector.restart();
    sidecar.restart();
    used.add(traffic(&sidecar.url(), 5).await);
    collector
        .wait_requests(50, "the killed sidecar's spool replayed")
        .await;
    assert_totals(&collector, used).await;
}

/// One NDJSON line of a valid event.
fn event_line(team: &str, input: u64, output: u64) -> String {
    let cost = u128::from(input * INPUT_PICO + output * OUTPUT_PICO) * 1_000_000;
    serde_json::json!({
        "v": 1, "id": uuid::Uuid::now_v7().to_string(), "ts": chrono::Utc::now().to_rfc3339(),
        "namespace": "shop", "pod": "p", "service": "s", "node": "n", "team": team,
        "route": "chat", "model": "gpt-4o-mini", "provider": "openai", "attempts": 1,
        "fallback": false, "status": 200, "stream": false, "partial": false,
        "input_tokens": input, "output_tokens": output, "cached_tokens": 0, "reasoning_tokens": 0,
        "cost_usd": serde_json::value::RawValue::from_string(switchyard::price::usd_decimal(cost)).unwrap(),
        "latency_ms": 12, "overhead_us": 30,
        "policy_version": { "generation": 1, "sha256": "00" },
        "decision": { "strategy": "priority" }
    })
    .to_string()
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

async fn post_batch(c: &Collector, token: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    post_encoded(c, token, "gzip", body).await
}

async fn post_encoded(
    c: &Collector,
    token: &str,
    coding: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", c.url()))
        .bearer_auth(token)
        .header("content-encoding", coding)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), "{}").unwrap();
    let db = format!("sqlite://{}", dir.path().join("usage.db").display());
    let c = Collector::start(dir.path(), &db);
    let mut lines: Vec<String> = (0..40).map(|i| event_line("research", 10 + i, 5)).collect();
    lines.insert(7, "{\"v\":1,\"id\":\"not-a-uuid\"}".into());
    lines.insert(20, "this is not json".into());
    let text = lines.join("\n") + "\n";
    let batch = gzip(&text);

    let (status, first) = post_batch(&c, INGEST_TOKEN, batch.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        first,
        serde_json::json!({"stored": 40, "duplicates": 0, "rejected": 2})
    );
    let (_, again) = post_batch(&c, INGEST_TOKEN, batch.clone()).await;
    assert_eq!(
        again,
        serde_json::json!({"stored": 0, "duplicates": 40, "rejected": 2})
    );
    // The same lines as zstd and as plain NDJSON (what sidecars send by default).
    let zstd = zstd::bulk::compress(text.as_bytes(), -3).unwrap();
    for (coding, body) in [("zstd", zstd), ("identity", text.clone().into_bytes())] {
        let (status, v) = post_encoded(&c, INGEST_TOKEN, coding, body).await;
        assert_eq!(status, 200, "{coding}");
        assert_eq!(
            v,
            serde_json::json!({"stored": 0, "duplicates": 40, "rejected": 2}),
            "{coding}"
        );
    }
    // An encoding the collector does not know is refused, not read as NDJSON.
    let (status, v) = post_encoded(&c, INGEST_TOKEN, "br", batch.clone()).await;
    assert_eq!(status, 415, "{v}");
    let (status, _) = post_encoded(&c, INGEST_TOKEN, "zstd", b"not zstd".to_vec()).await;
    assert_eq!(status, 400);
    // Without the ingest token (or with a reader's) nothing is taken.
    assert_eq!(post_batch(&c, ADMIN_TOKEN, batch.clone()).await.0, 401);
    assert_eq!(post_batch(&c, "", batch).await.0, 401);
    assert_eq!(c.requests().await, 40);
    let input: u64 = (0..40).map(|i| 10 + i).sum();
    let v = c.usage(ADMIN_TOKEN, "from=1h").await;
    assert_eq!(v["rows"][0]["input_tokens"], input);
    assert_eq!(v["rows"][0]["output_tokens"], 200);
    let m = reqwest::get(format!("{}/metrics", c.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_value(&m, "switchyard_collector_events_total{result=\"stored\"}"),
        40.0
    );
    assert_eq!(
        metric_value(
            &m,
            "switchyard_collector_events_total{result=\"duplicate\"}"
        ),
        120.0
    );
    assert_eq!(
        metric_value(&m, "switchyard_collector_events_total{result=\"rejected\"}"),
        8.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collector_replicas_share_one_postgres() {
    let db = PgDb::create();
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let a = Collector::start(dir.path(), &db.url());
    let b = Collector::start(dir.path(), &db.url());
    // Two sidecars, one per replica.
    let s1 = sidecar_in(dir.path(), "a", &mock, "research", a.port);
    let s2 = sidecar_in(dir.path(), "b", &mock, "ops", b.port);
    let (url1, url2) = (s1.url(), s2.url());
    let (u1, u2) = tokio::join!(traffic(&url1, 40), traffic(&url2, 40));
    // And one batch delivered to both replicas at once: stored once between them.
    let lines: Vec<String> = (0..200).map(|_| event_line("research", 3, 4)).collect();
    let batch = gzip(&lines.join("\n"));
    let ((sa, ra), (sb, rb)) = tokio::join!(
        post_batch(&a, INGEST_TOKEN, batch.clone()),
        post_batch(&b, INGEST_TOKEN, batch)
    );
    assert_eq!((sa, sb), (200, 200));
    assert_eq!(
        ra["stored"].as_u64().unwrap() + rb["stored"].as_u64().unwrap(),
        200,
        "{ra} {rb}"
    );
    a.wait_requests(280, "both replicas' events, once").await;
    let mut used = u1;
    used.add(u2);
    used.add(Used {
        requests: 200,
        input: 600,
        output: 800,
    });
    assert_totals(&a, used).await;
    assert_totals(&b, used).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_spool_tail_is_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let port = free_port();
    let spool = dir.path().join("spool");
    let mut sidecar = start_proxy(
        dir.path(),
        &policy(&mock, "research", &telemetry_yaml(port, &spool, "")),
    );
    let used = traffic(&sidecar.url(), 12).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    sidecar.proc.signal(libc::SIGKILL);
    sidecar.proc.wait_exit(Duration::from_secs(5));
    // A crash mid-write: half a record at the end of the newest segment.
    let mut segs: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segs.sort();
    let last = segs.last().expect("a segment with events");
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    f.write_all(&[200, 1, 0, 0, 9, 9, 9, 9, b'{', b'"'])
        .unwrap();
    drop(f);

    let db = format!("sqlite://{}", dir.path().join("usage.db").display());
    let collector = Collector::start_on(dir.path(), &db, port);
    sidecar.restart();
    collector
        .wait_requests(12, "every whole record delivered")
        .await;
    assert_totals(&collector, used).await;
    sidecar
        .wait_metric(
            "switchyard_events_dropped_total{reason=\"torn_tail\"}",
            1.0,
            "torn tail counted",
        )
        .await;
    assert_eq!(
        sidecar
            .metric("switchyard_events_dropped_total{reason=\"corrupt\"}")
            .await,
        0.0
    );
    assert!(sidecar.proc.log_text().contains("damaged records"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_an_exact_count_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let port = free_port();
    let spool = dir.path().join("spool");
    let sidecar = start_proxy(
        dir.path(),
        &policy(
            &mock,
            "research",
            &telemetry_yaml(port, &spool, "  spool_max_bytes: 8192\n"),
        ),
    );
    let client = reqwest::Client::new();
    let mut used = Vec::new();
    for _ in 0..40 {
        used.push(chat(&client, &sidecar.url(), false).await);
        sidecar.wait_idle().await;
    }
    sidecar.wait_idle().await;
    let dropped_series = "switchyard_events_dropped_total{reason=\"spool_full\"}";
    // Wait until the writer has taken every event (kept or dropped).
    let start = std::time::Instant::now();
    let (mut kept, mut dropped) = (0.0, 0.0);
    while kept + dropped < 40.0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
        kept = sidecar.metric("switchyard_events_queued").await;
        dropped = sidecar.metric(dropped_series).await;
    }
    assert!(
        dropped > 0.0 && kept > 0.0,
        "kept {kept}, dropped {dropped}"
    );
    assert!(sidecar.metric("switchyard_events_spooled_bytes").await <= 8192.0);
    assert!(sidecar.proc.log_text().contains("the spool is full"));

    let db = format!("sqlite://{}", dir.path().join("usage.db").display());
    let collector = Collector::start_on(dir.path(), &db, port);
    collector
        .wait_requests(kept as i64, "every event the spool kept")
        .await;
    // The first `kept` requests are those stored: the spool keeps the oldest.
    let mut expect = Used::default();
    for u in &used[..kept as usize] {
        expect.add(*u);
    }
    assert_totals(&collector, expect).await;
    assert_eq!(sidecar.metric(dropped_series).await, 40.0 - kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_reader_sees_only_its_team() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &[]);
    let db = format!("sqlite://{}", dir.path().join("usage.db").display());
    let c = Collector::start(dir.path(), &db);
    let research = sidecar_in(dir.path(), "a", &mock, "research", c.port);
    let ops = sidecar_in(dir.path(), "b", &mock, "ops", c.port);
    std::fs::copy(
        dir.path().join("a/policy.yaml"),
        dir.path().join("policy.yaml"),
    )
    .unwrap();
    traffic(&research.url(), 6).await;
    traffic(&ops.url(), 9).await;
    c.wait_requests(15, "both teams").await;

    let teams = |v: &serde_json::Value| -> Vec<String> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["team"].as_str().unwrap().to_string())
            .collect()
    };
    let admin = c.usage(ADMIN_TOKEN, "group_by=team").await;
    assert_eq!(teams(&admin), ["ops", "research"]);
    // Every way of asking gives the team reader its own rows and nothing else.
    for q in [
        "group_by=team",
        "group_by=team,model,provider,route,service,key,day,hour",
        "group_by=model",
        "",
    ] {
        let v = c.usage(RESEARCH_TOKEN, q).await;
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{q}: {v}");
        assert_eq!(rows[0]["requests"], 6, "{q}: {v}");
    }
    let (status, body) = c.get(RESEARCH_TOKEN, "/v1/usage?team=ops").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"code\":\"forbidden\""));
    let (status, _) = c.get(RESEARCH_TOKEN, "/v1/events?team=ops").await;
    assert_eq!(status, 403);
    let (_, events) = c.get(RESEARCH_TOKEN, "/v1/events?limit=1000").await;
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 6);
    assert!(events.iter().all(|e| e["team"] == "research"));
    let (_, csv) = c
        .get(RESEARCH_TOKEN, "/v1/usage?group_by=team&format=csv")
        .await;
    assert!(!csv.contains("ops"), "{csv}");
    let (_, budgets) = c.get(RESEARCH_TOKEN, "/v1/budgets").await;
    assert!(
        budgets.contains("research") && !budgets.contains("ops"),
        "{budgets}"
    );
    // No token, a wrong one, or an ingest token: nothing.
    for t in ["", "nope", INGEST_TOKEN] {
        assert_eq!(c.get(t, "/v1/usage").await.0, 401, "{t}");
        assert_eq!(c.get(t, "/v1/events").await.0, 401, "{t}");
        assert_eq!(c.get(t, "/v1/budgets").await.0, 401, "{t}");
    }
}

#[test]
fn collector_config_is_checked_by_switchyard_check() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "listen: 127.0.0.1:7070\ndatabase: /tmp/x.db\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--collector"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listen: 127.0.0.1:7070\ntokens: { ingest: [\"sk-live-0123456789abcdef0123456789\"] }\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--collector"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokens.ingest[0]"), "{err}");
    assert!(
        !err.contains("0123456789abcdef"),
        "a pasted secret is never echoed: {err}"
    );
}
