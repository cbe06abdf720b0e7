//! Five-field cron expressions (`minute hour day-of-month month day-of-week`).
//!
//! Supported syntax, as in Vixie cron and cronie: `*`, numbers, ranges
//! `a-b`, steps `*/s`, `a-b/s` and `a/s` (from `a` to the end), lists
//! joined with `,`, month names `jan`..`dec`, weekday names `sun`..`sat`
//! (`0` and `7` are both Sunday), and the macros `@yearly`, `@annually`,
//! `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly`.
//!
//! Day matching follows Vixie cron: when both day-of-month and day-of-week
//! are restricted (neither starts with `*`), a day matches if *either*
//! matches; otherwise both must.
//!
//! Expressions are evaluated in UTC.

use std::fmt;
use std::str::FromStr;

use time::{Date, Month, OffsetDateTime, Time, UtcOffset};

/// A parsed, validated cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CronExpr {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    dom_restricted: bool,
    dow_restricted: bool,
}

/// Why a cron expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
// Day-of-week accepts 0-7 while parsing; 7 is folded onto 0 (Sunday).
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Field {
    fn value(&self, text: &str) -> Result<u32, CronError> {
        let lower = text.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            // Names start at the field's minimum (jan = 1, sun = 0).
            return Ok(self.min + i as u32);
        }
        let n: u32 = text
            .parse()
            .map_err(|_| CronError(format!("{} field: {text:?} is not a number", self.name)))?;
        if n < self.min || n > self.max {
            return Err(CronError(format!(
                "{} field: {n} is out of range {}-{}",
                self.name, self.min, self.max
            )));
        }
        Ok(n)
    }

    /// Parses one field into a bit set and whether it is restricted (does
    /// not start with `*`).
    fn parse(&self, text: &str) -> Result<(u64, bool), CronError> {
        let mut bits = 0u64;
        for item in text.split(',') {
            bits |= self.parse_item(item)?;
        }
        if self.max == 7 && bits & (1 << 7) != 0 {
            bits = (bits & !(1 << 7)) | 1;
        }
        Ok((bits, !text.starts_with('*')))
    }

    fn parse_item(&self, item: &str) -> Result<u64, CronError> {
        if item.is_empty() {
            return Err(CronError(format!("{} field: empty list item", self.name)));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| {
                    CronError(format!(
                        "{} field: step {step:?} is not a number",
                        self.name
                    ))
                })?;
                if step == 0 || step > self.max - self.min + 1 {
                    return Err(CronError(format!(
                        "{} field: step {step} is out of range 1-{}",
                        self.name,
                        self.max - self.min + 1
                    )));
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (first, last) = if range == "*" {
            (self.min, self.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (self.value(a)?, self.value(b)?);
            if a > b {
                return Err(CronError(format!(
                    "{} field: range {a}-{b} goes backwards",
                    self.name
                )));
            }
            (a, b)
        } else {
            let a = self.value(range)?;
            // `a/s` runs from `a` to the end of the field.
            (a, if step.is_some() { self.max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut bits = 0u64;
        let mut n = first;
        while n <= last {
            bits |= 1 << n;
            n += step;
        }
        Ok(bits)
    }

    /// The largest value of the field once folded (day-of-week ends at 6).
    fn top(&self) -> u32 {
        if self.max == 7 { 6 } else { self.max }
    }

    fn full(&self) -> u64 {
        (self.min..=self.top()).fold(0, |acc, n| acc | 1 << n)
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, bits: u64, restricted: bool) -> fmt::Result {
        let (min, top) = (self.min, self.top());
        if !restricted {
            // An unrestricted field always contains its minimum.
            if bits == self.full() {
                return f.write_str("*");
            }
            for step in 2..=top - min + 1 {
                let stepped = (min..=top)
                    .step_by(step as usize)
                    .fold(0, |acc, n| acc | 1 << n);
                if stepped == bits {
                    return write!(f, "*/{step}");
                }
            }
            write!(f, "*/{}", top - min + 1)?;
            let rest = bits & !(1 << min);
            if rest != 0 {
                f.write_str(",")?;
                write_list(f, rest, min, top)?;
            }
            return Ok(());
        }
        write_list(f, bits, min, top)
    }
}

/// Writes a non-empty bit set as `a-b,c,...` with maximal runs.
fn write_list(f: &mut fmt::Formatter<'_>, bits: u64, min: u32, top: u32) -> fmt::Result {
    let mut first = true;
    let mut n = min;
    while n <= top {
        if bits & (1 << n) == 0 {
            n += 1;
            continue;
        }
        let start = n;
        while n < top && bits & (1 << (n + 1)) != 0 {
            n += 1;
        }
        if !first {
            f.write_str(",")?;
        }
        first = false;
        if start == n {
            write!(f, "{start}")?;
        } else {
            write!(f, "{start}-{n}")?;
        }
        n += 1;
    }
    Ok(())
}

fn days_in_month(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl FromStr for CronExpr {
    type Err = CronError;

    fn from_str(text: &str) -> Result<Self, CronError> {
        let text = text.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(CronError(format!(
                    "unknown macro {text:?} (use @yearly, @monthly, @weekly, @daily or @hourly)"
                )));
            }
            _ => text,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}{}",
                fields.len(),
                if fields.len() == 6 {
                    "; seconds are not supported"
                } else {
                    ""
                }
            )));
        }
        let (minutes, _) = MINUTE.parse(fields[0])?;
        let (hours, _) = HOUR.parse(fields[1])?;
        let (days_of_month, dom_restricted) = DAY_OF_MONTH.parse(fields[2])?;
        let (months, _) = MONTH.parse(fields[3])?;
        let (days_of_week, dow_restricted) = DAY_OF_WEEK.parse(fields[4])?;
        let expr = CronExpr {
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            dom_restricted,
            dow_restricted,
        };
        // With day-of-week unrestricted, the day-of-month must exist in at
        // least one chosen month, or the schedule never fires.
        if !(dom_restricted && dow_restricted) {
            let possible = (1..=12u32).any(|m| {
                months & (1 << m) != 0
                    && (1..=days_in_month(m)).any(|d| days_of_month & (1 << d) != 0)
            });
            if !possible {
                return Err(CronError(
                    "never runs: none of the chosen days exists in the chosen months".into(),
                ));
            }
        }
        Ok(expr)
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the day fields' restriction changes what matches; the others
        // show `*` exactly when they are full.
        MINUTE.write(f, self.minutes, self.minutes != MINUTE.full())?;
        f.write_str(" ")?;
        HOUR.write(f, self.hours, self.hours != HOUR.full())?;
        f.write_str(" ")?;
        DAY_OF_MONTH.write(f, self.days_of_month, self.dom_restricted)?;
        f.write_str(" ")?;
        MONTH.write(f, self.months, self.months != MONTH.full())?;
        f.write_str(" ")?;
        DAY_OF_WEEK.write(f, self.days_of_week, self.dow_restricted)
    }
}

