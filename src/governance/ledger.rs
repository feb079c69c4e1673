//! One level's budget in this process: what the period has spent, what requests in flight
//! have reserved (their worst case), and which alert marks were crossed.
//! Amounts are exact atto-dollars, as the accounting computes them.
//!
//! The period's spend is this process's own, or — once the collector's figure for the
//! period is known (`seed`) — that figure plus what this process settled since shortly
//! before it was read, whichever is more. The collector's figure brings in what other
//! sidecars (and this one before a restart) spent; the margin (`SHIP_LAG`) covers events
//! still on their way to the collector when it was read.

use crate::price::Atto;
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long an event may take from its request's end to the collector's figure (batch
/// wait, spool, delivery), counted twice rather than missed.
pub const SHIP_LAG: Duration = Duration::from_secs(10);
/// Own settlements kept per second for at least this long, for when a figure arrives
/// (and since the last figure, however long ago).
const HISTORY: Duration = Duration::from_secs(600);

#[derive(Default, Debug)]
pub struct Ledger {
    /// Start of the period the amounts belong to.
    period: Option<DateTime<Utc>>,
    /// What this process settled in the period.
    own: Atto,
    /// The collector's figure for the period and when it was read.
    collector: Option<(Atto, Instant)>,
    /// This process's settlements by second (oldest first), for the last `HISTORY`.
    recent: VecDeque<(Instant, Atto)>,
    /// Worst cases of admitted requests not settled yet.
    pub reserved: Atto,
    /// Alert marks (`alert_at`) already crossed this period.
    alerted: usize,
}

impl Ledger {
    /// Starts a new period if `start` is not the current one (spend and alerts reset;
    /// reservations stay, their requests settle into the new period).
    pub fn roll(&mut self, start: DateTime<Utc>) {
        if self.period != Some(start) {
            self.period = Some(start);
            self.own = 0;
            self.collector = None;
            self.recent.clear();
            self.alerted = 0;
        }
    }

    /// The start of the period the amounts belong to, once one began.
    pub fn period(&self) -> Option<DateTime<Utc>> {
        self.period
    }

    /// The period's spend as this process knows it.
    pub fn spent(&self) -> Atto {
        match self.collector {
            Some((figure, at)) => {
                let since = at.checked_sub(SHIP_LAG).unwrap_or(at);
                let mine: Atto = self
                    .recent
                    .iter()
                    .filter(|(t, _)| *t >= since)
                    .map(|(_, a)| a)
                    .sum();
                self.own.max(figure + mine)
            }
            None => self.own,
        }
    }

    /// What the budget can still promise.
    pub fn available(&self, limit: Atto) -> Atto {
        limit.saturating_sub(self.spent().saturating_add(self.reserved))
    }

    pub fn reserve(&mut self, amount: Atto) {
        self.reserved += amount;
    }

    /// Gives back a reservation whose request never ran (or was not settled).
    pub fn release(&mut self, amount: Atto) {
        self.reserved = self.reserved.saturating_sub(amount);
    }

    /// A request ended: its reservation becomes its real cost. Returns the alert marks
    /// (fractions of `limit`) this spend crossed.
    pub fn settle(&mut self, reserved: Atto, cost: Atto, limit: Atto, marks: &[f64]) -> Vec<f64> {
        self.settle_at(reserved, cost, limit, marks, Instant::now())
    }

    fn settle_at(
        &mut self,
        reserved: Atto,
        cost: Atto,
        limit: Atto,
        marks: &[f64],
        now: Instant,
    ) -> Vec<f64> {
        self.release(reserved);
        self.own += cost;
        match self.recent.back_mut() {
            Some((t, a)) if now.duration_since(*t) < Duration::from_secs(1) => *a += cost,
            _ => self.recent.push_back((now, cost)),
        }
        // Settlements the collector's last figure may not hold are kept however old, so
        // the spend never goes down while the collector is out of reach.
        let keep_from = self
            .collector
            .map(|(_, at)| at.checked_sub(SHIP_LAG).unwrap_or(at));
        while self.recent.front().is_some_and(|(t, _)| {
            now.duration_since(*t) > HISTORY && keep_from.is_none_or(|k| *t < k)
        }) {
            self.recent.pop_front();
        }
        let spent = self.spent();
        let mut crossed = Vec::new();
        while let Some(&mark) = marks.get(self.alerted) {
            if (spent as f64) < mark * limit as f64 {
                break;
            }
            crossed.push(mark);
            self.alerted += 1;
        }
        crossed
    }

    /// The collector's figure for the period `start`, read at `at`.
    pub fn seed(&mut self, start: DateTime<Utc>, figure: Atto, at: Instant) {
        self.roll(start);
        self.collector = Some((figure, at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn reserve_then_settle_and_alerts_once() {
        let day = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let mut l = Ledger::default();
        l.roll(day);
        let limit = 100;
        l.reserve(30);
        assert_eq!(l.available(limit), 70);
        assert_eq!(l.settle(30, 79, limit, &[0.8, 1.0]), Vec::<f64>::new());
        assert_eq!(l.settle(0, 1, limit, &[0.8, 1.0]), vec![0.8]);
        assert_eq!(l.settle(0, 1, limit, &[0.8, 1.0]), Vec::<f64>::new());
        assert_eq!(l.settle(0, 30, limit, &[0.8, 1.0]), vec![1.0]);
        assert_eq!(l.available(limit), 0);
        // A new day: spend and alerts start again.
        l.roll(day + chrono::Duration::days(1));
        assert_eq!(l.available(limit), 100);
    }

    #[test]
    fn the_collectors_figure_adds_what_others_spent() {
        let day = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let mut l = Ledger::default();
        l.roll(day);
        l.settle(0, 10, 1000, &[]);
        // The collector has 50 (others' 40 and these 10): own spend since just before the
        // read is counted again rather than missed.
        l.seed(day, 50, Instant::now());
        assert_eq!(l.spent(), 60);
        l.settle(0, 5, 1000, &[]);
        assert_eq!(l.spent(), 65);
        // A figure below what this process alone spent never lowers the spend.
        l.seed(day, 3, Instant::now() + SHIP_LAG + Duration::from_secs(5));
        assert_eq!(l.spent(), 15);
        // A figure for another period starts that period.
        l.seed(day + chrono::Duration::days(1), 7, Instant::now());
        assert_eq!(l.spent(), 7);
    }

    #[test]
    fn own_spend_since_the_last_figure_is_kept_however_long_the_collector_is_away() {
        let day = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let mut l = Ledger::default();
        l.roll(day);
        let read = Instant::now();
        l.seed(day, 100, read);
        // Settled 20 s after the read, then nothing from the collector for 20 minutes:
        // that settlement must still count, though older than HISTORY.
        l.settle_at(0, 7, 1000, &[], read + Duration::from_secs(20));
        l.settle_at(0, 1, 1000, &[], read + HISTORY * 2);
        assert_eq!(l.recent.len(), 2);
        assert_eq!(l.spent(), 108);
    }
}
