//! The FlinkCEP conformance runner: a corpus of FlinkCEP test cases (the format of
//! `shared/conformance/`, described in `testdata/conformance/README.md`) run through Tripline.
//! Each case's pattern is translated into the pattern language, compiled, fed its events (and
//! watermarks) and its output compared as the corpus README says.
//!
//! Nothing is printed: [`run_file`] (or a [`Runner`]) returns a [`CorpusReport`], each case with
//! its id and outcome; a [`CaseReport`] displays as the runner's line for it (`ok   <id>`, or
//! `FAIL <id>: <what differs>`). Files that cannot be run are a [`ConformanceError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dsl::{Catalog, SchemaError, SourceFile, StreamSchema};
use engine::expr::ConditionCache;
use engine::runtime::fast::{Chain, FastRun};
use engine::runtime::{Config, FastTier, Key, Match, MultiOperator, MultiOutput, Operator, Output, RunState, Timeout};
use engine::{Event, FieldId, Nfa, TypeId, Value};
use serde_json::Value as Json;

const CEP_EVENTS: &str = include_str!("../../../testdata/schemas/cep_events.avsc");

/// Runs every case of the corpus in `path` (a JSON array of cases).
pub fn run_file(path: &Path) -> Result<CorpusReport, ConformanceError> {
    Runner::new()?.run_file(path)
}

/// A corpus (or a case) that cannot be run at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    #[error("the conformance event schema is invalid: {0}")]
    Schema(#[source] SchemaError),
    #[error("the conformance event schema is invalid: it has no field `{0}`")]
    SchemaField(&'static str),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: not JSON: {source}", path.display())]
    NotJson { path: PathBuf, source: serde_json::Error },
    #[error("{}: expected a JSON array of cases", path.display())]
    NotAnArray { path: PathBuf },
}

/// What running a corpus gave, case by case in corpus order.
#[derive(Debug, Default)]
pub struct CorpusReport {
    pub cases: Vec<CaseReport>,
}

impl CorpusReport {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.outcome.is_ok()).count()
    }

    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }

    /// The cases whose pattern the fast tier runs (each also ran with the tier off).
    pub fn fast_tier(&self) -> usize {
        self.cases.iter().filter(|c| c.fast_tier).count()
    }

    /// The failing cases: id and what went wrong.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &CaseFailure)> {
        self.cases.iter().filter_map(|c| c.outcome.as_ref().err().map(|f| (c.id.as_str(), f)))
    }
}

/// One case: its id (`?` when it has none) and whether it passed.
#[derive(Debug)]
pub struct CaseReport {
    pub id: String,
    pub outcome: Result<(), CaseFailure>,
    /// Its pattern is one the fast tier runs ([`engine::runtime::fast`]): the case ran with the
    /// tier on, off and falling back after every change, with the same outputs and states.
    pub fast_tier: bool,
}

/// The runner's line for the case: `ok   <id>` or `FAIL <id>: <failure>`.
impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(()) => write!(f, "ok   {}", self.id),
            Err(e) => write!(f, "FAIL {}: {e}", self.id),
        }
    }
}

/// Why a case failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaseFailure {
    #[error("cannot translate: {0}")]
    Translate(#[from] TranslateError),
    /// The translated pattern (`text`) does not compile; `diagnostics` are rendered.
    #[error("does not compile:\n{text}\n{}", diagnostics.join("\n"))]
    Compile { text: String, diagnostics: Vec<String> },
    #[error("no events")]
    NoEvents,
    #[error("bad watermark {0}")]
    BadWatermark(Json),
    /// The case ran, and its output is not what the case expects.
    #[error("{0}")]
    Differs(#[from] Mismatch),
    /// The engine's skip of steps that change nothing changed something: the output or the
    /// state differ from those of FlinkCEP's full step for every event.
    #[error("skipping unchanged steps changed the run: {0}")]
    SkipChanged(String),
    /// The fast tier's output or state differ from FlinkCEP's full step.
    #[error("the fast tier differs from the exact runtime: {0}")]
    FastDiffers(String),
    /// The multi-pattern operator, running the case's pattern alone, gave other outputs than
    /// the operator.
    #[error("the multi-pattern operator differs from the operator: {0}")]
    MultiDiffers(String),
}

/// A case whose pattern is not in the corpus format, or uses something the translation does
/// not support.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// A part of the case is missing or malformed: what the translation expected there.
    #[error("{0}")]
    Malformed(&'static str),
    #[error("condition is not an object: {0}")]
    ConditionNotAnObject(Json),
    #[error("unsupported literal {0}")]
    UnsupportedLiteral(Json),
    #[error("unsupported condition `{0}`")]
    UnsupportedCondition(String),
    #[error("unsupported contiguity {0:?}")]
    UnsupportedContiguity(Option<String>),
    /// The skip strategy as the case gives it.
    #[error("unsupported skip {0}")]
    UnsupportedSkip(String),
    /// FlinkCEP's `until` on a group pattern: the language has `until` on single elements only.
    #[error("`until` on a group is not supported (the language puts `until` on single elements)")]
    UntilOnGroup,
}

/// An output (`what`: matches, timeouts or late events) that differs from the expectation.
/// Each entry is as compared: a match's events sorted (or, depending on the case, by variable,
/// or the first events' ids or prices), a timeout with its time, a late event's reference.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub what: &'static str,
    pub expected: Vec<String>,
    pub got: Vec<String>,
    pub difference: Difference,
}

