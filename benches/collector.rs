//! The collector's two figures of merit, on this machine:
//!
//! 1. **Ingest**: events per second one collector stores, over HTTP as the sidecars send
//!    them (gzip NDJSON batches of 500, 4 senders at once), into SQLite or PostgreSQL.
//! 2. **Analytics**: `/v1/usage` latency with millions of events stored (10 million by
//!    default), for the queries the dashboard and finance exports make.
//!
//!   cargo bench --bench collector -- sqlite|postgres [ingest_events] [stored_events]
//!
//! The collector is the real binary (`SWITCHYARD_BIN`, default target/release/switchyard).
//! Stored events for (2) are written through the collector's own store, in-process, with a
//! realistic shape: 30 services, each owned by one of 12 teams, calling 2 routes of 2 models
//! each, spread evenly over the last 90 days.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::collector::config::Database;
use switchyard::collector::store::{Incoming, Store};
use switchyard::events::{Decision, PolicyVersion, UsageEvent, Usd};

const INGEST: &str = "bench-ingest-token";
const ADMIN: &str = "bench-admin-token";

fn binary() -> PathBuf {
    std::env::var_os("SWITCHYARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            target.join("release/switchyard")
        })
}

fn event(i: u64, ts: chrono::DateTime<chrono::Utc>) -> UsageEvent {
    let service = i % 30;
    let team = service % 12;
    let route = (i / 30) % 2;
    let model = (i / 60) % 2;
    let input = 200 + (i * 7919) % 3000;
    let output = 20 + (i * 104_729) % 800;
    UsageEvent {
        v: 1,
        id: uuid::Uuid::now_v7(),
        ts,
        namespace: "prod".into(),
        pod: format!("svc-{service}-7d9f8-abcde").into(),
        service: format!("svc-{service}").into(),
        node: "node-1".into(),
        team: format!("team-{team}").into(),
        key_id: None,
        route: format!("route-{route}").into(),
        requested_model: Some("gpt-4o".into()),
        model: format!("model-{service}-{route}-{model}").into(),
        provider: "openai".into(),
        attempts: 1,
        fallback: i.is_multiple_of(50),
        status: if i.is_multiple_of(97) { 500 } else { 200 },
        error_code: None,
        stream: i.is_multiple_of(2),
        partial: false,
        input_tokens: input,
        output_tokens: output,
        cached_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cost_usd: Usd(u128::from(input) * 150_000_000_000 + u128::from(output) * 600_000_000_000),
        latency_ms: 50 + (i * 31) % 4000,
        ttft_ms: Some(40),
        overhead_us: 45,
        policy_version: PolicyVersion {
            generation: 1,
            sha256: "3f1c9a4e5b7d2f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a".into(),
        },
        decision: Decision {
            strategy: "weighted".into(),
            reason: None,
            score: None,
            shadow: None,
        },
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn psql(sql: &str) {
    let ok = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qc",
            sql,
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "psql {sql}");
}

fn start_collector(dir: &std::path::Path, database: &str, port: u16) -> Killed {
    let hash = switchyard::collector::auth::hash_line;
    let cfg = dir.join("collector.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\ndatabase: \"{database}\"\ntokens:\n  ingest: [\"{}\"]\n  readers: [ {{ hash: \"{}\", role: admin }} ]\n",
            hash(INGEST),
            hash(ADMIN)
        ),
    )
    .unwrap();
    let child = Command::new(binary())
        .args(["collector", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the switchyard binary (SWITCHYARD_BIN)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "collector did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Killed(child)
}

async fn ingest_rate(url: &str, events: u64) -> f64 {
    // Batches built and compressed up front: only the collector's work is timed.
    let now = chrono::Utc::now();
    let batches: Vec<Vec<u8>> = (0..events.div_ceil(500))
        .map(|b| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            for i in b * 500..((b + 1) * 500).min(events) {
                gz.write_all(&event(i, now).to_json()).unwrap();
                gz.write_all(b"\n").unwrap();
            }
            gz.finish().unwrap()
        })
        .collect();
    let batches = Arc::new(std::sync::Mutex::new(batches));
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (batches, client, url) = (batches.clone(), client.clone(), url.to_string());
        senders.push(tokio::spawn(async move {
            loop {
                let Some(body) = batches.lock().unwrap().pop() else {
                    break;
                };
                let r = client
                    .post(format!("{url}/v1/events"))
                    .bearer_auth(INGEST)
                    .header("content-encoding", "gzip")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    events as f64 / start.elapsed().as_secs_f64()
}

async fn seed(db: &Database, events: u64) {
    let store = Store::open(db).await.unwrap();
    let now = chrono::Utc::now();
    let span = 90 * 86_400_000i64;
    let start = Instant::now();
    let chunk = 5_000u64;
    let mut i = 0;
    while i < events {
        let mut batch: Vec<Incoming> = (i..(i + chunk).min(events))
            .map(|j| {
                let ts = now - chrono::Duration::milliseconds(span * (j as i64) / events as i64);
                let e = event(j, ts);
                let line = String::from_utf8(e.to_json()).unwrap();
                Incoming { event: e, line }
            })
            .collect();
        store.ingest(&mut batch).await.unwrap();
        i += chunk;
        if i % 1_000_000 == 0 {
            eprintln!(
                "  seeded {i} events ({:.0}/s)",
                i as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
}

async fn usage_latency(url: &str) {
    let client = reqwest::Client::new();
    for q in [
        "from=30d&group_by=team,model",
        "from=7d&group_by=team,day",
        "from=90d&group_by=model",
        "from=24h&group_by=team,model,route,service,hour",
        "from=30d&team=team-3&group_by=model,day",
        "from=90d",
    ] {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..15 {
            let t = Instant::now();
            let r = client
                .get(format!("{url}/v1/usage?{q}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            times.push(t.elapsed());
            rows = v["rows"].as_array().map_or(0, Vec::len);
        }
        times.sort();
        println!(
            "  /v1/usage?{q:<48} rows {rows:>5}  median {:>7.1} ms  max {:>7.1} ms",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let backend = args.first().map_or("sqlite", String::as_str).to_string();
    let ingest_events: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let stored_events: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fresh = |name: &str| -> String {
        match backend.as_str() {
            "postgres" => {
                let db = format!("switchyard_bench_{name}");
                psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
                psql(&format!("CREATE DATABASE {db}"));
                format!("postgres://postgres@127.0.0.1:5432/{db}")
            }
            _ => format!(
                "sqlite://{}",
                dir.path().join(format!("{name}.db")).display()
            ),
        }
    };

    println!("collector bench: {backend}");
    let db = fresh("ingest");
    let port = 9290;
    {
        let _c = start_collector(dir.path(), &db, port);
        let rate = rt.block_on(ingest_rate(
            &format!("http://127.0.0.1:{port}"),
            ingest_events,
        ));
        println!("  ingest: {ingest_events} events, {rate:.0} events/s");
    }
    if stored_events > 0 {
        let db = fresh("usage");
        let parsed = if backend == "postgres" {
            Database::Postgres(db.clone())
        } else {
            Database::Sqlite(PathBuf::from(db.trim_start_matches("sqlite://")))
        };
        let t = Instant::now();
        rt.block_on(seed(&parsed, stored_events));
        println!(
            "  seeded {stored_events} events in {:.0} s",
            t.elapsed().as_secs_f64()
        );
        let _c = start_collector(dir.path(), &db, port + 1);
        rt.block_on(usage_latency(&format!("http://127.0.0.1:{}", port + 1)));
    }
    if backend == "postgres" {
        psql("DROP DATABASE IF EXISTS switchyard_bench_ingest WITH (FORCE)");
        psql("DROP DATABASE IF EXISTS switchyard_bench_usage WITH (FORCE)");
    }
}
