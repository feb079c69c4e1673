//! Hot reload: the policy file's directory is watched (Kubernetes swaps a `..data` symlink
//! rather than writing the file) and SIGHUP forces a reload. A broken file is logged with the
//! field it is about, counted, and the running policy stays.

use crate::config;
use crate::state::State;
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Events within this window are folded into one reload (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(150);

pub enum Outcome {
    Applied(u64),
    Unchanged,
    Rejected(String),
}

/// Loads the file again and swaps it in if it is valid.
pub fn reload(state: &State) -> Outcome {
    let current = state.policy.load();
    let next_gen = current.generation + 1;
    match config::load(&state.config_path, next_gen) {
        Ok(policy) => {
            if policy.redacted == current.redacted && same_secrets(&policy, &current) {
                return Outcome::Unchanged;
            }
            if policy.listen != current.listen
                || policy.threads != current.threads
                || policy.max_body_memory_bytes != current.max_body_memory_bytes
            {
                tracing::warn!(
                    "listen addresses, server.threads and server.max_body_memory_bytes take \
                     effect only after a restart"
                );
            }
            state.policy.store(Arc::new(policy));
            state.metrics.config_generation.set(next_gen as i64);
            state
                .metrics
                .config_reloads
                .with_label_values(&["success"])
                .inc();
            tracing::info!(generation = next_gen, "policy reloaded");
            Outcome::Applied(next_gen)
        }
        Err(e) => {
            state
                .metrics
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            tracing::error!(field = %e.field, "policy reload rejected, keeping generation {}: {e}", current.generation);
            Outcome::Rejected(e.to_string())
        }
    }
}

/// Secrets are redacted from the comparison view; compare the injected values too, so a
/// rotated key (same YAML, new file content) still reloads.
fn same_secrets(a: &crate::policy::Policy, b: &crate::policy::Policy) -> bool {
    a.providers.len() == b.providers.len()
        && a.providers
            .iter()
            .zip(&b.providers)
            .all(|(x, y)| x.auth == y.auth && x.extra_headers == y.extra_headers)
}

/// Runs forever on the current tokio runtime: file watcher plus SIGHUP.
pub async fn watch(state: Arc<State>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let dir = state
        .config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let file_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                let _ = file_tx.send(());
            }
        }
    });
    // Keep the watcher alive for as long as this task runs.
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::error!(
                    "cannot watch {}: {e}; reload with SIGHUP only",
                    dir.display()
                );
                None
            }
        },
        Err(e) => {
            tracing::error!("file watcher unavailable: {e}; reload with SIGHUP only");
            None
        }
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading policy");
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => tracing::error!("cannot listen for SIGHUP: {e}"),
    }
    while rx.recv().await.is_some() {
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        let st = state.clone();
        // Reading and compiling touch the file system: keep it off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || reload(&st)).await {
            tracing::error!("reload task failed: {e}");
        }
    }
}
