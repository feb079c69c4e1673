//! Idle keep-alive connections to providers.
//!
//! Pingora's connector pool spawns a watcher task with its own timer for every connection it
//! takes back; on a short LLM call that costs more than the rest of the exchange, and the
//! spawn wakes a second worker thread. Here giving a connection back is a push onto a list,
//! and whether it is still open is checked when it is taken again (a readiness check that
//! needs no syscall while the peer has sent nothing). A sweeper thread closes what sat idle
//! too long, so sockets the provider closed do not linger.

use ahash::AHashMap;
use futures_util::FutureExt;
use pingora::protocols::Stream;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

pub struct Pool {
    idle: Mutex<AHashMap<u64, Vec<Idle>>>,
    /// Most idle connections kept per peer; beyond it the oldest is closed.
    per_peer: usize,
    idle_timeout: Duration,
}

struct Idle {
    stream: Stream,
    since: Instant,
}

impl Pool {
    pub fn new(per_peer: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(AHashMap::new()),
            per_peer: per_peer.max(1),
            idle_timeout,
        }
    }

    /// The most recently returned open connection to the peer `key`, if any.
    pub fn take(&self, key: u64) -> Option<Stream> {
        loop {
            let idle = {
                let mut map = self.idle.lock().ok()?;
                map.get_mut(&key)?.pop()?
            };
            // Closed (or expired) connections are dropped here, outside the lock.
            if idle.since.elapsed() < self.idle_timeout {
                let mut stream = idle.stream;
                if still_open(&mut stream) {
                    return Some(stream);
                }
            }
        }
    }

    /// Keeps a connection whose last response was read to the end, for the next request.
    pub fn put(&self, key: u64, stream: Stream) {
        let evicted = {
            let Ok(mut map) = self.idle.lock() else {
                return;
            };
            let list = map.entry(key).or_default();
            let evicted = if list.len() >= self.per_peer {
                Some(list.remove(0))
            } else {
                None
            };
            list.push(Idle {
                stream,
                since: Instant::now(),
            });
            evicted
        };
        drop(evicted);
    }

    /// Closes connections idle longer than the timeout or already closed by the peer.
    pub fn sweep(&self) {
        let mut closed = Vec::new();
        if let Ok(mut map) = self.idle.lock() {
            for list in map.values_mut() {
                let mut i = 0;
                while i < list.len() {
                    let keep = list[i].since.elapsed() < self.idle_timeout
                        && still_open(&mut list[i].stream);
                    if keep {
                        i += 1;
                    } else {
                        closed.push(list.remove(i));
                    }
                }
            }
            map.retain(|_, list| !list.is_empty());
        }
        drop(closed);
    }

    /// Idle connections held, over all peers.
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

/// An idle HTTP/1 connection has nothing to say: readable means closed (EOF), broken, or
/// data nobody asked for — none of them reusable.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: tokio's budget must not turn a ready read into a false "pending".
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (
            Box::new(pingora::protocols::l4::stream::Stream::from(client)),
            server,
        )
    }

    #[tokio::test]
    async fn returns_the_latest_open_connection_and_skips_closed_ones() {
        let pool = Pool::new(8, Duration::from_secs(60));
        let (a, server_a) = pair().await;
        let (b, _server_b) = pair().await;
        pool.put(1, a);
        pool.put(1, b);
        assert_eq!(pool.idle(), 2);
        let got = pool.take(1).unwrap();
        assert_eq!(pool.idle(), 1);
        pool.put(1, got);

        // The peer of `a` closes: its connection is not handed out again.
        drop(server_a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(1).is_some()); // b
        assert!(pool.take(1).is_none()); // a was closed
        assert!(pool.take(2).is_none());
    }

    #[tokio::test]
    async fn unexpected_data_makes_a_connection_unusable() {
        let pool = Pool::new(8, Duration::from_secs(60));
        let (a, mut server_a) = pair().await;
        pool.put(7, a);
        server_a.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(7).is_none());
    }

    #[tokio::test]
    async fn caps_per_peer_and_sweeps_expired() {
        let pool = Pool::new(2, Duration::from_millis(30));
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (c, s) = pair().await;
            servers.push(s);
            pool.put(3, c);
        }
        assert_eq!(pool.idle(), 2);
        tokio::time::sleep(Duration::from_millis(60)).await;
        pool.sweep();
        assert_eq!(pool.idle(), 0);
    }
}
