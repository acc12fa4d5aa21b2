//! The comparison of two pattern sets' alerts over the same records (`replay --compare`):
//! alerts are matched by what they matched (pattern, key, partition, offsets per variable),
//! since their ids include the patterns' content hashes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value as Json;

/// One pattern's line of a comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiffRow {
    pub pattern: String,
    pub only_a: u64,
    pub only_b: u64,
    /// Raised by both (the same match).
    pub both: u64,
    /// Of `both`: with other fields, message, severity or mode.
    pub both_changed: u64,
}

pub(super) fn table(rows: &[DiffRow]) -> String {
    let mut s =
        String::from("| pattern | only in A | only in B | in both | in both, changed |\n|---|---:|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(s, "| {} | {} | {} | {} | {} |", r.pattern, r.only_a, r.only_b, r.both, r.both_changed);
    }
    s
}

/// The comparison of the alerts of set A and set B over the same records.
#[derive(Debug, Default)]
pub struct Diff {
    /// Per alert (sorted by its match), the diff line.
    lines: Vec<Json>,
    rows: BTreeMap<String, DiffRow>,
}

/// An alert's match, as the comparison identifies it: pattern name, key, partition and the
/// matched offsets per variable (not the id: that includes the pattern's content hash).
fn identity(a: &Json) -> String {
    serde_json::json!({"pattern": a["pattern"], "key": a["key"], "partition": a["partition"], "match": a["match"]})
        .to_string()
}

/// What an alert says about its match.
fn content(a: &Json) -> Json {
    serde_json::json!({"severity": a["severity"], "mode": a["mode"], "fields": a["fields"], "message": a["message"]})
}

/// Compares the alert lines of set A with those of set B.
pub fn diff(a: &[String], b: &[String]) -> Diff {
    let parse = |lines: &[String]| {
        let mut m: BTreeMap<String, Vec<Json>> = BTreeMap::new();
        for l in lines {
            let j: Json = serde_json::from_str(l).unwrap_or(Json::Null);
            m.entry(identity(&j)).or_default().push(j);
        }
        m
    };
    let (mut a, mut b) = (parse(a), parse(b));
    let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut d = Diff::default();
    for k in keys {
        let (xs, ys) = (a.remove(&k).unwrap_or_default(), b.remove(&k).unwrap_or_default());
        let id: Json = serde_json::from_str(&k).unwrap_or(Json::Null);
        let pattern = id["pattern"].as_str().unwrap_or_default().to_owned();
        let row = d.rows.entry(pattern.clone()).or_insert_with(|| DiffRow { pattern, ..DiffRow::default() });
        for i in 0..xs.len().max(ys.len()) {
            let mut line = id.clone();
            let (x, y) = (xs.get(i), ys.get(i));
            let side = match (x, y) {
                (Some(x), Some(y)) => {
                    row.both += 1;
                    let changed = content(x) != content(y);
                    row.both_changed += u64::from(changed);
                    line["changed"] = Json::Bool(changed);
                    "both"
                }
                (Some(_), None) => {
                    row.only_a += 1;
                    "a"
                }
                _ => {
                    row.only_b += 1;
                    "b"
                }
            };
            line["in"] = Json::String(side.to_owned());
            line["a"] = x.map_or(Json::Null, |x| x["alert_id"].clone());
            line["b"] = y.map_or(Json::Null, |y| y["alert_id"].clone());
            d.lines.push(line);
        }
    }
    d
}

impl Diff {
    /// The diff as JSON lines: `{"pattern","key","partition","match","in":"a"|"b"|"both",
    /// "changed"(both only),"a":id,"b":id}`, sorted by match.
    pub fn lines(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            s.push_str(&l.to_string());
            s.push('\n');
        }
        s
    }

    pub fn rows(&self) -> Vec<DiffRow> {
        self.rows.values().cloned().collect()
    }

    /// The per-pattern table (Markdown).
    pub fn table(&self) -> String {
        table(&self.rows())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str, pattern: &str, key: &str, offsets: &[u64], message: &str) -> String {
        serde_json::json!({"alert_id": id, "pattern": pattern, "version": 1, "hash": "h", "severity": "high",
            "mode": "live", "key": key, "ts": 1, "partition": 0, "match": {"a": offsets}, "fields": {},
            "message": message})
        .to_string()
    }

    #[test]
    fn a_comparison_matches_alerts_by_match_not_by_id() {
        let a = vec![
            alert("a1", "p", "K1", &[1, 2], "m"),
            alert("a2", "p", "K2", &[5], "m"),
            alert("a3", "q", "K1", &[7], "m"),
        ];
        let b = vec![
            alert("b1", "p", "K1", &[1, 2], "m"),
            alert("b3", "q", "K1", &[7], "other text"),
            alert("b4", "p", "K3", &[9], "m"),
        ];
        let d = diff(&a, &b);
        assert_eq!(
            d.rows(),
            vec![
                DiffRow { pattern: "p".into(), only_a: 1, only_b: 1, both: 1, both_changed: 0 },
                DiffRow { pattern: "q".into(), only_a: 0, only_b: 0, both: 1, both_changed: 1 },
            ]
        );
        let lines: Vec<Json> = d.lines().lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        let of = |side: &str| -> Vec<(String, String)> {
            lines
                .iter()
                .filter(|l| l["in"] == side)
                .map(|l| (l["a"].as_str().unwrap_or("-").to_owned(), l["b"].as_str().unwrap_or("-").to_owned()))
                .collect()
        };
        assert_eq!(of("a"), vec![("a2".to_owned(), "-".to_owned())]);
        assert_eq!(of("b"), vec![("-".to_owned(), "b4".to_owned())]);
        assert_eq!(of("both"), vec![("a1".to_owned(), "b1".to_owned()), ("a3".to_owned(), "b3".to_owned())]);
        assert!(d.table().contains("| q | 0 | 0 | 1 | 1 |"));
    }
}
