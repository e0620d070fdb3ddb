//! The schedule calculator: cron expressions (5 fields, or 6 with seconds
//! first, or an `@hourly`-style alias) in an IANA time zone, and the times
//! they fire. Pure.
//!
//! Daylight saving time follows the wall clock: a time that does not exist
//! on a spring-forward day (02:30 in Europe/Paris) fires once, at the first
//! instant after the gap; a time that happens twice on a fall-back day
//! fires once, at its first occurrence.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::connector::ValidationError;

/// Longest accepted cron expression.
pub const MAX_CRON_LEN: usize = 200;
/// How many upcoming fire times a schedule shows.
pub const UPCOMING: usize = 5;

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

impl CronSchedule {
    /// Parses `cron` in `timezone`; every problem names its field (`cron`,
    /// `timezone`).
    ///
    /// # Errors
    ///
    /// An unparsable expression (wrong field count, out-of-range value,
    /// unknown alias) or an unknown zone.
    pub fn parse(cron: &str, timezone: &str) -> Result<Self, Vec<ValidationError>> {
        let mut errors = Vec::new();
        let parsed = parse_cron(cron).map_err(|m| errors.push(problem("cron", m)));
        let tz = timezone.parse::<Tz>().map_err(|_| {
            errors.push(problem(
                "timezone",
                "must be an IANA time zone name, such as `Europe/Paris` or `UTC`",
            ));
        });
        match (parsed, tz) {
            (Ok(cron), Ok(tz)) => Ok(Self { cron, tz }),
            _ => Err(errors),
        }
    }

    /// The first fire time strictly after `after`; `None` when the
    /// expression never fires again (e.g. February 30th).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last fire time at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.tz);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Up to `n` fire times strictly after `after`, none past `end_at`.
    pub fn upcoming(
        &self,
        after: DateTime<Utc>,
        n: usize,
        end_at: Option<DateTime<Utc>>,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut from = after;
        while out.len() < n {
            match self.next_after(from) {
                Some(t) if end_at.is_none_or(|end| t <= end) => {
                    out.push(t);
                    from = t;
                }
                _ => break,
            }
        }
        out
    }
}

fn parse_cron(cron: &str) -> Result<Cron, String> {
    let trimmed = cron.trim();
    if trimmed.is_empty() || trimmed.len() > MAX_CRON_LEN {
        return Err(format!("must be 1 to {MAX_CRON_LEN} characters"));
    }
    let fields = trimmed.split_whitespace().count();
    if !trimmed.starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "must have 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), not {fields}"
        ));
    }
    if trimmed.starts_with('@') && fields != 1 {
        return Err("an alias (`@hourly`, `@daily`, ...) stands alone".to_owned());
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| format!("invalid cron expression: {e}"))
}

fn problem(path: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        path: path.to_owned(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    /// Every fire time in `[from, to)`.
    fn fires(s: &CronSchedule, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut at = utc(from) - chrono::Duration::seconds(1);
        while let Some(t) = s.next_after(at).filter(|t| *t < utc(to)) {
            out.push(t);
            at = t;
        }
        out
    }

    #[test]
    fn a_daily_0230_job_runs_once_on_spring_forward_and_once_on_fall_back() {
        let s = CronSchedule::parse("30 2 * * *", "Europe/Paris").expect("valid");
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        assert_eq!(
            fires(&s, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
            [utc("2026-03-29T01:00:00Z"), utc("2026-03-30T00:30:00Z")],
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        assert_eq!(
            fires(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            [utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")],
        );
    }

    #[test]
    fn hourly_jobs_keep_absolute_order_across_both_transitions() {
        let s = CronSchedule::parse("@hourly", "America/New_York").expect("valid");
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:00 local twice,
        // and both are distinct hours of absolute time.
        let got = fires(&s, "2026-11-01T04:00:00Z", "2026-11-01T08:00:00Z");
        assert_eq!(
            got,
            [
                utc("2026-11-01T04:00:00Z"),
                utc("2026-11-01T05:00:00Z"),
                utc("2026-11-01T06:00:00Z"),
                utc("2026-11-01T07:00:00Z"),
            ]
        );
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn five_and_six_fields_and_aliases_are_accepted() {
        let at = utc("2026-06-01T10:00:00Z");
        for (cron, next) in [
            ("*/15 * * * *", "2026-06-01T10:15:00Z"),
            ("*/2 * * * * *", "2026-06-01T10:00:02Z"),
            ("@daily", "2026-06-02T00:00:00Z"),
            ("@HOURLY", "2026-06-01T11:00:00Z"),
            ("0 9 * * MON", "2026-06-08T09:00:00Z"),
        ] {
            let s = CronSchedule::parse(cron, "UTC").expect(cron);
            assert_eq!(s.next_after(at), Some(utc(next)), "{cron}");
        }
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        for (cron, tz, fields) in [
            ("* * * *", "UTC", &["cron"][..]),
            ("* * * * * * *", "UTC", &["cron"]),
            ("61 * * * *", "UTC", &["cron"]),
            ("@sometimes", "UTC", &["cron"]),
            ("", "UTC", &["cron"]),
            ("* * * * *", "Mars/Olympus", &["timezone"]),
            ("nope", "nowhere", &["cron", "timezone"]),
        ] {
            let errors = CronSchedule::parse(cron, tz).expect_err(cron);
            let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, fields, "{cron} {tz}");
        }
    }

    #[test]
    fn upcoming_lists_five_and_stops_at_the_end_date() {
        let s = CronSchedule::parse("0 * * * *", "UTC").expect("valid");
        let at = utc("2026-06-01T10:30:00Z");
        assert_eq!(s.upcoming(at, UPCOMING, None).len(), 5);
        let end = Some(utc("2026-06-01T12:00:00Z"));
        assert_eq!(
            s.upcoming(at, UPCOMING, end),
            [utc("2026-06-01T11:00:00Z"), utc("2026-06-01T12:00:00Z")]
        );
    }

    #[test]
    fn the_latest_tick_is_found_for_catch_up() {
        let s = CronSchedule::parse("*/10 * * * *", "Asia/Kolkata").expect("valid");
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 10, 37, 12).single();
        assert_eq!(
            now.and_then(|n| s.latest_at_or_before(n)),
            Some(utc("2026-06-01T10:30:00Z"))
        );
        let exact = utc("2026-06-01T10:40:00Z");
        assert_eq!(s.latest_at_or_before(exact), Some(exact));
    }
}
