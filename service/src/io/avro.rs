//! Kafka record values to engine events: the Confluent wire format (magic byte 0, a 4-byte
//! big-endian schema id, an Avro datum), the writer schema fetched from the schema registry by
//! id (cached), resolved against the stream's configured schema (Avro schema resolution: extra
//! fields are skipped, missing fields with defaults filled in), then checked and converted as
//! the JSON-lines export is ([`dsl::json_event`]), so the service and a replay
//! see the same event.
//!
//! A writer record type is read as the stream's record type of its name (see
//! [`avro_direct::reader_branch`]), never as another one whose fields it also has.
//!
//! Two paths do that. The generic one ([`AvroIn::decode_generic`], [`AvroIn::decode_json`])
//! builds apache_avro's value tree, resolves it and converts its JSON form. [`AvroIn::decode`]
//! takes the direct one: a program compiled once per (writer schema id, stream)
//! ([`super::avro_direct`]) that reads the datum straight into the event, and hands a record back
//! to the generic path whenever that path would refuse it with a message of apache_avro's (or
//! when the schema is one the compiler does not model), so both give the same event or the
//! same reject.
//!
//! Every record that cannot become an event is a [`Reject`] with a reason code and a message
//! naming the field or the schema; registry outages are not rejects: [`AvroIn::decode_retrying`]
//! is the one retry policy every reader uses.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use dsl::StreamSchema;
use engine::Event;
use schema_registry_converter::blocking::schema_registry::{get_schema_by_id, SrSettings};
use schema_registry_converter::schema_registry_common::SchemaType;

use super::avro_direct::{self, Outcome, Program};
use super::kafka;
use crate::core::config::Config;
use crate::core::plan::{Reject, StreamPlan};
use crate::error::{Error, Kind, ResultExt};

/// A failure to decode one record.
#[derive(Debug)]
pub enum DecodeError {
    /// The record is bad: dead-letter it.
    Reject(Reject),
    /// The registry could not be asked (down, timeout): try again later.
    Unavailable(String),
}

/// What [`AvroIn::retrying`] ends with.
#[derive(Debug)]
pub enum Retried<T> {
    /// The record, decoded.
    Decoded(T),
    /// The record is bad: dead-letter it.
    Rejected(Reject),
    /// Asked to stop while the registry was away: the record was not decoded.
    Cancelled,
}

/// A writer schema by id, and per stream whether it resolves to the stream's schema (and then
/// the stream's record type each of its record types is read as: see [`readable`]) and its
/// direct decoder.
struct Writer {
    schema: Result<Arc<Schema>, Reject>,
    readable: HashMap<String, Result<Arc<[usize]>, Reject>>,
    direct: HashMap<String, Direct>,
}

impl Writer {
    fn new(schema: Result<Arc<Schema>, Reject>) -> Self {
        Writer { schema, readable: HashMap::new(), direct: HashMap::new() }
    }
}

/// The direct decoder of a (writer schema, stream), compiled for the stream's field table
/// `catalog`; `None`: the schema is one the compiler does not model, its records take the
/// generic path.
#[derive(Clone, Debug)]
struct Direct {
    catalog: Arc<StreamSchema>,
    program: Option<Arc<Program>>,
}

/// A stream's (reader) schema.
struct Reader {
    schema: Schema,
    /// The full name of each of its record types (its union's branches, or itself).
    branches: Vec<String>,
    /// Its named types, to resolve against one of its branches.
    names: HashMap<Name, Schema>,
}

/// Decodes records of the configured streams; caches writer schemas by id.
pub struct AvroIn {
    registry: SrSettings,
    /// The registry's address, for messages.
    registry_url: String,
    /// Per stream: its configured (reader) schema.
    readers: HashMap<String, Reader>,
    writers: HashMap<u32, Writer>,
    /// The (schema id, stream) of the last record decoded, and its decoder: most records repeat
    /// it, and then no map is looked up.
    last: Option<(u32, String, Direct)>,
    /// Writer schemas met on a stream for the first time, since [`AvroIn::take_new_writers`].
    new_writers: Vec<(String, u32, Arc<Schema>)>,
}

impl std::fmt::Debug for AvroIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroIn").field("writer_schemas", &self.writers.len()).finish()
    }
}

