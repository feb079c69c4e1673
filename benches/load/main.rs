//! Load benchmark: the bundled mock upstream (0 ms), reached directly, through nginx as a
//! plain `proxy_pass` hop, and through Switchyard, under an open-loop fixed-rate load (so
//! coordinated omission cannot hide latency) and a closed-loop saturation run.
//!
//! A second Switchyard ships usage events to a collector, so its CPU per request against
//! the first one's is what shipping costs.
//!
//! Run: `cargo bench --bench load` (see docs/benchmarks.md). Knobs, as environment
//! variables: BENCH_RATE (default 500 req/s), BENCH_SECS (10), BENCH_SAT_SECS (5),
//! BENCH_CONNS (32, saturation concurrency), BENCH_EVENTS (1; 0 leaves the events row
//! out), BENCH_COMPRESSION (none, the default, zstd or gzip: the events row's batches).

mod client;
mod procs;

use client::Conn;
use procs::Proc;
use serde_json::json;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Workload {
    name: &'static str,
    body: Vec<u8>,
}

fn workloads() -> Vec<Workload> {
    let prompt = |n: usize| {
        "The quick brown fox jumps over the lazy dog. ".repeat(n / 45 + 1)[..n].to_string()
    };
    let chat = |stream: bool, size: usize| {
        serde_json::to_vec(&json!({
            "model": "bench-model",
            "stream": stream,
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": prompt(size)}
            ]
        }))
        .unwrap_or_default()
    };
    vec![
        Workload {
            name: "chat-2k",
            body: chat(false, 1900),
        },
        Workload {
            name: "stream-16",
            body: chat(true, 1900),
        },
        Workload {
            name: "body-256k",
            body: chat(false, 256 * 1024),
        },
    ]
}

#[derive(Default, Clone)]
struct Sample {
    latency_us: Vec<u64>,
    ttfb_us: Vec<u64>,
    errors: u64,
    done: u64,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Open loop: request i is due at t0 + i/rate, whatever happened to earlier ones; its
/// latency counts from that moment, so a stall shows up in every request it delays.
async fn fixed_rate(addr: &str, req: Arc<Vec<u8>>, rate: u64, secs: u64) -> Sample {
    let total = rate * secs;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::new()));
    let slots = Arc::new(Semaphore::new(256));
    let results = Arc::new(std::sync::Mutex::new(Sample::default()));
    // Pacing runs on its own OS thread: tokio's timer wheel has 1 ms granularity, which
    // would bunch requests and add up to a millisecond of fake latency.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let pacer = std::thread::spawn(move || {
        let t0 = Instant::now() + Duration::from_millis(50);
        for i in 0..total {
            let due = t0 + interval * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(due).is_err() {
                break;
            }
        }
    });
    let mut tasks = Vec::with_capacity(total as usize);
    while let Some(due) = rx.recv().await {
        let (pool, slots, results, req, addr) = (
            pool.clone(),
            slots.clone(),
            results.clone(),
            req.clone(),
            addr.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(_slot) = slots.acquire().await else {
                return;
            };
            let conn = pool.lock().await.pop();
            let mut conn = match conn {
                Some(c) => c,
                None => match Conn::open(&addr).await {
                    Ok(c) => c,
                    Err(_) => {
                        results.lock().map(|mut r| r.errors += 1).ok();
                        return;
                    }
                },
            };
            let r = conn.send(&req).await;
            let latency = due.elapsed();
            let reusable = r.as_ref().is_ok_and(|r| r.reusable);
            if let Ok(mut res) = results.lock() {
                match &r {
                    Ok(reply) if reply.status == 200 => {
                        res.done += 1;
                        res.latency_us.push(latency.as_micros() as u64);
                        res.ttfb_us.push(reply.ttfb.as_micros() as u64);
                    }
                    _ => res.errors += 1,
                }
            }
            if reusable {
                pool.lock().await.push(conn);
            }
        }));
    }
    let _ = pacer.join();
    for t in tasks {
        let _ = t.await;
    }
    let r = results.lock().map(|r| r.clone()).unwrap_or_default();
    r
}

