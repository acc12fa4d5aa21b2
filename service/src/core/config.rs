//! The service configuration file (`tripline.toml`): the streams (name -> topic + Avro schema +
//! event-time field), how patterns run, and for `tripline run` the Kafka clients, the schema
//! registry, the output topics and the service itself.
//!
//! Every key can be left out except the streams; the defaults suit a local broker. A few keys
//! can be overridden from the environment (see [`ENV_OVERRIDES`]), and any librdkafka property
//! can be passed with `TRIPLINE_KAFKA_PROP_<NAME>` (dots as underscores, e.g.
//! `TRIPLINE_KAFKA_PROP_SASL_PASSWORD`). Secrets never appear in `Debug` output or messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dsl::{Catalog, StreamSchema};
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Kind, ResultExt};

type Result<T, E = Error> = std::result::Result<T, E>;

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "TRIPLINE_CONFIG";
/// The config file looked for in the working directory when neither is given.
pub const DEFAULT_CONFIG: &str = "tripline.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub streams: BTreeMap<String, StreamConfig>,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub registry: RegistryConfig,
    #[serde(default)]
    pub outputs: OutputsConfig,
    #[serde(default)]
    pub service: ServiceConfig,
    #[serde(default)]
    pub state: StateConfig,
    /// Reference tables patterns read (`in list NAME`, `lookup(NAME, key)`), by name.
    #[serde(default)]
    pub tables: BTreeMap<String, TableConfig>,
}

/// A reference table (`[tables.NAME]`): its shape, which patterns are checked against, and
/// where its contents come from (a file, or a compacted topic that can change while the
/// service runs; see docs/service.md, "Reference data").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `list` (keys only) or `map` (a value per key).
    pub kind: TableKindConfig,
    /// The key type: `string` or `int`.
    pub key: ValueType,
    /// The value type of a map: `string`, `int`, `double` or `boolean`.
    pub value: Option<ValueType>,
    /// A JSON file, relative to the config file: an array of keys (a list) or an object of
    /// key to value (a map). Without `file` or `topic` the table is empty (enough to check
    /// patterns against; `tripline run` refuses it).
    pub file: Option<PathBuf>,
    /// A compacted topic: the record key is the entry's key (UTF-8), the value its JSON value
    /// (anything but null for a list), a tombstone removes it.
    pub topic: Option<String>,
}

/// `tables.NAME.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKindConfig {
    List,
    Map,
}

/// A reference table's key or value type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    String,
    Int,
    Double,
    Boolean,
}

impl ValueType {
    pub fn field_type(self) -> dsl::FieldType {
        match self {
            ValueType::String => dsl::FieldType::Str,
            ValueType::Int => dsl::FieldType::Int,
            ValueType::Double => dsl::FieldType::Float,
            ValueType::Boolean => dsl::FieldType::Bool,
        }
    }
}

impl TableConfig {
    /// The table's shape as the checker sees it.
    pub fn decl(&self) -> dsl::TableDecl {
        match self.kind {
            TableKindConfig::List => dsl::TableDecl::list(self.key.field_type()),
            TableKindConfig::Map => {
                dsl::TableDecl::map(self.key.field_type(), self.value.unwrap_or(ValueType::String).field_type())
            }
        }
    }
}

/// Engine state in memory and on disk (`[state]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Keys (one pattern's state of one key) held decoded in memory, over every assigned
    /// partition; the others are in the local store (RocksDB) and read when an event or a timer
    /// needs them. Keys that changed since the last commit stay in memory until it: a commit
    /// comes early when they are twice this many. Env: `TRIPLINE_STATE_CACHE_SIZE`.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { cache_size: default_cache_size() }
    }
}

fn default_cache_size() -> usize {
    100_000
}

