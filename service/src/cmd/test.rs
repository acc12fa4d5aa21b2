//! `tripline test`: every pattern file's examples run and compared with the alerts they must
//! raise ([`crate::tools::examples`]). Exit status 0: every example passes; 1: one fails; 2:
//! one cannot run (a pattern that does not compile, an unreadable or rejected event).

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{PatternFiles, Status};
use crate::error::Result;
use crate::obs::{err, out};
use crate::tools::examples::{self, describe, matched_lines, Checked, Outcome, Ran};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    files: PatternFiles,
    /// Output format: a readable report, one JSON document, or JUnit XML for CI.
    #[arg(long, value_enum, default_value_t = TestFormat::Text)]
    format: TestFormat,
    /// Write each failing example's expected alerts file from the alerts it raised (review the
    /// diff first: this makes the example pass).
    #[arg(long)]
    update: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TestFormat {
    Text,
    Json,
    Junit,
}

pub fn run(args: Args) -> Result<Status> {
    let (cfg, path, paths) = args.files.resolve()?;
    let outcomes = examples::run(&cfg, &path, &paths)?;
    match args.format {
        TestFormat::Text => out(&text(&outcomes)),
        TestFormat::Json => {
            out(&format!("{}\n", serde_json::to_string_pretty(&json_report(&outcomes)).unwrap_or_default()))
        }
        TestFormat::Junit => out(&junit(&outcomes)),
    }
    if args.update {
        for p in examples::update(&outcomes)? {
            err(&format!("wrote {}\n", p.display()));
        }
        return Ok(if outcomes.iter().any(|o| matches!(o.result, Ran::Error(_))) { cannot_run() } else { Status::Ok });
    }
    if outcomes.iter().any(|o| matches!(o.result, Ran::Error(_))) {
        return Ok(cannot_run());
    }
    Ok(if outcomes.iter().all(Outcome::passed) { Status::Ok } else { Status::Invalid })
}

/// Exit status 2: an example could not run (already reported).
fn cannot_run() -> Status {
    Status::Reported(crate::error::Kind::Usage)
}

/// The readable report: a line per pattern file, and for a failing one what differs.
fn text(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let (mut passed, mut failed, mut errors, mut none) = (0, 0, 0, 0);
    for o in outcomes {
        match &o.result {
            Ran::NoExamples => {
                none += 1;
                let _ = writeln!(
                    s,
                    "SKIP {} ({}): no examples (write {} and the alerts they must raise in {})",
                    o.name,
                    o.file.display(),
                    events_file(o),
                    o.expected.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                );
            }
            Ran::Error(why) => {
                errors += 1;
                let _ = writeln!(s, "ERROR {} ({}): cannot run: {why}", o.name, o.file.display());
            }
            Ran::Checked(c) if c.passed() => {
                passed += 1;
                let _ = writeln!(
                    s,
                    "PASS {} ({}): {} alert(s) from {} event(s)",
                    o.name,
                    o.file.display(),
                    c.raised,
                    c.events
                );
            }
            Ran::Checked(c) => {
                failed += 1;
                let _ =
                    writeln!(s, "FAIL {} ({}): {} expected, {} raised", o.name, o.file.display(), c.expected, c.raised);
                failure(&mut s, o, c);
            }
        }
    }
    let _ = writeln!(
        s,
        "{} pattern file(s): {passed} passed, {failed} failed, {errors} could not run, {none} without examples",
        outcomes.len()
    );
    s
}

fn events_file(o: &Outcome) -> String {
    o.events.as_ref().map_or_else(
        || {
            o.expected
                .as_ref()
                .map(|p| p.display().to_string().replace(".alerts.jsonl", ".events.jsonl"))
                .unwrap_or_default()
        },
        |p| p.display().to_string(),
    )
}