impl std::error::Error for Mismatch {}

#[derive(Debug, PartialEq, Eq)]
pub enum Difference {
    /// The same entries in another order, where the order is part of the expectation.
    Order,
    /// Entries expected and not produced, and produced but not expected (with multiplicity).
    Entries { missing: Vec<String>, unexpected: Vec<String> },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} differ (expected {}, got {})", self.what, self.expected.len(), self.got.len())?;
        match &self.difference {
            Difference::Order => {
                write!(f, "; same set, wrong order: expected {} got {}", self.expected.join(" "), self.got.join(" "))
            }
            Difference::Entries { missing, unexpected } => {
                if !missing.is_empty() {
                    write!(f, "; missing {}", missing.join(" "))?;
                }
                if !unexpected.is_empty() {
                    write!(f, "; unexpected {}", unexpected.join(" "))?;
                }
                Ok(())
            }
        }
    }
}

/// The fields of the conformance event (`testdata/schemas/cep_events.avsc`).
#[derive(Clone, Copy, Debug)]
struct Fields {
    id: FieldId,
    name: FieldId,
    price: FieldId,
    ts: FieldId,
    volume: FieldId,
}

/// Runs cases against the conformance event schema (read once).
#[derive(Debug)]
pub struct Runner {
    schema: StreamSchema,
    catalog: Catalog,
    fields: Fields,
}

impl Runner {
    pub fn new() -> Result<Self, ConformanceError> {
        let schema =
            StreamSchema::from_avro_json("cep_events", CEP_EVENTS, Some("ts")).map_err(ConformanceError::Schema)?;
        let field = |n: &'static str| schema.field(n).ok_or(ConformanceError::SchemaField(n));
        let fields = Fields {
            id: field("id")?,
            name: field("name")?,
            price: field("price")?,
            ts: field("ts")?,
            volume: field("volume")?,
        };
        let mut catalog = Catalog::default();
        catalog.insert(schema.clone());
        Ok(Runner { schema, catalog, fields })
    }

