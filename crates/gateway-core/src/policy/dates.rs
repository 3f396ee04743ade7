//! Dates in records and rules: RFC 3339 dates (`2026-03-01`) and date-times
//! (`2026-03-01T09:30:00+08:00`), offsets in days, working days, months and years.
//!
//! Two instants compare as instants. As soon as one side is a plain date, both sides compare as
//! calendar dates in the zone's local time (the set's `utc_offset`, +08:00 for Shenzhen and Hong
//! Kong alike), so a permit valid "to 2026-03-01" is still valid at 23:59 local time that day.

use chrono::{DateTime, Datelike, Duration, FixedOffset, Months, NaiveDate, Weekday};

/// A date or an instant read from a record, a rule or the decision time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateValue {
    Date(NaiveDate),
    Instant(DateTime<FixedOffset>),
}

/// A shift applied to a date operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    None,
    Days(i64),
    /// Monday to Friday; public holidays are not modelled.
    WorkingDays(i64),
    Months(i32),
    Years(i32),
}

/// Parses an RFC 3339 date or date-time. `None` for anything else.
pub fn parse(s: &str) -> Option<DateValue> {
    if s.len() == 10 {
        return NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(DateValue::Date);
    }
    DateTime::parse_from_rfc3339(s).ok().map(DateValue::Instant)
}

impl DateValue {
    /// The calendar date of this value in the zone's local time.
    pub fn local_date(self, zone: FixedOffset) -> NaiveDate {
        match self {
            DateValue::Date(d) => d,
            DateValue::Instant(t) => t.with_timezone(&zone).date_naive(),
        }
    }

    /// Shifts by `offset`; `None` on overflow (treated as "condition not met").
    pub fn shift(self, offset: Offset, zone: FixedOffset) -> Option<DateValue> {
        match (self, offset) {
            (v, Offset::None) => Some(v),
            (DateValue::Date(d), Offset::Days(n)) => d
                .checked_add_signed(Duration::try_days(n)?)
                .map(DateValue::Date),
            (DateValue::Instant(t), Offset::Days(n)) => t
                .checked_add_signed(Duration::try_days(n)?)
                .map(DateValue::Instant),
            (v, Offset::WorkingDays(n)) => {
                add_working_days(v.local_date(zone), n).map(DateValue::Date)
            }
            (DateValue::Date(d), Offset::Months(m)) => add_months(d, m).map(DateValue::Date),
            (DateValue::Date(d), Offset::Years(y)) => {
                add_months(d, y.checked_mul(12)?).map(DateValue::Date)
            }
            (DateValue::Instant(t), Offset::Months(m)) => {
                add_months_instant(t, m).map(DateValue::Instant)
            }
            (DateValue::Instant(t), Offset::Years(y)) => {
                add_months_instant(t, y.checked_mul(12)?).map(DateValue::Instant)
            }
        }
    }
}

/// Compares two values: as instants when both are instants, else as local calendar dates.
pub fn compare(a: DateValue, b: DateValue, zone: FixedOffset) -> std::cmp::Ordering {
    match (a, b) {
        (DateValue::Instant(x), DateValue::Instant(y)) => x.cmp(&y),
        _ => a.local_date(zone).cmp(&b.local_date(zone)),
    }
}

fn add_months(d: NaiveDate, m: i32) -> Option<NaiveDate> {
    // chrono clamps to the month's last day (29 February + 1 year = 28 February).
    if m >= 0 {
        d.checked_add_months(Months::new(m.unsigned_abs()))
    } else {
        d.checked_sub_months(Months::new(m.unsigned_abs()))
    }
}

fn add_months_instant(t: DateTime<FixedOffset>, m: i32) -> Option<DateTime<FixedOffset>> {
    if m >= 0 {
        t.checked_add_months(Months::new(m.unsigned_abs()))
    } else {
        t.checked_sub_months(Months::new(m.unsigned_abs()))
    }
}

fn is_working_day(d: NaiveDate) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
}

