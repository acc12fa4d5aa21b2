//! Times on the command line, in reports and explanations: RFC 3339 (UTC or with an offset) or
//! epoch milliseconds in, RFC 3339 UTC with milliseconds out.

use std::time::UNIX_EPOCH;

use crate::error::Error;

/// Parses `2026-03-01T00:00:00Z`, `2026-03-01T01:00:00+01:00`, `2026-03-01 00:00:00` (UTC),
/// `2026-03-01` (midnight UTC) or epoch milliseconds (`1772323200000`).
pub fn parse(text: &str) -> Result<i64, Error> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().map_err(|_| Error::usage(format!("`{text}` is too large for epoch milliseconds")));
    }
    let bad = || {
        Error::usage(format!(
            "`{text}` is not a time: give RFC 3339 (2026-03-01T00:00:00Z, 2026-03-01T01:00:00+01:00, \
             2026-03-01) or epoch milliseconds"
        ))
    };
    // An explicit offset (+HH:MM / -HH:MM) after the time of day: humantime reads UTC only.
    let (body, offset_ms) = match t.len().checked_sub(6).map(|i| t.split_at(i)) {
        Some((body, off)) if body.len() > 10 && (off.starts_with('+') || off.starts_with('-')) => {
            let (h, m) = off[1..].split_once(':').ok_or_else(bad)?;
            let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let sign = if off.starts_with('-') { -1 } else { 1 };
            (body.to_owned(), sign * (h * 60 + m) * 60_000)
        }
        _ if t.len() == 10 => (format!("{t}T00:00:00Z"), 0),
        _ => (t.to_owned(), 0),
    };
    let at = humantime::parse_rfc3339_weak(&body).map_err(|_| bad())?;
    let ms = match at.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    Ok(ms - offset_ms)
}

/// RFC 3339, UTC, milliseconds: `2025-03-03T09:00:00.000Z`.
pub fn format(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return format!("{ms} ms since 1970-01-01");
    }
    let (h, min, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// (year, month, day) of a day number counted from 1970-01-01 (proleptic Gregorian calendar;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_accepted_form() {
        let march = 1_772_323_200_000;
        for t in ["2026-03-01T00:00:00Z", "2026-03-01T01:00:00+01:00", "2026-02-28T23:30:00-00:30", "2026-03-01"] {
            assert_eq!(parse(t), Ok(march), "{t}");
        }
        assert_eq!(parse("2026-03-01 00:00:00"), Ok(march));
        assert_eq!(parse("2026-03-01T00:00:00.250Z"), Ok(march + 250));
        assert_eq!(parse("1772323200000"), Ok(march));
        assert_eq!(format(march + 250), "2026-03-01T00:00:00.250Z");
        assert_eq!(format(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format(951_825_600_123), "2000-02-29T12:00:00.123Z");
        assert_eq!(format(-1), "1969-12-31T23:59:59.999Z");
        for t in [0, march, 951_825_600_123, 253_402_300_799_999] {
            assert_eq!(parse(&format(t)), Ok(t), "round trip {t}");
        }
        for bad in ["", "yesterday", "2026-13-01", "2026-03-01T00:00:00+25:00", "99999999999999999999"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
