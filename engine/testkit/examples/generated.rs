//! The generated-pattern harness over a range of seeds, outside the test runner (as
//! `tests/generated.rs` runs it, longer):
//!
//!     cargo run --release -p tripline-testkit --example generated -- [FROM] [COUNT]
//!
//! Prints each failing seed with its patterns and what differs, then a summary; exits 1 when a
//! seed fails. `SHOW=1` prints the case of seed FROM instead. With a file instead of FROM (a
//! fuzzer's input), prints its case, checks it and times it.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use testkit::gen::{case, check, Checked};
use testkit::streams::Rng;

fn main() {
    if let Some(path) = std::env::args().nth(1).filter(|a| std::path::Path::new(a).is_file()) {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let c = case(&mut testkit::gen::Bytes::new(&bytes));
        println!("{:?}, {} steps, plan {:?}\n{}", c.config, c.steps.len(), c.plan, c.sources.join("\n"));
        let start = Instant::now();
        let result = check(&c);
        println!("{result:?} in {:.3}s", start.elapsed().as_secs_f64());
        return;
    }
    let arg = |i: usize, default: u64| std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (from, count) = (arg(1, 0), arg(2, 1_000));
    if std::env::var_os("SHOW").is_some() {
        let c = case(&mut Rng(from));
        println!("{:?}, {} steps, plan {:?}\n{}", c.config, c.steps.len(), c.plan, c.sources.join("\n"));
        return;
    }
    let start = Instant::now();
    let (mut failures, mut sum, mut patterns) = (0u64, Checked::default(), 0usize);
    for seed in from..from + count {
        let c = case(&mut Rng(seed));
        patterns += c.patterns.len();
        match catch_unwind(AssertUnwindSafe(|| check(&c))) {
            Ok(Ok(k)) => {
                sum += k;
            }
            Ok(Err(e)) => {
                failures += 1;
                println!("== seed {seed}: {e}\n");
            }
            Err(_) => {
                failures += 1;
                println!("== seed {seed}: panicked\n{}\n", c.sources.join("\n"));
            }
        }
    }
    eprintln!(
        "{count} cases ({patterns} patterns) in {:.1}s: {failures} failed; {} matches, {} timeouts, {} late events; \
         {} key runs on the fast tier, {} fell back",
        start.elapsed().as_secs_f64(),
        sum.matches,
        sum.timeouts,
        sum.late,
        sum.fast_runs,
        sum.fallbacks
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