/// A value that is never shown: `Debug` and `Display` print `***`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Kafka clients (`[kafka]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`. Env: `TRIPLINE_KAFKA_BOOTSTRAP`.
    pub bootstrap_servers: Option<String>,
    /// The consumer group of the service instances. Env: `TRIPLINE_KAFKA_GROUP_ID`.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// librdkafka properties for every client: `security.protocol`, `ssl.*`, `sasl.*`, ...
    /// Values of keys that look secret (password, secret, key, jaas) are never logged.
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
    /// Join the group as a static member (`group.instance.id = <group_id>-<instance_id>`): a
    /// restarted instance gets its partitions back at once, without a rebalance; but an instance
    /// that stops does not leave the group (its partitions wait for its session to time out).
    /// Off (the default): an instance that stops leaves the group and its partitions move at once.
    #[serde(default)]
    pub static_membership: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: None,
            group_id: default_group(),
            properties: BTreeMap::new(),
            static_membership: false,
        }
    }
}

fn default_group() -> String {
    "tripline".to_owned()
}

/// The Confluent-compatible schema registry (`[registry]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL. Env: `TRIPLINE_REGISTRY_URL`.
    pub url: Option<String>,
    /// Basic authentication. Env: `TRIPLINE_REGISTRY_USERNAME`, `TRIPLINE_REGISTRY_PASSWORD`.
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// Where results go (`[outputs]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    /// Alerts, one per record, keyed by the pattern key.
    #[serde(default = "default_alerts")]
    pub alerts_topic: String,
    /// How alerts (live and shadow) are written: `json` (one JSON document per record) or
    /// `avro` (the alert schema `service/avro/alert.avsc`, registered under each alerts topic's
    /// subject, Confluent-framed). Default json.
    #[serde(default)]
    pub alert_format: AlertFormat,
    /// Alerts of patterns in `mode shadow`, in the same form.
    #[serde(default = "default_shadow_alerts")]
    pub shadow_alerts_topic: String,
    /// Late events (their original bytes, with the reason in headers).
    #[serde(default = "default_late")]
    pub late_topic: String,
    /// Records that cannot be processed (original bytes, reason and source in headers).
    #[serde(default = "default_dead_letter")]
    pub dead_letter_topic: String,
    /// Every pattern set the service activated (hash, versions, sources, per-partition offset
    /// and watermark), one JSON document per activation: what `tripline replay --pattern-set` reads.
    #[serde(default = "default_pattern_sets")]
    pub pattern_sets_topic: String,
    /// Timed-out partial matches; unset: not published.
    pub timeouts_topic: Option<String>,
    /// The compacted changelog of the engine state; default `<group_id>.changelog`.
    pub changelog_topic: Option<String>,
    /// Where what results depend on besides the records is recorded for replay: wall-clock
    /// advances of idle partitions (`advance_when_idle`) and reference table versions (see
    /// `core::context`); default `<group_id>.context`.
    pub context_topic: Option<String>,
    /// Partitions of the output topics the service creates when they do not exist.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of the topics the service creates; default 3, or the number of
    /// brokers when the cluster has fewer (a development broker gets 1).
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of the topics the service creates; default one less than the
    /// replication factor (at least 1).
    pub min_insync_replicas: Option<i32>,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        OutputsConfig {
            alerts_topic: default_alerts(),
            alert_format: AlertFormat::default(),
            shadow_alerts_topic: default_shadow_alerts(),
            late_topic: default_late(),
            dead_letter_topic: default_dead_letter(),
            pattern_sets_topic: default_pattern_sets(),
            timeouts_topic: None,
            changelog_topic: None,
            context_topic: None,
            partitions: default_partitions(),
            replication_factor: None,
            min_insync_replicas: None,
        }
    }
}

/// `outputs.alert_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    #[default]
    Json,
    Avro,
}

fn default_alerts() -> String {
    "tripline.alerts".to_owned()
}
fn default_shadow_alerts() -> String {
    "tripline.alerts.shadow".to_owned()
}
fn default_late() -> String {
    "tripline.late".to_owned()
}
fn default_dead_letter() -> String {
    "tripline.dead-letter".to_owned()
}
fn default_pattern_sets() -> String {
    "tripline.pattern-sets".to_owned()
}
fn default_partitions() -> i32 {
    4
}

