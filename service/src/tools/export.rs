//! `tripline export`: a stream's committed records, decoded through the registry as the service
//! decodes them, as JSON lines with their coordinates: the input of `tripline replay --input`.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::Value as Json;

use crate::core::pattern_sets::compile_files;
use crate::core::plan::build_plans;
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::avro::{AvroIn, Retried};
use crate::io::reader;
use crate::obs::out;

/// How long an export waits for a schema registry that does not answer.
const REGISTRY_PATIENCE: Duration = Duration::from_secs(30);

/// Writes the committed records of a stream's topic, from the beginning to the end it has when
/// the export starts, as JSON lines `{"stream","type","value","partition","offset"}` in
/// partition then offset order. Records the service would dead-letter are counted and left
/// out. (written, left out).
pub fn export(config: Option<&Path>, stream: &str, output: &Path) -> Result<(u64, u64)> {
    let (cfg, path) = super::load(config)?;
    let catalog = cfg.catalog(&path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let pattern_paths: Vec<_> = cfg.service.patterns.iter().map(|p| base.join(p)).collect();
    let set = compile_files(&pattern_paths, &catalog, &mut |d| out(&format!("{d}\n"))).map_err(Error::usage)?;
    let plans = build_plans(&cfg.streams, &path, &catalog, &set.nfas, &cfg.kafka.group_id)?;
    let plan = plans
        .values()
        .find(|p| p.name == stream && !p.is_repartitioned())
        .ok_or_else(|| Error::usage(format!("no pattern reads stream `{stream}` (or there is no such stream)")))?;
    let mut avro = AvroIn::for_plans(&cfg, &path, [plan])?;
    let consumer = reader::reader(&cfg)?;
    let file =
        std::fs::File::create(output).or_fail_with(Kind::Usage, || format!("cannot write {}", output.display()))?;
    let mut w = BufWriter::new(file);
    let (mut written, mut rejected) = (0u64, 0u64);
    let mut failed = None;
    reader::scan(&consumer, &cfg, &plan.topic, &mut |partition, offset, value| {
        let decoded = avro.retrying(Some(REGISTRY_PATIENCE), &|| false, |a| a.decode_json(plan, Some(value)));
        let written_ok = match decoded {
            Ok(Retried::Decoded((ty, value))) => {
                let mut line = serde_json::json!({"stream": plan.name, "value": value,
                    "partition": partition, "offset": offset});
                if let Some(t) = ty {
                    line["type"] = Json::String(t);
                }
                written += 1;
                writeln!(w, "{line}").or_fail(Kind::Failed, "writing the export")
            }
            Ok(Retried::Rejected(_)) => {
                rejected += 1;
                Ok(())
            }
            Ok(Retried::Cancelled) => Err(Error::failed("the export was cancelled")),
            Err(e) => Err(e),
        };
        match written_ok {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    w.flush().or_fail(Kind::Failed, "writing the export")?;
    Ok((written, rejected))
}