    /// Runs every case of the corpus in `path` (a JSON array of cases).
    pub fn run_file(&self, path: &Path) -> Result<CorpusReport, ConformanceError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConformanceError::Read { path: path.to_owned(), source })?;
        match serde_json::from_str(&text) {
            Ok(Json::Array(cases)) => Ok(self.run_cases(&cases)),
            Ok(_) => Err(ConformanceError::NotAnArray { path: path.to_owned() }),
            Err(source) => Err(ConformanceError::NotJson { path: path.to_owned(), source }),
        }
    }

    /// Runs `cases`, in order.
    pub fn run_cases(&self, cases: &[Json]) -> CorpusReport {
        let cases = cases
            .iter()
            .map(|case| {
                let mut fast_tier = false;
                let outcome = self.run_case(case, &mut fast_tier);
                CaseReport { id: case["id"].as_str().unwrap_or("?").to_owned(), outcome, fast_tier }
            })
            .collect();
        CorpusReport { cases }
    }

    /// Runs one case; sets `fast_tier` when its pattern is one the fast tier runs.
    pub fn run_case(&self, case: &Json, fast_tier: &mut bool) -> Result<(), CaseFailure> {
        let text = translate(case)?;
        let src = SourceFile::new("case.tl", text.clone());
        let compiled = dsl::compile_source(&src, &self.catalog);
        let Some(p) = compiled.patterns.first() else {
            let diagnostics = compiled.diagnostics.iter().map(|d| d.render()).collect();
            return Err(CaseFailure::Compile { text, diagnostics });
        };
        let nfa = &p.nfa;
        *fast_tier = Chain::of(nfa, usize::MAX).is_some();
        let feed = build_events(case, &self.schema, self.fields)?;
        let outcome = match case["time"].as_str() {
            Some("event") => run_event_time(case, nfa, &feed, &self.schema)?,
            _ => run_processing_free(case, nfa, &feed, &self.schema)?,
        };
        Ok(compare(case, &outcome, &feed)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Translation of a case's pattern into the language
// ---------------------------------------------------------------------------------------------

type Translated = Result<String, TranslateError>;

fn ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain && !dsl::parser::is_keyword(name) {
        name.to_owned()
    } else {
        format!("`{name}`")
    }
}

fn literal(v: &Json) -> Translated {
    Ok(match v {
        Json::String(s) => format!("{s:?}"),
        Json::Number(n) if n.is_i64() => n.to_string(),
        Json::Number(n) => {
            let f = n.as_f64().ok_or(TranslateError::Malformed("bad number"))?;
            if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{f:.1}")
            } else {
                format!("{f}")
            }
        }
        Json::Bool(b) => b.to_string(),
        other => return Err(TranslateError::UnsupportedLiteral(other.clone())),
    })
}

fn malformed(what: &'static str) -> TranslateError {
    TranslateError::Malformed(what)
}

struct Translator<'a> {
    /// Variables that take several events (looping, or inside a quantified group).
    looping: &'a BTreeSet<String>,
}

impl Translator<'_> {
    fn cond(&self, c: &Json) -> Translated {
        let obj = c.as_object().ok_or_else(|| TranslateError::ConditionNotAnObject(c.clone()))?;
        let (op, arg) = obj.iter().next().ok_or(malformed("empty condition"))?;
        let pair = |arg: &Json| -> Result<(String, String), TranslateError> {
            let a = arg.as_array().ok_or(malformed("expected [field, value]"))?;
            Ok((self.operand(&a[0])?, self.operand(&a[1])?))
        };
        Ok(match op.as_str() {
            "true" => "true".to_owned(),
            "eq" | "ne" | "gt" | "ge" | "lt" | "le" => {
                let (a, b) = pair(arg)?;
                let sym = match op.as_str() {
                    "eq" => "==",
                    "ne" => "!=",
                    "gt" => ">",
                    "ge" => ">=",
                    "lt" => "<",
                    _ => "<=",
                };
                format!("{a} {sym} {b}")
            }
            "contains" => {
                let (a, b) = pair(arg)?;
                format!("{a} contains {b}")
            }
            "starts_with" => {
                let (a, b) = pair(arg)?;
                format!("{a} starts with {b}")
            }
            "and" | "or" => {
                let parts: Result<Vec<String>, TranslateError> = arg
                    .as_array()
                    .ok_or(malformed("expected a list"))?
                    .iter()
                    .map(|c| Ok(format!("({})", self.cond(c)?)))
                    .collect();
                parts?.join(if op == "and" { " and " } else { " or " })
            }
            "not" => format!("not ({})", self.cond(arg)?),
            "if" => {
                let a = arg.as_array().ok_or(malformed("expected [cond, then, else]"))?;
                format!("(if {} then ({}) else ({}))", self.cond(&a[0])?, self.cond(&a[1])?, self.cond(&a[2])?)
            }
            "iter" => return self.cond(obj.get("tree").ok_or(malformed("iterative condition without a tree"))?),
            other => return Err(TranslateError::UnsupportedCondition(other.to_owned())),
        })
    }

    /// A field name, a constant, or an iterative-condition term.
    fn operand(&self, v: &Json) -> Translated {
        match v {
            Json::String(s) if ["id", "name", "price", "volume"].contains(&s.as_str()) => Ok(s.clone()),
            Json::Object(o) => {
                let (op, arg) = o.iter().next().ok_or(malformed("empty term"))?;
                let a = arg.as_array();
                match op.as_str() {
                    "sum_of" | "first_of" => {
                        let a = a.ok_or(malformed("expected [pattern, field]"))?;
                        let var = a[0].as_str().ok_or(malformed("pattern name"))?;
                        let field = a[1].as_str().ok_or(malformed("field name"))?;
                        if self.looping.contains(var) {
                            let f = if op == "sum_of" { "sum" } else { "first" };
                            Ok(format!("{f}({}.{field})", ident(var)))
                        } else if op == "first_of" {
                            Ok(format!("{}.{field}", ident(var)))
                        } else {
                            Ok(format!("coalesce({}.{field}, 0)", ident(var)))
                        }
                    }
                    "count_of" => {
                        let var = arg.as_str().ok_or(malformed("pattern name"))?;
                        if self.looping.contains(var) {
                            Ok(format!("count({})", ident(var)))
                        } else {
                            Ok(format!("(if {0}.id is null then 0 else 1)", ident(var)))
                        }
                    }
                    "add" => {
                        let a = a.ok_or(malformed("expected [x, y]"))?;
                        Ok(format!("({} + {})", self.operand(&a[0])?, self.operand(&a[1])?))
                    }
                    _ => self.cond(v).map(|c| format!("({c})")),
                }
            }
            other => literal(other),
        }
    }
}

