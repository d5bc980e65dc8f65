//! CronJob schedules as Kubernetes reads them. The API server validates `spec.schedule` and the
//! CronJob controller fires it with the same cron library (robfig/cron v3, `ParseStandard`):
//! five fields (minute, hour, day of month, month, day of week 0-6), `*` or `?`, lists, ranges,
//! steps (`N/step` runs from N to the field's maximum), month and weekday names, the
//! descriptors `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly` and
//! `@every <Go duration>`. A day matches its day-of-month OR its day-of-week field, unless either
//! field is an unstepped `*`/`?`, which leaves the other alone to decide. `TZ=`/`CRON_TZ=` in the
//! schedule is refused on create (`spec.timeZone`, an IANA name, replaces it); without a time
//! zone the schedule runs in the controller manager's zone, UTC here.
//!
//! This module owns that grammar and the refusals, and turns a schedule into a plain pattern;
//! the calendar search (month lengths, leap years, daylight-saving transitions) is croner's,
//! and the zone database chrono-tz's. Syntax croner accepts beyond Kubernetes' (`L`, `W`, `#`,
//! `+`, weekday 7, seconds and year fields) never reaches it.

use chrono::{DateTime, Duration, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde_json::Value;

/// One cron field: its bounds and, for months and weekdays, its names (`names[i]` is `min + i`).
struct Field {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const fn bounds(min: u32, max: u32, names: &'static [&'static str]) -> Field {
    Field { min, max, names }
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Minute, hour, day of month, month, day of week.
const FIELDS: [Field; 5] = [
    bounds(0, 59, &[]),
    bounds(0, 23, &[]),
    bounds(1, 31, &[]),
    bounds(1, 12, MONTHS),
    bounds(0, 6, &["sun", "mon", "tue", "wed", "thu", "fri", "sat"]),
];

/// The descriptors and the five fields each stands for.
const DESCRIPTORS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// When a schedule fires.
#[derive(Clone, Debug)]
enum When {
    /// A calendar pattern.
    Cron(Box<Cron>),
    /// `@every`: a fixed whole number of seconds after the last run.
    Every(Duration),
    /// A field that lists nothing (`","`): accepted, never fires.
    Never,
}

/// A CronJob's schedule in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    when: When,
    zone: Tz,
}

fn number(s: &str, expr: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("failed to parse int from {s}: {expr}"))
}

/// One field: its values (bit `v` set for value `v`), its parts in croner's syntax
/// (`start-end/step`), and whether it was an unstepped wildcard, which decides how
/// day-of-month and day-of-week combine.
struct Parsed {
    values: u64,
    parts: Vec<String>,
    star: bool,
}

fn field(spec: &str, f: &Field) -> Result<Parsed, String> {
    let mut parts = Vec::new();
    let mut star = false;
    let mut values = 0u64;
    for expr in spec.split(',').filter(|e| !e.is_empty()) {
        let (range, step) = match expr.split('/').collect::<Vec<_>>()[..] {
            [r] => (r, 1),
            [r, s] => (r, number(s, expr)?),
            _ => return Err(format!("too many slashes: {expr}")),
        };
        let value = |s: &str| match f.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            Some(i) => Ok(f.min + u32::try_from(i).unwrap_or(0)),
            None => number(s, expr),
        };
        let wildcard = range == "*" || range == "?";
        let (start, end) = if wildcard {
            (f.min, f.max)
        } else {
            match range.split('-').collect::<Vec<_>>()[..] {
                [a] if expr.contains('/') => (value(a)?, f.max),
                [a] => (value(a)?, value(a)?),
                [a, z] => (value(a)?, value(z)?),
                _ => return Err(format!("too many hyphens: {expr}")),
            }
        };
        if start < f.min {
            return Err(format!(
                "beginning of range ({start}) below minimum ({}): {expr}",
                f.min
            ));
        }
        if end > f.max {
            return Err(format!(
                "end of range ({end}) above maximum ({}): {expr}",
                f.max
            ));
        }
        if start > end {
            return Err(format!(
                "beginning of range ({start}) beyond end of range ({end}): {expr}"
            ));
        }
        if step == 0 {
            return Err(format!("step of range should be a positive number: {expr}"));
        }
        star |= wildcard && step == 1;
        values |= (start..=end)
            .step_by(usize::try_from(step).unwrap_or(usize::MAX))
            .fold(0, |bits, v| bits | 1 << v);
        parts.push(format!("{start}-{end}/{step}"));
    }
    Ok(Parsed {
        values,
        parts,
        star,
    })
}

