//! Budget periods: UTC calendar days, ISO weeks (from Monday) and months.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Day,
    Week,
    Month,
}

impl Per {
    pub fn parse(s: &str) -> Option<Per> {
        match s {
            "day" => Some(Per::Day),
            "week" => Some(Per::Week),
            "month" => Some(Per::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Per::Day => "day",
            Per::Week => "week",
            Per::Month => "month",
        }
    }

    /// The period holding `now`: `[start, end)`.
    pub fn period(self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let midnight =
            |d: chrono::NaiveDate| Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN));
        let today = now.date_naive();
        match self {
            Per::Day => (midnight(today), midnight(today) + Duration::days(1)),
            Per::Week => {
                let monday =
                    today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
                (midnight(monday), midnight(monday) + Duration::days(7))
            }
            Per::Month => {
                let first = today.with_day(1).unwrap_or(today);
                let next = if first.month() == 12 {
                    chrono::NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    chrono::NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                }
                .unwrap_or(first);
                (midnight(first), midnight(next))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_calendar_periods() {
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap(); // a Thursday
        let (s, e) = Per::Day.period(now);
        assert_eq!(
            (s.to_rfc3339(), e.to_rfc3339()),
            (
                "2026-12-31T00:00:00+00:00".into(),
                "2027-01-01T00:00:00+00:00".into()
            )
        );
        let (s, _) = Per::Week.period(now);
        assert_eq!(s.to_rfc3339(), "2026-12-28T00:00:00+00:00");
        let (s, e) = Per::Month.period(now);
        assert_eq!(
            (s.to_rfc3339(), e.to_rfc3339()),
            (
                "2026-12-01T00:00:00+00:00".into(),
                "2027-01-01T00:00:00+00:00".into()
            )
        );
    }
}