/// What differs, with the event lines the alerts name.
fn failure(s: &mut String, o: &Outcome, c: &Checked) {
    let file = events_file(o);
    let show_lines = |s: &mut String, alert: &Value| {
        for n in matched_lines(alert) {
            let line = c.lines.get(&n).map_or("(no such line)", String::as_str);
            let cut: String = line.chars().take(160).collect();
            let _ = writeln!(s, "      {file}:{n}: {cut}{}", if cut.len() < line.len() { " …" } else { "" });
        }
    };
    for a in &c.missing {
        let _ = writeln!(s, "  missing:    {}", describe(a));
        show_lines(s, a);
    }
    for a in &c.unexpected {
        let _ = writeln!(s, "  unexpected: {}", describe(a));
        show_lines(s, a);
        let _ = writeln!(s, "      raised: {a}");
    }
    for (a, diffs) in &c.different {
        let _ = writeln!(s, "  different:  {}", describe(a));
        for (path, want, got) in diffs {
            let _ = writeln!(s, "      {path}: expected {want}, raised {got}");
        }
    }
    for (n, ts, wm) in &c.late {
        let _ = writeln!(s, "  note: {file}:{n} is late (event time {ts}, watermark {wm}): no pattern saw it");
    }
}

fn json_report(outcomes: &[Outcome]) -> Value {
    let files: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            let mut v = json!({
                "name": o.name,
                "file": o.file.display().to_string(),
                "events_file": o.events.as_ref().map(|p| p.display().to_string()),
                "expected_file": o.expected.as_ref().map(|p| p.display().to_string()),
            });
            match &o.result {
                Ran::NoExamples => v["status"] = "no-examples".into(),
                Ran::Error(why) => {
                    v["status"] = "error".into();
                    v["error"] = why.clone().into();
                }
                Ran::Checked(c) => {
                    v["status"] = if c.passed() { "pass" } else { "fail" }.into();
                    v["events"] = c.events.into();
                    v["expected"] = c.expected.into();
                    v["raised"] = c.raised.into();
                    v["missing"] = c.missing.clone().into();
                    v["unexpected"] = c.unexpected.clone().into();
                    v["different"] = c
                        .different
                        .iter()
                        .map(|(a, d)| {
                            json!({"alert": a, "differences": d.iter().map(|(p, w, g)| json!({"path": p, "expected": w, "raised": g})).collect::<Vec<_>>()})
                        })
                        .collect::<Vec<_>>()
                        .into();
                    v["late"] = c.late.iter().map(|(n, ts, wm)| json!({"line": n, "event_time": ts, "watermark": wm})).collect::<Vec<_>>().into();
                }
            }
            v
        })
        .collect();
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    json!({
        "passed": count(&|o| matches!(&o.result, Ran::Checked(c) if c.passed())),
        "failed": count(&|o| matches!(&o.result, Ran::Checked(c) if !c.passed())),
        "errors": count(&|o| matches!(o.result, Ran::Error(_))),
        "without_examples": count(&|o| matches!(o.result, Ran::NoExamples)),
        "files": files,
    })
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// JUnit XML: a test case per pattern file; a failing one carries the readable report.
fn junit(outcomes: &[Outcome]) -> String {
    let failures = outcomes.iter().filter(|o| matches!(&o.result, Ran::Checked(c) if !c.passed())).count();
    let errors = outcomes.iter().filter(|o| matches!(o.result, Ran::Error(_))).count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites><testsuite name=\"tripline test\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\">",
        outcomes.len()
    );
    for o in outcomes {
        let _ = write!(
            s,
            "  <testcase classname=\"patterns\" name=\"{}\" file=\"{}\">",
            xml(&o.name),
            xml(&o.file.display().to_string())
        );
        match &o.result {
            Ran::NoExamples => s.push_str("<skipped message=\"no examples\"/>"),
            Ran::Error(why) => {
                let _ = write!(s, "<error message=\"cannot run\">{}</error>", xml(why));
            }
            Ran::Checked(c) if c.passed() => {}
            Ran::Checked(c) => {
                let mut detail = String::new();
                failure(&mut detail, o, c);
                let _ = write!(
                    s,
                    "<failure message=\"{} expected, {} raised\">{}</failure>",
                    c.expected,
                    c.raised,
                    xml(&detail)
                );
            }
        }
        s.push_str("</testcase>\n");
    }
    s.push_str("</testsuite></testsuites>\n");
    s
}
