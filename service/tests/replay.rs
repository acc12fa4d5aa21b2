//! `tripline replay` over the examples kept beside every library pattern: exactly the expected
//! alerts, and the same bytes on every run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("service/ is in the repository").to_owned()
}

fn replay(patterns: &Path, input: &Path, output: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(["replay", "--config", "tripline.toml", "--patterns"])
        .arg(patterns)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .current_dir(root())
        .output()
        .expect("tripline runs")
}

/// The parts of an alert the examples pin down.
fn project(a: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for k in ["pattern", "key", "match", "fields", "message"] {
        m.insert(k.to_owned(), a[k].clone());
    }
    Value::Object(m)
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[test]
fn every_library_pattern_replays_its_examples_exactly_and_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut patterns: Vec<PathBuf> = std::fs::read_dir(root().join("patterns"))
        .expect("patterns/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tl"))
        .collect();
    patterns.sort();
    assert!(patterns.len() >= 12);
    let mut failures = Vec::new();
    for p in &patterns {
        let name = p.file_stem().expect("name").to_string_lossy().into_owned();
        let input = root().join(format!("patterns/examples/{name}.events.jsonl"));
        let expected =
            std::fs::read_to_string(root().join(format!("patterns/examples/{name}.alerts.jsonl"))).expect("alerts");
        let (out1, out2) = (dir.path().join(format!("{name}.1")), dir.path().join(format!("{name}.2")));
        for out in [&out1, &out2] {
            let o = replay(p, &input, out);
            assert_eq!(o.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let (a, b) = (std::fs::read(&out1).expect("output"), std::fs::read(&out2).expect("output"));
        if a != b {
            failures.push(format!("{name}: two replays differ"));
        }
        let got: Vec<Value> = lines(&String::from_utf8_lossy(&a)).iter().map(project).collect();
        let want = lines(&expected);
        if got != want {
            failures.push(format!(
                "{name}: expected\n  {}\ngot\n  {}",
                want.iter().map(Value::to_string).collect::<Vec<_>>().join("\n  "),
                got.iter().map(Value::to_string).collect::<Vec<_>>().join("\n  ")
            ));
        }
        for alert in lines(&String::from_utf8_lossy(&a)) {
            assert_eq!(alert["alert_id"].as_str().map(str::len), Some(32), "{alert}");
            assert_eq!(alert["hash"].as_str().map(str::len), Some(16), "{alert}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn bad_lines_are_rejected_with_their_line_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let good = std::fs::read_to_string(root().join("patterns/examples/card_testing.events.jsonl")).expect("events");
    let mut text: Vec<String> = good.lines().map(str::to_owned).collect();
    text.insert(1, "{not json".to_owned());
    text.insert(2, r#"{"stream": "nope", "value": {}}"#.to_owned());
    text.insert(3, r#"{"stream": "card_auths", "type": "CardAuthorisation", "value": {"amount": "12"}}"#.to_owned());
    std::fs::write(&input, text.join("\n")).expect("write");
    let out = dir.path().join("out.jsonl");
    let o = replay(&root().join("patterns/card_testing.tl"), &input, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("in.jsonl:2: rejected: not JSON"), "{err}");
    assert!(err.contains("in.jsonl:3: rejected: unknown stream `nope`"), "{err}");
    assert!(err.contains("in.jsonl:4: rejected: field `auth_id` is missing"), "{err}");
    assert!(err.contains("3 rejected"), "{err}");
    // The good events still produce the alert.
    assert_eq!(std::fs::read_to_string(&out).expect("output").lines().count(), 1);
}

/// JSON to a schema-less Avro value; `resolve` then fits it to the record schema.
fn json_to_avro(j: &Value) -> apache_avro::types::Value {
    use apache_avro::types::Value as Avro;
    match j {
        Value::Null => Avro::Null,
        Value::Bool(b) => Avro::Boolean(*b),
        Value::Number(n) => n.as_i64().map_or_else(|| Avro::Double(n.as_f64().unwrap_or(f64::NAN)), Avro::Long),
        Value::String(s) => Avro::String(s.clone()),
        Value::Array(a) => Avro::Array(a.iter().map(json_to_avro).collect()),
        Value::Object(o) => Avro::Map(o.iter().map(|(k, v)| (k.clone(), json_to_avro(v))).collect()),
    }
}

/// Writes the JSON-lines events of `stream` as an Avro object container file.
fn to_avro(jsonl: &Path, schema_file: &Path, out: &Path) {
    use apache_avro::types::Value as Avro;
    let schema =
        apache_avro::Schema::parse_str(&std::fs::read_to_string(schema_file).expect("schema")).expect("avro schema");
    let variants: Vec<apache_avro::Schema> = match &schema {
        apache_avro::Schema::Union(u) => u.variants().to_vec(),
        s => vec![s.clone()],
    };
    let mut writer = apache_avro::Writer::new(&schema, Vec::new()).expect("writer");
    for line in std::fs::read_to_string(jsonl).expect("events").lines() {
        let j: Value = serde_json::from_str(line).expect("json");
        let ty = j["type"].as_str().expect("type");
        let (idx, variant) = variants
            .iter()
            .enumerate()
            .find(|(_, v)| matches!(v, apache_avro::Schema::Record(r) if r.name.name() == ty))
            .expect("record type");
        let record = json_to_avro(&j["value"]).resolve_schemata(variant, vec![&schema]).expect("resolves");
        let value = if variants.len() > 1 { Avro::Union(idx as u32, Box::new(record)) } else { record };
        writer.append_value(value).expect("append");
    }
    std::fs::write(out, writer.into_inner().expect("avro bytes")).expect("write");
}

#[test]
fn avro_exports_replay_exactly_like_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (pattern, schema) in [("card_testing", "card_auths"), ("ato_after_password_reset", "account_events")] {
        let jsonl = root().join(format!("patterns/examples/{pattern}.events.jsonl"));
        let avro = dir.path().join(format!("{pattern}.avro"));
        to_avro(&jsonl, &root().join(format!("testdata/schemas/{schema}.avsc")), &avro);
        let p = root().join(format!("patterns/{pattern}.tl"));
        let (a, b) = (dir.path().join(format!("{pattern}.json.out")), dir.path().join(format!("{pattern}.avro.out")));
        let o = replay(&p, &jsonl, &a);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let o = replay(&p, &avro, &b);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let (a, b) = (std::fs::read_to_string(a).expect("out"), std::fs::read_to_string(b).expect("out"));
        assert!(!a.is_empty());
        assert_eq!(a, b, "{pattern}: Avro and JSON-lines replays differ");
    }
}

#[test]
fn the_partial_match_budget_comes_from_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = std::fs::read_to_string(root().join("tripline.toml")).expect("config");
    let cfg = cfg.replace("max_partial_matches_per_key = 10000", "max_partial_matches_per_key = 1");
    let cfg = cfg.replace("\"testdata/", &format!("\"{}/testdata/", root().display()));
    let cfg = cfg.replace("\"patterns/tables/", &format!("\"{}/patterns/tables/", root().display()));
    let cfg_path = dir.path().join("tripline.toml");
    std::fs::write(&cfg_path, cfg).expect("write");
    let out = dir.path().join("out.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(["replay", "--config"])
        .arg(&cfg_path)
        .arg("--patterns")
        .arg(root().join("patterns/structuring.tl"))
        .arg("--input")
        .arg(root().join("patterns/examples/structuring.events.jsonl"))
        .arg("--output")
        .arg(&out)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let dropped: u64 = err
        .split(" partial match(es) dropped")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "a budget of 1 must drop partial matches: {err}");
}