/// Whether some allowed month has some allowed day when the day of month alone decides
/// (`0 0 30 2 *` never fires; croner would search thousands of years to find that out).
fn some_day_exists(days: u64, months: u64) -> bool {
    const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    (1..=12).any(|m| months & 1 << m != 0 && (1..=LONGEST[m - 1]).any(|d| days & 1 << d != 0))
}

/// Go's `time.ParseDuration` (`1h30m`, `1.5h`, `90s`, `300ms`), as `@every` takes it.
fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::zero());
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("time: missing unit in duration {s:?}"))?;
        let (num, tail) = rest.split_at(n);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let scale = match &tail[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            unit => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        nanos += num.parse::<f64>().map_err(|_| bad())? * scale;
        rest = &tail[u..];
    }
    if nanos >= 9.2e18 {
        return Err(bad());
    }
    // Whole nanoseconds: the fraction below one is what Go drops too.
    #[allow(clippy::cast_possible_truncation)]
    let nanos = nanos as i64;
    Ok(Duration::nanoseconds(if negative { -nanos } else { nanos }))
}

/// The schedule without `TZ`: a descriptor or five fields.
fn when(spec: &str) -> Result<When, String> {
    if let Some(rest) = spec.strip_prefix('@') {
        if let Some((_, fields)) = DESCRIPTORS.iter().find(|(d, _)| *d == spec) {
            return when(fields);
        }
        if let Some(d) = rest.strip_prefix("every ") {
            let d = go_duration(d).map_err(|e| format!("failed to parse duration {spec}: {e}"))?;
            // robfig/cron runs at least a second apart, in whole seconds.
            let secs = d.num_seconds().max(1);
            return Ok(When::Every(Duration::seconds(secs)));
        }
        return Err(format!("unrecognized descriptor: {spec}"));
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    let parsed = fields
        .iter()
        .zip(&FIELDS)
        .map(|(text, f)| field(text, f))
        .collect::<Result<Vec<_>, _>>()?;
    let (dom, month, dow) = (&parsed[2], &parsed[3], &parsed[4]);
    let days_decide = dow.star && !dom.star;
    if parsed.iter().any(|p| p.parts.is_empty())
        || days_decide && !some_day_exists(dom.values, month.values)
    {
        return Ok(When::Never);
    }
    let pattern: Vec<String> = parsed
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // An unstepped wildcard in a day field must reach croner as `*`, the only form
            // it combines with the other day field by AND.
            if (i == 2 || i == 4) && p.star {
                "*".to_string()
            } else {
                p.parts.join(",")
            }
        })
        .collect();
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(&pattern.join(" "))
        // Never expected: every part is `*` or `start-end/step` within bounds.
        .map_err(|e| format!("croner refused {}: {e}", pattern.join(" ")))?;
    Ok(When::Cron(Box::new(cron)))
}

/// Kubernetes' checks of `spec.timeZone`, then the zone.
fn zone(tz: &str) -> Result<Tz, String> {
    if tz.is_empty() {
        return Err("timeZone must be nil or non-empty string".into());
    }
    let unknown = || format!("unknown time zone {tz}");
    for part in tz.split('/') {
        let chars_ok = part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
        if part == "." || part == ".." || part.starts_with('-') || !chars_ok {
            return Err(unknown());
        }
        if part.is_empty() || part.len() > 14 {
            return Err(unknown());
        }
    }
    if tz.eq_ignore_ascii_case("Local") {
        return Err(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .into(),
        );
    }
    tz.parse::<Tz>().map_err(|_| unknown())
}

