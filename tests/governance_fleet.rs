//! Governance across a fleet: two sidecars sharing limits and budgets through a real Redis
//! (the machine's, on its standard port, each test with team names of its own), a sidecar
//! killed while holding reservations, and Redis itself stopped (a private instance).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn ask() -> Value {
    json!({"model": "small", "max_tokens": 10, "messages": [{"role": "user", "content": "Say hello."}]})
}

/// A team name no other test (or earlier run) uses: Redis keeps state between runs.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// `small`: free input, 1000 USD per million output tokens: 0.01 USD for the mock's 10.
fn policy(mock: &Mock, redis: &str, extra: &str) -> String {
    format!(
        r#"
providers:
  alpha: {{ format: openai, base_url: "{}/v1", api_key: sk-alpha }}
models:
  small: {{ provider: alpha, name: alpha-small, price: {{ input: 0, output: 1000 }} }}
governance: {{ redis: "{redis}", on_redis_down: closed, reservation_ttl: 3s }}
{extra}"#,
        mock.url()
    )
}

/// Two sidecars on one policy, each in its own directory (`SPOOL_DIR` in the policy
/// becomes a spool of its own there).
/// Two sidecars on the machine's Redis, both of one fresh team with these `limits`.
fn one_team_on_two_sidecars(dir: &Path, mock: &Mock, limits: &str) -> (Sidecar, Sidecar) {
    let team = unique("research");
    let body = policy(
        mock,
        MACHINE_REDIS,
        &format!("identity: {{ team: {team} }}\nteams:\n  {team}: {{ limits: {{ {limits} }} }}\n"),
    );
    two_sidecars(dir, &body)
}

fn two_sidecars(dir: &Path, body: &str) -> (Sidecar, Sidecar) {
    let start = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        start_proxy(
            &d,
            &body.replace("SPOOL_DIR", d.join("spool").to_str().unwrap()),
        )
    };
    (start("a"), start("b"))
}

async fn post(sc: &Sidecar, key: Option<&str>) -> (u16, String) {
    let mut req = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&ask());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

/// `n` requests at once, alternating between the two sidecars: statuses and codes.
async fn burst(a: &Sidecar, b: &Sidecar, n: usize, key: Option<&str>) -> BTreeMap<String, usize> {
    let all =
        futures_util::future::join_all((0..n).map(|i| post(if i % 2 == 0 { a } else { b }, key)))
            .await;
    let mut out = BTreeMap::new();
    for (status, code) in all {
        *out.entry(format!("{status} {code}").trim().to_string())
            .or_default() += 1;
    }
    out
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// What Redis holds for a level's budget this day (nano-dollars).
fn redis_budget(port: u16, level: &str, field: &str) -> i64 {
    let day = chrono::Utc::now().timestamp().div_euclid(86_400) * 86_400;
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &port.to_string(),
            "HGET",
            &format!("switchyard:{{gov}}:b:{level}:{day}"),
            field,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn new_key(team: &str, id: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["keys", "new", "--team", team, "--id", id])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("sk-sy-"))
        .unwrap();
    let hash = text.split('"').find(|w| w.starts_with("sha256:")).unwrap();
    (key.to_string(), hash.to_string())
}

const MACHINE_REDIS: &str = "redis://127.0.0.1:6379";

