//! What the process tells people: log lines, Prometheus metrics (defined once, in
//! [`metrics`]), progress bars, and text on stdout/stderr. The wall clock is read here
//! ([`now_ms`]) and in the service loop, never in `core`.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

pub mod metrics;
pub mod progress;

/// Writes to stdout, ignoring a closed pipe (`tripline check | head` must not panic).
pub fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Writes to stderr.
pub fn err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Log lines to stderr; `RUST_LOG` filters (default: info).
pub fn init_logging() {
    init_logging_with("info");
}

/// Log lines to stderr; `RUST_LOG` filters (default: `default`).
pub fn init_logging_with(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The wall clock in ms since the epoch (liveness, latency metrics, activation records).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
