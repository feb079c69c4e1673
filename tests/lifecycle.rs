//! End to end: hot reload (file change and SIGHUP), broken reloads, reloads under load,
//! and graceful stop with a stream in flight.

mod common;

use common::*;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn policy(a: &Mock, target: &str) -> String {
    format!(
        r#"
providers:
  alpha: {{ format: openai, base_url: "{a}/v1", api_key: sk-alpha }}
models:
  one: {{ provider: alpha, name: model-one }}
  two: {{ provider: alpha, name: model-two }}
routes:
  - name: chat
    match: {{ model: "gpt-*" }}
    strategy: priority
    targets: [{target}]
"#,
        a = a.url()
    )
}

async fn upstream_model(sc: &Sidecar) -> String {
    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body("gpt-4o", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["model"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_on_change_keeps_old_policy_on_a_broken_edit() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &[]);
    let sc = start_proxy(dir.path(), &policy(&a, "one"));
    assert_eq!(upstream_model(&sc).await, "model-one");

    write_policy(&sc.config, sc.port, sc.admin, &policy(&a, "two"));
    sc.wait_generation(2).await;
    assert_eq!(upstream_model(&sc).await, "model-two");

    // A broken edit: unknown target. Rejected, counted, old policy kept.
    write_policy(&sc.config, sc.port, sc.admin, &policy(&a, "three"));
    sc.wait_metric(
        "switchyard_config_reloads_total{result=\"error\"}",
        1.0,
        "broken reload never counted",
    )
    .await;
    assert_eq!(sc.metric("switchyard_config_generation").await, 2.0);
    assert_eq!(upstream_model(&sc).await, "model-two");
    assert!(
        sc.proc.log_text().contains("routes[0].targets[0].model"),
        "the log names the field"
    );

    // Broken YAML syntax too.
    write_policy(&sc.config, sc.port, sc.admin, "providers: [unclosed\n");
    sc.wait_metric(
        "switchyard_config_reloads_total{result=\"error\"}",
        2.0,
        "broken YAML never counted",
    )
    .await;
    assert_eq!(upstream_model(&sc).await, "model-two");

    // SIGHUP reloads as well (here after a fix).
    write_policy(&sc.config, sc.port, sc.admin, &policy(&a, "one"));
    sc.proc.signal(libc::SIGHUP);
    sc.wait_generation(3).await;
    assert_eq!(upstream_model(&sc).await, "model-one");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_style_symlink_swap_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &[]);
    // ConfigMap layout: policy.yaml -> ..data/policy.yaml, ..data -> ..v1
    let cm = dir.path().join("cm");
    std::fs::create_dir_all(cm.join("..v1")).unwrap();
    let port = free_port();
    let admin = free_port();
    write_policy(
        &cm.join("..v1/policy.yaml"),
        port,
        admin,
        &policy(&a, "one"),
    );
    std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", cm.join("policy.yaml")).unwrap();
    let log = dir.path().join("proxy.log");
    let child = std::process::Command::new(BIN)
        .args([
            "proxy",
            "--config",
            cm.join("policy.yaml").to_str().unwrap(),
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let sc = Sidecar {
        port,
        admin,
        config: cm.join("policy.yaml"),
        proc: Proc { child, log },
    };
    sc.wait_ready();
    assert_eq!(upstream_model(&sc).await, "model-one");

    std::fs::create_dir_all(cm.join("..v2")).unwrap();
    write_policy(
        &cm.join("..v2/policy.yaml"),
        port,
        admin,
        &policy(&a, "two"),
    );
    std::os::unix::fs::symlink("..v2", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    sc.wait_generation(2).await;
    assert_eq!(upstream_model(&sc).await, "model-two");
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_failed_requests_while_reloading_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &[]);
    let sc = Arc::new(start_proxy(dir.path(), &policy(&a, "one")));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..8 {
        let (sc, ok, failed, stop) = (sc.clone(), ok.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let stream = i % 2 == 0;
                let r = c
                    .post(format!("{}/v1/chat/completions", sc.url()))
                    .json(&chat_body("gpt-4o", stream))
                    .send()
                    .await;
                let good = match r {
                    Ok(r) if r.status() == 200 => r
                        .bytes()
                        .await
                        .is_ok_and(|b| !stream || b.ends_with(b"data: [DONE]\n\n")),
                    _ => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    for i in 0..20u64 {
        let target = if i % 2 == 0 { "two" } else { "one" };
        write_policy(&sc.config, sc.port, sc.admin, &policy(&a, target));
        // Each reload is applied before the next edit, so all 20 happen under load.
        sc.wait_generation(i + 2).await;
    }
    eprintln!("20 reloads under load took {:?}", started.elapsed());
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let generation = sc.metric("switchyard_config_generation").await;
    assert_eq!(generation, 21.0);
    assert_eq!(
        sc.metric("switchyard_config_reloads_total{result=\"error\"}")
            .await,
        0.0
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {} ok",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during reloads"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_stream_finish_then_exits_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mock::start(dir.path(), &["--chunks", "10", "--chunk-delay-ms", "150"]);
    let mut sc = start_proxy(
        dir.path(),
        &format!("server: {{ grace_period: 20s }}\n{}", policy(&a, "one")),
    );
    let resp = client()
        .post(format!("{}/v1/chat/completions", sc.url()))
        .json(&chat_body("gpt-4o", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = Vec::new();
    text.extend_from_slice(&stream.next().await.unwrap().unwrap());

    let signalled = Instant::now();
    sc.proc.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: not ready any more, and no new connections accepted.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", sc.port)).is_err(),
        "listener still open"
    );

    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.expect("the in-flight stream must complete"));
    }
    assert!(String::from_utf8_lossy(&text).ends_with("data: [DONE]\n\n"));
    let status = sc
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("proxy did not exit");
    assert!(status.success(), "exit status {status:?}");
    // Exited when the stream ended, not after the 20 s grace period.
    assert!(signalled.elapsed() < Duration::from_secs(10));
}