impl AvroIn {
    /// `readers`: per stream name, the stream's Avro schema (JSON text).
    pub fn new(registry: SrSettings, registry_url: &str, readers: &[(String, String)]) -> Result<Self, Error> {
        let mut map = HashMap::new();
        for (name, json) in readers {
            let schema =
                Schema::parse_str(json).or_fail_with(Kind::Usage, || format!("stream `{name}`: its schema"))?;
            let branches = match &schema {
                Schema::Union(u) => u.variants().iter().map(record_name).collect(),
                other => vec![record_name(other)],
            };
            let names = ResolvedSchema::try_from(&schema)
                .or_fail_with(Kind::Usage, || format!("stream `{name}`: its schema"))?
                .get_names()
                .iter()
                .map(|(n, s)| (n.clone(), (*s).clone()))
                .collect();
            map.insert(name.clone(), Reader { schema, branches, names });
        }
        Ok(AvroIn {
            registry,
            registry_url: registry_url.to_owned(),
            readers: map,
            writers: HashMap::new(),
            last: None,
            new_writers: Vec::new(),
        })
    }

    /// Registers writer schema `id` (JSON text) as if the registry had answered with it: for
    /// tests and benchmarks, which have no registry.
    pub fn insert_writer_schema(&mut self, id: u32, json: &str) -> Result<(), Error> {
        let schema = Schema::parse_str(json).or_fail_with(Kind::Usage, || format!("schema id {id}"))?;
        self.writers.insert(id, Writer::new(Ok(Arc::new(schema))));
        self.last = None;
        Ok(())
    }

    /// The writer schemas met on a stream for the first time since the last call: (stream,
    /// schema id, schema). For the schema gate (`core::schema_gate`).
    pub fn take_new_writers(&mut self) -> Vec<(String, u32, Arc<Schema>)> {
        std::mem::take(&mut self.new_writers)
    }