impl Schedule {
    /// Parses a schedule and an optional IANA time zone as the API server validates them,
    /// with the message a 422 carries (`spec.schedule: Invalid value: ...`).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        let invalid = |why: String| format!("spec.schedule: Invalid value: {schedule:?}: {why}");
        if schedule.is_empty() {
            return Err("spec.schedule: Required value".into());
        }
        if schedule.contains("TZ") {
            return Err(invalid(
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into(),
            ));
        }
        let when = when(schedule).map_err(invalid)?;
        let zone = match time_zone {
            None => Tz::UTC,
            Some(tz) => {
                zone(tz).map_err(|why| format!("spec.timeZone: Invalid value: {tz:?}: {why}"))?
            }
        };
        Ok(Self { when, zone })
    }

    /// The schedule of a CronJob object (`spec.schedule`, `spec.timeZone`).
    pub fn of(cronjob: &Value) -> Result<Self, String> {
        let schedule = cronjob
            .pointer("/spec/schedule")
            .and_then(Value::as_str)
            .unwrap_or("");
        let time_zone = match cronjob.pointer("/spec/timeZone") {
            None | Some(Value::Null) => None,
            Some(Value::String(tz)) => Some(tz.as_str()),
            Some(other) => {
                return Err(format!(
                    "spec.timeZone: Invalid value: {other}: must be a string"
                ));
            }
        };
        Self::parse(schedule, time_zone)
    }

    /// The first scheduled time strictly after `after`, if the schedule ever fires.
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            When::Cron(cron) => cron
                .find_next_occurrence(&after.with_timezone(&self.zone), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            When::Every(d) => Some(after.with_nanosecond(0)? + *d),
            When::Never => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(schedule: &str, tz: Option<&str>, after: &str) -> Option<DateTime<Utc>> {
        Schedule::parse(schedule, tz).unwrap().next_after(t(after))
    }

    #[test]
    fn every_minute_fires_on_the_next_minute() {
        assert_eq!(
            next("*/1 * * * *", None, "2026-01-01T10:00:30Z"),
            Some(t("2026-01-01T10:01:00Z"))
        );
    }

    #[test]
    fn ranges_steps_names_and_macros_parse() {
        // 2026-01-03 is a Saturday: the next run is Monday 09:00.
        assert_eq!(
            next("*/15 9-17 * * mon-fri", None, "2026-01-02T17:50:00Z"),
            Some(t("2026-01-05T09:00:00Z"))
        );
        assert_eq!(
            next("@hourly", None, "2026-01-01T10:00:00Z"),
            Some(t("2026-01-01T11:00:00Z"))
        );
        assert_eq!(
            next("0 0 1 feb *", None, "2026-03-01T00:00:00Z"),
            Some(t("2027-02-01T00:00:00Z"))
        );
        assert_eq!(
            next("@midnight", None, "2026-01-01T10:00:00Z"),
            Some(t("2026-01-02T00:00:00Z"))
        );
        // `N/step` runs from N to the maximum: 5, 20, 35, 50.
        assert_eq!(
            next("5/15 * * * *", None, "2026-01-01T10:36:00Z"),
            Some(t("2026-01-01T10:50:00Z"))
        );
        assert_eq!(
            next("? ? ? ? ?", None, "2026-01-01T10:36:00Z"),
            Some(t("2026-01-01T10:37:00Z"))
        );
    }

    #[test]
    fn a_day_matches_either_day_field_unless_one_is_an_unstepped_wildcard() {
        // 2026-02-06 is a Friday; the 13th of February 2026 is a Friday too.
        assert_eq!(
            next("0 0 13 * 5", None, "2026-02-01T00:00:00Z"),
            Some(t("2026-02-06T00:00:00Z"))
        );
        // `*/1` is still a wildcard to robfig/cron: Mondays only, not every day.
        assert_eq!(
            next("0 0 */1 * 1", None, "2026-01-01T00:00:00Z"),
            Some(t("2026-01-05T00:00:00Z"))
        );
        // A `+` is a sign to Go's integer parser, not croner's AND: the 1st or a Monday.
        assert_eq!(
            next("0 0 1 * +1", None, "2026-01-01T12:00:00Z"),
            Some(t("2026-01-05T00:00:00Z"))
        );
        // A stepped wildcard is not: the 1st, 3rd, ... or a Monday.
        assert_eq!(
            next("0 0 */2 * 1", None, "2026-01-01T12:00:00Z"),
            Some(t("2026-01-03T00:00:00Z"))
        );
    }

    #[test]
    fn malformed_schedules_are_rejected() {
        for s in ["", "* * * *", "61 * * * *", "*/0 * * * *", "a b c d e"] {
            assert!(Schedule::parse(s, None).is_err(), "{s}");
        }
    }

    #[test]
    fn syntax_kubernetes_refuses_is_refused_though_croner_knows_it() {
        for s in [
            "0 12 * * 7",       // weekdays run 0-6
            "0 0 L * *",        // last day of month
            "0 0 15W * *",      // nearest weekday
            "0 0 * * 5#2",      // nth weekday
            "*/10 * * * * *",   // a seconds field
            "/10 * * * *",      // a step without a start
            "@Hourly",          // descriptors are lowercase
            "@reboot",          // not a schedule
            "0 0 * * mon-sun",  // sun is 0, before mon
            "TZ=UTC 0 0 * * *", // the timeZone field replaces these
            "CRON_TZ=UTC 0 0 * * *",
        ] {
            let e = Schedule::parse(s, None).unwrap_err();
            assert!(e.starts_with("spec.schedule: Invalid value: "), "{s}: {e}");
        }
        assert!(
            Schedule::parse("TZ=UTC 0 0 * * *", None)
                .unwrap_err()
                .ends_with("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
        );
        assert_eq!(
            Schedule::parse("61 * * * *", None).unwrap_err(),
            "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        );
    }

    #[test]
    fn the_time_zone_field_moves_the_schedule_and_bad_zones_are_refused() {
        // 03:00 in Paris is 02:00 UTC in winter and 01:00 UTC in summer.
        assert_eq!(
            next("0 3 * * *", Some("Europe/Paris"), "2026-01-10T00:00:00Z"),
            Some(t("2026-01-10T02:00:00Z"))
        );
        assert_eq!(
            next("0 3 * * *", Some("Europe/Paris"), "2026-07-10T00:00:00Z"),
            Some(t("2026-07-10T01:00:00Z"))
        );
        for (tz, why) in [
            ("Europe/Pariss", "unknown time zone Europe/Pariss"),
            ("", "timeZone must be nil or non-empty string"),
            ("local", "timeZone must be an explicit time zone"),
            ("../etc/passwd", "unknown time zone ../etc/passwd"),
        ] {
            let e = Schedule::parse("0 3 * * *", Some(tz)).unwrap_err();
            assert!(
                e.starts_with("spec.timeZone: Invalid value: ") && e.contains(why),
                "{tz}: {e}"
            );
        }
    }

    #[test]
    fn every_runs_whole_seconds_apart_and_at_least_one() {
        assert_eq!(
            next("@every 1h30m", None, "2026-01-01T10:00:00.5Z"),
            Some(t("2026-01-01T11:30:00Z"))
        );
        assert_eq!(
            next("@every 1.5h", None, "2026-01-01T10:00:00Z"),
            Some(t("2026-01-01T11:30:00Z"))
        );
        assert_eq!(
            next("@every 300ms", None, "2026-01-01T10:00:00Z"),
            Some(t("2026-01-01T10:00:01Z"))
        );
        for s in ["@every", "@every 5", "@every 5d", "@every h"] {
            assert!(Schedule::parse(s, None).is_err(), "{s}");
        }
    }

    #[test]
    fn a_field_listing_nothing_is_accepted_and_never_fires() {
        assert_eq!(next("0 0 , * *", None, "2026-01-01T00:00:00Z"), None);
        assert_eq!(next("0 0 30 2 *", None, "2026-01-01T00:00:00Z"), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Whatever a client puts in a CronJob, parsing answers and a parsed schedule finds
        /// its next run (or none) without panicking or searching for long.
        #[test]
        fn any_schedule_parses_or_is_refused_without_panicking(
            schedule in "[0-9a-zA-Z*?,/@ +.-]{0,32}",
            fields in "([0-9*?,/-]{1,6} ){4}[0-9a-z*?,/-]{1,6}",
            tz in proptest::option::of("[A-Za-z/_+.0-9-]{0,20}"),
        ) {
            for s in [schedule.as_str(), fields.as_str()] {
                match Schedule::parse(s, tz.as_deref()) {
                    Ok(parsed) => {
                        let _ = parsed.next_after(t("2026-01-01T00:00:00Z"));
                    }
                    // What passes Kubernetes' grammar always reaches croner in its syntax.
                    Err(e) => proptest::prop_assert!(!e.contains("croner refused"), "{}", e),
                }
            }
        }
    }

    #[test]
    fn a_cronjob_object_supplies_schedule_and_zone() {
        let cj = serde_json::json!({"spec": {"schedule": "0 3 * * *", "timeZone": "Asia/Tokyo"}});
        let s = Schedule::of(&cj).unwrap();
        assert_eq!(
            s.next_after(t("2026-01-01T00:00:00Z")),
            Some(t("2026-01-01T18:00:00Z"))
        );
        assert_eq!(
            Schedule::of(&serde_json::json!({"spec": {}})).unwrap_err(),
            "spec.schedule: Required value"
        );
    }
}