fn collect_looping(seq: &[Json], in_loop: bool, out: &mut BTreeSet<String>) {
    for e in seq {
        let looping = in_loop || !e["quant"].is_null();
        if let Some(g) = e.get("group") {
            collect_looping(g["seq"].as_array().map_or(&[][..], |v| v), looping, out);
        } else if looping {
            if let Some(n) = e["name"].as_str() {
                out.insert(n.to_owned());
            }
        }
    }
}

struct Pieces {
    conditions: Vec<String>,
}

fn element(e: &Json, case: &Json, tr: &Translator<'_>, pieces: &mut Pieces) -> Translated {
    let mut s = if let Some(g) = e.get("group") {
        if !e["until"].is_null() {
            return Err(TranslateError::UntilOnGroup);
        }
        format!("({})", sequence(g["seq"].as_array().ok_or(malformed("group without seq"))?, case, tr, pieces)?)
    } else {
        let name = e["name"].as_str().ok_or(malformed("element without name"))?;
        let mut s = ident(name);
        if e["subtype"].as_str() == Some("SubEvent") {
            s.push_str(": SubEvent");
        }
        let mut def = format!("{}: {}", ident(name), tr.cond(&e["cond"])?);
        if !e["until"].is_null() {
            def.push_str(&format!(" until {}", tr.cond(&e["until"])?));
        }
        pieces.conditions.push(def);
        s
    };
    match (&e["quant"], e["optional"].as_bool() == Some(true)) {
        (Json::Null, true) => s.push('?'),
        (Json::Null, false) => {}
        (q, optional) => {
            let min = q["min"].as_u64().ok_or(malformed("quant without min"))?;
            match (min, q["max"].as_u64()) {
                (1, None) => s.push('+'),
                (n, None) => s.push_str(&format!("{{{n},}}")),
                (n, Some(m)) if n == m => s.push_str(&format!("{{{n}}}")),
                (n, Some(m)) => s.push_str(&format!("{{{n},{m}}}")),
            }
            if optional {
                s.push_str(" optional");
            }
        }
    }
    if e["greedy"].as_bool() == Some(true) {
        s.push_str(" greedy");
    }
    match e["loop_contiguity"].as_str() {
        Some("strict") => s.push_str(" consecutive"),
        Some("any") => s.push_str(" allow combinations"),
        _ => {}
    }
    if case["within_type"].as_str() == Some("previous_and_current")
        && e["name"].as_str().is_some()
        && e["name"] == case["within_declared_on"]
    {
        let ms = case["within_ms"].as_i64().ok_or(malformed("within_ms"))?;
        s.push_str(&format!(" within {ms}ms of previous"));
    }
    Ok(s)
}

fn sequence(seq: &[Json], case: &Json, tr: &Translator<'_>, pieces: &mut Pieces) -> Translated {
    let mut s = String::new();
    for (i, e) in seq.iter().enumerate() {
        if i > 0 {
            let c = match e["contiguity_to_prev"].as_str() {
                Some("next") => "next",
                Some("followedBy") => "followed by",
                Some("followedByAny") => "followed by any",
                Some("notNext") => "not next",
                Some("notFollowedBy") => "not followed by",
                other => return Err(TranslateError::UnsupportedContiguity(other.map(str::to_owned))),
            };
            s.push_str(&format!("\n        {c} "));
        }
        s.push_str(&element(e, case, tr, pieces)?);
    }
    Ok(s)
}

