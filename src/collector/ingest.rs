//! Group commit: ingest requests that arrive together share one transaction. A commit is
//! the fixed cost of a batch (a durable flush, and the roll-up upserts of its groups), so
//! four sidecars' batches of 500 committed as one cost little more than one of them. Each
//! request still gets its answer only after the commit that holds its events.

use super::store::{Incoming, Store, Stored};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Events one transaction takes at most.
const GROUP_EVENTS: usize = 5_000;

struct Job {
    batch: Vec<Incoming>,
    done: oneshot::Sender<Result<Stored, String>>,
}

#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Job>,
}

impl Ingestor {
    /// `workers` transactions may run at once (SQLite has one writer: 1).
    pub fn start(store: Arc<Store>, workers: usize) -> Ingestor {
        let (tx, rx) = mpsc::channel(256);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            tokio::spawn(work(store.clone(), rx.clone()));
        }
        Ingestor { tx }
    }

    /// Stores a batch (with whatever else is waiting); the database error as text.
    pub async fn submit(&self, batch: Vec<Incoming>) -> Result<Stored, String> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Job { batch, done })
            .await
            .map_err(|_| "the ingest workers have stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the ingest worker stopped mid-batch".to_string())?
    }
}

async fn work(store: Arc<Store>, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut n = first.batch.len();
            let mut jobs = vec![first];
            while n < GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(j) => {
                        n += j.batch.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        let mut all = Vec::with_capacity(jobs.iter().map(|j| j.batch.len()).sum());
        let mut parts = Vec::with_capacity(jobs.len());
        for j in jobs {
            let ids: Vec<uuid::Uuid> = j.batch.iter().map(|i| i.event.id).collect();
            all.extend(j.batch);
            parts.push((ids, j.done));
        }
        match store.ingest_new(&mut all).await {
            Ok(mut new) => {
                // Each new id counts once, for the first request that carried it.
                for (ids, done) in parts {
                    let stored = claim(&mut new, &ids);
                    let _ = done.send(Ok(Stored {
                        stored,
                        duplicates: ids.len() as u64 - stored,
                    }));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (_, done) in parts {
                    let _ = done.send(Err(msg.clone()));
                }
            }
        }
    }
}

fn claim(new: &mut HashSet<uuid::Uuid>, ids: &[uuid::Uuid]) -> u64 {
    ids.iter().filter(|id| new.remove(id)).count() as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_new_id_counts_once_across_requests() {
        let a = uuid::Uuid::now_v7();
        let b = uuid::Uuid::now_v7();
        let mut new = [a, b].into_iter().collect();
        assert_eq!(super::claim(&mut new, &[a, a]), 1);
        assert_eq!(super::claim(&mut new, &[a, b]), 1);
        assert!(new.is_empty());
    }
}
