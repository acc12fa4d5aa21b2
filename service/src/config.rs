//! The service configuration file (`tripline.toml`). For now: the streams, which the pattern
//! checker needs (name -> topic + Avro schema + event-time field).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dsl::{Catalog, StreamSchema};
use serde::Deserialize;

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
}

/// How patterns run (`[engine]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// At most this many partial matches per key and pattern; beyond it the earliest-started are
    /// dropped and counted. Unset: no bound.
    pub max_partial_matches_per_key: Option<usize>,
}

#[derive(Debug, Deserialize)]
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
    pub max_out_of_orderness: Option<String>,
}

/// Parses `500ms`, `5s`, `10m`, `24h`, `7d` into milliseconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let s = s.trim();
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let n: i64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a duration: expected a number followed by ms, s, m, h or d"))?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("`{s}` is not a duration: the unit must be ms, s, m, h or d"),
    };
    n.checked_mul(mult).with_context(|| format!("duration `{s}` is too large"))
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
    bail!("no configuration: pass --config FILE, set {CONFIG_ENV}, or run where {DEFAULT_CONFIG} is")
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        if cfg.engine.max_partial_matches_per_key == Some(0) {
            bail!("{}: engine.max_partial_matches_per_key must be at least 1", path.display());
        }
        for (name, s) in &cfg.streams {
            if let Some(d) = &s.max_out_of_orderness {
                parse_duration(d)
                    .with_context(|| format!("{}: streams.{name}.max_out_of_orderness", path.display()))?;
            }
            if s.topic.trim().is_empty() {
                bail!("{}: streams.{name}.topic is empty", path.display());
            }
        }
        Ok(cfg)
    }

    /// Loads every stream's schema (paths relative to the config file's directory).
    pub fn catalog(&self, config_path: &Path) -> Result<Catalog> {
        let base = config_path.parent().unwrap_or(Path::new("."));
        let mut catalog = Catalog::default();
        for (name, s) in &self.streams {
            let path = base.join(&s.schema);
            let json = std::fs::read_to_string(&path).with_context(|| {
                format!("{}: stream `{name}`: cannot read schema {}", config_path.display(), path.display())
            })?;
            let schema = StreamSchema::from_avro_json(name, &json, s.timestamp_field.as_deref())
                .with_context(|| format!("{}: stream `{name}`: schema {}", config_path.display(), path.display()))?;
            catalog.insert(schema);
        }
        Ok(catalog)
    }
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
    fn unknown_keys_are_errors() {
        let err =
            toml::from_str::<Config>("[streams.p]\ntopic='p'\nschema='x'\ntimestamp='t'\n").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `timestamp`"), "{err}");
    }
}
