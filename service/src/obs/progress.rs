//! Progress of long commands (`replay`, `bench`, a state restore): a bar with the rate on a
//! terminal (indicatif, on stderr), and a structured log line every few seconds otherwise, so a
//! CI log or a container log shows it too. Cheap enough for a hot loop: the bar and the clock are
//! looked at once every [`TICK`] items.
//!
//! `TRIPLINE_PROGRESS=never` turns the bar off (log lines instead), `=always` forces it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Items between looks at the bar and the clock.
const TICK: u64 = 4096;
/// Without a terminal, a log line this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The progress of one long piece of work.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    pending: u64,
    started: Instant,
    last_log: Instant,
    message: String,
}

/// Whether progress shows as a bar (stderr is a terminal, unless `TRIPLINE_PROGRESS` says).
pub fn on_terminal() -> bool {
    match std::env::var("TRIPLINE_PROGRESS").as_deref() {
        Ok("never") => false,
        Ok("always") => true,
        _ => std::io::stderr().is_terminal(),
    }
}

impl Progress {
    /// `what` names the work ("replay"), `unit` what is counted ("events"); `total` when known.
    pub fn new(what: &'static str, unit: &'static str, total: Option<u64>) -> Progress {
        let bar = on_terminal().then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                    format!(
                        "{what} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}"
                    ),
                ),
                None => (
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                    format!("{what} {{spinner}} {{human_pos}} {unit} ({{per_sec}}, {{elapsed}}) {{msg}}"),
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            super::init_logging();
        }
        let now = Instant::now();
        Progress { bar, what, unit, total, done: 0, pending: 0, started: now, last_log: now, message: String::new() }
    }

    /// `n` more items done.
    #[inline]
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        self.pending += n;
        if self.pending >= TICK {
            self.tick();
        }
    }

    /// A note shown after the counts (e.g. the alerts so far, the position per partition).
    pub fn set_message(&mut self, message: String) {
        if let Some(b) = &self.bar {
            b.set_message(message.clone());
        }
        self.message = message;
    }

    fn tick(&mut self) {
        self.pending = 0;
        match &self.bar {
            Some(b) => b.set_position(self.done),
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                self.log("progress");
            }
            None => {}
        }
    }

    fn log(&self, what: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let per_sec = (self.done as f64 / secs.max(1e-9)) as u64;
        tracing::info!(
            work = self.what,
            done = self.done,
            total = self.total,
            unit = self.unit,
            per_sec,
            secs = format!("{secs:.1}"),
            note = %self.message,
            "{what}"
        );
    }

    /// The work is over: the bar goes away (the caller prints its own summary); without a
    /// terminal a last log line is written if the work took long enough to have logged.
    pub fn finish(self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None if self.started.elapsed() >= LOG_EVERY => self.log("done"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_without_a_terminal() {
        std::env::set_var("TRIPLINE_PROGRESS", "never");
        let mut p = Progress::new("test", "items", Some(10_000));
        for _ in 0..10_000 {
            p.inc(1);
        }
        p.set_message("note".to_owned());
        assert_eq!(p.done, 10_000);
        assert!(p.bar.is_none());
        p.finish();
    }
}
