//! Shared harness for the end-to-end tests: the real `switchyard` binary (proxy and mock
//! upstream) on loopback ports, killed when the test ends.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A loopback port for a child process to listen on: free now, below the kernel's
/// ephemeral range, and never one this test binary handed out before.
///
/// Below the ephemeral range, because a port only reserved (the collector a test starts
/// later) or not yet bound (a child still starting) is otherwise fair game for any
/// outgoing connection's local port, or for another test's `bind(0)`; Pingora retries a
/// bind whose port is taken rather than failing, so one test's requests would reach
/// another test's listener (seen: a burst answered half by the test's proxy, half by
/// another test's admin port with 405; a mock upstream that never got its port, 502).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = reserved_range();
    let span = u32::from(high - low);
    // Test binaries run one after another; each starts at its own place in the range so a
    // port a previous binary's child still holds is not tried first.
    let base = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((base + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// The ports tests may use: the larger gap outside `ip_local_port_range`, above 10000.
fn reserved_range() -> (u16, u16) {
    let eph = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let below = (10_000, eph.0.max(10_000));
    let above = (eph.1.saturating_add(1).max(10_000), u16::MAX);
    let width = |r: (u16, u16)| r.1.saturating_sub(r.0);
    let best = if width(below) >= width(above) {
        below
    } else {
        above
    };
    assert!(
        width(best) >= 1000,
        "no port range outside the ephemeral one: {eph:?}"
    );
    best
}

/// A child process killed on drop; its stderr goes to a log file kept for failures.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for exit up to `limit`; the exit status, or None if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str], log: PathBuf, envs: &[(&str, &str)]) -> Proc {
    let file = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(file)
        .env("SWITCHYARD_LOG", "info");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().expect("spawn switchyard"),
        log,
    }
}

pub fn wait_port(port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} never opened");
}

pub struct Mock {
    pub port: u16,
    pub proc: Proc,
}