impl CronExpr {
    /// Whether the expression fires at the minute that contains `t`
    /// (evaluated in UTC).
    pub fn matches(&self, t: OffsetDateTime) -> bool {
        let t = t.to_offset(UtcOffset::UTC);
        self.month_matches(t.date())
            && self.day_matches(t.date())
            && self.hours & (1 << t.hour()) != 0
            && self.minutes & (1 << t.minute()) != 0
    }

    /// The first minute strictly after `after` at which the expression
    /// fires, in UTC. Every validated expression fires within one Gregorian
    /// cycle (400 years); `None` only when that search would leave the
    /// representable calendar.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        const MINUTE: time::Duration = time::Duration::MINUTE;
        let after = after.to_offset(UtcOffset::UTC);
        let start = after.replace_time(Time::from_hms(after.hour(), after.minute(), 0).ok()?);
        let mut t = start.checked_add(MINUTE)?;
        let limit = start.checked_add(time::Duration::days(400 * 366))?;
        while t < limit {
            let date = t.date();
            if !self.month_matches(date) {
                let (year, month) = match date.month() {
                    Month::December => (date.year() + 1, Month::January),
                    m => (date.year(), m.next()),
                };
                t = Date::from_calendar_date(year, month, 1)
                    .ok()?
                    .midnight()
                    .assume_utc();
            } else if !self.day_matches(date) {
                t = date.next_day()?.midnight().assume_utc();
            } else if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .replace_time(Time::from_hms(t.hour(), 0, 0).ok()?)
                    .checked_add(time::Duration::HOUR)?;
            } else if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(MINUTE)?;
            } else {
                return Some(t);
            }
        }
        None
    }

    fn month_matches(&self, date: Date) -> bool {
        self.months & (1 << u8::from(date.month())) != 0
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().number_days_from_sunday()) != 0;
        if self.dom_restricted && self.dow_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn cron(text: &str) -> CronExpr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn bits(values: impl IntoIterator<Item = u32>) -> u64 {
        values.into_iter().fold(0, |acc, n| acc | 1 << n)
    }

    #[test]
    fn parses_the_design_examples() {
        let e = cron("0 */4 * * *");
        assert_eq!(e.minutes, 1);
        assert_eq!(e.hours, bits([0, 4, 8, 12, 16, 20]));
        assert_eq!(e.days_of_month, DAY_OF_MONTH.full());
        assert!(!e.dom_restricted && !e.dow_restricted);
        let e = cron("30 */4 * * *");
        assert_eq!(e.minutes, 1 << 30);
        assert_eq!(cron("0 3 * * *").hours, 1 << 3);
    }

    #[test]
    fn lists_ranges_steps_and_names() {
        let e = cron("1,2,10-12 8-18/5 1/10 jan-mar,DEC mon-fri");
        assert_eq!(e.minutes, bits([1, 2, 10, 11, 12]));
        assert_eq!(e.hours, bits([8, 13, 18]));
        assert_eq!(e.days_of_month, bits([1, 11, 21, 31]));
        assert_eq!(e.months, bits([1, 2, 3, 12]));
        assert_eq!(e.days_of_week, bits(1..=5));
        assert!(e.dom_restricted && e.dow_restricted);
        // 7 is Sunday too.
        assert_eq!(cron("0 0 * * 7").days_of_week, 1);
        assert_eq!(cron("0 0 * * 5-7").days_of_week, bits([0, 5, 6]));
        assert_eq!(cron("@daily"), cron("0 0 * * *"));
        assert_eq!(cron("@weekly"), cron("0 0 * * sun"));
    }

    #[test]
    fn rejects_bad_expressions_with_the_field_name() {
        for (text, needle) in [
            ("", "expected 5 fields"),
            ("* * * *", "found 4"),
            ("0 * * * * *", "seconds are not supported"),
            ("60 * * * *", "minute field: 60 is out of range 0-59"),
            ("* 24 * * *", "hour field: 24"),
            ("* * 0 * *", "day-of-month field: 0"),
            ("* * * 13 *", "month field: 13"),
            ("* * * * 8", "day-of-week field: 8"),
            ("*/0 * * * *", "step 0"),
            ("5-1 * * * *", "goes backwards"),
            ("1,,2 * * * *", "empty list item"),
            ("x * * * *", "not a number"),
            ("* * * foo *", "month field"),
            ("0 0 30 feb *", "never runs"),
            ("0 0 31 4,6 *", "never runs"),
            ("@reboot", "unknown macro"),
        ] {
            let err = text.parse::<CronExpr>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        // February 29 exists in leap years, and an OR with weekdays fires.
        cron("0 0 29 2 *");
        cron("0 0 30 2 mon");
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(cron("0 */4 * * *").to_string(), "0 0,4,8,12,16,20 * * *");
        assert_eq!(
            cron("*/15 * 1-31 * mon-fri").to_string(),
            "0,15,30,45 * 1-31 * 1-5"
        );
        assert_eq!(cron("0 0 */2 * *").to_string(), "0 0 */2 * *");
        assert_eq!(cron("0 0 *,5 * *").to_string(), "0 0 * * *");
        assert_eq!(
            cron("0 0 */10,4 * *").to_string(),
            "0 0 */31,4,11,21,31 * *"
        );
    }

    #[test]
    fn next_after_walks_calendar() {
        let e = cron("0 */4 * * *");
        assert_eq!(
            e.next_after(datetime!(2026-11-22 10:15:30 UTC)),
            Some(datetime!(2026-11-22 12:00 UTC))
        );
        // Strictly after: a matching minute moves on to the next one.
        assert_eq!(
            e.next_after(datetime!(2026-11-22 12:00 UTC)),
            Some(datetime!(2026-11-22 16:00 UTC))
        );
        assert_eq!(
            cron("30 2 29 2 *").next_after(datetime!(2026-03-01 00:00 UTC)),
            Some(datetime!(2028-02-29 02:30 UTC))
        );
        // Vixie OR: the 13th or any Friday.
        let e = cron("0 0 13 * fri");
        assert_eq!(
            e.next_after(datetime!(2026-11-01 00:00 UTC)),
            Some(datetime!(2026-11-06 00:00 UTC))
        );
        // Offsets are converted to UTC.
        assert_eq!(
            cron("0 3 * * *").next_after(datetime!(2026-01-01 04:00 +02:00)),
            Some(datetime!(2026-01-01 03:00 UTC))
        );
        assert_eq!(
            cron("59 23 31 12 *").next_after(datetime!(2026-12-31 23:59 UTC)),
            Some(datetime!(2027-12-31 23:59 UTC))
        );
    }

    /// One list item of a field, with the values it stands for.
    fn item(min: u32, max: u32) -> impl Strategy<Value = (String, u64)> {
        let span = max - min + 1;
        prop_oneof![
            Just(("*".to_string(), (min..=max).fold(0u64, |a, n| a | 1 << n))),
            (1..=span).prop_map(move |s| (
                format!("*/{s}"),
                (min..=max)
                    .step_by(s as usize)
                    .fold(0u64, |a, n| a | 1 << n)
            )),
            (min..=max).prop_map(|a| (a.to_string(), 1u64 << a)),
            (min..=max, min..=max, prop::option::of(1..=span)).prop_map(move |(a, b, s)| {
                let (a, b) = (a.min(b), a.max(b));
                let set = (a..=b)
                    .step_by(s.unwrap_or(1) as usize)
                    .fold(0u64, |acc, n| acc | 1 << n);
                match s {
                    Some(s) => (format!("{a}-{b}/{s}"), set),
                    None => (format!("{a}-{b}"), set),
                }
            }),
        ]
    }

    fn field(min: u32, max: u32) -> impl Strategy<Value = (String, u64)> {
        prop::collection::vec(item(min, max), 1..4).prop_map(|items| {
            let text = items
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let set = items.iter().fold(0, |acc, (_, s)| acc | s);
            (text, set)
        })
    }

    fn fold_sunday(set: u64) -> u64 {
        if set & (1 << 7) != 0 {
            (set & !(1 << 7)) | 1
        } else {
            set
        }
    }

    proptest! {
        #[test]
        fn generated_expressions_parse_to_their_sets_and_round_trip(
            m in field(0, 59), h in field(0, 23), dom in field(1, 31),
            mon in field(1, 12), dow in field(0, 7),
        ) {
            let text = format!("{} {} {} {} {}", m.0, h.0, dom.0, mon.0, dow.0);
            match text.parse::<CronExpr>() {
                Ok(e) => {
                    prop_assert_eq!(e.minutes, m.1);
                    prop_assert_eq!(e.hours, h.1);
                    prop_assert_eq!(e.days_of_month, dom.1);
                    prop_assert_eq!(e.months, mon.1);
                    prop_assert_eq!(e.days_of_week, fold_sunday(dow.1));
                    prop_assert_eq!(e.dom_restricted, !dom.0.starts_with('*'));
                    let shown = e.to_string();
                    let back: CronExpr = shown.parse().map_err(|err| {
                        TestCaseError::fail(format!("{shown:?} from {text:?}: {err}"))
                    })?;
                    prop_assert_eq!(back, e);
                    // The next run is a matching minute after the start.
                    let start = datetime!(2026-05-17 13:37:12 UTC);
                    let next = e.next_after(start).expect("fires within 400 years");
                    prop_assert!(next > start && e.matches(next));
                    prop_assert!(!e.matches(next - time::Duration::MINUTE) || next - time::Duration::MINUTE <= start);
                }
                // The only refusal of well-formed fields is a day that never exists.
                Err(err) => prop_assert!(err.to_string().contains("never runs"), "{}: {}", text, err),
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "[0-9a-z*/,@ -]{0,40}") {
            if let Ok(e) = text.parse::<CronExpr>() {
                prop_assert_eq!(e.to_string().parse::<CronExpr>().ok(), Some(e));
            }
        }
    }
}
