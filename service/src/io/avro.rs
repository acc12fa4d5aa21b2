//! Kafka record values to engine events: the Confluent wire format (magic byte 0, a 4-byte
//! big-endian schema id, an Avro datum), the writer schema fetched from the schema registry by
//! id (cached), resolved against the stream's configured schema (Avro schema resolution: extra
//! fields are skipped, missing fields with defaults filled in), then checked and converted as
//! the JSON-lines export is ([`dsl::json_event`]), so the service and a replay
//! see the same event.
//!
//! Every record that cannot become an event is a [`Reject`] with a reason code and a message
//! naming the field or the schema; registry outages are not rejects: [`AvroIn::decode_retrying`]
//! is the one retry policy every reader uses.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use engine::Event;
use schema_registry_converter::blocking::schema_registry::{get_schema_by_id, SrSettings};
use schema_registry_converter::schema_registry_common::SchemaType;

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

/// A writer schema by id, and per stream whether it resolves to the stream's schema.
struct Writer {
    schema: Result<Arc<Schema>, Reject>,
    readable: HashMap<String, Result<(), Reject>>,
}

/// Decodes records of the configured streams; caches writer schemas by id.
pub struct AvroIn {
    registry: SrSettings,
    /// The registry's address, for messages.
    registry_url: String,
    /// Per stream: its configured (reader) schema and the record type name of each union branch.
    readers: HashMap<String, (Schema, Vec<String>)>,
    writers: HashMap<u32, Writer>,
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
            map.insert(name.clone(), (schema, branches));
        }
        Ok(AvroIn { registry, registry_url: registry_url.to_owned(), readers: map, writers: HashMap::new() })
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

    /// Decodes a record value of `plan`'s stream; `seq` is its coordinate.
    pub fn decode(&mut self, plan: &StreamPlan, value: Option<&[u8]>, seq: u64) -> Result<Event, DecodeError> {
        let (type_name, json) = self.decode_json(plan, value)?;
        let event = dsl::json_event(&plan.schema, type_name.as_deref(), &json, seq).map_err(|e| {
            let code = if e.kind() == dsl::EventErrorKind::NullTimestamp { "bad-timestamp" } else { "missing-field" };
            reject(code, e.to_string())
        })?;
        Ok(event)
    }

    /// Decodes a record value to the stream's record type name (None for a stream of one type)
    /// and its JSON form, as the JSON-lines export writes it.
    pub fn decode_json(
        &mut self,
        plan: &StreamPlan,
        value: Option<&[u8]>,
    ) -> Result<(Option<String>, serde_json::Value), DecodeError> {
        let bytes = value.ok_or_else(|| reject("no-value", "the record has no value"))?;
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
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        if !self.writers.contains_key(&id) {
            let schema = self.fetch(id)?;
            self.writers.insert(id, Writer { schema, readable: HashMap::new() });
        }
        let writer = self.writers.get_mut(&id).ok_or_else(|| reject("unknown-schema", "cache"))?;
        let writer_schema = writer.schema.clone().map_err(DecodeError::Reject)?;
        let (reader_schema, branches) = self
            .readers
            .get(&plan.name)
            .ok_or_else(|| reject("wrong-schema", format!("stream `{}` has no schema", plan.name)))?;
        // Whether this writer schema reads as the stream's is decided once per (schema id, stream).
        if !writer.readable.contains_key(&plan.name) {
            let verdict = readable(id, &writer_schema, reader_schema, branches, &plan.name);
            writer.readable.insert(plan.name.clone(), verdict);
        }
        if let Some(Err(r)) = writer.readable.get(&plan.name) {
            return Err(DecodeError::Reject(r.clone()));
        }
        let mut datum = &bytes[5..];
        let value = apache_avro::reader::datum::GenericDatumReader::builder(&writer_schema)
            .reader_schema(reader_schema)
            .build()
            .and_then(|r| r.read_value(&mut datum))
            .map_err(|e| reject("undecodable", format!("schema id {id}: the Avro datum does not decode: {e}")))?;
        if !datum.is_empty() {
            return Err(reject(
                "undecodable",
                format!("schema id {id}: {} byte(s) left over after the Avro datum", datum.len()),
            ));
        }
        let type_name = match &value {
            &apache_avro::types::Value::Union(idx, _) => branches.get(idx as usize).cloned(),
            _ => branches.first().cloned(),
        };
        let json = serde_json::Value::try_from(value)
            .map_err(|e| reject("undecodable", format!("schema id {id}: the value does not convert: {e}")))?;
        Ok((type_name.filter(|t| !t.is_empty() && branches.len() > 1), json))
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

/// Whether records written with `writer_schema` (schema `id`) can be read as stream `stream`'s
/// schema: its record types must be the stream's, and Avro resolution must succeed.
fn readable(
    id: u32,
    writer_schema: &Schema,
    reader_schema: &Schema,
    branches: &[String],
    stream: &str,
) -> Result<(), Reject> {
    let writer_types: Vec<String> = match writer_schema {
        Schema::Union(u) => u.variants().iter().map(record_name).collect(),
        other => vec![record_name(other)],
    };
    let short = |n: &str| n.rsplit('.').next().unwrap_or(n).to_owned();
    if let Some(t) = writer_types.iter().find(|t| !branches.iter().any(|b| short(b) == short(t))) {
        return Err(Reject::new(
            "wrong-schema",
            format!(
                "schema id {id} writes record type `{}`, which is not a record type of stream `{}` ({})",
                if t.is_empty() { "(not a record)" } else { t },
                stream,
                branches.join(", ")
            ),
        ));
    }
    SchemaCompatibility::can_read(writer_schema, reader_schema).map(|_| ()).map_err(|e| match e {
        apache_avro::error::CompatibilityError::MissingDefaultValue(field) => Reject::new(
            "missing-field",
            format!(
                "schema id {id} has no field `{field}`, which stream `{}` requires (and has no default for)",
                stream
            ),
        ),
        e => Reject::new("wrong-schema", format!("schema id {id} cannot be read as stream `{}`'s schema: {e}", stream)),
    })
}

fn reject(code: &'static str, message: impl Into<String>) -> DecodeError {
    DecodeError::Reject(Reject::new(code, message))
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