    /// The decoder of the streams of `plans` (their schemas read relative to the config file at
    /// `config_path`), with the configured schema registry.
    pub fn for_plans<'a>(
        cfg: &Config,
        config_path: &Path,
        plans: impl IntoIterator<Item = &'a Arc<StreamPlan>>,
    ) -> Result<AvroIn, Error> {
        let base = config_path.parent().unwrap_or(Path::new("."));
        let mut readers = Vec::new();
        for plan in plans {
            let s = &cfg.streams[&plan.name];
            let json = std::fs::read_to_string(base.join(&s.schema))
                .or_fail_with(Kind::Usage, || format!("cannot read the schema of stream `{}`", plan.name))?;
            readers.push((plan.name.clone(), json));
        }
        AvroIn::new(kafka::registry(cfg)?, cfg.registry.url.as_deref().unwrap_or_default(), &readers)
    }

    /// Decodes like [`AvroIn::decode`], waiting out registry outages (see [`AvroIn::retrying`]).
    pub fn decode_retrying(
        &mut self,
        plan: &StreamPlan,
        value: Option<&[u8]>,
        seq: u64,
        give_up_after: Option<Duration>,
        cancel: &dyn Fn() -> bool,
    ) -> Result<Retried<Event>, Error> {
        self.retrying(give_up_after, cancel, |avro| avro.decode(plan, value, seq))
    }

    /// Runs `decode` until the schema registry answers: the one retry policy of every reader
    /// (the service, replays, explanations, exports). It tries again after 100 ms, doubling up
    /// to 5 s between tries, until the registry answers, `cancel()` says to stop
    /// (`Retried::Cancelled`: the record is left undecoded), or `give_up_after` has passed (an
    /// error naming the registry; `None`: never give up).
    pub fn retrying<T>(
        &mut self,
        give_up_after: Option<Duration>,
        cancel: &dyn Fn() -> bool,
        mut decode: impl FnMut(&mut AvroIn) -> Result<T, DecodeError>,
    ) -> Result<Retried<T>, Error> {
        // The clock is read only once the registry has failed to answer (not per record).
        let mut started: Option<Instant> = None;
        let mut wait = Duration::from_millis(100);
        loop {
            match decode(self) {
                Ok(e) => return Ok(Retried::Decoded(e)),
                Err(DecodeError::Reject(r)) => return Ok(Retried::Rejected(r)),
                Err(DecodeError::Unavailable(why)) => {
                    let since = *started.get_or_insert_with(Instant::now);
                    if give_up_after.is_some_and(|limit| since.elapsed() >= limit) {
                        return Err(Error::usage(format!(
                            "the schema registry at {} does not answer: {why}",
                            self.registry_url
                        )));
                    }
                    if cancel() {
                        return Ok(Retried::Cancelled);
                    }
                    tracing::warn!("{why}; retrying in {wait:?}");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Decodes a record value of `plan`'s stream; `seq` is its coordinate. Through the direct
    /// decoder of the record's writer schema; the records it hands back, and the schemas it
    /// does not model, through [`AvroIn::decode_generic`]: the event or reject is the same.
    pub fn decode(&mut self, plan: &StreamPlan, value: Option<&[u8]>, seq: u64) -> Result<Event, DecodeError> {
        let bytes = value.ok_or_else(no_value)?;
        let id = schema_id(bytes)?;
        let outcome = match self.direct(plan, id)? {
            Some(program) => program.decode(&bytes[5..], seq),
            None => Err(Outcome::Defer),
        };
        match outcome {
            Ok(event) => Ok(event),
            Err(Outcome::LeftOver(n)) => Err(left_over(id, n)),
            Err(Outcome::Event(e)) => Err(event_reject(&e)),
            Err(Outcome::Defer) => self.decode_generic(plan, value, seq),
        }
    }

    /// Decodes a record value of `plan`'s stream as [`AvroIn::decode`] does, through apache_avro's
    /// value tree and the JSON form ([`AvroIn::decode_json`], [`dsl::json_event`]): the reference
    /// path.
    pub fn decode_generic(&mut self, plan: &StreamPlan, value: Option<&[u8]>, seq: u64) -> Result<Event, DecodeError> {
        let (type_name, json) = self.decode_json(plan, value)?;
        dsl::json_event(&plan.schema, type_name.as_deref(), &json, seq).map_err(|e| event_reject(&e))
    }

    /// Decodes a record value to the stream's record type name (None for a stream of one type)
    /// and its JSON form, as the JSON-lines export writes it.
    pub fn decode_json(
        &mut self,
        plan: &StreamPlan,
        value: Option<&[u8]>,
    ) -> Result<(Option<String>, serde_json::Value), DecodeError> {
        let bytes = value.ok_or_else(no_value)?;
        let id = schema_id(bytes)?;
        let (writer_schema, targets) = self.writer(plan, id)?;
        let reader = self
            .readers
            .get(&plan.name)
            .ok_or_else(|| reject("wrong-schema", format!("stream `{}` has no schema", plan.name)))?;
        let undecodable = |e: apache_avro::Error| {
            reject("undecodable", format!("schema id {id}: the Avro datum does not decode: {e}"))
        };
        let mut datum = &bytes[5..];
        let written = apache_avro::reader::datum::GenericDatumReader::builder(&writer_schema)
            .build()
            .and_then(|r| r.read_value(&mut datum))
            .map_err(undecodable)?;
        // The writer's record type (its union's branch), resolved against the stream's record
        // type of its name: not apache_avro's choice among the stream's union branches, which is
        // the first whose fields the record has.
        let (branch, record) = match (&*writer_schema, written) {
            (Schema::Union(_), apache_avro::types::Value::Union(i, v)) => (i as usize, *v),
            (_, v) => (0, v),
        };
        let target = *targets.get(branch).ok_or_else(|| {
            reject("undecodable", format!("schema id {id}: the Avro datum has no union branch {branch}"))
        })?;
        let reader_type = match &reader.schema {
            Schema::Union(u) => &u.variants()[target],
            other => other,
        };
        let value = record.resolve_with_names(reader_type, &reader.names).map_err(undecodable)?;
        if !datum.is_empty() {
            return Err(left_over(id, datum.len()));
        }
        let type_name = reader.branches.get(target).cloned();
        let json = serde_json::Value::try_from(value)
            .map_err(|e| reject("undecodable", format!("schema id {id}: the value does not convert: {e}")))?;
        Ok((type_name.filter(|t| !t.is_empty() && reader.branches.len() > 1), json))
    }

    /// Writer schema `id` (fetched on first sight) once it is known to read as `plan`'s
    /// stream's schema, and the stream's record type each of its record types is read as:
    /// decided once per (schema id, stream).
    fn writer(&mut self, plan: &StreamPlan, id: u32) -> Result<(Arc<Schema>, Arc<[usize]>), DecodeError> {
        if !self.writers.contains_key(&id) {
            let schema = self.fetch(id)?;
            self.writers.insert(id, Writer::new(schema));
        }
        let writer = self.writers.get_mut(&id).ok_or_else(|| reject("unknown-schema", "cache"))?;
        let writer_schema = writer.schema.clone().map_err(DecodeError::Reject)?;
        let reader = self
            .readers
            .get(&plan.name)
            .ok_or_else(|| reject("wrong-schema", format!("stream `{}` has no schema", plan.name)))?;
        let new_writers = &mut self.new_writers;
        let verdict = writer.readable.entry(plan.name.clone()).or_insert_with(|| {
            new_writers.push((plan.name.clone(), id, writer_schema.clone()));
            readable(id, &writer_schema, &reader.schema, &reader.branches, &plan.name)
        });
        match verdict {
            Ok(targets) => Ok((writer_schema, targets.clone())),
            Err(r) => Err(DecodeError::Reject(r.clone())),
        }
    }

    /// The direct decoder of records of `plan`'s stream written with schema `id` (`None`: they
    /// take the generic path), compiled on first sight.
    fn direct(&mut self, plan: &StreamPlan, id: u32) -> Result<Option<&Program>, DecodeError> {
        let hit = matches!(&self.last, Some((i, stream, d))
            if *i == id && *stream == plan.name && Arc::ptr_eq(&d.catalog, &plan.schema));
        if !hit {
            let d = self.compiled(plan, id)?;
            self.last = Some((id, plan.name.clone(), d));
        }
        Ok(self.last.as_ref().and_then(|(_, _, d)| d.program.as_deref()))
    }

    fn compiled(&mut self, plan: &StreamPlan, id: u32) -> Result<Direct, DecodeError> {
        let (writer_schema, _) = self.writer(plan, id)?;
        let reader_schema = &self
            .readers
            .get(&plan.name)
            .ok_or_else(|| reject("wrong-schema", format!("stream `{}` has no schema", plan.name)))?
            .schema;
        let writer = self.writers.get_mut(&id).ok_or_else(|| reject("unknown-schema", "cache"))?;
        // Compiled for the stream's field table: a reload that changes it compiles again.
        if let Some(d) = writer.direct.get_mut(&plan.name) {
            if Arc::ptr_eq(&d.catalog, &plan.schema) || *d.catalog == *plan.schema {
                d.catalog = plan.schema.clone();
                return Ok(d.clone());
            }
        }
        let program = match avro_direct::compile(&writer_schema, reader_schema, &plan.schema) {
            Ok(p) => Some(Arc::new(p)),
            Err(why) => {
                tracing::info!(
                    "schema id {id}, stream `{}`: records are decoded through the generic Avro path ({why})",
                    plan.name
                );
                None
            }
        };
        let d = Direct { catalog: plan.schema.clone(), program };
        writer.direct.insert(plan.name.clone(), d.clone());
        Ok(d)
    }

    fn fetch(&self, id: u32) -> Result<Result<Arc<Schema>, Reject>, DecodeError> {
        match get_schema_by_id(id, &self.registry) {
            Ok(registered) if registered.schema_type != SchemaType::Avro => Ok(Err(Reject::new(
                "wrong-schema",
                format!("schema id {id} is a {:?} schema, not Avro", registered.schema_type),
            ))),
            Ok(registered) => Ok(Schema::parse_str(&registered.schema)
                .map(Arc::new)
                .map_err(|e| Reject::new("wrong-schema", format!("schema id {id} does not parse: {e}")))),
            Err(e) if e.retriable => Err(DecodeError::Unavailable(format!(
                "the schema registry did not answer for schema id {id}: {}",
                e.cause.as_deref().unwrap_or(&e.error)
            ))),
            Err(e) => Ok(Err(Reject::new(
                "unknown-schema",
                format!(
                    "schema id {id} is not in the registry ({})",
                    e.cause.as_deref().map(|c| c.trim()).filter(|c| !c.is_empty()).unwrap_or(&e.error)
                ),
            ))),
        }
    }
}

/// Whether records written with `writer_schema` (schema id `id`) can be read as stream
/// `stream`'s schema, and if so the stream's record type (index into `reader_schema`'s union
/// branches, 0 when it is one record type) each writer record type (each branch of a writer
/// union, or the writer schema) is read as: the one of its name
/// ([`avro_direct::reader_branch`]). Every writer record type must have one, and Avro
/// resolution must be possible for at least one of them: a writer union some of whose record
/// types do not resolve is read, and their records are refused one by one (`undecodable`, in
/// apache_avro's words).
fn readable(
    id: u32,
    writer_schema: &Schema,
    reader_schema: &Schema,
    branches: &[String],
    stream: &str,
) -> Result<Arc<[usize]>, Reject> {
    let writer_types: Vec<&Schema> = match writer_schema {
        Schema::Union(u) => u.variants().iter().collect(),
        other => vec![other],
    };
    let mut targets = Vec::with_capacity(writer_types.len());
    for w in &writer_types {
        let Some(target) = (match w {
            Schema::Record(r) => avro_direct::reader_branch(r, reader_schema),
            _ => None,
        }) else {
            let t = record_name(w);
            return Err(Reject::new(
                "wrong-schema",
                format!(
                    "schema id {id} writes record type `{}`, which is not a record type of stream `{}` ({})",
                    if t.is_empty() { "(not a record)" } else { &t },
                    stream,
                    branches.join(", ")
                ),
            ));
        };
        targets.push(target);
    }
    let union = matches!(reader_schema, Schema::Union(_));
    let mut refusal = None;
    for (w, &target) in writer_types.iter().zip(&targets) {
        let r = match reader_schema {
            Schema::Union(u) => &u.variants()[target],
            other => other,
        };
        // apache_avro's check compares the names: a record type matched by an alias is checked
        // under the reader's name.
        let renamed;
        let w_checked = match (w, r) {
            (Schema::Record(wr), Schema::Record(rr)) if wr.name.name() != rr.name.name() => {
                let mut wr = wr.clone();
                wr.name = rr.name.clone();
                renamed = Schema::Record(wr);
                &renamed
            }
            _ => *w,
        };
        match SchemaCompatibility::can_read(w_checked, r) {
            Ok(_) => return Ok(targets.into()),
            Err(e) => {
                refusal.get_or_insert((record_name(r), e));
            }
        }
    }
    // An empty writer union writes nothing: there is nothing to refuse.
    let Some((r, e)) = refusal else { return Ok(targets.into()) };
    // The stream's record type, when it has several.
    let of = if union { format!(" of record type `{}`", r.rsplit('.').next().unwrap_or(&r)) } else { String::new() };
    Err(match e {
        apache_avro::error::CompatibilityError::MissingDefaultValue(field) => Reject::new(
            "missing-field",
            format!(
                "schema id {id} has no field `{field}`{of}, which stream `{stream}` requires (and has no default for)"
            ),
        ),
        e => {
            Reject::new("wrong-schema", format!("schema id {id} cannot be read as stream `{stream}`'s schema{of}: {e}"))
        }
    })
}

fn reject(code: &'static str, message: impl Into<String>) -> DecodeError {
    DecodeError::Reject(Reject::new(code, message))
}

fn no_value() -> DecodeError {
    reject("no-value", "the record has no value")
}

/// The schema id of a record value in the Confluent wire format.
fn schema_id(bytes: &[u8]) -> Result<u32, DecodeError> {
    if bytes.len() < 5 || bytes[0] != 0 {
        return Err(reject(
            "not-avro",
            format!(
                "not in the Confluent wire format (magic byte 0, 4-byte schema id, Avro datum): {} byte(s) starting {}",
                bytes.len(),
                hex_prefix(bytes)
            ),
        ));
    }
    Ok(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
}

fn left_over(id: u32, n: usize) -> DecodeError {
    reject("undecodable", format!("schema id {id}: {n} byte(s) left over after the Avro datum"))
}

/// A record that is not an event of its stream.
fn event_reject(e: &dsl::EventError) -> DecodeError {
    let code = if e.kind() == dsl::EventErrorKind::NullTimestamp { "bad-timestamp" } else { "missing-field" };
    reject(code, e.to_string())
}

fn record_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => r.name.fullname(None),
        _ => String::new(),
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    let mut s: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 8 {
        s.push_str("...");
    }
    s
}

/// The Confluent wire format of a datum: magic byte, schema id, Avro bytes.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(datum.len() + 5);
    v.push(0);
    v.extend_from_slice(&schema_id.to_be_bytes());
    v.extend_from_slice(datum);
    v
}