/// The date `n` working days (Monday to Friday) after `d` (before it for negative `n`).
/// Rules bound `n` at load time, so the walk is short.
pub fn add_working_days(d: NaiveDate, n: i64) -> Option<NaiveDate> {
    let step = if n >= 0 { 1 } else { -1 };
    let mut left = n.abs();
    let mut day = d;
    while left > 0 {
        day = day.checked_add_signed(Duration::days(step))?;
        if is_working_day(day) {
            left -= 1;
        }
    }
    Some(day)
}

/// Parses a rule's date operand text: `now`, `now + 30 days`, `now - 1 year`,
/// `now + 10 working days`, or a literal RFC 3339 date / date-time.
pub fn parse_operand_text(s: &str) -> Result<(Option<DateValue>, Offset), String> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("now") {
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok((None, Offset::None));
        }
        let (sign, rest) = match rest.chars().next() {
            Some('+') => (1i64, rest[1..].trim()),
            Some('-') => (-1i64, rest[1..].trim()),
            _ => return Err(format!("`{s}`: expected `now + N days` or `now - N days`")),
        };
        let (num, unit) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("`{s}`: expected a number and a unit after the sign"))?;
        let n: i64 = num
            .parse()
            .map_err(|_| format!("`{s}`: `{num}` is not a whole number"))?;
        return Ok((
            None,
            offset_from_unit(unit.trim(), sign * n).map_err(|e| format!("`{s}`: {e}"))?,
        ));
    }
    parse(t).map(|v| (Some(v), Offset::None)).ok_or_else(|| {
        format!("`{s}` is neither `now [± N unit]` nor an RFC 3339 date or date-time")
    })
}