/// The service process (`[service]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Pattern files or directories, relative to the config file.
    #[serde(default = "default_patterns")]
    pub patterns: Vec<PathBuf>,
    /// RocksDB state directory, relative to the config file. Env: `TRIPLINE_STATE_DIR`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Stable name of this instance: its transactional id is `<group_id>-<instance_id>`, so a
    /// restarted instance fences its previous incarnation. Env: `TRIPLINE_INSTANCE_ID`.
    #[serde(default = "default_instance")]
    pub instance_id: String,
    /// Each commit interval is one Kafka transaction. Env: `TRIPLINE_COMMIT_INTERVAL`.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Millis,
    /// `/healthz` and `/readyz` listen here. Env: `TRIPLINE_HTTP_ADDR`.
    #[serde(default = "default_http")]
    pub http_addr: String,
    /// Events with an event time outside [min_event_time, max_event_time] (epoch ms) go to the
    /// dead-letter topic: one absurd timestamp would otherwise make a partition's later events late.
    #[serde(default = "default_min_time")]
    pub min_event_time: i64,
    #[serde(default = "default_max_time")]
    pub max_event_time: i64,
    /// Threads that feed partitions' records to their engine state side by side (a partition
    /// is always on one thread at a time); default: the machine's cores.
    pub threads: Option<usize>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            patterns: default_patterns(),
            state_dir: default_state_dir(),
            instance_id: default_instance(),
            commit_interval: default_commit_interval(),
            http_addr: default_http(),
            min_event_time: default_min_time(),
            max_event_time: default_max_time(),
            threads: None,
        }
    }
}

fn default_patterns() -> Vec<PathBuf> {
    vec![PathBuf::from("patterns")]
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}
fn default_instance() -> String {
    "0".to_owned()
}
fn default_commit_interval() -> Millis {
    Millis(100)
}
fn default_http() -> String {
    "127.0.0.1:9464".to_owned()
}
/// 2000-01-01T00:00:00Z.
fn default_min_time() -> i64 {
    946_684_800_000
}
/// 2100-01-01T00:00:00Z.
fn default_max_time() -> i64 {
    4_102_444_800_000
}

/// Environment variables that override config keys (variable, key).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("TRIPLINE_KAFKA_BOOTSTRAP", "kafka.bootstrap_servers"),
    ("TRIPLINE_KAFKA_GROUP_ID", "kafka.group_id"),
    ("TRIPLINE_REGISTRY_URL", "registry.url"),
    ("TRIPLINE_REGISTRY_USERNAME", "registry.username"),
    ("TRIPLINE_REGISTRY_PASSWORD", "registry.password"),
    ("TRIPLINE_STATE_DIR", "service.state_dir"),
    ("TRIPLINE_INSTANCE_ID", "service.instance_id"),
    ("TRIPLINE_COMMIT_INTERVAL", "service.commit_interval"),
    ("TRIPLINE_HTTP_ADDR", "service.http_addr"),
    ("TRIPLINE_STATE_CACHE_SIZE", "state.cache_size"),
];

/// Overridden keys whose value is a number.
const NUMERIC_OVERRIDES: &[&str] = &["state.cache_size"];

/// Prefix of environment variables that set librdkafka properties.
pub const KAFKA_PROP_ENV: &str = "TRIPLINE_KAFKA_PROP_";

/// Whether a librdkafka property's value must never be shown.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "key", "token", "credential"].iter().any(|w| k.contains(w))
}