/// The case's pattern in the language.
pub fn translate(case: &Json) -> Result<String, TranslateError> {
    let seq = case["pattern"]["seq"].as_array().ok_or(malformed("pattern without seq"))?;
    let mut looping = BTreeSet::new();
    collect_looping(seq, false, &mut looping);
    let tr = Translator { looping: &looping };
    let mut pieces = Pieces { conditions: Vec::new() };
    let body = sequence(seq, case, &tr, &mut pieces)?;
    let mut p = String::from("pattern conformance_case\n  from cep_events\n  key id\n");
    p.push_str(&format!("  match {body}\n"));
    if !pieces.conditions.is_empty() {
        p.push_str("  where\n");
        for c in &pieces.conditions {
            p.push_str(&format!("    {c}\n"));
        }
    }
    if let (Some(ms), false) =
        (case["within_ms"].as_i64(), case["within_type"].as_str() == Some("previous_and_current"))
    {
        p.push_str(&format!("  within {ms}ms\n"));
    }
    let skip = match &case["skip"] {
        Json::String(s) if s == "no_skip" => "none".to_owned(),
        Json::String(s) if s == "skip_to_next" => "to next".to_owned(),
        Json::String(s) if s == "skip_past_last_event" => "past last event".to_owned(),
        Json::Object(o) => match (o.get("skip_to_first"), o.get("skip_to_last")) {
            (Some(n), _) => format!("to first {}", ident(n.as_str().ok_or(malformed("skip target"))?)),
            (_, Some(n)) => format!("to last {}", ident(n.as_str().ok_or(malformed("skip target"))?)),
            _ => return Err(TranslateError::UnsupportedSkip(format!("{o:?}"))),
        },
        other => return Err(TranslateError::UnsupportedSkip(other.to_string())),
    };
    p.push_str(&format!("  skip {skip}\n"));
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

/// A match as the corpus writes it: variable name -> event refs.
type Named = Vec<(String, Vec<String>)>;

/// What a run produced: matches and timeouts as named maps, late refs.
#[derive(Default)]
struct Outcome {
    matches: Vec<Named>,
    timeouts: Vec<(Named, i64)>,
    late: Vec<String>,
}

fn ref_of(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

struct Feed {
    events: Vec<(Arc<Event>, String)>,
}

fn build_events(case: &Json, schema: &StreamSchema, f: Fields) -> Result<Feed, CaseFailure> {
    let mut events = Vec::new();
    for (i, e) in case["events"].as_array().ok_or(CaseFailure::NoEvents)?.iter().enumerate() {
        let mut fields = vec![Value::Null; schema.fields.len()];
        let set = |fields: &mut Vec<Value>, f: FieldId, v: Value| fields[f.index()] = v;
        let ts = e["ts"].as_i64().unwrap_or(0);
        set(&mut fields, f.id, e["id"].as_i64().map_or(Value::Null, Value::Int));
        set(&mut fields, f.name, e["name"].as_str().map_or(Value::Null, Value::str));
        set(&mut fields, f.price, e["price"].as_f64().map_or(Value::Null, Value::Float));
        set(&mut fields, f.ts, Value::Int(ts));
        let kind = if e["type"].as_str() == Some("SubEvent") {
            set(&mut fields, f.volume, e["volume"].as_f64().map_or(Value::Null, Value::Float));
            schema.record_type("SubEvent").unwrap_or(TypeId(0))
        } else {
            schema.record_type("Event").unwrap_or(TypeId(0))
        };
        events.push((Arc::new(Event { seq: i as u64, ts, kind, fields: fields.into() }), ref_of(&e["ref"])));
    }
    Ok(Feed { events })
}

fn named(nfa: &Nfa, feed: &Feed, events: &[(engine::VarId, Vec<Arc<Event>>)]) -> Named {
    events
        .iter()
        .map(|(v, list)| {
            (nfa.var_name(*v).to_owned(), list.iter().map(|e| feed.events[e.seq as usize].1.clone()).collect())
        })
        .collect()
}

fn partition(case: &Json, e: &Event, schema: &StreamSchema) -> String {
    match case["partition_by"].as_str().and_then(|f| schema.field(f)) {
        Some(f) => e.field(f).to_string(),
        None => String::new(),
    }
}

/// Processing-free, every event through FlinkCEP's full step in a twin run beside the engine's
/// default one, and (for a chain) through the fast tier: their matches, timeouts and partial
/// matches must agree.
fn run_processing_free(case: &Json, nfa: &Nfa, feed: &Feed, schema: &StreamSchema) -> Result<Outcome, CaseFailure> {
    let chain = Chain::of(nfa, usize::MAX);
    let mut fast: BTreeMap<String, FastRun> = BTreeMap::new();
    let mut cache = ConditionCache::new(&nfa.conditions);
    let mut states: BTreeMap<String, (RunState, RunState)> = BTreeMap::new();
    let mut outcome = Outcome::default();
    let comparator = case["same_timestamp_order"].as_str() == Some("price ascending");
    let mut order: Vec<usize> = (0..feed.events.len()).collect();
    if comparator {
        // Events of one processing-time instant are buffered and sorted before matching.
        order.sort_by(|&a, &b| {
            let (x, y) = (&feed.events[a].0, &feed.events[b].0);
            x.ts.cmp(&y.ts).then(price(x).total_cmp(&price(y)))
        });
    }
    for i in order {
        let (event, _) = &feed.events[i];
        let (st, full) =
            states.entry(partition(case, event, schema)).or_insert_with(|| (RunState::new(nfa), RunState::new(nfa)));
        let (pending, timeouts, _) = st.advance_time(nfa, event.ts, true);
        let twin = full.advance_time(nfa, event.ts, true);
        record_timeouts(nfa, feed, &timeouts, &mut outcome);
        let mut out = st.process(nfa, event.clone(), event.ts);
        let full_out = full.step(nfa, event.clone(), event.ts, &mut [], false);
        if (&pending, &timeouts, &out) != (&twin.0, &twin.1, &full_out) || st.partial_views() != full.partial_views() {
            return Err(CaseFailure::SkipChanged(format!("after event {}", feed.events[i].1)));
        }
        if let Some(chain) = &chain {
            let run = fast.entry(partition(case, event, schema)).or_insert_with(|| FastRun::new(chain));
            let fast_time = run.advance_time(chain, event.ts, true);
            let fast_out = run.step(chain, nfa, event.clone(), event.ts, &mut [], &mut cache);
            run.new_start = false;
            if (&fast_time.0, &fast_time.1, &fast_out) != (&twin.0, &twin.1, &full_out)
                || run.to_exact(nfa).partial_views() != full.partial_views()
            {
                return Err(CaseFailure::FastDiffers(format!("after event {}", feed.events[i].1)));
            }
        }
        out.extend(pending);
        record(nfa, feed, &out, &mut outcome);
    }
    Ok(outcome)
}

fn price(e: &Event) -> f64 {
    e.fields.get(2).and_then(Value::as_f64).unwrap_or(0.0)
}

fn record(nfa: &Nfa, feed: &Feed, ms: &[Match], outcome: &mut Outcome) {
    for m in ms {
        outcome.matches.push(named(nfa, feed, &m.events));
    }
}

fn record_timeouts(nfa: &Nfa, feed: &Feed, ts: &[Timeout], outcome: &mut Outcome) {
    for t in ts {
        outcome.timeouts.push((named(nfa, feed, &t.events), t.ts));
    }
}

/// Event time, through the engine's operator (FlinkCEP's `CepOperator` semantics).
/// Event time, through the engine's operator, run twice: as configured by default and with
/// every event through FlinkCEP's full step (the outputs, in order, and every key's snapshot
/// bytes must agree); and through the multi-pattern operator with the case's pattern alone (the
/// outputs, in order, must agree).
fn run_event_time(case: &Json, nfa: &Nfa, feed: &Feed, schema: &StreamSchema) -> Result<Outcome, CaseFailure> {
    let (out, snapshots) = drive_event_time(case, nfa, feed, schema, Config::default())?;
    let full_steps = Config { exact_steps: true, ..Config::default() };
    let (full_out, full_snapshots) = drive_event_time(case, nfa, feed, schema, full_steps)?;
    // The skip tier without the fast tier, and the fast tier falling back after every change.
    let no_fast = Config { fast_tier: FastTier::Off, ..Config::default() };
    let (skip_out, skip_snapshots) = drive_event_time(case, nfa, feed, schema, no_fast)?;
    let fall_back = Config { fast_tier: FastTier::FallBackAfter(1), ..Config::default() };
    let (back_out, back_snapshots) = drive_event_time(case, nfa, feed, schema, fall_back)?;
    if skip_out != full_out {
        return Err(CaseFailure::SkipChanged(format!("outputs {skip_out:?}\nvs {full_out:?}")));
    }
    if skip_snapshots != full_snapshots {
        return Err(CaseFailure::SkipChanged("the keys' snapshots differ".to_owned()));
    }
    for (o, s) in [(&out, &snapshots), (&back_out, &back_snapshots)] {
        if *o != full_out {
            return Err(CaseFailure::FastDiffers(format!("outputs {o:?}\nvs {full_out:?}")));
        }
        if *s != full_snapshots {
            return Err(CaseFailure::FastDiffers("the keys' snapshots differ".to_owned()));
        }
    }
    let multi_out = drive_multi(case, nfa, feed, schema)?;
    if out != multi_out {
        return Err(CaseFailure::MultiDiffers(format!("outputs {out:?}\nvs {multi_out:?}")));
    }
    let mut outcome = Outcome::default();
    for o in out {
        match o {
            Output::Match { events, .. } => outcome.matches.push(named(nfa, feed, &events)),
            Output::Timeout { events, ts, .. } => outcome.timeouts.push((named(nfa, feed, &events), ts)),
            Output::Late { event, .. } => outcome.late.push(feed.events[event.seq as usize].1.clone()),
        }
    }
    Ok(outcome)
}

/// Every key's snapshot bytes, in key order.
type Snapshots = Vec<(Key, Vec<u8>)>;

/// An operator a case drives: events and watermarks in.
trait Driven {
    fn event(&mut self, key: Key, event: Arc<Event>);
    fn watermark(&mut self, wm: i64);
}

impl Driven for (Operator, Vec<Output>) {
    fn event(&mut self, key: Key, event: Arc<Event>) {
        self.0.process(key, event, &mut self.1);
    }
    fn watermark(&mut self, wm: i64) {
        self.0.advance_watermark(wm, &mut self.1);
    }
}

impl Driven for (MultiOperator, Vec<MultiOutput>) {
    fn event(&mut self, key: Key, event: Arc<Event>) {
        self.0.process(key, event, &mut self.1);
    }
    fn watermark(&mut self, wm: i64) {
        self.0.advance_watermark(wm, &mut self.1);
    }
}

/// Feeds a case's events and watermarks to `op`.
fn drive(case: &Json, feed: &Feed, schema: &StreamSchema, op: &mut dyn Driven) -> Result<(), CaseFailure> {
    let wm_value = |w: &Json| -> Result<i64, CaseFailure> {
        match w {
            Json::String(s) if s == "MIN" => Ok(i64::MIN),
            Json::String(s) if s == "MAX" => Ok(i64::MAX),
            other => other.as_i64().ok_or_else(|| CaseFailure::BadWatermark(other.clone())),
        }
    };
    let mut marks: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for w in case["watermarks"].as_array().into_iter().flatten() {
        marks.entry(ref_of(&w["after_ref"])).or_default().push(wm_value(&w["wm"])?);
    }
    for w in marks.get("START").into_iter().flatten() {
        op.watermark(*w);
    }
    for (event, r) in &feed.events {
        op.event(Key::Str(partition(case, event, schema).into()), event.clone());
        for w in marks.get(r).into_iter().flatten() {
            op.watermark(*w);
        }
    }
    for w in marks.get("END").into_iter().flatten() {
        op.watermark(*w);
    }
    Ok(())
}

/// The configuration a case asks for.
fn case_config(case: &Json, schema: &StreamSchema, config: Config) -> Config {
    let tie_break =
        (case["same_timestamp_order"].as_str() == Some("price ascending")).then(|| schema.field("price")).flatten();
    Config { tie_break, timeouts: true, ..config }
}

/// The outputs of one run of a case through the operator, and the snapshot of every key it
/// touched at the end.
fn drive_event_time(
    case: &Json,
    nfa: &Nfa,
    feed: &Feed,
    schema: &StreamSchema,
    config: Config,
) -> Result<(Vec<Output>, Snapshots), CaseFailure> {
    let mut run = (Operator::new(Arc::new(nfa.clone()), case_config(case, schema, config)), Vec::new());
    drive(case, feed, schema, &mut run)?;
    let (mut op, out) = run;
    let snapshots = op
        .take_dirty()
        .into_iter()
        .map(|k| {
            let mut bytes = Vec::new();
            op.snapshot_key(&k, &mut bytes);
            (k, bytes)
        })
        .collect();
    Ok((out, snapshots))
}

/// The outputs of one run of a case through the multi-pattern operator with the case's pattern
/// alone, as an operator's outputs.
fn drive_multi(case: &Json, nfa: &Nfa, feed: &Feed, schema: &StreamSchema) -> Result<Vec<Output>, CaseFailure> {
    let multi = MultiOperator::new(vec![Arc::new(nfa.clone())], case_config(case, schema, Config::default()))
        .map_err(|e| CaseFailure::MultiDiffers(e.to_string()))?;
    let mut run = (multi, Vec::new());
    drive(case, feed, schema, &mut run)?;
    Ok(run
        .1
        .into_iter()
        .map(|o| match o {
            MultiOutput::Pattern(_, o) => o,
            MultiOutput::Late { key, event, watermark } => Output::Late { key, event, watermark },
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

fn expected_map(m: &Json) -> Named {
    m.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_array().map(|a| a.iter().map(ref_of).collect()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn flat(m: &Named) -> String {
    let mut refs: Vec<&String> = m.iter().flat_map(|(_, l)| l).collect();
    refs.sort();
    format!("[{}]", refs.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "))
}

fn by_name(m: &Named) -> String {
    let mut parts: Vec<String> = m.iter().map(|(k, l)| format!("{k}:{}", l.join(" "))).collect();
    parts.sort();
    format!("{{{}}}", parts.join(", "))
}

fn compare_lists(
    what: &'static str,
    mut want: Vec<String>,
    mut got: Vec<String>,
    ordered: bool,
) -> Result<(), Mismatch> {
    if !ordered {
        want.sort();
        got.sort();
    }
    if want == got {
        return Ok(());
    }
    if ordered && {
        let (mut a, mut b) = (want.clone(), got.clone());
        a.sort();
        b.sort();
        a == b
    } {
        return Err(Mismatch { what, expected: want, got, difference: Difference::Order });
    }
    let mut missing = want.clone();
    let mut unexpected = Vec::new();
    for g in &got {
        match missing.iter().position(|w| w == g) {
            Some(i) => {
                missing.remove(i);
            }
            None => unexpected.push(g.clone()),
        }
    }
    Err(Mismatch { what, expected: want, got, difference: Difference::Entries { missing, unexpected } })
}

fn compare(case: &Json, outcome: &Outcome, feed: &Feed) -> Result<(), Mismatch> {
    let expected: Vec<Named> = case["expected_matches"].as_array().into_iter().flatten().map(expected_map).collect();
    let ordered = case["expected_order_matters"].as_bool() == Some(true);
    let mode = case["match_compare"].as_str().unwrap_or("events_only");
    let project = |m: &Named, like: Option<&Named>| -> String {
        match mode {
            "by_pattern_name" => by_name(m),
            "first_event_ids" | "first_event_prices" => {
                let names: Vec<&String> =
                    like.map_or_else(|| m.iter().map(|(k, _)| k).collect(), |l| l.iter().map(|(k, _)| k).collect());
                let mut parts: Vec<String> = names
                    .iter()
                    .map(|n| {
                        let first = m.iter().find(|(k, _)| k == *n).and_then(|(_, l)| l.first());
                        let v = first.and_then(|r| feed.events.iter().find(|(_, x)| x == r)).map(|(e, _)| {
                            if mode == "first_event_ids" {
                                e.fields[0].to_string()
                            } else {
                                e.fields[2].to_string()
                            }
                        });
                        format!("{n}:{}", v.unwrap_or_else(|| "-".into()))
                    })
                    .collect();
                parts.sort();
                format!("{{{}}}", parts.join(", "))
            }
            _ => flat(m),
        }
    };
    let like = expected.first();
    let want: Vec<String> = expected.iter().map(|m| project(m, Some(m))).collect();
    let got: Vec<String> = outcome.matches.iter().map(|m| project(m, like)).collect();
    compare_lists("matches", want, got, ordered)?;
    if let Some(ts) = case["expected_timeouts"].as_array() {
        let want: Vec<String> =
            ts.iter().map(|t| format!("{}@{}", by_name(&expected_map(&t["match"])), t["timeout_ts"])).collect();
        let got: Vec<String> = outcome.timeouts.iter().map(|(m, t)| format!("{}@{t}", by_name(m))).collect();
        compare_lists("timeouts", want, got, false)?;
    }
    if let Some(late) = case["expected_late"].as_array() {
        compare_lists("late events", late.iter().map(ref_of).collect(), outcome.late.clone(), false)?;
    }
    Ok(())
}
