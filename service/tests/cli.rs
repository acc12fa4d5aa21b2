//! `tripline check` and `tripline explain` as a user runs them: exit codes, messages, bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("service/ is in the repository").to_owned()
}

fn tripline(args: &[&str]) -> Output {
    tripline_in(&root(), args)
}

fn tripline_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(args)
        .current_dir(dir)
        .env_remove("TRIPLINE_CONFIG")
        .output()
        .expect("tripline runs")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn assert_no_panic(o: &Output) {
    let (out, err) = text(o);
    assert!(!out.contains("panicked") && !err.contains("panicked"), "panic:\n{out}\n{err}");
}

#[test]
fn the_pattern_library_is_valid() {
    let o = tripline(&["check", "patterns/"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(err.contains("all valid"), "{err}");
}

#[test]
fn an_invalid_file_exits_1_with_located_diagnostics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("bad.tl");
    std::fs::write(
        &f,
        "pattern p\n  from payments\n  key account_id\n  match a followed by b\n  where\n    a: ammount > 5\n",
    )
    .expect("write");
    let o = tripline(&["check", f.to_str().expect("utf8 path")]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("bad.tl:6:8: error[unknown-field]: unknown field `ammount` in stream `payments`"), "{out}");
    assert!(out.contains("did you mean `amount`?"), "{out}");
    assert!(out.contains("6 |     a: ammount > 5\n  |        ^^^^^^^"), "{out}");
    assert!(err.contains("1 error(s) in 1 file(s)"), "{err}");
}

#[test]
fn the_error_corpus_fails_file_by_file() {
    let o = tripline(&["check", "--config", "testdata/dsl/tripline.toml", "testdata/dsl/err"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let dir = root().join("testdata/dsl/err");
    for entry in std::fs::read_dir(dir).expect("corpus") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|x| x == "tl") {
            let name = format!("testdata/dsl/err/{}:", p.file_name().expect("name").to_string_lossy());
            assert!(out.contains(&name), "no diagnostic for {name}");
        }
    }
}

#[test]
fn json_format_for_editors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("bad.tl");
    std::fs::write(&f, "pattern p from payments key account_id match a where a: amount > \"x\"\n").expect("write");
    let o = tripline(&["check", "--format", "json", f.to_str().expect("utf8 path")]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["ok"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "type-mismatch");
    assert_eq!((d["line"].as_u64(), d["column"].as_u64()), (Some(1), Some(57)));
    assert!(d["message"].as_str().is_some_and(|m| m.contains("cannot compare")), "{d}");

    let o = tripline(&["check", "--format", "json", "patterns"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["ok"], true);
    assert!(v["patterns"]
        .as_array()
        .is_some_and(|p| p.len() >= 12 && p.iter().all(|p| p["hash"].as_str().is_some_and(|h| h.len() == 16))));
}

#[test]
fn usage_errors_exit_2() {
    for args in [&[][..], &["check"][..], &["check", "--format", "yaml", "patterns"][..], &["frobnicate"][..]] {
        let o = tripline(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {:?}", text(&o));
        assert_no_panic(&o);
    }
    let o = tripline(&["check", "no/such/file.tl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("no such file or directory: no/such/file.tl"), "{:?}", text(&o));
}

#[test]
fn configuration_problems_exit_2_and_say_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.tl"), "pattern p from s key k match a\n").expect("write");
    // No config at all.
    let o = tripline_in(dir.path(), &["check", "p.tl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("no configuration: pass --config FILE"), "{:?}", text(&o));
    // A misspelled key.
    std::fs::write(
        dir.path().join("tripline.toml"),
        "[streams.s]\ntopic = \"s\"\nschema = \"s.avsc\"\ntimestamp = \"t\"\n",
    )
    .expect("write");
    let o = tripline_in(dir.path(), &["check", "p.tl"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(err.contains("tripline.toml") && err.contains("unknown field `timestamp`"), "{err}");
    // A schema file that is not there.
    std::fs::write(dir.path().join("tripline.toml"), "[streams.s]\ntopic = \"s\"\nschema = \"s.avsc\"\n")
        .expect("write");
    let o = tripline_in(dir.path(), &["check", "p.tl"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(err.contains("stream `s`: cannot read schema") && err.contains("s.avsc"), "{err}");
    // A schema that is not Avro.
    std::fs::write(dir.path().join("s.avsc"), "{\"type\": \"recrod\"}").expect("write");
    let o = tripline_in(dir.path(), &["check", "p.tl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("invalid Avro schema"), "{:?}", text(&o));
    // The environment variable names the config.
    let o = Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(["check", "patterns"])
        .current_dir(root())
        .env("TRIPLINE_CONFIG", dir.path().join("missing.toml"))
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("missing.toml"), "{:?}", text(&o));
}

#[test]
fn hostile_files_give_located_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.tl", Vec::new(), "empty.tl:1:1: error[empty-file]"),
        ("comments.tl", b"# nothing here\n# at all\n".to_vec(), "comments.tl:1:1: error[empty-file]"),
        ("binary.tl", (0u8..=255).cycle().take(4096).collect(), "binary.tl:1:1: error[binary-file]"),
        ("latin1.tl", b"pattern caf\xe9 from payments\n".to_vec(), "latin1.tl:1:12: error[not-utf8]"),
        (
            "deep.tl",
            format!(
                "pattern p from payments key account_id match a where a: {}1{}\n",
                "(".repeat(500),
                ")".repeat(500)
            )
            .into_bytes(),
            "error[too-deep]",
        ),
        ("huge.tl", vec![b' '; 9 * 1024 * 1024], "huge.tl:1:1: error[unreadable]: the file is 9437184 bytes"),
        (
            "long.tl",
            format!("pattern p from payments key account_id match a where a: amount > 1{}\n", " + 1".repeat(50_000))
                .into_bytes(),
            "error[too-deep]: more than 1024 operators",
        ),
        (
            "medium.tl",
            format!("pattern p from payments key account_id match a where a: amount > 1{}\n", " + 1".repeat(500))
                .into_bytes(),
            "",
        ),
    ];
    for (name, bytes, expected) in &cases {
        std::fs::write(dir.path().join(name), bytes).expect("write");
        let o = tripline(&["check", dir.path().join(name).to_str().expect("utf8")]);
        assert_no_panic(&o);
        let (out, err) = text(&o);
        if expected.is_empty() {
            assert_eq!(o.status.code(), Some(0), "{name}: {out}\n{err}");
        } else {
            assert_eq!(o.status.code(), Some(1), "{name}: {out}\n{err}");
            assert!(out.contains(expected), "{name}: expected `{expected}` in:\n{out}");
        }
    }
}

#[test]
fn explain_prints_the_compiled_automaton() {
    let o =
        tripline(&["explain", "--config", "testdata/dsl/tripline.toml", "--nfa", "testdata/dsl/nfa/one_or_more.tl"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let golden = std::fs::read_to_string(root().join("testdata/dsl/nfa/one_or_more.nfa")).expect("golden dump");
    assert_eq!(out, golden);
    let o = tripline(&[
        "explain",
        "--config",
        "testdata/dsl/tripline.toml",
        "--nfa",
        "testdata/dsl/nfa/one_or_more.tl",
        "--pattern",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("has no pattern `nope` (it has: one_or_more)"));
}

#[test]
fn a_pattern_name_defined_in_two_files_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = "pattern same\n  from payments\n  key account_id\n  match a\n";
    std::fs::write(dir.path().join("a.tl"), body).expect("write");
    std::fs::write(dir.path().join("b.tl"), format!("# another file\n{body}")).expect("write");
    let o = tripline(&["check", dir.path().to_str().expect("utf8")]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("b.tl:2:9: error[duplicate-pattern]: pattern `same` is also defined in"), "{out}");
    assert!(out.contains("a.tl:1"), "{out}");
}

/// A service config in `dir` (the payments stream, one library pattern) with `extra` appended.
fn run_config(dir: &Path, extra: &str) -> PathBuf {
    let root = root();
    let text = format!(
        "[streams.payments]\ntopic = \"payments\"\nschema = {:?}\ntimestamp_field = \"event_time\"\n\n\
         [service]\npatterns = [{:?}]\nstate_dir = \"state\"\nhttp_addr = \"127.0.0.1:0\"\n{extra}\n",
        root.join("testdata/schemas/payments.avsc").display().to_string(),
        root.join("patterns/structuring.tl").display().to_string(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

fn run_with(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tripline"));
    c.args(["run", "--config"]).arg(config).current_dir(dir).env_remove("TRIPLINE_CONFIG");
    for v in ["TRIPLINE_KAFKA_BOOTSTRAP", "TRIPLINE_REGISTRY_URL", "TRIPLINE_STATE_DIR", "TRIPLINE_HTTP_ADDR"] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("tripline runs")
}

#[test]
fn run_configuration_problems_exit_2_and_name_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[registry]\nurl = \"http://127.0.0.1:1\"\n[outputs]\npartitions = 0\n", &[], "outputs.partitions"),
        ("[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n", &[("TRIPLINE_COMMIT_INTERVAL", "soon")], "service.commit_interval"),
        ("[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n", &[], "no schema registry"),
        ("[registry]\nurl = \"http://127.0.0.1:1\"\n", &[], "no Kafka bootstrap servers"),
        ("[kafka]\nbootstrap = \"x\"\n", &[], "unknown field `bootstrap`"),
        ("[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[registry]\nurl = \"http://127.0.0.1:1\"\n", &[("TRIPLINE_HTTP_ADDR", "nowhere")], "service.http_addr"),
    ];
    for (extra, env, expect) in cases {
        let cfg = run_config(dir.path(), extra);
        let out = run_with(dir.path(), &cfg, env);
        let (_, err) = text(&out);
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?} {env:?}: {err}");
        assert!(err.contains(expect), "{extra:?} {env:?}: expected `{expect}` in:\n{err}");
    }
}

#[test]
fn secrets_never_appear_in_errors_or_logs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = run_config(
        dir.path(),
        "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n\
         properties = { \"security.protocol\" = \"carrier-pigeon\", \"sasl.password\" = \"hunter2-kafka\" }\n\
         [registry]\nurl = \"http://127.0.0.1:1\"\nusername = \"u\"\n",
    );
    let out = run_with(
        dir.path(),
        &cfg,
        &[
            ("TRIPLINE_REGISTRY_PASSWORD", "swordfish-registry"),
            ("TRIPLINE_KAFKA_PROP_SSL_KEY_PASSWORD", "hunter3-ssl"),
            ("RUST_LOG", "debug"),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_no_panic(&out);
    assert_ne!(out.status.code(), Some(0), "a bogus security.protocol cannot run");
    assert!(stderr.contains("security.protocol") || stderr.contains("carrier-pigeon"), "names the problem:\n{stderr}");
    for secret in ["hunter2-kafka", "swordfish-registry", "hunter3-ssl"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} leaked:\n{stderr}");
    }
}

#[test]
fn audit_commands_refuse_bad_arguments_before_doing_anything() {
    let events = "patterns/examples/rapid_movement.events.jsonl";
    let cases: &[(&[&str], &str)] = &[
        (&["explain", "--config", "tripline.toml"], "--nfa"),
        (&["explain", "--key", "ACC-1", "--config", "tripline.toml"], "--pattern"),
        (&["explain", "--alert", "abc", "--key", "K", "--pattern", "p"], "cannot be used with"),
        (
            &[
                "replay",
                "--config",
                "tripline.toml",
                "--input",
                events,
                "--from",
                "2026-01-01",
                "--output",
                "/dev/null",
            ],
            "with --input the whole file is read",
        ),
        (
            &["replay", "--config", "tripline.toml", "--from", "noon", "--output", "/dev/null"],
            "--from: `noon` is not a time",
        ),
        (
            &["replay", "--config", "tripline.toml", "--from", "0:10", "--to", "0:5", "--output", "/dev/null"],
            "--to 0:5 is not after --from 0:10",
        ),
        (
            &["replay", "--config", "tripline.toml", "--pattern-set", "xyz", "--output", "/dev/null"],
            "not a pattern set hash",
        ),
        (&["explain", "--config", "tripline.toml", "--alert", "not-an-id", "--alerts", events], "is not an alert id"),
        (
            &["explain", "--config", "tripline.toml", "--key", "ACC-1", "--pattern", "nope", "--input", events],
            "no pattern `nope`",
        ),
    ];
    for (args, says) in cases {
        let o = tripline(args);
        assert_no_panic(&o);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
    }
}

#[test]
fn the_flinkcep_bench_prints_its_figures_and_the_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.csv");
    // Key 7: an authorisation, then a withdrawal over 1000 within 10 minutes (P1 matches).
    let csv = "seq,key,ts,type,amount\n0,7,1000,auth,0.00\n1,7,2000,login,0.00\n2,7,3000,withdraw,1500.00\n\
               3,8,4000,withdraw,2000.00\n";
    std::fs::write(&input, csv).expect("input");
    let matches = dir.path().join("matches.txt");
    let (input, matches_arg) = (input.to_string_lossy().into_owned(), matches.to_string_lossy().into_owned());
    let o = tripline(&["bench", "--input", &input, "--pattern", "P1", "--matches", &matches_arg]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let line = text(&o).0;
    assert!(line.starts_with("tripline P1 events=4 matches=1 "), "{line}");
    assert!(line.contains(" eps=") && line.contains(" event_bytes="), "{line}");
    assert_eq!(std::fs::read_to_string(&matches).expect("matches"), "P1,7,0,2\n");
}

#[test]
fn the_patterns_bench_prints_a_line_per_fleet_and_count() {
    let o = tripline(&[
        "bench",
        "patterns",
        "--events",
        "3000",
        "--keys",
        "20",
        "--counts",
        "1,12",
        "--separate-max",
        "12",
        "--fleets",
        "merchant,shared",
    ]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let out = text(&o).0;
    for fleet in ["merchant", "shared"] {
        for n in [1, 12] {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("fleet={fleet} patterns={n} ")))
                .unwrap_or_else(|| panic!("no line for {fleet}, {n}: {out}"));
            // One operator per rule ran too, and found the same matches (else the bench fails).
            assert!(line.contains("multi_eps=") && line.contains("separate_eps="), "{line}");
        }
    }
    let o = tripline(&["bench", "patterns", "--print-rules", "2", "--fleets", "merchant"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert_eq!(text(&o).0.matches("pattern fleet_").count(), 2);
    let o = tripline(&["bench", "patterns", "--counts", "0"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert_no_panic(&o);
}

#[test]
fn the_scaling_bench_prints_a_line_per_window_and_key_count() {
    let o = tripline(&["bench", "scale", "--events", "5000", "--windows", "1m,1h", "--keys", "10,1000"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let out = text(&o).0;
    for (w, k) in [("1m", 10), ("1h", 10), ("1m", 1000), ("1h", 1000)] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("window={w} keys={k} ")))
            .unwrap_or_else(|| panic!("no line for {w}, {k}: {out}"));
        assert!(line.contains("events=5000 ") && line.contains("ns_per_event="), "{line}");
    }
    // A longer window holds at least as many partial matches at the end.
    let held = |w: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with(&format!("window={w} keys=1000 "))).unwrap_or_default();
        line.split("partial_matches=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(held("1h") >= held("1m") && held("1h") > 0, "{out}");
    let o = tripline(&["bench", "scale", "--windows", "forever"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert_no_panic(&o);
}

/// A copy of two library patterns and their examples in `dir` (for `tripline test` to fail on).
fn copy_examples(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir.join("examples")).expect("examples dir");
    for n in names {
        std::fs::copy(root().join(format!("patterns/{n}.tl")), dir.join(format!("{n}.tl"))).expect("pattern");
        for kind in ["events", "alerts"] {
            let f = format!("examples/{n}.{kind}.jsonl");
            std::fs::copy(root().join("patterns").join(&f), dir.join(&f)).expect("example");
        }
    }
}

#[test]
fn tripline_test_passes_on_the_library_and_says_what_differs_when_an_example_does_not_hold() {
    let o = tripline(&["test", "patterns/"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("16 passed, 0 failed"), "{out}");

    // One expected alert removed, one field of another changed.
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    copy_examples(d, &["structuring", "rapid_price_manipulation"]);
    let alerts = d.join("examples/structuring.alerts.jsonl");
    let text_of = |p: &Path| std::fs::read_to_string(p).expect("file");
    let kept: Vec<String> = text_of(&alerts).lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&alerts, kept.concat()).expect("one alert removed");
    let rpm = d.join("examples/rapid_price_manipulation.alerts.jsonl");
    std::fs::write(&rpm, text_of(&rpm).replace("\"volume\": 2500", "\"volume\": 2600")).expect("a field changed");
    let config = root().join("tripline.toml").display().to_string();
    let dir_arg = d.display().to_string();
    let o = tripline(&["test", "--config", &config, &dir_arg]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    let out = out.replace(&dir_arg, "DIR");
    let summary: Vec<&str> = out.lines().filter(|l| !l.starts_with("      DIR/examples/")).collect();
    expect_test::expect![[r#"
        FAIL rapid_price_manipulation (DIR/rapid_price_manipulation.tl): 1 expected, 1 raised
          different:  rapid_price_manipulation key=ACME (lines: burst 3,4,5,6,7; close 8; open 1)
              fields.volume: expected 2600, raised 2500
        FAIL structuring (DIR/structuring.tl): 1 expected, 2 raised
          unexpected: structuring key=ACC-1001 (lines: deposit 2,10,11)
              raised: {"fields":{"account_id":"ACC-1001","branches":3,"deposits":3,"first_deposit_at":1740993120000,"largest":9800.0,"last_deposit_at":1741102200000,"total":28000.0},"key":"ACC-1001","match":{"deposit":[2,10,11]},"message":"Account ACC-1001: 3 cash deposits just under 10,000 totalling 28000.0 USD at 3 branch(es)","pattern":"structuring"}
        2 pattern file(s): 0 passed, 2 failed, 0 could not run, 0 without examples"#]]
    .assert_eq(&summary.join("\n"));
    // The unexpected alert's events, by line.
    for n in [2, 10, 11] {
        assert!(out.contains(&format!("DIR/examples/structuring.events.jsonl:{n}: {{")), "{out}");
    }

    // JSON and JUnit for CI.
    let o = tripline(&["test", "--config", &config, "--format", "json", &dir_arg]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!((report["passed"].as_u64(), report["failed"].as_u64()), (Some(0), Some(2)));
    let structuring = &report["files"][1];
    assert_eq!(structuring["status"], "fail");
    assert_eq!(structuring["unexpected"][0]["match"]["deposit"], serde_json::json!([2, 10, 11]));
    let o = tripline(&["test", "--config", &config, "--format", "junit", &dir_arg]);
    let (xml, _) = text(&o);
    assert!(xml.contains("tests=\"2\" failures=\"2\" errors=\"0\"") && xml.contains("<failure message="), "{xml}");

    // `--update` writes the raised alerts as the expected ones: then it passes.
    let o = tripline(&["test", "--config", &config, "--update", &dir_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let o = tripline(&["test", "--config", &config, &dir_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).0);

    // A pattern that does not compile cannot run: exit 2, with its diagnostics.
    std::fs::write(d.join("broken.tl"), "pattern broken\n  from payments\n").expect("file");
    let o = tripline(&["test", "--config", &config, &dir_arg]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(out.contains("ERROR broken") && out.contains("broken.tl:1:1"), "{out}");
    assert_no_panic(&o);
}

#[test]
fn tripline_fmt_lays_out_a_file_canonically_keeps_its_meaning_and_checks_for_ci() {
    let o = tripline(&["fmt", "--check", "patterns/"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "the library is formatted:\n{out}\n{err}");

    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let original = std::fs::read_to_string(root().join("patterns/mule_fan_out.tl")).expect("pattern");
    // Every line's indentation lost or wrong, tabs, trailing spaces, blank lines doubled.
    let messy: String = original
        .lines()
        .enumerate()
        .map(|(i, l)| {
            format!("{}{}{}\n", ["", "\t", "     "][i % 3], l.trim_start(), if i % 2 == 0 { "  " } else { "" })
        })
        .collect::<String>()
        .replace("\n\n", "\n\n\n");
    let file = d.join("mule_fan_out.tl");
    std::fs::write(&file, &messy).expect("file");
    let config = root().join("tripline.toml").display().to_string();
    let path = file.display().to_string();
    let o = tripline(&["fmt", "--config", &config, "--check", &path]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("mule_fan_out.tl: not in the canonical layout (first at line 1)"), "{out}");
    assert_eq!(std::fs::read_to_string(&file).expect("file"), messy, "--check writes nothing");
    let o = tripline(&["fmt", "--config", &config, &path]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(std::fs::read_to_string(&file).expect("file"), original, "back to the library's layout, comments kept");
    let o = tripline(&["fmt", "--config", &config, "--check", &path]);
    assert_eq!(o.status.code(), Some(0), "idempotent: {}", text(&o).0);

    // A file that does not compile is left as it is.
    let broken = d.join("broken.tl");
    std::fs::write(&broken, "pattern broken\nfrom payments\n").expect("file");
    let o = tripline(&["fmt", "--config", &config, &broken.display().to_string()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("broken.tl is left as it is: it does not compile"), "{err}");
    assert_eq!(std::fs::read_to_string(&broken).expect("file"), "pattern broken\nfrom payments\n");
    assert_no_panic(&o);
}

#[test]
fn reference_tables_come_from_the_config_or_beside_the_examples_and_check_knows_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let config = root().join("tripline.toml").display().to_string();
    let dir_arg = d.display().to_string();
    copy_examples(d, &["sanctioned_counterparty_transfer"]);
    let o = tripline(&["test", "--config", &config, &dir_arg]);
    assert_eq!(o.status.code(), Some(0), "with the config's list: {:?}", text(&o));

    // The examples' own tables: an empty list, so no transfer alerts.
    let tables = d.join("examples/sanctioned_counterparty_transfer.tables.json");
    std::fs::write(&tables, r#"{"sanctioned_counterparties": []}"#).expect("tables");
    let o = tripline(&["test", "--config", &config, &dir_arg]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("missing") && out.contains("0 raised"), "{out}");

    // A table the config does not have, or contents of the wrong shape: it cannot run.
    for (contents, expect) in [
        (r#"{"nope": []}"#, "no table `nope` in the config"),
        (r#"{"sanctioned_counterparties": {"A": 1}}"#, "a list's contents are a JSON array of keys"),
        (r#"{"sanctioned_counterparties": [1]}"#, "item 1"),
    ] {
        std::fs::write(&tables, contents).expect("tables");
        let o = tripline(&["test", "--config", &config, &dir_arg]);
        let (out, err) = text(&o);
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{contents}: {out}\n{err}");
        assert!(out.contains(expect) || err.contains(expect), "{contents}: expected `{expect}` in:\n{out}\n{err}");
    }

    // `tripline check` knows the config's tables: an unknown one is an error with its place.
    let bad = d.join("bad.tl");
    std::fs::write(
        &bad,
        "pattern p\n  from payments\n  key account_id\n  match a\n  where\n    a: counterparty_country in list sanctioned_countries\n",
    )
    .expect("pattern");
    let o = tripline(&["check", "--config", &config, &bad.display().to_string()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("sanctioned_countries") && format!("{out}{err}").contains("bad.tl:6"),
        "{out}\n{err}"
    );

    // A table file with a bad entry stops `tripline test` with the file and the entry.
    let cfg = d.join("t.toml");
    std::fs::write(d.join("limits.json"), r#"{"LOW": "a lot"}"#).expect("file");
    let text_cfg = std::fs::read_to_string(root().join("tripline.toml")).expect("config").replace(
        "file = \"patterns/tables/kyc_withdrawal_limit.json\"",
        &format!("file = {:?}", d.join("limits.json").display().to_string()),
    );
    let text_cfg = text_cfg.replace("\"testdata/", &format!("\"{}/testdata/", root().display()));
    let text_cfg = text_cfg.replace("\"patterns/tables/", &format!("\"{}/patterns/tables/", root().display()));
    std::fs::write(&cfg, text_cfg).expect("config");
    let o = tripline(&["test", "--config", &cfg.display().to_string(), &dir_arg]);
    let (out, err) = text(&o);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("limits.json") && format!("{out}{err}").contains("entry `LOW`"),
        "{out}\n{err}"
    );
}
