//! One level's budget in this process: what the period has spent, what requests in flight
//! have reserved (their worst case), and which alert marks were crossed.
//! Amounts are exact atto-dollars, as the accounting computes them.

use crate::price::Atto;
use chrono::{DateTime, Utc};

#[derive(Default, Debug)]
pub struct Ledger {
    /// Start of the period `spent` belongs to.
    period: Option<DateTime<Utc>>,
    /// Settled spend in the period: the collector's figure when known, plus this
    /// process's own spend not yet in it.
    pub spent: Atto,
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
            self.spent = 0;
            self.alerted = 0;
        }
    }

    /// What the budget can still promise.
    pub fn available(&self, limit: Atto) -> Atto {
        limit.saturating_sub(self.spent.saturating_add(self.reserved))
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
        self.release(reserved);
        self.spent += cost;
        let mut crossed = Vec::new();
        while let Some(&mark) = marks.get(self.alerted) {
            if (self.spent as f64) < mark * limit as f64 {
                break;
            }
            crossed.push(mark);
            self.alerted += 1;
        }
        crossed
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
}