/// How patterns run (`[engine]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// At most this many partial matches per key and pattern; beyond it the earliest-started are
    /// dropped and counted. Unset: no bound.
    pub max_partial_matches_per_key: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Kafka topic the stream is read from.
    pub topic: String,
    /// Avro schema file (`.avsc`), relative to the config file.
    pub schema: PathBuf,
    /// Field holding the event time (a timestamp-millis long). Without it, the Kafka record
    /// timestamp is the event time.
    pub timestamp_field: Option<String>,
    /// How far behind the newest event an event may arrive and still be on time, e.g. `5s`.
    pub max_out_of_orderness: Option<Millis>,
    /// The field the topic is partitioned by (the record key). State is kept per partition: a
    /// pattern keyed by another field reads a repartition topic the service writes
    /// (`<group>.<stream>.by-<field>`, see docs/service.md). Without it, every pattern sees each
    /// key's events per partition only. `tripline produce` keys records by it.
    pub key: Option<String>,
    /// A partition that has had no record for this long is idle: it no longer holds back the
    /// watermark of the patterns that read the stream through a repartition topic, until its
    /// next record. Default 10s.
    pub idle_timeout: Option<Millis>,
    /// When a partition is idle (no record for `idle_timeout` and nothing left to read), its
    /// watermark advances by the wall clock, as if an event stamped now had arrived, so that its
    /// own windows and trailing `not followed by ... within` close on time. Each advance is
    /// recorded in the context topic in the same transaction, for replay. Default false: the
    /// watermark moves only with events (right for streams whose event time does not follow the
    /// wall clock, such as a backfill).
    #[serde(default)]
    pub advance_when_idle: bool,
}

impl StreamConfig {
    /// [`StreamConfig::idle_timeout`] or its default, in ms.
    pub fn idle_timeout_ms(&self) -> i64 {
        self.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT_MS, |d| d.0)
    }
}

/// The default of `streams.<name>.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT_MS: i64 = 10_000;

/// A duration in milliseconds, written `500ms`, `5s`, `10m`, `24h` or `7d` in the file: parsed
/// once, when the configuration is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(pub i64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Millis).map_err(serde::de::Error::custom)
    }
}

/// Parses `500ms`, `5s`, `10m`, `24h`, `7d` into milliseconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let s = s.trim();
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let n: i64 = num.parse().or_fail(
        Kind::Usage,
        format_args!("`{s}` is not a duration: expected a number followed by ms, s, m, h or d"),
    )?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(Error::usage(format!("`{s}` is not a duration: the unit must be ms, s, m, h or d"))),
    };
    n.checked_mul(mult).ok_or_else(|| Error::usage(format!("duration `{s}` is too large")))
}

