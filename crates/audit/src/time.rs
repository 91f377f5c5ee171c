//! RFC 3339 timestamps without a date-time dependency: the log needs one format, UTC, to the millisecond.

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `t` as RFC 3339 in UTC with milliseconds, such as `2024-02-29T13:05:09.042Z`. Sub-millisecond
/// parts are truncated (towards the past, also before 1970), so records never look later than they were.
pub fn format_time(t: SystemTime) -> String {
    let nanos: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let millis = nanos.div_euclid(1_000_000);
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Reads an RFC 3339 UTC timestamp as [`format_time`] writes it (`2024-02-29T13:05:09.042Z`; fewer or no
/// fractional digits and a `+00:00` offset are accepted too) into milliseconds since 1970. `None` for
/// anything else, or an offset other than UTC.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let ms: String = frac[..n].chars().chain("000".chars()).take(3).collect();
        millis = ms.parse::<i64>().ok()?;
        rest = &frac[n..];
    }
    if !matches!(rest, "Z" | "z" | "+00:00" | "-00:00") {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date: the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let march_month = (month + 9) % 12;
    let day_of_year = (153 * march_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`:
/// eras of 400 years, each exactly 146,097 days, with years starting in March so leap days come last).
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: i64, nanos: u32) -> SystemTime {
        let whole = Duration::from_secs(secs.unsigned_abs());
        let t = if secs >= 0 {
            UNIX_EPOCH + whole
        } else {
            UNIX_EPOCH - whole
        };
        t + Duration::from_nanos(u64::from(nanos))
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        // Expected values from `date -u -d @SECONDS`.
        assert_eq!(format_time(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            format_time(at(1_709_164_800, 7_000_000)),
            "2024-02-29T00:00:00.007Z"
        );
        assert_eq!(
            format_time(at(1_700_000_000, 123_999_999)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_time(at(253_402_300_799, 999_000_000)),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn times_before_1970_round_down() {
        assert_eq!(format_time(at(-1, 0)), "1969-12-31T23:59:59.000Z");
        // 1.5 ms before the epoch is in the millisecond that starts 2 ms before it.
        assert_eq!(
            format_time(UNIX_EPOCH - Duration::from_micros(1500)),
            "1969-12-31T23:59:59.998Z"
        );
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_one_before() {
        // Walk 1900-03-01 .. 2300-03-01 (includes 1900 and 2100, not leap years, and 2000, one).
        let days_in = |y: i128, m: i128| match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let start = -25_508; // 1900-03-01
        let mut expected = (1900, 3, 1);
        for days in start..start + 146_097 {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (y, m, d) = expected;
            expected = if d < days_in(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    #[test]
    fn parse_time_reads_what_format_time_writes() {
        for (secs, nanos) in [
            (0, 0),
            (1_709_211_909, 42_000_000),
            (-1, 999_000_000),
            (4_102_444_800, 0),
        ] {
            let t = at(secs, nanos);
            let text = format_time(t);
            let ms = secs * 1000 + i64::from(nanos / 1_000_000);
            assert_eq!(parse_time(&text), Some(ms), "{text}");
        }
        assert_eq!(parse_time("2024-02-29T13:05:09Z"), Some(1_709_211_909_000));
        assert_eq!(parse_time("2024-02-29T13:05:09.5+00:00"), Some(1_709_211_909_500));
        for bad in [
            "2024-02-29T13:05:09+01:00",
            "2024-02-29",
            "2024-13-01T00:00:00Z",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