impl Mock {
    pub fn start(dir: &Path, extra: &[&str]) -> Mock {
        let port = free_port();
        let p = port.to_string();
        let mut args = vec!["mock-upstream", "--port", &p, "--record"];
        args.extend_from_slice(extra);
        let proc = spawn(&args, dir.join(format!("mock-{port}.log")), &[]);
        wait_port(port);
        Mock { port, proc }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the mock received, oldest first.
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        reqwest::get(format!("{}/mock/requests", self.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn set(&self, knobs: serde_json::Value) {
        reqwest::Client::new()
            .post(format!("{}/mock/config", self.url()))
            .json(&knobs)
            .send()
            .await
            .unwrap();
    }
}

pub struct Sidecar {
    pub port: u16,
    pub admin: u16,
    pub config: PathBuf,
    pub proc: Proc,
}

/// Writes `body` (everything but `listen:`) as the policy and starts the proxy on it.
pub fn start_proxy(dir: &Path, body: &str) -> Sidecar {
    let port = free_port();
    let admin = free_port();
    let config = dir.join("policy.yaml");
    write_policy(&config, port, admin, body);
    let proc = spawn(
        &["proxy", "--config", config.to_str().unwrap()],
        dir.join(format!("proxy-{port}.log")),
        &[],
    );
    let s = Sidecar {
        port,
        admin,
        config,
        proc,
    };
    s.wait_ready();
    s
}

pub fn write_policy(path: &Path, port: u16, admin: u16, body: &str) {
    let text =
        format!("listen: {{ proxy: \"127.0.0.1:{port}\", admin: \"127.0.0.1:{admin}\" }}\n{body}");
    // Write to a temp file and rename, as editors and Kubernetes do: never a torn read.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Sidecar {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }

    pub fn wait_ready(&self) {
        let start = Instant::now();
        let url = format!("{}/readyz", self.admin_url());
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(r) = reqwest::blocking_get(&url) {
                if r == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("proxy never became ready:\n{}", self.proc.log_text());
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one exact series line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Waits until the series reaches `at_least` (10 s at most, then fails with `what`).
    pub async fn wait_metric(&self, series: &str, at_least: f64, what: &str) {
        let start = Instant::now();
        while self.metric(series).await < at_least {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until no request is in flight: a request's metrics are recorded when it ends,
    /// a moment after the client has its response.
    pub async fn wait_idle(&self) {
        let start = Instant::now();
        while self.metric("switchyard_in_flight_requests").await > 0.0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "requests still in flight:\n{}",
                self.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_generation(&self, generation: u64) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.metric("switchyard_config_generation").await as u64 >= generation {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "config generation never reached {generation}:\n{}",
            self.proc.log_text()
        );
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A small blocking GET used only while waiting for readiness (no runtime needed).
mod reqwest {
    pub use ::reqwest::*;

    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = std::net::TcpStream::connect(hostport)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let code = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok(code)
    }
}

pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
}

/// A chat request for `small` whose body is ~3,000 bytes (an estimate of ~780 tokens at
/// admission) of which the provider counts 10 prompt tokens: the padding is a field it
/// ignores. What tells a tpm limit's estimate from its settled count.
#[allow(dead_code)]
pub fn padded_body() -> serde_json::Value {
    serde_json::json!({"model": "small", "max_tokens": 10, "user": "x".repeat(3000),
                       "messages": [{"role": "user", "content": "Say hello."}]})
}

impl Sidecar {
    /// Starts the proxy again on the same config and ports (after a kill).
    pub fn restart(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        self.proc = spawn(
            &["proxy", "--config", self.config.to_str().unwrap()],
            self.config
                .with_file_name(format!("proxy-{}-again.log", self.port)),
            &[],
        );
        self.wait_ready();
    }
}

pub const INGEST_TOKEN: &str = "test-ingest-token";
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const RESEARCH_TOKEN: &str = "test-research-reader";

/// The `telemetry:` block of a sidecar shipping to a collector on `port`.
pub fn telemetry_yaml(collector_port: u16, spool: &Path, extra: &str) -> String {
    format!(
        "telemetry:\n  collector: \"http://127.0.0.1:{collector_port}\"\n  token: \"{INGEST_TOKEN}\"\n  spool_dir: \"{}\"\n  batch: {{ max_events: 50, max_wait: 100ms }}\n{extra}",
        spool.display()
    )
}

/// A PostgreSQL database of its own for one test, dropped at the end.
pub struct PgDb {
    pub name: String,
}

impl PgDb {
    pub fn create() -> PgDb {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("switchyard_test_{}_{n}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {name}"));
        psql(&format!("CREATE DATABASE {name}"));
        PgDb { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

pub fn psql(sql: &str) {
    let out = Command::new("psql")
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
        .output()
        .expect("psql (PostgreSQL must run on 127.0.0.1:5432; .ci/run starts it)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Collector {
    pub port: u16,
    pub config: PathBuf,
    pub proc: Proc,
}

impl Collector {
    /// A collector on a new port with the test tokens; `database` as in its config.
    pub fn start(dir: &Path, database: &str) -> Collector {
        Collector::start_on(dir, database, free_port())
    }

    pub fn start_on(dir: &Path, database: &str, port: u16) -> Collector {
        Collector::start_with(dir, database, port, "")
    }

    /// With `extra` lines in its config.
    pub fn start_with(dir: &Path, database: &str, port: u16, extra: &str) -> Collector {
        let config = dir.join(format!("collector-{port}.yaml"));
        let hash = switchyard::collector::auth::hash_line;
        let text = format!(
            "listen: 127.0.0.1:{port}\ndatabase: \"{database}\"\npolicy: policy.yaml\ntokens:\n  ingest: [\"{}\"]\n  readers:\n    - {{ hash: \"{}\", role: admin }}\n    - {{ hash: \"{}\", role: team, team: research }}\n{extra}",
            hash(INGEST_TOKEN),
            hash(ADMIN_TOKEN),
            hash(RESEARCH_TOKEN),
        );
        std::fs::write(&config, text).unwrap();
        let proc = spawn(
            &["collector", "--config", config.to_str().unwrap()],
            dir.join(format!(
                "collector-{port}-{}.log",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            )),
            &[],
        );
        let c = Collector { port, config, proc };
        c.wait_ready();
        c
    }

    /// Starts again on the same config and port (after a kill).
    pub fn restart(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let dir = self.config.parent().unwrap().to_path_buf();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let db = text
            .lines()
            .find_map(|l| l.strip_prefix("database: "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        *self = Collector::start_on(&dir, &db, self.port);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn wait_ready(&self) {
        let start = Instant::now();
        let url = format!("{}/readyz", self.url());
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(200) = reqwest::blocking_get(&url) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("collector never became ready:\n{}", self.proc.log_text());
    }

    pub async fn get(&self, token: &str, path_and_query: &str) -> (u16, String) {
        let r = reqwest::Client::new()
            .get(format!("{}{path_and_query}", self.url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    /// `/v1/budgets`' row for one level (null if it has none).
    pub async fn budget(&self, token: &str, level: &str, name: &str) -> serde_json::Value {
        let (status, body) = self.get(token, "/v1/budgets").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["levels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["level"] == level && l["name"] == name)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until `/v1/budgets` shows `field` of a level at `usd` (admin token).
    pub async fn wait_budget(&self, level: &str, name: &str, field: &str, usd: f64) {
        let start = Instant::now();
        loop {
            let row = self.budget(ADMIN_TOKEN, level, name).await;
            if row[field].as_f64().is_some_and(|v| (v - usd).abs() < 1e-12) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{level} {name}: {field} never reached {usd}: {row}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/v1/usage` as JSON (admin token unless given).
    pub async fn usage(&self, token: &str, query: &str) -> serde_json::Value {
        let (status, body) = self.get(token, &format!("/v1/usage?{query}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Requests stored in all, from the roll-ups.
    pub async fn requests(&self) -> i64 {
        let v = self.usage(ADMIN_TOKEN, "from=30d").await;
        v["rows"][0]["requests"].as_i64().unwrap_or(0)
    }

    /// Waits until exactly `n` requests are stored, then checks that no more arrive.
    pub async fn wait_requests(&self, n: i64, what: &str) {
        let start = Instant::now();
        loop {
            let got = self.requests().await;
            if got == n {
                break;
            }
            assert!(got < n, "{what}: {got} stored, more than the {n} sent");
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "{what}: {got} of {n} stored after 40 s\n{}",
                self.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(self.requests().await, n, "{what}: more arrived later");
    }
}
