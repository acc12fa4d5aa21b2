//! A range of Kafka topics as given on the command line (`--from` / `--to`: record times or
//! explicit partition offsets), checked before connecting, and the per-partition offset ranges
//! it resolves to ([`PartRange`]; resolving needs the cluster: `io::reader::resolve`).

use std::collections::BTreeMap;

use super::times;
use crate::error::Error;

/// One end of a range, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    /// A record timestamp (ms since the epoch).
    Time(i64),
    /// Offsets by partition (`0:1200,1:1180`); partitions not listed are not read.
    Offsets(BTreeMap<i32, i64>),
}

impl Bound {
    /// Parses `--from` / `--to`: RFC 3339, epoch ms, or `PARTITION:OFFSET[,PARTITION:OFFSET...]`.
    pub fn parse(flag: &str, text: &str) -> Result<Bound, Error> {
        if text.contains(':') && text.split(',').all(|part| part.trim().split_once(':').is_some_and(is_offset_pair)) {
            let mut map = BTreeMap::new();
            for part in text.split(',') {
                let (p, o) = part.trim().split_once(':').unwrap_or_default();
                let (p, o): (i32, i64) = (
                    p.trim().parse().map_err(|_| bad_offsets(flag, text))?,
                    o.trim().parse().map_err(|_| bad_offsets(flag, text))?,
                );
                if map.insert(p, o).is_some() {
                    return Err(Error::usage(format!("{flag} {text}: partition {p} is given twice")));
                }
            }
            return Ok(Bound::Offsets(map));
        }
        times::parse(text)
            .map(Bound::Time)
            .map_err(|e| Error::usage(format!("{flag}: {e}, or offsets as PARTITION:OFFSET,...")))
    }

    pub fn describe(&self) -> String {
        match self {
            Bound::Time(t) => times::format(*t),
            Bound::Offsets(m) => m.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(","),
        }
    }
}

fn is_offset_pair((p, o): (&str, &str)) -> bool {
    let digits = |s: &str| !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit());
    digits(p) && digits(o)
}

fn bad_offsets(flag: &str, text: &str) -> Error {
    Error::usage(format!("{flag} {text}: offsets are PARTITION:OFFSET pairs separated by commas"))
}

/// Parses `--from` and `--to` and checks them against each other, before connecting; `file`:
/// the input is a file, where a range of topics makes no sense.
pub fn bounds(
    from: Option<&str>,
    to: Option<&str>,
    topic: Option<&str>,
    file: bool,
) -> Result<(Option<Bound>, Option<Bound>), Error> {
    let from = from.map(|t| Bound::parse("--from", t)).transpose()?;
    let to = to.map(|t| Bound::parse("--to", t)).transpose()?;
    if file && (from.is_some() || to.is_some() || topic.is_some()) {
        return Err(Error::usage(
            "--from, --to and --topic select a range of Kafka topics; with --input the whole file is read",
        ));
    }
    check_order(from.as_ref(), to.as_ref())?;
    Ok((from, to))
}

/// Checks what can be checked before connecting: an end before the start.
pub fn check_order(from: Option<&Bound>, to: Option<&Bound>) -> Result<(), Error> {
    match (from, to) {
        (Some(Bound::Time(a)), Some(Bound::Time(b))) if b <= a => Err(Error::usage(format!(
            "--to {} is not after --from {}: the range is empty",
            times::format(*b),
            times::format(*a)
        ))),
        (Some(Bound::Offsets(a)), Some(Bound::Offsets(b))) => {
            for (p, start) in a {
                match b.get(p) {
                    Some(end) if end <= start => {
                        return Err(Error::usage(format!(
                            "--to {p}:{end} is not after --from {p}:{start}: partition {p}'s range is empty"
                        )))
                    }
                    Some(_) => {}
                    None => return Err(Error::usage(format!("--from names partition {p}, --to does not"))),
                }
            }
            if let Some(p) = b.keys().find(|p| !a.contains_key(p)) {
                return Err(Error::usage(format!("--to names partition {p}, --from does not")));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The records of one partition to read: offsets `start..end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRange {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    /// Exclusive.
    pub end: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_as_times_or_offsets() {
        assert_eq!(Bound::parse("--from", "1772323200000"), Ok(Bound::Time(1_772_323_200_000)));
        assert_eq!(Bound::parse("--from", "2026-03-01T00:00:00Z"), Ok(Bound::Time(1_772_323_200_000)));
        assert_eq!(Bound::parse("--from", "0:100, 2:7"), Ok(Bound::Offsets(BTreeMap::from([(0, 100), (2, 7)]))));
        assert!(Bound::parse("--from", "0:1,0:2")
            .expect_err("twice")
            .to_string()
            .contains("partition 0 is given twice"));
        assert!(Bound::parse("--to", "last tuesday").expect_err("bad").to_string().starts_with("--to: "));
    }

    #[test]
    fn an_end_before_the_start_is_refused_before_connecting() {
        let t = |ms| Some(Bound::Time(ms));
        assert!(check_order(t(10).as_ref(), t(20).as_ref()).is_ok());
        let e = check_order(t(20).as_ref(), t(10).as_ref()).expect_err("backwards").to_string();
        assert!(e.contains("is not after"), "{e}");
        assert!(check_order(t(20).as_ref(), t(20).as_ref()).is_err());
        let o = |pairs: &[(i32, i64)]| Some(Bound::Offsets(pairs.iter().copied().collect()));
        assert!(check_order(o(&[(0, 5)]).as_ref(), o(&[(0, 9)]).as_ref()).is_ok());
        assert!(check_order(o(&[(0, 9)]).as_ref(), o(&[(0, 5)]).as_ref())
            .expect_err("x")
            .to_string()
            .contains("partition 0"));
        assert!(check_order(o(&[(0, 1)]).as_ref(), o(&[(1, 5)]).as_ref()).is_err());
    }
}
