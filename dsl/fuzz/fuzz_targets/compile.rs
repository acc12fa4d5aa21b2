//! Fuzzes the whole front end (parse, check, compile) with the test streams' schemas.
//! Any panic is a bug: every input must give a pattern set or located diagnostics.
#![no_main]

use std::sync::OnceLock;

use dsl::{Catalog, SourceFile, StreamSchema};
use libfuzzer_sys::fuzz_target;

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| {
        let mut c = Catalog::default();
        let schemas = [
            ("payments", include_str!("../../../testdata/schemas/payments.avsc"), "event_time"),
            ("card_auths", include_str!("../../../testdata/schemas/card_auths.avsc"), "event_time"),
            ("account_events", include_str!("../../../testdata/schemas/account_events.avsc"), "event_time"),
            ("trades", include_str!("../../../testdata/schemas/trades.avsc"), "event_time"),
            ("cep_events", include_str!("../../../testdata/schemas/cep_events.avsc"), "ts"),
        ];
        for (name, json, ts) in schemas {
            c.insert(StreamSchema::from_avro_json(name, json, Some(ts)).expect("test schema is valid"));
        }
        c
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let src = SourceFile::new("fuzz.tl", text);
    let compiled = dsl::compile_source(&src, catalog());
    for d in &compiled.diagnostics {
        assert!(d.line >= 1 && d.column >= 1);
        let _ = d.render();
    }
    for p in &compiled.patterns {
        let _ = engine::dump::dump(&p.nfa);
    }
});
