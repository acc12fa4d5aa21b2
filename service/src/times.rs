//! Times on the command line and in reports: RFC 3339 (UTC or with an offset) or epoch
//! milliseconds in, RFC 3339 UTC with milliseconds out.

use std::time::{Duration, UNIX_EPOCH};

/// Parses `2026-03-01T00:00:00Z`, `2026-03-01T01:00:00+01:00`, `2026-03-01 00:00:00` (UTC),
/// `2026-03-01` (midnight UTC) or epoch milliseconds (`1772323200000`).
pub fn parse(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().map_err(|_| format!("`{text}` is too large for epoch milliseconds"));
    }
    let bad = || {
        format!(
            "`{text}` is not a time: give RFC 3339 (2026-03-01T00:00:00Z, 2026-03-01T01:00:00+01:00, \
             2026-03-01) or epoch milliseconds"
        )
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

/// `2026-03-01T00:00:00.000Z`; times humantime cannot show (before 1970, after 9999) as epoch ms.
pub fn format(ms: i64) -> String {
    if !(0..253_402_300_800_000).contains(&ms) {
        return format!("{ms} ms");
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
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
        for bad in ["", "yesterday", "2026-13-01", "2026-03-01T00:00:00+25:00", "99999999999999999999"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
