//! Spend-limit periods: the UTC day and the ISO week (UTC), their keys and
//! when they end.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime};

/// A spend-limit period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
}

impl Period {
    /// The key of the period containing `at`: `2026-11-22` or `2026-W47`.
    pub fn key(self, at: NaiveDateTime) -> String {
        match self {
            Period::Day => at.date().format("%Y-%m-%d").to_string(),
            Period::Week => {
                let w = at.date().iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }
        }
    }

    /// When the period containing `at` ends (the next one begins).
    pub fn end(self, at: NaiveDateTime) -> NaiveDateTime {
        let date = at.date();
        let next: NaiveDate = match self {
            Period::Day => date + Duration::days(1),
            Period::Week => date + Duration::days(7 - date.weekday().num_days_from_monday() as i64),
        };
        next.and_hms_opt(0, 0, 0).unwrap_or(at)
    }

    /// Whole seconds until the period ends, at least 1 (for `Retry-After`).
    pub fn seconds_left(self, at: NaiveDateTime) -> u64 {
        let secs = (self.end(at) - at).num_milliseconds().div_euclid(1000) + 1;
        secs.max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn keys_and_ends() {
        let t = at("2026-11-22 23:59:30"); // a Sunday
        assert_eq!(Period::Day.key(t), "2026-11-22");
        assert_eq!(Period::Week.key(t), "2026-W47");
        assert_eq!(Period::Day.end(t), at("2026-11-23 00:00:00"));
        assert_eq!(Period::Week.end(t), at("2026-11-23 00:00:00"));
        assert_eq!(Period::Day.seconds_left(t), 31);
        let monday = at("2026-11-23 00:00:00");
        assert_eq!(Period::Week.key(monday), "2026-W48");
        assert_eq!(Period::Week.end(monday), at("2026-11-30 00:00:00"));
        assert_eq!(Period::Week.key(at("2027-01-01 12:00:00")), "2026-W53");
    }
}