/// Where the config comes from: `--config`, else `$TRIPLINE_CONFIG`, else `./tripline.toml`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let default = PathBuf::from(DEFAULT_CONFIG);
    if default.is_file() {
        return Ok(default);
    }
    Err(Error::usage(format!(
        "no configuration: pass --config FILE, set {CONFIG_ENV}, or run where {DEFAULT_CONFIG} is"
    )))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = read(path)?;
        let cfg: Config = toml::from_str(&text).map_err(|e| bad_toml(path, &e))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Loads the file, then applies the environment overrides.
    pub fn load_with_env(path: &Path) -> Result<Config> {
        let text = read(path)?;
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| bad_toml(path, &e))?;
        apply_env(&mut doc, std::env::vars())?;
        let cfg: Config = doc.try_into().map_err(|e: toml::de::Error| bad_toml(path, &e))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let cfg = self;
        let bad = |what: &str| Err(Error::usage(format!("{}: {what}", path.display())));
        if cfg.engine.max_partial_matches_per_key == Some(0) {
            return bad("engine.max_partial_matches_per_key must be at least 1");
        }
        if cfg.state.cache_size == 0 {
            return bad("state.cache_size must be at least 1");
        }
        for (name, s) in &cfg.streams {
            if s.topic.trim().is_empty() {
                return bad(&format!("streams.{name}.topic is empty"));
            }
            if s.idle_timeout.is_some_and(|d| d.0 < 1) {
                return bad(&format!("streams.{name}.idle_timeout must be at least 1ms"));
            }
        }
        if cfg.outputs.alert_format == AlertFormat::Avro
            && cfg.registry.url.as_deref().is_none_or(|u| u.trim().is_empty())
        {
            return bad("outputs.alert_format = \"avro\" needs the schema registry: set registry.url (or TRIPLINE_REGISTRY_URL)");
        }
        for (name, t) in &cfg.tables {
            let at = format!("tables.{name}");
            if !matches!(t.key, ValueType::String | ValueType::Int) {
                return bad(&format!("{at}.key must be \"string\" or \"int\""));
            }
            match (t.kind, t.value) {
                (TableKindConfig::Map, None) => {
                    return bad(&format!("{at}: a map needs `value` (\"string\", \"int\", \"double\" or \"boolean\")"))
                }
                (TableKindConfig::List, Some(_)) => {
                    return bad(&format!("{at}: a list has no `value` (use kind = \"map\")"))
                }
                _ => {}
            }
            match (&t.file, &t.topic) {
                (Some(_), Some(_)) => return bad(&format!("{at}: give `file` or `topic`, not both")),
                (None, Some(topic)) if topic.trim().is_empty() => return bad(&format!("{at}.topic is empty")),
                _ => {}
            }
        }
        if cfg.service.commit_interval.0 < 1 {
            return bad("service.commit_interval must be at least 1ms");
        }
        if cfg.service.min_event_time >= cfg.service.max_event_time {
            return bad("service.min_event_time must be below service.max_event_time");
        }
        if cfg.outputs.partitions < 1 {
            return bad("outputs.partitions must be at least 1");
        }
        if cfg.kafka.group_id.trim().is_empty() {
            return bad("kafka.group_id is empty");
        }
        if cfg.service.instance_id.trim().is_empty() {
            return bad("service.instance_id is empty");
        }
        Ok(())
    }

    /// The commit interval in milliseconds.
    pub fn commit_interval_ms(&self) -> i64 {
        self.service.commit_interval.0
    }

    /// The changelog topic's name.
    pub fn changelog_topic(&self) -> String {
        self.outputs.changelog_topic.clone().unwrap_or_else(|| format!("{}.changelog", self.kafka.group_id))
    }

    /// The context topic (see [`OutputsConfig::context_topic`]), when a stream advances when
    /// idle or a reference table is configured.
    pub fn context_topic(&self) -> Option<String> {
        (self.streams.values().any(|s| s.advance_when_idle) || !self.tables.is_empty())
            .then(|| self.outputs.context_topic.clone().unwrap_or_else(|| format!("{}.context", self.kafka.group_id)))
    }

    /// Loads every stream's schema (paths relative to the config file's directory).
    pub fn catalog(&self, config_path: &Path) -> Result<Catalog> {
        let base = config_path.parent().unwrap_or(Path::new("."));
        let mut catalog = Catalog::default();
        for (name, s) in &self.streams {
            let path = base.join(&s.schema);
            let json = std::fs::read_to_string(&path).or_fail_with(Kind::Usage, || {
                format!("{}: stream `{name}`: cannot read schema {}", config_path.display(), path.display())
            })?;
            let schema = StreamSchema::from_avro_json(name, &json, s.timestamp_field.as_deref())
                .or_fail_with(Kind::Usage, || {
                    format!("{}: stream `{name}`: schema {}", config_path.display(), path.display())
                })?;
            catalog.insert(schema);
        }
        for (name, t) in &self.tables {
            catalog.insert_table(name.clone(), t.decl());
        }
        Ok(catalog)
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).or_fail_with(Kind::Usage, || format!("cannot read config {}", path.display()))
}

fn bad_toml(path: &Path, e: &toml::de::Error) -> Error {
    Error::usage(format!("{}: {}", path.display(), e.to_string().trim_end()))
}

