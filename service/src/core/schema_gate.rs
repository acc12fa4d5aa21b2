//! The schema gate: what records written with a writer schema do to the patterns of a stream.
//! The service reads every record as its stream's configured schema (Avro schema resolution);
//! a writer schema that lacks a field a pattern reads gives the reader's default there (or the
//! record is refused when there is none), and one that gives it another type is refused or read
//! differently. Either way the pattern no longer sees what it was written for. Used by
//! `tripline check --registry` (against each subject's latest version) and by the service on
//! every writer schema it meets (a metric and an alert rule).

use std::fmt;

use dsl::StreamSchema;

use super::plan::StreamPlan;

/// A field a pattern reads that a writer schema does not give as the stream's schema does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    /// The pattern (`name@version`), or `(event time)` for the stream's timestamp field.
    pub pattern: String,
    pub field: String,
    pub why: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} reads `{}`: {}", self.pattern, self.field, self.why)
    }
}

/// The fields the patterns of `plan` (and its event time) read that `writer` lacks or types
/// otherwise than the stream's schema; empty when records written with it are read as the
/// patterns expect.
pub fn breaks(plan: &StreamPlan, writer: &StreamSchema) -> Vec<Break> {
    let reader = &plan.schema;
    let mut out = Vec::new();
    // A writer schema with none of the stream's record types is another stream's: its records
    // are refused whole (`wrong-schema` dead letters), nothing a pattern reads is at stake.
    if !writer.types.iter().any(|w| reader.types.iter().any(|r| r.full_name == w.full_name)) {
        return out;
    }
    let mut check = |who: String, path: &str| {
        let Some(r) = reader.fields.iter().find(|f| f.path == path) else { return };
        let why = match writer.fields.iter().find(|f| f.path == path) {
            None => "the writer schema has no such field (records get the stream schema's default, or are refused)"
                .to_owned(),
            Some(w) if w.ty != r.ty => {
                format!("it is {} in the writer schema, {} in the stream's", w.ty.describe(), r.ty.describe())
            }
            Some(w) if w.nullable && !r.nullable => {
                "it may be null in the writer schema, never in the stream's (such records are refused)".to_owned()
            }
            Some(_) => return,
        };
        out.push(Break { pattern: who, field: path.to_owned(), why });
    };
    if let Some(ts) = reader.timestamp_field {
        check("(event time)".to_owned(), &reader.fields[ts.index()].path);
    }
    for nfa in &plan.patterns {
        for f in nfa.fields_read() {
            check(format!("{}@{}", nfa.meta.name, nfa.meta.version), &reader.fields[f.index()].path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn plan() -> std::sync::Arc<StreamPlan> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cfg = crate::core::config::Config::load(&root.join("tripline.toml")).expect("config");
        let catalog = cfg.catalog(&root.join("tripline.toml")).expect("catalog");
        let set =
            crate::core::pattern_sets::compile_files(&[root.join("patterns/rapid_movement.tl")], &catalog, &mut |d| {
                panic!("{d}")
            })
            .expect("compiles");
        StreamPlan::new("payments", &cfg.streams["payments"], catalog.streams["payments"].clone(), &set.nfas)
    }

    fn writer(edit: &dyn Fn(&mut serde_json::Value)) -> StreamSchema {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("testdata/schemas/payments.avsc")).expect("schema");
        let mut json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        edit(&mut json);
        StreamSchema::from_avro_json("payments", &json.to_string(), None).expect("a schema")
    }

    fn fields(json: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
        json["fields"].as_array_mut().expect("a record's fields")
    }

    #[test]
    fn a_writer_schema_that_drops_or_retypes_a_field_a_pattern_reads_breaks_it() {
        let plan = plan();
        assert_eq!(breaks(&plan, &writer(&|_| {})), vec![], "the stream's own schema");
        // A field no pattern reads may go.
        let no_branch = writer(&|j| fields(j).retain(|f| f["name"] != "branch_id"));
        assert_eq!(breaks(&plan, &no_branch), vec![]);
        // rapid_movement compares the counterparty and reads the amount.
        let no_counterparty = writer(&|j| fields(j).retain(|f| f["name"] != "counterparty_account_id"));
        let found = breaks(&plan, &no_counterparty);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].pattern.as_str(), found[0].field.as_str()),
            ("rapid_movement@2", "counterparty_account_id")
        );
        let text_amount = writer(&|j| {
            for f in fields(j).iter_mut().filter(|f| f["name"] == "amount") {
                f["type"] = "string".into();
            }
        });
        let found = breaks(&plan, &text_amount);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].to_string().contains("reads `amount`: it is text in the writer schema"), "{}", found[0]);
        // The event time too.
        let no_time = writer(&|j| fields(j).retain(|f| f["name"] != "event_time"));
        assert!(breaks(&plan, &no_time).iter().any(|b| b.pattern == "(event time)"));
        // Another record type altogether: another stream's schema, refused whole, not gated.
        let other = writer(&|j| j["name"] = "CardAuthorization".into());
        assert_eq!(breaks(&plan, &other), vec![]);
    }
}
