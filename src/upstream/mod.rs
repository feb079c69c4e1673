//! Reaching providers: asynchronous, cached DNS (Pingora's own lookup blocks the worker and
//! panics on failure), the peer description handed to Pingora's connector, and the pool of
//! idle keep-alive connections.

mod pool;

pub use pool::Pool;

use crate::policy::{Provider, Timeouts};
use ahash::AHashMap;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an upstream connection may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle connections are checked for expiry or a close by the provider.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

const DNS_TTL: Duration = Duration::from_secs(30);
/// A stale answer is still used for this long when a refresh fails.
const DNS_STALE_OK: Duration = Duration::from_secs(300);

/// Addresses of one name and when they were looked up.
type Answer = (Vec<SocketAddr>, Instant);

#[derive(Default)]
pub struct Resolver {
    cache: Mutex<AHashMap<(String, u16), Answer>>,
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let now = Instant::now();
        let cached = self.cached(host, port);
        if let Some((addrs, at)) = &cached {
            if now.duration_since(*at) < DNS_TTL {
                return Ok(pick(addrs));
            }
        }
        match tokio::net::lookup_host((host, port)).await {
            Ok(it) => {
                let addrs: Vec<SocketAddr> = it.collect();
                if addrs.is_empty() {
                    return Err(format!("{host} resolved to no address"));
                }
                let addr = pick(&addrs);
                if let Ok(mut c) = self.cache.lock() {
                    c.insert((host.to_string(), port), (addrs, now));
                }
                Ok(addr)
            }
            Err(e) => match cached {
                Some((addrs, at)) if now.duration_since(at) < DNS_STALE_OK => {
                    tracing::warn!(host, "DNS refresh failed ({e}); using the previous answer");
                    Ok(pick(&addrs))
                }
                _ => Err(format!("cannot resolve {host}: {e}")),
            },
        }
    }

    fn cached(&self, host: &str, port: u16) -> Option<Answer> {
        let c = self.cache.lock().ok()?;
        c.get(&(host.to_string(), port)).cloned()
    }
}

/// Spread connections over the addresses of the family the resolver ranked first
/// (getaddrinfo orders by RFC 6724, so a v4-only network is not handed a v6 address).
fn pick(addrs: &[SocketAddr]) -> SocketAddr {
    let v4 = addrs[0].is_ipv4();
    let same = addrs.iter().filter(|a| a.is_ipv4() == v4).count();
    let n = fastrand::usize(..same);
    addrs
        .iter()
        .filter(|a| a.is_ipv4() == v4)
        .nth(n)
        .copied()
        .unwrap_or(addrs[0])
}

pub async fn peer_for(
    resolver: &Resolver,
    provider: &Provider,
    timeouts: &Timeouts,
) -> Result<HttpPeer, String> {
    let addr = match provider.literal_addr {
        Some(a) => a,
        None => resolver.resolve(&provider.host, provider.port).await?,
    };
    let mut peer = peer_at(addr, provider.tls, &provider.host, timeouts.connect);
    peer.options.ca = provider.ca.clone();
    Ok(peer)
}

pub fn peer_at(addr: SocketAddr, tls: bool, sni: &str, connect: Duration) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, tls, sni.to_string());
    peer.options.connection_timeout = Some(connect);
    peer.options.total_connection_timeout = Some(connect);
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    peer
}
