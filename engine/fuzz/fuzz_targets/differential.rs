//! The differential harness under libFuzzer: the input's bytes decide a case (generated
//! patterns over `cep_events`, a stream, a configuration, a checkpoint plan; `testkit::gen`), and
//! every tier of the engine must give the same output (`testkit::gen::check`). A difference or a
//! panic is a crash, with the patterns' sources in its message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = testkit::gen::check_bytes(data) {
        panic!("the tiers differ: {e}");
    }
});
