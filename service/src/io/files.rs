//! Exported records from files: JSON lines (`{"stream","type","value"[,"partition","offset"]}`,
//! as `tripline export` writes them) or an Avro object container file of one stream.

use std::io::BufRead;
use std::path::Path;

use serde_json::Value as Json;

use crate::core::coords::seq_of;
use crate::error::Error;

/// Why a record was not replayed: the input cannot be read on, or this record is bad.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    Fatal(String),
    Rejected(String),
}
use Problem::{Fatal, Rejected};

pub type Records = Box<dyn Iterator<Item = (u64, Result<(String, i32, engine::Event), Problem>)>>;

const AVRO_MAGIC: &[u8; 4] = b"Obj\x01";

/// The records of an export: JSON lines, or an Avro object container file (detected by its
/// magic bytes). Each record's `seq` is its coordinate: a JSON line with `"partition"` and
/// `"offset"` (as `tripline export` writes) is that record of that partition; otherwise the
/// line or record number, from 1, in partition 0.
pub fn read_records(path: &Path, catalog: &dsl::Catalog, stream: Option<&str>) -> Result<Records, Error> {
    let open = || std::fs::File::open(path).map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())));
    let mut magic = [0u8; 4];
    let is_avro = std::io::Read::read_exact(&mut open()?, &mut magic).is_ok() && &magic == AVRO_MAGIC;
    if !is_avro {
        let catalog = catalog.clone();
        let lines = std::io::BufReader::new(open()?).lines().enumerate();
        return Ok(Box::new(lines.filter_map(move |(i, line)| {
            let n = i as u64 + 1;
            match line {
                Err(e) => Some((n, Err(Fatal(format!("line {n}: {e}"))))),
                Ok(l) if l.trim().is_empty() => None,
                Ok(l) => Some((n, parse_line(&l, &catalog, n))),
            }
        })));
    }
    let reader = apache_avro::Reader::new(std::io::BufReader::new(open()?))
        .map_err(|e| Error::usage(format!("{}: not a readable Avro file: {e}", path.display())))?;
    // The record type of each union branch (or the one record type) of the writer schema.
    let branch_names: Vec<String> = match reader.writer_schema() {
        apache_avro::Schema::Record(r) => vec![r.name.fullname(None)],
        apache_avro::Schema::Union(u) => u
            .variants()
            .iter()
            .map(|v| match v {
                apache_avro::Schema::Record(r) => r.name.fullname(None),
                _ => String::new(),
            })
            .collect(),
        other => {
            return Err(Error::usage(format!(
                "{}: the Avro schema is {other:?}, not a record or a union of records",
                path.display()
            )))
        }
    };
    let candidates: Vec<&String> = catalog
        .streams
        .iter()
        .filter(|(name, s)| {
            stream.is_none_or(|want| want == name.as_str())
                && branch_names.iter().filter(|b| !b.is_empty()).all(|b| s.record_type(b).is_some())
        })
        .map(|(name, _)| name)
        .collect();
    let stream_name = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(Error::usage(format!(
                "{}: no configured stream has the record type(s) {}{}",
                path.display(),
                branch_names.join(", "),
                stream.map(|s| format!(" (asked for stream `{s}`)")).unwrap_or_default()
            )))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            return Err(Error::usage(format!(
                "{}: several streams fit ({}): say which with --stream",
                path.display(),
                names.join(", ")
            )));
        }
    };
    let schema = catalog.streams[&stream_name].clone();
    Ok(Box::new(reader.enumerate().map(move |(i, record)| {
        let n = i as u64 + 1;
        let value = match record {
            Ok(v) => v,
            Err(e) => return (n, Err(Fatal(format!("record {n}: {e}")))),
        };
        let type_name = match &value {
            apache_avro::types::Value::Union(idx, _) => branch_names.get(*idx as usize).cloned(),
            _ => branch_names.first().cloned(),
        };
        let result = serde_json::Value::try_from(value)
            .map_err(|e| Rejected(format!("record {n}: {e}")))
            .and_then(|json| {
                dsl::json_event(&schema, type_name.as_deref(), &json, n).map_err(|e| Rejected(e.to_string()))
            })
            .map(|event| (stream_name.clone(), 0, event));
        (n, result)
    })))
}

fn parse_line(line: &str, catalog: &dsl::Catalog, n: u64) -> Result<(String, i32, engine::Event), Problem> {
    let bad = |why: &str| Rejected(why.to_owned());
    let j: Json = serde_json::from_str(line).map_err(|e| Rejected(format!("not JSON: {e}")))?;
    let stream = j["stream"].as_str().ok_or_else(|| bad("no \"stream\""))?;
    let schema = catalog.streams.get(stream).ok_or_else(|| Rejected(format!("unknown stream `{stream}`")))?;
    let (partition, seq) = match (j.get("partition"), j.get("offset")) {
        (None, None) => (0, n),
        (Some(p), Some(o)) => {
            let p = p
                .as_i64()
                .filter(|p| (0..=0xffff).contains(p))
                .ok_or_else(|| bad("\"partition\" is not a partition number"))?;
            let o =
                o.as_i64().filter(|o| (0..1 << 48).contains(o)).ok_or_else(|| bad("\"offset\" is not an offset"))?;
            (p as i32, seq_of(p as i32, o))
        }
        _ => return Err(bad("give both \"partition\" and \"offset\", or neither")),
    };
    let event = dsl::json_event(schema, j["type"].as_str(), &j["value"], seq).map_err(|e| Rejected(e.to_string()))?;
    Ok((stream.to_owned(), partition, event))
}
