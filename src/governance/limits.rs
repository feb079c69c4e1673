//! Rate limits of one level, in this process.
//!
//! - `rpm` is a sliding log: the admission times of the last `rpm` requests. A request is
//!   admitted only if the oldest of them is a full minute old, so no 60-second window ever
//!   holds more than `rpm` admissions (exact, O(1) per decision, `rpm` instants of memory).
//! - `tpm` counts estimated input tokens in one-second buckets, settled to the provider's
//!   real count afterwards. The window counted is the current second and the 60 before it,
//!   so any 60-second window is covered: never over the limit, at the price of holding back
//!   up to one second's tokens early.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);
/// Seconds of token buckets counted: the current one and the 60 before it.
const TPM_SECONDS: u64 = 61;

/// Admission times of the last `rpm` requests, oldest first.
#[derive(Default)]
pub struct RequestLog {
    times: VecDeque<Instant>,
}

impl RequestLog {
    /// `Ok` if one more request fits under `rpm`, else how long until one does.
    pub fn check(&mut self, rpm: u32, now: Instant) -> Result<(), Duration> {
        while self
            .times
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= MINUTE)
        {
            self.times.pop_front();
        }
        if self.times.len() < rpm as usize {
            return Ok(());
        }
        // The (len - rpm + 1)-th oldest must leave the window before one more fits.
        let blocking = self.times[self.times.len() - rpm as usize];
        Err((blocking + MINUTE).saturating_duration_since(now))
    }

    pub fn admit(&mut self, now: Instant) {
        self.times.push_back(now);
    }

    /// Requests admitted in the last minute (as of the last check).
    pub fn used(&self) -> usize {
        self.times.len()
    }
}

/// Input tokens per second over the last `TPM_SECONDS` seconds.
#[derive(Default)]
pub struct TokenWindow {
    /// (second, tokens), oldest first; seconds count from `epoch`.
    buckets: VecDeque<(u64, u64)>,
    sum: u64,
    epoch: Option<Instant>,
}

impl TokenWindow {
    /// The second `now` falls in.
    pub fn second(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_secs()
    }

    fn expire(&mut self, sec: u64) {
        while let Some(&(s, n)) = self.buckets.front() {
            if s + TPM_SECONDS > sec {
                break;
            }
            self.sum -= n;
            self.buckets.pop_front();
        }
    }

    /// `Ok` if `tokens` more fit under `tpm` in the window ending at second `sec`, else
    /// how many seconds until enough of the window has expired.
    pub fn check(&mut self, tpm: u64, tokens: u64, sec: u64) -> Result<(), Duration> {
        self.expire(sec);
        if self.sum.saturating_add(tokens) <= tpm {
            return Ok(());
        }
        if tokens > tpm {
            // Never fits: say a minute, and the message says why.
            return Err(MINUTE);
        }
        let mut freed = 0;
        for &(s, n) in &self.buckets {
            freed += n;
            if self.sum - freed + tokens <= tpm {
                return Err(Duration::from_secs(s + TPM_SECONDS - sec));
            }
        }
        Err(MINUTE)
    }

    pub fn add(&mut self, tokens: u64, sec: u64) {
        match self.buckets.back_mut() {
            Some((s, n)) if *s == sec => *n += tokens,
            _ => self.buckets.push_back((sec, tokens)),
        }
        self.sum += tokens;
    }

    /// Corrects second `sec`'s count from an estimate to the real figure, if that second
    /// is still in the window.
    pub fn settle(&mut self, sec: u64, estimated: u64, real: u64) {
        if let Some((_, n)) = self.buckets.iter_mut().find(|(s, _)| *s == sec) {
            let corrected = (*n + real).saturating_sub(estimated);
            self.sum = self.sum - *n + corrected;
            *n = corrected;
        }
    }

    /// Tokens counted in the window (as of the last check).
    pub fn used(&self) -> u64 {
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_never_admits_more_than_rpm_in_a_minute() {
        let start = Instant::now();
        let mut log = RequestLog::default();
        let mut admitted = Vec::new();
        // One attempt every 100 ms for three minutes, rpm 60.
        for i in 0..1800u64 {
            let now = start + Duration::from_millis(i * 100);
            if log.check(60, now).is_ok() {
                log.admit(now);
                admitted.push(now);
            }
        }
        for (i, &t) in admitted.iter().enumerate() {
            let in_window = admitted[i..].iter().filter(|&&u| u - t < MINUTE).count();
            assert!(in_window <= 60);
        }
        assert_eq!(admitted.len(), 180, "and it admits all it may");
    }

    #[test]
    fn a_burst_gets_exactly_rpm_and_a_retry_after() {
        let now = Instant::now();
        let mut log = RequestLog::default();
        let ok = (0..100)
            .filter(|_| {
                let ok = log.check(60, now).is_ok();
                if ok {
                    log.admit(now);
                }
                ok
            })
            .count();
        assert_eq!(ok, 60);
        assert_eq!(
            log.check(60, now + Duration::from_secs(1)),
            Err(Duration::from_secs(59))
        );
        assert!(log.check(60, now + MINUTE).is_ok());
    }

    #[test]
    fn tpm_counts_estimates_then_settles_to_real_counts() {
        let now = Instant::now();
        let mut w = TokenWindow::default();
        let s = w.second(now);
        assert!(w.check(1000, 600, s).is_ok());
        w.add(600, s);
        assert!(w.check(1000, 600, s).is_err());
        // The provider counted 300, not 600: room again.
        w.settle(s, 600, 300);
        assert_eq!(w.used(), 300);
        assert!(w.check(1000, 600, s).is_ok());
        // After 61 seconds the second has left the window.
        let later = w.second(now + Duration::from_secs(61));
        w.add(600, s);
        assert_eq!(w.check(1000, 1000, later), Ok(()));
        // A request larger than the whole limit is refused for good.
        assert!(w.check(1000, 1001, later).is_err());
    }

    #[test]
    fn tpm_retry_after_is_when_enough_expires() {
        let now = Instant::now();
        let mut w = TokenWindow::default();
        let s0 = w.second(now);
        w.add(500, s0);
        let s10 = w.second(now + Duration::from_secs(10));
        w.add(500, s10);
        // At second 20, 400 more need the first bucket gone (second 61), 600 more both
        // (second 71).
        assert_eq!(w.check(1000, 400, 20), Err(Duration::from_secs(41)));
        assert_eq!(w.check(1000, 600, 20), Err(Duration::from_secs(51)));
    }
}