/// Closed loop: `conns` clients back to back for `secs`; the achieved rate is the capacity.
async fn saturate(addr: &str, req: Arc<Vec<u8>>, conns: usize, secs: u64) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (req, addr) = (req.clone(), addr.to_string());
        tasks.push(tokio::spawn(async move {
            let mut s = Sample::default();
            let mut conn = None;
            while Instant::now() < deadline {
                if conn.is_none() {
                    conn = Conn::open(&addr).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    s.errors += 1;
                    continue;
                };
                let start = Instant::now();
                match c.send(&req).await {
                    Ok(r) if r.status == 200 => {
                        s.done += 1;
                        s.latency_us.push(start.elapsed().as_micros() as u64);
                        if !r.reusable {
                            conn = None;
                        }
                    }
                    Ok(_) => s.errors += 1,
                    Err(_) => {
                        s.errors += 1;
                        conn = None;
                    }
                }
            }
            s
        }));
    }
    let mut all = Sample::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.done += s.done;
            all.errors += s.errors;
            all.latency_us.extend(s.latency_us);
        }
    }
    all
}

struct Target {
    path: &'static str,
    /// `127.0.0.1:port`, also the requests' Host.
    addr: String,
    /// The hop under test (None for direct), whose CPU and memory are measured.
    pid: Option<u32>,
}

impl Target {
    fn on(path: &'static str, port: u16, pid: Option<u32>) -> Target {
        Target {
            path,
            addr: format!("127.0.0.1:{port}"),
            pid,
        }
    }
}

fn row(
    target: &Target,
    w: &Workload,
    mode: &str,
    secs: u64,
    s: &mut Sample,
    cpu: Option<f64>,
    peak: Option<f64>,
) -> serde_json::Value {
    s.latency_us.sort_unstable();
    s.ttfb_us.sort_unstable();
    let l = &s.latency_us;
    json!({
        "path": target.path, "workload": w.name, "mode": mode,
        "rps": s.done as f64 / secs as f64,
        "p50_us": pct(l, 0.50), "p90_us": pct(l, 0.90), "p99_us": pct(l, 0.99), "max_us": l.last().copied().unwrap_or(0),
        "ttfb_p50_us": pct(&s.ttfb_us, 0.50), "ttfb_p99_us": pct(&s.ttfb_us, 0.99),
        "errors": s.errors,
        "cpu_s_per_1k": cpu.map(|c| if s.done > 0 { c * 1000.0 / s.done as f64 } else { 0.0 }),
        "peak_rss_mb": peak,
    })
}