/// Builds an offset from a unit name and a signed amount, bounding it to something sensible.
pub fn offset_from_unit(unit: &str, n: i64) -> Result<Offset, String> {
    let bounded = |limit: i64| {
        if n.abs() > limit {
            Err(format!("{n} {unit} is out of range (at most {limit})"))
        } else {
            Ok(n)
        }
    };
    Ok(match unit {
        "day" | "days" => Offset::Days(bounded(36_600)?),
        "working day" | "working days" | "working_day" | "working_days" => {
            Offset::WorkingDays(bounded(3_650)?)
        }
        "month" | "months" => Offset::Months(bounded(1_200)? as i32),
        "year" | "years" => Offset::Years(bounded(100)? as i32),
        other => {
            return Err(format!(
                "unknown unit `{other}` (use days, working days, months or years)"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }
    fn zone() -> FixedOffset {
        FixedOffset::east_opt(8 * 3600).unwrap()
    }

    #[test]
    fn working_days_skip_weekends() {
        // 2026-03-06 is a Friday: 1 working day later is Monday 9 March.
        assert_eq!(add_working_days(d("2026-03-06"), 1), Some(d("2026-03-09")));
        // 10 working days from Monday 2 March is Monday 16 March.
        assert_eq!(add_working_days(d("2026-03-02"), 10), Some(d("2026-03-16")));
        assert_eq!(
            add_working_days(d("2026-03-16"), -10),
            Some(d("2026-03-02"))
        );
    }

    #[test]
    fn date_against_instant_compares_local_calendar_dates() {
        // 2026-03-01T17:00Z is 01:00 on 2 March in +08:00.
        let now = parse("2026-03-01T17:00:00Z").unwrap();
        let permit_end = parse("2026-03-02").unwrap();
        assert_eq!(compare(permit_end, now, zone()), std::cmp::Ordering::Equal);
    }

    #[test]
    fn years_clamp_on_leap_day() {
        let v = DateValue::Date(d("2024-02-29"));
        assert_eq!(
            v.shift(Offset::Years(1), zone()),
            Some(DateValue::Date(d("2025-02-28")))
        );
    }

    #[test]
    fn operand_text_forms() {
        assert_eq!(parse_operand_text("now").unwrap(), (None, Offset::None));
        assert_eq!(
            parse_operand_text("now + 30 days").unwrap(),
            (None, Offset::Days(30))
        );
        assert_eq!(
            parse_operand_text("now - 2 years").unwrap(),
            (None, Offset::Years(-2))
        );
        assert_eq!(
            parse_operand_text("now + 10 working days").unwrap(),
            (None, Offset::WorkingDays(10))
        );
        assert!(parse_operand_text("2024-05-01").unwrap().0.is_some());
        assert!(parse_operand_text("tomorrow").is_err());
        assert!(parse_operand_text("now + 3 fortnights").is_err());
    }

    #[test]
    fn rejects_non_dates() {
        assert!(parse("2026-13-01").is_none());
        assert!(parse("yesterday").is_none());
        assert!(parse("2026-03-01T25:00:00Z").is_none());
    }

    mod properties {
        use super::*;
        use chrono::{NaiveDateTime, TimeZone};
        use proptest::prelude::*;

        /// Instants between 2020 and 2040 (leap years 2020, 2024, 2028, 2032, 2036, 2040), at
        /// any minute, written in one of several offsets.
        fn instant() -> impl Strategy<Value = DateTime<FixedOffset>> {
            (0i64..(20 * 366 * 24 * 60), -12i32..=14).prop_map(|(minutes, hours)| {
                let base = NaiveDate::from_ymd_opt(2020, 1, 1)
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .unwrap_or(NaiveDateTime::MIN);
                let utc = base + Duration::minutes(minutes);
                let tz = FixedOffset::east_opt(hours * 3600).unwrap_or(zone());
                tz.from_utc_datetime(&utc)
            })
        }

        proptest! {
            /// A stay of n nights (same local clock time n days later, whatever offset each
            /// side is written in) is never "longer than n days" and always longer than n - 1,
            /// across month ends, year ends and 29 February.
            #[test]
            fn stay_length_counts_local_nights(entry in instant(), n in 1i64..400, exit_offset in -12i32..=14) {
                let local_entry = entry.with_timezone(&zone());
                let local_exit = local_entry + Duration::days(n);
                let exit_tz = FixedOffset::east_opt(exit_offset * 3600).unwrap_or(zone());
                let exit = DateValue::Instant(local_exit.with_timezone(&exit_tz));
                let entry = DateValue::Instant(entry);
                let limit = |days: i64| entry.shift(Offset::Days(days), zone()).unwrap();
                let date = |v: DateValue| v.local_date(zone());
                prop_assert!(date(exit) <= date(limit(n)));
                prop_assert!(date(exit) > date(limit(n - 1)));
            }

            /// Shifting by days and back is the identity, for dates and instants.
            #[test]
            fn day_shifts_invert(at in instant(), n in -4000i64..4000) {
                let v = DateValue::Instant(at);
                let there = v.shift(Offset::Days(n), zone()).unwrap();
                prop_assert_eq!(there.shift(Offset::Days(-n), zone()), Some(v));
                let d = DateValue::Date(at.date_naive());
                let there = d.shift(Offset::Days(n), zone()).unwrap();
                prop_assert_eq!(there.shift(Offset::Days(-n), zone()), Some(d));
            }

            /// An instant and the plain date of its local (+08:00) calendar day compare equal,
            /// whatever offset the instant is written in.
            #[test]
            fn an_instant_is_on_its_local_date(at in instant()) {
                let local = at.with_timezone(&zone()).date_naive();
                prop_assert_eq!(
                    compare(DateValue::Instant(at), DateValue::Date(local), zone()),
                    std::cmp::Ordering::Equal
                );
                let next = local.succ_opt().unwrap();
                prop_assert_eq!(
                    compare(DateValue::Instant(at), DateValue::Date(next), zone()),
                    std::cmp::Ordering::Less
                );
            }

            /// Adding years never lands on a date that does not exist, and moves at most one
            /// day off the same month and day (29 February becomes 28 February).
            #[test]
            fn years_land_on_real_dates(at in instant(), y in 1i32..10) {
                let d = at.date_naive();
                let DateValue::Date(shifted) = DateValue::Date(d).shift(Offset::Years(y), zone()).unwrap() else {
                    panic!("a date stays a date");
                };
                prop_assert_eq!(shifted.year(), d.year() + y);
                prop_assert_eq!(shifted.month(), d.month());
                prop_assert!(shifted.day() == d.day() || (d.month() == 2 && d.day() == 29 && shifted.day() == 28));
            }
        }
    }
}
