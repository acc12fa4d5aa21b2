//! `tripline bench`: the engine's throughput on the FlinkCEP benchmark's input
//! ([`crate::tools::bench`]; `scripts/bench-flinkcep` runs both engines), `tripline bench scale`,
//! the engine's per-event cost as windows and keys grow ([`crate::tools::bench_scale`]),
//! `tripline bench patterns`, many patterns on one stream ([`crate::tools::bench_patterns`]), and
//! `tripline bench kafka`, the service end to end against a broker and a registry
//! ([`crate::tools::bench_kafka`]; `scripts/bench-kafka` starts them and runs it).

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

use super::Status;
use crate::error::{Error, Result};
use crate::obs::init_logging_with;
use crate::tools::bench_kafka::{self, Options, Part};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// The generated events (`events_N.csv`: seq,key,ts,type,amount).
    #[arg(long, value_name = "FILE", required = true)]
    input: Option<PathBuf>,
    /// P1 or P2 (testdata/bench/).
    #[arg(long, value_name = "P1|P2", required = true)]
    pattern: Option<String>,
    /// Write the matches here, in the harness's line format, sorted.
    #[arg(long, value_name = "FILE")]
    matches: Option<PathBuf>,
    /// Which of the engine's tiers run the pattern: `fast` (the default: the fast tier where
    /// the pattern is a chain, the exact runtime skipping unchanged steps elsewhere), `skip`
    /// (no fast tier) or `exact` (FlinkCEP's full step for every event).
    #[arg(long, value_enum, default_value_t = TierArg::Fast)]
    tier: TierArg,
}

/// `bench --tier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TierArg {
    Fast,
    Skip,
    Exact,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// The service end to end against a Kafka broker and a schema registry: the broker's raw
    /// rate, the service's rate per commit interval, alert latency, rebalance and restore times.
    /// scripts/bench-kafka starts a local broker and registry and runs this.
    Kafka(KafkaArgs),
    /// The engine's per-event cost as the window and the number of keys grow, at a fixed event
    /// rate (P1 with each window, generated events as the FlinkCEP harness makes them).
    Scale(ScaleArgs),
    /// Many patterns on one stream: a fleet of generated rules (1, 10, 100, 1,000 by default)
    /// over the same generated events, through the multi-pattern operator and, for smaller
    /// fleets, through one operator per rule.
    Patterns(PatternsArgs),
}

/// The fleets of `bench patterns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FleetArg {
    /// Each rule watches one merchant.
    Merchant,
    /// Every rule watches every merchant.
    Shared,
}

#[derive(clap::Args, Debug)]
struct PatternsArgs {
    /// Events per run (about one per millisecond of event time).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Accounts (the key) the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Numbers of rules, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000", value_name = "N,...")]
    counts: Vec<usize>,
    /// Which fleets, comma-separated. The `shared` fleet's matching work and state grow with
    /// every rule (1,000 of its rules over 10,000 keys do not fit in 23 GB): give it smaller
    /// --counts.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "merchant", value_name = "FLEET,...")]
    fleets: Vec<FleetArg>,
    /// Also run one operator per rule (as the service does) for fleets up to this many rules.
    #[arg(long, default_value_t = 10, value_name = "N")]
    separate_max: usize,
    /// Seed of the events and the rules.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the first N rules of each fleet and exit.
    #[arg(long, value_name = "N")]
    print_rules: Option<usize>,
}

#[derive(clap::Args, Debug)]
struct ScaleArgs {
    /// Events per run (about one per millisecond of event time).
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Windows of P1, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1m,10m,1h,24h", value_name = "DURATION,...")]
    windows: Vec<String>,
    /// Numbers of keys, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000", value_name = "N,...")]
    keys: Vec<u64>,
    /// Seed of the generated events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// The parts of `bench kafka`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PartArg {
    Raw,
    Service,
    Latency,
    Rebalance,
    Restore,
    Keys,
}

#[derive(clap::Args, Debug)]
struct KafkaArgs {
    /// Configs, inputs, state and service logs go here (created; must be empty).
    #[arg(long, value_name = "DIR")]
    work_dir: PathBuf,
    /// The broker (default: $TRIPLINE_KAFKA_BOOTSTRAP).
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Option<String>,
    /// The schema registry (default: $TRIPLINE_REGISTRY_URL).
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
    /// Which parts to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PART,...")]
    only: Vec<PartArg>,
    /// Payments for the raw and service parts.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Accounts the payments are spread over.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Partitions of the payments topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Commit intervals of the service part, ms, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100", value_name = "MS,...")]
    intervals: Vec<u64>,
    /// Offered load of the latency part, events/s.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Payments of the latency part.
    #[arg(long, default_value_t = 20_000)]
    latency_events: usize,
    /// Commit interval of the latency part, ms.
    #[arg(long, default_value_t = 10)]
    latency_interval: u64,
    /// Payments in the 8-partition topic before the second instance joins.
    #[arg(long, default_value_t = 20_000)]
    rebalance_events: usize,
    /// State to build up for the restore part, MB (10^6 bytes).
    #[arg(long, default_value_t = 100)]
    state_mb: u64,
    /// Accounts of the keys part, each with a partial match that stays open.
    #[arg(long, default_value_t = 1_000_000)]
    open_keys: u64,
    /// `state.cache_size` of the keys part.
    #[arg(long, default_value_t = 100_000)]
    cache_size: usize,
}