fn main() {
    let rate: u64 = env_or("BENCH_RATE", 500);
    let secs: u64 = env_or("BENCH_SECS", 10);
    let sat_secs: u64 = env_or("BENCH_SAT_SECS", 5);
    let conns: usize = env_or("BENCH_CONNS", 32);
    let dir = tempfile::tempdir().expect("temp dir");

    let mock_port = free_port();
    let mock = Proc::spawn(
        "mock",
        Command::new(BIN).args([
            "mock-upstream",
            "--port",
            &mock_port.to_string(),
            "--chunks",
            "16",
        ]),
    );
    procs::wait_port(mock_port);

    let (sy, sy_port) = start_proxy(dir.path(), "bench", mock_port, "");

    // The same proxy shipping usage events to a collector (SQLite, on this machine): its
    // CPU against the row above is what shipping costs (BENCH_EVENTS=0 leaves it out).
    let events = (env_or("BENCH_EVENTS", 1) == 1).then(|| {
        let collector_port = free_port();
        let hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b"bench-ingest"))
        };
        let ccfg = dir.path().join("collector.yaml");
        // The database out of the policies' directory: their reload watchers would wake
        // for each of its writes, which a real deployment does not do.
        let db = dir.path().join("collector");
        std::fs::create_dir_all(&db).expect("collector directory");
        std::fs::write(
            &ccfg,
            format!(
                "listen: 127.0.0.1:{collector_port}\ndatabase: \"sqlite://{}/usage.db\"\ntokens: {{ ingest: [\"sha256:{hash}\"] }}\n",
                db.display()
            ),
        )
        .expect("write collector config");
        let collector = Proc::spawn(
            "collector",
            Command::new(BIN).args(["collector", "--config", ccfg.to_str().unwrap_or_default()]),
        );
        procs::wait_port(collector_port);
        let telemetry = format!(
            "telemetry: {{ collector: \"http://127.0.0.1:{collector_port}\", token: bench-ingest, spool_dir: \"{}/spool\", compression: {} }}\n",
            dir.path().display(),
            std::env::var("BENCH_COMPRESSION").unwrap_or_else(|_| "none".into()),
        );
        let (proxy, port) = start_proxy(dir.path(), "bench-events", mock_port, &telemetry);
        (collector, proxy, port)
    });

    let nginx = procs::nginx_binary().map(|bin| {
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, procs::nginx_conf(dir.path(), port, mock_port)).expect("nginx.conf");
        let p = Proc::spawn(
            "nginx",
            Command::new(bin).args([
                "-c",
                conf.to_str().unwrap_or_default(),
                "-p",
                dir.path().to_str().unwrap_or_default(),
            ]),
        );
        procs::wait_port(port);
        (p, port)
    });
    if nginx.is_none() {
        eprintln!("nginx not installed (benches/setup.sh installs it): its rows are skipped");
    }
    std::thread::sleep(Duration::from_millis(300));
    let idle_sy = procs::rss_mb(sy.pid());
    let idle_nginx = nginx.as_ref().map(|(p, _)| procs::rss_mb(p.pid()));

    let mut targets = vec![Target::on("direct", mock_port, None)];
    if let Some((p, port)) = &nginx {
        targets.push(Target::on("nginx", *port, Some(p.pid())));
    }
    targets.push(Target::on("switchyard", sy_port, Some(sy.pid())));
    if let Some((_, proxy, port)) = &events {
        targets.push(Target::on("sy+events", *port, Some(proxy.pid())));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for w in workloads() {
        for t in &targets {
            let req = Arc::new(client::post(&t.addr, "/v1/chat/completions", &w.body));
            // Warm up connections and caches.
            rt.block_on(fixed_rate(&t.addr, req.clone(), rate.min(200), 1));
            let cpu0 = t.pid.map(procs::cpu_seconds);
            let mut s = rt.block_on(fixed_rate(&t.addr, req.clone(), rate, secs));
            let cpu = t.pid.zip(cpu0).map(|(p, c0)| procs::cpu_seconds(p) - c0);
            rows.push(row(t, &w, "fixed-rate", secs, &mut s, cpu, None));
            let cpu0 = t.pid.map(procs::cpu_seconds);
            let mut s = rt.block_on(saturate(&t.addr, req.clone(), conns, sat_secs));
            let cpu = t.pid.zip(cpu0).map(|(p, c0)| procs::cpu_seconds(p) - c0);
            let peak = t.pid.map(procs::peak_rss_mb);
            rows.push(row(t, &w, "saturation", sat_secs, &mut s, cpu, peak));
            eprintln!("done: {} {}", w.name, t.path);
        }
    }

    let find = |path: &str, w: &str, mode: &str| {
        rows.iter()
            .find(|r| r["path"] == path && r["workload"] == w && r["mode"] == mode)
            .cloned()
    };
    let mut ratios = Vec::new();
    for w in ["chat-2k", "stream-16", "body-256k"] {
        let d = find("direct", w, "fixed-rate");
        let s = find("switchyard", w, "fixed-rate");
        let n = find("nginx", w, "fixed-rate");
        let ds = find("direct", w, "saturation");
        let e = find("sy+events", w, "fixed-rate");
        let ss = find("switchyard", w, "saturation");
        let ns = find("nginx", w, "saturation");
        let diff = |k: &str| match (&d, &s) {
            (Some(d), Some(s)) => s[k].as_i64().unwrap_or(0) - d[k].as_i64().unwrap_or(0),
            _ => 0,
        };
        let ratio =
            |a: &Option<serde_json::Value>, b: &Option<serde_json::Value>, k: &str| match (a, b) {
                (Some(a), Some(b)) => {
                    let (x, y) = (a[k].as_f64().unwrap_or(0.0), b[k].as_f64().unwrap_or(0.0));
                    if y > 0.0 {
                        Some(x / y)
                    } else {
                        None
                    }
                }
                _ => None,
            };
        ratios.push(json!({
            "workload": w,
            "added_p50_us_vs_direct": diff("p50_us"),
            "added_p99_us_vs_direct": diff("p99_us"),
            "added_ttfb_p50_us_vs_direct": diff("ttfb_p50_us"),
            "cpu_per_req_vs_nginx": ratio(&s, &n, "cpu_s_per_1k"),
            "saturation_vs_nginx": ratio(&ss, &ns, "rps"),
            "saturation_vs_direct": ratio(&ss, &ds, "rps"),
            "events_cpu_vs_switchyard": ratio(&e, &s, "cpu_s_per_1k"),
        }));
    }

    println!("\nrate {rate}/s for {secs}s (fixed-rate), {conns} connections for {sat_secs}s (saturation); latencies in µs\n");
    println!(
        "{:<10} {:<10} {:<11} {:>9} {:>7} {:>7} {:>7} {:>8} {:>9} {:>6} {:>10} {:>8}",
        "workload",
        "path",
        "mode",
        "req/s",
        "p50",
        "p90",
        "p99",
        "max",
        "ttfb p50",
        "errors",
        "cpu s/1k",
        "peak MB"
    );
    for r in &rows {
        println!(
            "{:<10} {:<10} {:<11} {:>9.0} {:>7} {:>7} {:>7} {:>8} {:>9} {:>6} {:>10} {:>8}",
            r["workload"].as_str().unwrap_or(""),
            r["path"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            r["rps"].as_f64().unwrap_or(0.0),
            r["p50_us"],
            r["p90_us"],
            r["p99_us"],
            r["max_us"],
            r["ttfb_p50_us"],
            r["errors"],
            r["cpu_s_per_1k"]
                .as_f64()
                .map_or("-".into(), |c| format!("{c:.3}")),
            r["peak_rss_mb"]
                .as_f64()
                .map_or("-".into(), |c| format!("{c:.1}")),
        );
    }
    println!(
        "\nidle RSS: switchyard {idle_sy:.1} MB{}",
        idle_nginx.map_or(String::new(), |n| format!(
            ", nginx (master+workers) {n:.1} MB"
        ))
    );
    println!(
        "\n{:<10} {:>14} {:>14} {:>15} {:>16} {:>14} {:>16}",
        "workload",
        "+p50 vs direct",
        "+p99 vs direct",
        "+ttfb vs direct",
        "cpu/req vs nginx",
        "sat vs nginx",
        "cpu/req events"
    );
    for r in &ratios {
        let f = |k: &str| r[k].as_f64().map_or("-".into(), |v| format!("{v:.2}"));
        let events = r["events_cpu_vs_switchyard"]
            .as_f64()
            .map_or("-".into(), |v| format!("{:+.1} %", (v - 1.0) * 100.0));
        println!(
            "{:<10} {:>12}µs {:>12}µs {:>13}µs {:>16} {:>14} {:>16}",
            r["workload"].as_str().unwrap_or(""),
            r["added_p50_us_vs_direct"],
            r["added_p99_us_vs_direct"],
            r["added_ttfb_p50_us_vs_direct"],
            f("cpu_per_req_vs_nginx"),
            f("saturation_vs_nginx"),
            events
        );
    }

    let report = json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "cpu": cpu_model() },
        "settings": { "rate": rate, "secs": secs, "sat_secs": sat_secs, "conns": conns },
        "idle_rss_mb": { "switchyard": idle_sy, "nginx": idle_nginx },
        "rows": rows,
        "ratios": ratios,
    });
    let out_dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    for name in [format!("load-{stamp}.json"), "load-latest.json".to_string()] {
        let _ = std::fs::write(out_dir.join(name), &text);
    }
    println!("\nJSON: {}", out_dir.join("load-latest.json").display());
    drop(mock);
}

/// A Switchyard on a one-route policy to the mock, `extra` appended to the policy; waits
/// for its port.
fn start_proxy(dir: &std::path::Path, name: &str, mock_port: u16, extra: &str) -> (Proc, u16) {
    let port = free_port();
    let admin = free_port();
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "listen: {{ proxy: \"127.0.0.1:{port}\", admin: \"127.0.0.1:{admin}\" }}\nserver: {{ threads: 2 }}\nproviders:\n  mock: {{ format: openai, base_url: \"http://127.0.0.1:{mock_port}/v1\", api_key: sk-provider }}\nmodels:\n  bench-model: {{ provider: mock, name: mock-model }}\nroutes:\n  - {{ name: bench, match: {{ model: \"bench-*\" }}, strategy: priority, targets: [bench-model] }}\n{extra}"
        ),
    )
    .expect("write bench config");
    let proc = Proc::spawn(
        "switchyard",
        Command::new(BIN).env("SWITCHYARD_LOG", "warn").args([
            "proxy",
            "--config",
            cfg.to_str().unwrap_or_default(),
        ]),
    );
    procs::wait_port(port);
    (proc, port)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}
