//! Assembles the running sidecar: Pingora server, proxy and admin listeners, the reload
//! watcher and the graceful-stop watch.

use crate::admin::Admin;
use crate::proxy::{Front, Switchyard};
use crate::shutdown::GracefulStop;
use crate::state::State;
use crate::upstream::Pool;
use pingora::connectors::ConnectorOptions;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub fn run(config_path: PathBuf) -> Result<(), String> {
    let policy = crate::config::load(&config_path, 1).map_err(|e| e.to_string())?;
    let listen = policy.listen.clone();
    let grace = policy.grace_period;
    let threads = policy.threads;
    let ca_file = policy.ca_file.clone();
    if ca_file.is_none() {
        tracing::warn!(
            "no system CA bundle found; set server.ca_file or upstream TLS will fail to verify"
        );
    }
    let telemetry = policy.telemetry.clone();
    let state = State::new(policy, config_path);
    if let Some(settings) = &telemetry {
        start_events(&state, settings)?;
    }

    let conf = ServerConf {
        threads,
        // Every Pingora timeout on tokio's timer wheel. Pingora's own "fast" timers need a
        // clock thread that wakes every 10 ms with or without traffic: 4.3 ms of CPU a
        // second idle, in every pod. Measured under load, tokio's are no dearer
        // (callgrind 77.4k vs 78.8k instructions per request).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        // Our drain monitor exits first; this is only the backstop.
        grace_period_seconds: Some(grace.as_secs() + 2),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut upstream_opts = ConnectorOptions::from_server_conf(&server.configuration);
    upstream_opts.ca_file = ca_file;
    let pool = Arc::new(Pool::new(
        server.configuration.upstream_keepalive_pool_size,
        crate::upstream::IDLE_TIMEOUT,
    ));
    // Pingora's HttpProxy behind our own front door (proxy::conn), which bounds how long a
    // client may idle or trickle a header and refuses bad headers in JSON.
    let mut http = HttpProxy::new(
        Switchyard::new(state.clone(), upstream_opts, pool.clone()),
        server.configuration.clone(),
    );
    http.handle_init_modules();
    let mut proxy = Service::new(
        "switchyard proxy".to_string(),
        Front::new(http, state.clone()),
    );
    proxy.add_tcp(&listen.proxy);
    let mut admin = Service::new(
        "switchyard admin".to_string(),
        Front::new(Admin::new(state.clone()), state.clone()),
    );
    admin.add_tcp(&listen.admin);
    server.add_service(proxy);
    server.add_service(admin);

    spawn_background(state.clone(), listen.proxy.clone(), pool)?;
    tracing::info!(proxy = %listen.proxy, admin = %listen.admin, "switchyard starting");
    server.run(RunArgs {
        shutdown_signal: Box::new(GracefulStop { state, grace }),
    });
    Ok(())
}

/// Opens the spool and starts shipping. The collector's URL and token follow reloads; the
/// spool's place and size are fixed at start.
fn start_events(state: &Arc<State>, settings: &crate::events::Settings) -> Result<(), String> {
    let weak = Arc::downgrade(state);
    let current = Arc::new(move || {
        weak.upgrade()
            .and_then(|s| s.policy.load().telemetry.clone())
    });
    let recorder = crate::events::Recorder::start(settings, state.metrics.events.clone(), current)?;
    tracing::info!(
        collector = %settings.collector,
        spool = %settings.spool_dir.display(),
        "usage events: recording and shipping"
    );
    // Set once, at start, before any request.
    let _ = state.events.set(recorder);
    Ok(())
}

/// Every `governance.refresh`, with the collector the events go to (and their ingest
/// token): the period's spend of each budget the policy names, into the governor; and,
/// without Redis, this sidecar's reservations, out to the collector's `/v1/budgets`.
async fn refresh_budgets(state: Arc<State>, mut client: Option<reqwest::Client>) {
    use crate::governance::sync;
    // This process's name in the collector's reservations: its pod and a random part, so
    // a restarted sidecar's report never mixes with its previous life's.
    let sidecar = format!("{}/{:016x}", state.policy.load().pod.pod, fastrand::u64(..));
    let mut failing = false;
    let mut reported_some = false;
    loop {
        let policy = state.policy.load_full();
        let refresh = policy.governance_settings.refresh;
        let made = policy
            .telemetry
            .as_ref()
            .and_then(|_| client_for(&mut client));
        if let (Some(t), Some(client)) = (&policy.telemetry, made) {
            let mut result = Ok(());
            for per in sync::periods(&policy.governance) {
                match sync::fetch(&client, &t.collector, t.token.as_deref(), per).await {
                    Ok(spend) => state.governor.seed(&policy.governance, &spend),
                    Err(e) => result = Err(e),
                }
            }
            if policy.governance_settings.redis.is_none() {
                let held = state.governor.held(&policy.governance);
                // An idle sidecar that said so once stays quiet.
                if !held.is_empty() || reported_some {
                    let ttl = refresh * 3;
                    let sent = sync::report(
                        &client,
                        &t.collector,
                        t.token.as_deref(),
                        &sidecar,
                        ttl,
                        &held,
                    )
                    .await;
                    match sent {
                        Ok(()) => reported_some = !held.is_empty(),
                        Err(e) => result = Err(e),
                    }
                }
            }
            match result {
                Ok(()) if std::mem::take(&mut failing) => {
                    tracing::info!("budget refresh: the collector answers again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(
                        "budget refresh: {e}; budgets count this sidecar's own spend until the collector answers"
                    );
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(refresh).await;
    }
}

/// The budget refresher's HTTP client, made on first need: building one loads the system CA
/// bundle (some 20M instructions), which a sidecar without a collector never needs.
fn client_for(client: &mut Option<reqwest::Client>) -> Option<reqwest::Client> {
    if client.is_none() {
        match reqwest::Client::builder().no_proxy().build() {
            Ok(c) => *client = Some(c),
            Err(e) => tracing::error!("budget refresh: cannot build an HTTP client: {e}"),
        }
    }
    client.clone()
}

/// A small runtime of our own for the reload watcher, the readiness probe, and the sweeper
/// of idle upstream connections.
fn spawn_background(state: Arc<State>, proxy_addr: String, pool: Arc<Pool>) -> Result<(), String> {
    let for_sweep = state.clone();
    std::thread::Builder::new()
        .name("pool-sweep".into())
        .spawn(move || loop {
            std::thread::sleep(crate::upstream::SWEEP_EVERY);
            pool.sweep();
            for_sweep.metrics.upstream_idle.set(pool.idle() as i64);
        })
        .map_err(|e| format!("cannot start the pool sweeper: {e}"))?;
    let st = state.clone();
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(crate::reload::watch(st)),
                Err(e) => tracing::error!("cannot start the reload runtime: {e}"),
            }
        })
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    let st = state.clone();
    // With a collector from the start, the client is made now, before the sidecar is ready.
    let mut client = None;
    if st.policy.load().telemetry.is_some() {
        client_for(&mut client);
    }
    std::thread::Builder::new()
        .name("budget-refresh".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(refresh_budgets(st, client)),
                Err(e) => tracing::error!("cannot start the budget refresh runtime: {e}"),
            }
        })
        .map_err(|e| format!("cannot start the budget refresh thread: {e}"))?;
    std::thread::Builder::new()
        .name("ready-probe".into())
        .spawn(move || {
            let Ok(addr) = proxy_addr.parse() else { return };
            for _ in 0..600 {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    state.ready.store(true, Ordering::Release);
                    tracing::info!("proxy listener is up; ready");
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            tracing::error!("proxy listener did not come up; staying not ready");
        })
        .map_err(|e| format!("cannot start the readiness probe: {e}"))?;
    Ok(())
}