/// Applies `TRIPLINE_*` overrides from `vars` to the parsed document.
fn apply_env(doc: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> Result<()> {
    for (var, value) in vars {
        let key = if let Some((_, key)) = ENV_OVERRIDES.iter().find(|(v, _)| *v == var) {
            (*key).to_owned()
        } else if let Some(prop) = var.strip_prefix(KAFKA_PROP_ENV) {
            if prop.is_empty() {
                return Err(Error::usage(format!(
                    "{var}: name the librdkafka property after the prefix, e.g. {KAFKA_PROP_ENV}SASL_USERNAME"
                )));
            }
            let prop = prop.to_ascii_lowercase().replace('_', ".");
            let props = doc
                .entry("kafka")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| Error::usage("`kafka` is not a table"))?
                .entry("properties")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let props = props.as_table_mut().ok_or_else(|| Error::usage("`kafka.properties` is not a table"))?;
            props.insert(prop, toml::Value::String(value));
            continue;
        } else {
            continue;
        };
        let (section, field) = key.split_once('.').ok_or_else(|| Error::usage("override keys are section.field"))?;
        let table = doc
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::usage(format!("`{section}` is not a table")))?;
        let value = if NUMERIC_OVERRIDES.contains(&key.as_str()) {
            let n = value
                .trim()
                .parse::<i64>()
                .map_err(|_| Error::usage(format!("{var}: `{value}` is not a whole number (it sets {key})")))?;
            toml::Value::Integer(n)
        } else {
            toml::Value::String(value)
        };
        table.insert(field.to_owned(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").ok(), Some(500));
        assert_eq!(parse_duration("7d").ok(), Some(604_800_000));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn env_overrides_and_secrets() {
        let mut doc: toml::Table = toml::from_str("[kafka]\ngroup_id = 'g'\n").expect("toml");
        let vars = vec![
            ("TRIPLINE_KAFKA_BOOTSTRAP".to_owned(), "127.0.0.1:1".to_owned()),
            ("TRIPLINE_KAFKA_PROP_SASL_PASSWORD".to_owned(), "hunter2".to_owned()),
            ("TRIPLINE_REGISTRY_PASSWORD".to_owned(), "swordfish".to_owned()),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        apply_env(&mut doc, vars.into_iter()).expect("env");
        let cfg: Config = doc.try_into().expect("config");
        assert_eq!(cfg.kafka.bootstrap_servers.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(cfg.kafka.group_id, "g");
        assert_eq!(cfg.kafka.properties.get("sasl.password").map(|s| s.0.as_str()), Some("hunter2"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("swordfish"), "{shown}");
        assert!(is_secret_property("sasl.password") && is_secret_property("ssl.key.pem"));
        assert!(!is_secret_property("security.protocol"));
    }

    #[test]
    fn durations_are_parsed_once_when_the_file_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.toml");
        let write = |text: &str| std::fs::write(&path, text).expect("written");
        write("[streams.p]\ntopic = 'p'\nschema = 'p.avsc'\nmax_out_of_orderness = '5s'\n[service]\ncommit_interval = '250ms'\n");
        let cfg = Config::load(&path).expect("valid");
        assert_eq!(cfg.commit_interval_ms(), 250);
        assert_eq!(cfg.streams["p"].max_out_of_orderness, Some(Millis(5_000)));
        // A bad duration is an error that says where, at load (not a default later).
        write("[service]\ncommit_interval = 'soon'\n");
        let e = Config::load(&path).expect_err("not a duration");
        assert_eq!(e.kind(), Kind::Usage);
        let text = e.to_string();
        assert!(text.contains("line 2") && text.contains("`soon` is not a duration"), "{text}");
        // Through an environment override: the message names the key.
        let mut doc: toml::Table = toml::from_str("").expect("toml");
        apply_env(&mut doc, [("TRIPLINE_COMMIT_INTERVAL".to_owned(), "soon".to_owned())].into_iter()).expect("env");
        let e = doc.try_into::<Config>().expect_err("not a duration").to_string();
        assert!(e.contains("service.commit_interval") && e.contains("`soon` is not a duration"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err =
            toml::from_str::<Config>("[streams.p]\ntopic='p'\nschema='x'\ntimestamp='t'\n").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `timestamp`"), "{err}");
    }
}