#[tokio::test(flavor = "multi_thread")]
async fn two_sidecars_share_one_team_budget_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let team = unique("research");
    // 1.00 USD a day at 0.01 USD a request: exactly 100 requests, whichever sidecar.
    let collector = Collector::start(
        dir.path(),
        &format!("sqlite://{}/usage.db", dir.path().display()),
    );
    let body = policy(
        &mock,
        MACHINE_REDIS,
        &format!(
            "identity: {{ team: {team} }}\nteams:\n  {team}: {{ budget: {{ usd: 1.0, per: day }} }}\n{}",
            telemetry_yaml(collector.port, Path::new("SPOOL_DIR"), "")
        ),
    );
    std::fs::write(dir.path().join("policy.yaml"), &body).unwrap();
    let (a, b) = two_sidecars(dir.path(), &body);
    let got = burst(&a, &b, 200, None).await;
    assert_eq!(got, counts(&[("200", 100), ("429 budget_exceeded", 100)]));
    a.wait_idle().await;
    b.wait_idle().await;
    // Settlement runs just after each answer: wait for the last ones.
    let level = format!("team:{team}");
    let start = Instant::now();
    while redis_budget(6379, &level, "reserved") != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "reservations never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        redis_budget(6379, &level, "spent"),
        1_000_000_000,
        "1.00 USD in nano-dollars"
    );
    // One by one on either sidecar: refused, the budget is spent to the cent.
    assert_eq!(post(&a, None).await, (429, "budget_exceeded".into()));
    assert_eq!(post(&b, None).await, (429, "budget_exceeded".into()));
    assert_eq!(mock.requests().await.len(), 100);
    // The collector holds the same: 100 answered, 102 refusals, 1.00 USD spent.
    collector.wait_requests(202, "every request's event").await;
    let row = collector.budget(ADMIN_TOKEN, "team", &team).await;
    assert_eq!(row["spend_usd"].as_f64(), Some(1.0), "{row}");
    assert_eq!(row["redis_spent_usd"].as_f64(), Some(1.0), "{row}");
    assert_eq!(row["reserved_usd"].as_f64(), Some(0.0), "{row}");
    assert_eq!(row["remaining_usd"].as_f64(), Some(0.0), "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_budget_under_a_team_budget_across_two_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let team = unique("research");
    let (alice, alice_hash) = new_key(&team, "alice");
    let (bob, bob_hash) = new_key(&team, "bob");
    let alice_id = unique("alice");
    let body = policy(
        &mock,
        MACHINE_REDIS,
        &format!(
            "teams:\n  {team}:\n    budget: {{ usd: 1.0, per: day }}\n    keys:\n      - {{ id: {alice_id}, hash: \"{alice_hash}\", budget: {{ usd: 0.3, per: day }} }}\n      - {{ id: {}, hash: \"{bob_hash}\" }}\n",
            unique("bob")
        ),
    );
    let (a, b) = two_sidecars(dir.path(), &body);
    let got = burst(&a, &b, 50, Some(&alice)).await;
    assert_eq!(got, counts(&[("200", 30), ("429 budget_exceeded", 20)]));
    let got = burst(&a, &b, 100, Some(&bob)).await;
    assert_eq!(got, counts(&[("200", 70), ("429 budget_exceeded", 30)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn rpm_across_two_sidecars_admits_exactly_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let (a, b) = one_team_on_two_sidecars(dir.path(), &mock, "rpm: 60");
    let got = burst(&a, &b, 100, None).await;
    assert_eq!(got, counts(&[("200", 60), ("429 rate_limited", 40)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn tpm_across_two_sidecars_settles_to_real_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let (a, b) = one_team_on_two_sidecars(dir.path(), &mock, "tpm: 1000");
    let padded = padded_body();
    let send = |sc: &Sidecar| {
        client()
            .post(format!("{}/v1/chat/completions", sc.url()))
            .json(&padded)
            .send()
    };
    // One after another, alternating sidecars: each settles (in the background) to 10.
    for i in 0..10 {
        let sc = if i % 2 == 0 { &a } else { &b };
        assert_eq!(send(sc).await.unwrap().status(), 200, "request {i}");
        sc.wait_idle().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Four at once over both, held 500 ms upstream so none settles while the others ask:
    // 100 settled + one estimate fit in 1,000, a second does not.
    mock.set(json!({"chunks": 10, "latency_ms": 500})).await;
    let all =
        futures_util::future::join_all((0..4).map(|i| send(if i % 2 == 0 { &a } else { &b })))
            .await;
    let ok = all
        .iter()
        .filter(|r| r.as_ref().unwrap().status() == 200)
        .count();
    assert_eq!(ok, 1);
}

/// A private `redis-server` on a free port, stopped when dropped.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
}

impl OwnRedis {
    fn start_on(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package)");
        wait_port(port);
        OwnRedis {
            child: Some(child),
            port,
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_sidecars_reservations_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let redis = OwnRedis::start_on(free_port());
    let team = "research";
    // 0.10 USD: ten requests' worth. reservation_ttl is 3 s.
    let body = policy(
        &mock,
        &redis.url(),
        &format!("identity: {{ team: {team} }}\nteams:\n  {team}: {{ budget: {{ usd: 0.1, per: day }} }}\n"),
    );
    let (mut a, b) = two_sidecars(dir.path(), &body);
    // The collector reads the same policy, and the reservations from its Redis.
    std::fs::write(dir.path().join("policy.yaml"), &body).unwrap();
    let collector = Collector::start(
        dir.path(),
        &format!("sqlite://{}/usage.db", dir.path().display()),
    );
    // Ten slow requests on A hold the whole budget…
    mock.set(json!({"chunks": 10, "latency_ms": 30_000})).await;
    let a_url = a.url();
    let held: Vec<_> = (0..10)
        .map(|_| {
            let url = a_url.clone();
            tokio::spawn(async move {
                let _ = client()
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&ask())
                    .send()
                    .await;
            })
        })
        .collect();
    let level = format!("team:{team}");
    let start = Instant::now();
    while redis_budget(redis.port, &level, "reserved") < 100_000_000 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reservations never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let row = collector.budget(ADMIN_TOKEN, "team", team).await;
    assert_eq!(row["reserved_from"], "redis", "{row}");
    assert_eq!(row["reserved_usd"].as_f64(), Some(0.1), "{row}");
    assert_eq!(row["remaining_usd"].as_f64(), Some(0.0), "{row}");
    mock.set(json!({"chunks": 10, "latency_ms": 0})).await;
    // …so B is refused while they are in flight.
    assert_eq!(post(&b, None).await, (429, "budget_exceeded".into()));
    // A dies holding them; after reservation_ttl they expire and the budget is whole again.
    a.proc.signal(libc::SIGKILL);
    a.proc.wait_exit(Duration::from_secs(5));
    for h in held {
        let _ = h.await;
    }
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    // Expired, they no longer count, though Redis gives them back only at its next decision.
    let row = collector.budget(ADMIN_TOKEN, "team", team).await;
    assert_eq!(row["reserved_usd"].as_f64(), Some(0.0), "{row}");
    let got = burst(&b, &b, 12, None).await;
    assert_eq!(got, counts(&[("200", 10), ("429 budget_exceeded", 2)]));
    b.wait_idle().await;
    collector
        .wait_budget("team", team, "redis_spent_usd", 0.1)
        .await;
    let _ = a.proc.child.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stopped_open_admits_closed_refuses_both_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let port = free_port();
    let mut redis = OwnRedis::start_on(port);
    let rules = "identity: { team: research }\nteams:\n  research: { limits: { rpm: 1000 } }\n";
    let closed = policy(&mock, &redis.url(), rules);
    let open = closed.replace("on_redis_down: closed", "on_redis_down: open");
    let start = |name: &str, body: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        start_proxy(&d, body)
    };
    let (c, o) = (start("closed", &closed), start("open", &open));
    assert_eq!(post(&c, None).await.0, 200);
    assert_eq!(post(&o, None).await.0, 200);

    redis.kill();
    for _ in 0..5 {
        assert_eq!(post(&c, None).await, (503, "governance_unavailable".into()));
        assert_eq!(post(&o, None).await.0, 200);
    }
    c.wait_idle().await;
    o.wait_idle().await;
    let errors = |outcome: &str| {
        format!(r#"switchyard_governance_redis_errors_total{{outcome="{outcome}"}}"#)
    };
    assert_eq!(c.metric(&errors("refused")).await, 5.0);
    assert_eq!(
        c.metric(r#"switchyard_rejections_total{reason="redis_down"}"#)
            .await,
        5.0
    );
    assert_eq!(o.metric(&errors("admitted")).await, 5.0);

    // Redis back on the same port: the closed sidecar admits again once it reconnects.
    let _redis = OwnRedis::start_on(port);
    let start = Instant::now();
    loop {
        if post(&c, None).await.0 == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never recovered from Redis's return"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_that_lost_its_data_is_seeded_once_from_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path(), &["--chunks", "10"]);
    let redis = OwnRedis::start_on(free_port());
    let collector = Collector::start(
        dir.path(),
        &format!("sqlite://{}/usage.db", dir.path().display()),
    );
    // Each sidecar with a spool of its own.
    let body = |name: &str| {
        policy(
            &mock,
            &redis.url(),
            &format!(
                "identity: {{ team: research }}\nteams:\n  research: {{ budget: {{ usd: 0.1, per: day }} }}\n{}",
                telemetry_yaml(collector.port, &dir.path().join(name).join("spool"), "")
            ),
        )
        .replace("reservation_ttl: 3s", "reservation_ttl: 3s, refresh: 1s")
    };
    let start = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        start_proxy(&d, &body(name))
    };
    let (a, b) = (start("a"), start("b"));
    for i in 0..6 {
        assert_eq!(post(if i % 2 == 0 { &a } else { &b }, None).await.0, 200);
    }
    collector
        .wait_requests(6, "six requests reach the collector")
        .await;
    // Redis restarts empty (it keeps nothing on disk here).
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "FLUSHALL"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // Both sidecars read the collector's 0.06 USD and offer it; Redis takes it once.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let got = burst(&a, &b, 10, None).await;
    assert_eq!(got, counts(&[("200", 4), ("429 budget_exceeded", 6)]));
    a.wait_idle().await;
    b.wait_idle().await;
    let start = Instant::now();
    while redis_budget(redis.port, "team:research", "spent") != 100_000_000 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "spent never reached 0.10 USD"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
