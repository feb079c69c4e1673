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

/// Whether a change in the watched directory can have changed the policy: the file itself
/// (written, or renamed into place by an editor) or a Kubernetes ConfigMap's `..data`
/// symlink and the `..<timestamp>` directories it points to. Other files there (a log, a
/// database, a spool) would otherwise cost a parse of the whole policy each time they are
/// written. An event without paths is taken to concern it.
fn concerns_policy(paths: &[std::path::PathBuf], policy: Option<&std::ffi::OsStr>) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| match p.file_name() {
            Some(n) => Some(n) == policy || n.as_encoded_bytes().starts_with(b".."),
            None => true,
        })
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
    let name = state.config_path.file_name().map(|n| n.to_os_string());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() && concerns_policy(&ev.paths, name.as_deref()) {
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

#[cfg(test)]
mod tests {
    use super::concerns_policy;
    use std::ffi::OsStr;
    use std::path::PathBuf;

    #[test]
    fn only_the_policy_and_configmap_swaps_trigger_a_reload() {
        let name = Some(OsStr::new("policy.yaml"));
        let at = |p: &str| vec![PathBuf::from(p)];
        assert!(concerns_policy(&at("/etc/sy/policy.yaml"), name));
        // An editor's temporary file renamed into place: the event names both.
        let rename = vec![
            PathBuf::from("/etc/sy/.policy.yaml.swp"),
            PathBuf::from("/etc/sy/policy.yaml"),
        ];
        assert!(concerns_policy(&rename, name));
        assert!(concerns_policy(&at("/etc/sy/..data"), name));
        assert!(concerns_policy(
            &at("/etc/sy/..2026_12_03_15_00_00.123"),
            name
        ));
        assert!(concerns_policy(&[], name));
        assert!(!concerns_policy(&at("/etc/sy/usage.db-wal"), name));
        assert!(!concerns_policy(&at("/etc/sy/proxy.log"), name));
        assert!(!concerns_policy(&at("/etc/sy/policy.yaml.bak"), name));
    }
}