pub fn run(args: Args) -> Result<Status> {
    match args.mode {
        Some(Mode::Kafka(k)) => return kafka(k),
        Some(Mode::Scale(s)) => {
            let scale =
                crate::tools::bench_scale::Scale { events: s.events, windows: s.windows, keys: s.keys, seed: s.seed };
            crate::tools::bench_scale::run(&scale)?;
            return Ok(Status::Ok);
        }
        Some(Mode::Patterns(p)) => {
            use crate::tools::bench_patterns::{self as bp, Fleet};
            let fleets: Vec<Fleet> = p
                .fleets
                .iter()
                .map(|f| match f {
                    FleetArg::Merchant => Fleet::Merchant,
                    FleetArg::Shared => Fleet::Shared,
                })
                .collect();
            if let Some(n) = p.print_rules {
                for &f in &fleets {
                    bp::print_rules(f, n, p.seed);
                }
                return Ok(Status::Ok);
            }
            let run = bp::Patterns {
                events: p.events,
                keys: p.keys,
                counts: p.counts,
                fleets,
                separate_max: p.separate_max,
                seed: p.seed,
            };
            bp::run(&run)?;
            return Ok(Status::Ok);
        }
        None => {}
    }
    let (Some(input), Some(pattern)) = (args.input, args.pattern) else {
        return Err(Error::usage("bench needs --input and --pattern (or the subcommand `kafka`)"));
    };
    let config = match args.tier {
        TierArg::Fast => engine::runtime::Config::default(),
        TierArg::Skip => engine::runtime::Config { fast_tier: engine::runtime::FastTier::Off, ..Default::default() },
        TierArg::Exact => engine::runtime::Config { exact_steps: true, ..Default::default() },
    };
    crate::tools::bench::run(&input, &pattern, args.matches.as_deref(), config)?;
    Ok(Status::Ok)
}

fn kafka(k: KafkaArgs) -> Result<Status> {
    init_logging_with("warn");
    let from_env = |given: Option<String>, flag: &str, var: &str| {
        given.or_else(|| std::env::var(var).ok()).filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            Error::usage(format!(
                "no {flag}: give --{flag} or set {var} (scripts/bench-kafka starts a broker and a registry)"
            ))
        })
    };
    let bootstrap = from_env(k.bootstrap, "bootstrap", "TRIPLINE_KAFKA_BOOTSTRAP")?;
    let registry = from_env(k.registry, "registry", "TRIPLINE_REGISTRY_URL")?;
    if k.events == 0
        || k.keys == 0
        || k.partitions < 1
        || k.rate == 0
        || k.latency_events == 0
        || k.state_mb == 0
        || k.open_keys == 0
        || k.cache_size == 0
    {
        return Err(Error::usage(
            "--events, --keys, --partitions, --rate, --latency-events, --state-mb, --open-keys and --cache-size must be above 0",
        ));
    }
    if k.intervals.is_empty() || k.intervals.contains(&0) || k.latency_interval == 0 {
        return Err(Error::usage("commit intervals must be at least 1 ms"));
    }
    let all = [PartArg::Raw, PartArg::Service, PartArg::Latency, PartArg::Rebalance, PartArg::Restore, PartArg::Keys];
    let parts = if k.only.is_empty() { all.to_vec() } else { k.only };
    let o = Options {
        work_dir: k.work_dir,
        bootstrap,
        registry,
        parts: parts
            .into_iter()
            .map(|p| match p {
                PartArg::Raw => Part::Raw,
                PartArg::Service => Part::Service,
                PartArg::Latency => Part::Latency,
                PartArg::Rebalance => Part::Rebalance,
                PartArg::Restore => Part::Restore,
                PartArg::Keys => Part::Keys,
            })
            .collect(),
        events: k.events,
        keys: k.keys,
        partitions: k.partitions,
        intervals_ms: k.intervals,
        rate: k.rate,
        latency_events: k.latency_events,
        latency_interval_ms: k.latency_interval,
        rebalance_events: k.rebalance_events.max(1),
        state_mb: k.state_mb,
        open_keys: k.open_keys,
        cache_size: k.cache_size,
    };
    Ok(if bench_kafka::run(&o)? { Status::Ok } else { Status::Invalid })
}
