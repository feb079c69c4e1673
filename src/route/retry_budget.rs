//! A route's retry budget, as linkerd2-proxy and Envoy keep one: over the last `WINDOW`,
//! retries (every attempt after a request's first) may be at most `RATIO` of the requests
//! plus a small floor, so a failing provider is not hammered by a retry storm while a
//! single failure is still retried.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Share of requests that may be retried, in percent.
pub const RATIO_PERCENT: u32 = 20;
/// Retries always allowed per window, however few the requests.
pub const FLOOR: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);
/// The window in one-second buckets.
const BUCKETS: usize = WINDOW.as_secs() as usize;

#[derive(Default, Debug)]
pub struct RetryBudget {
    inner: Mutex<Window>,
}

#[derive(Default, Debug)]
struct Window {
    /// Start of bucket 0's second.
    epoch: Option<Instant>,
    /// The second `buckets[now % BUCKETS]` holds.
    second: u64,
    requests: [u32; BUCKETS],
    retries: [u32; BUCKETS],
}

impl Window {
    /// Clears the buckets of seconds that have passed since the last use.
    fn advance(&mut self, now: Instant) -> usize {
        let epoch = *self.epoch.get_or_insert(now);
        let second = now.saturating_duration_since(epoch).as_secs();
        let gap = second.saturating_sub(self.second).min(BUCKETS as u64);
        for s in 1..=gap {
            let i = ((self.second + s) % BUCKETS as u64) as usize;
            self.requests[i] = 0;
            self.retries[i] = 0;
        }
        self.second = self.second.max(second);
        (self.second % BUCKETS as u64) as usize
    }
}

impl RetryBudget {
    /// A request arrived (its first attempt).
    pub fn request(&self, now: Instant) {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let i = w.advance(now);
        w.requests[i] += 1;
    }

    /// Takes a retry from the budget; false when it is spent.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let i = w.advance(now);
        let requests: u32 = w.requests.iter().sum();
        let retries: u32 = w.retries.iter().sum();
        // In integers: a float's 0.2 × 15 is a hair above 3, which would allow one more.
        if retries * 100 >= FLOOR * 100 + RATIO_PERCENT * requests {
            return false;
        }
        w.retries[i] += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stop_at_the_floor_plus_a_fifth_of_requests() {
        let b = RetryBudget::default();
        let now = Instant::now();
        for _ in 0..100 {
            b.request(now);
        }
        let allowed = (0..1000).filter(|_| b.try_retry(now)).count();
        assert_eq!(allowed, FLOOR as usize + 20);
    }

    #[test]
    fn the_window_moves_on() {
        let b = RetryBudget::default();
        let now = Instant::now();
        assert_eq!(
            (0..100).filter(|_| b.try_retry(now)).count(),
            FLOOR as usize
        );
        // Half a window later the retries still count; a whole window later they do not.
        assert!(!b.try_retry(now + WINDOW / 2));
        assert_eq!(
            (0..100).filter(|_| b.try_retry(now + WINDOW)).count(),
            FLOOR as usize
        );
    }
}
