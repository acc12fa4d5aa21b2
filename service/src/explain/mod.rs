//! Explanations for analysts: why an alert fired ([`alert()`]), and why a key did or did not alert
//! over a range of its stream ([`KeyTrace`]). Plain text, deterministic (no wall clock, no I/O):
//! the same inputs give the same words, so the texts are golden-tested.
//!
//! Both re-derive what the engine did rather than trust a log: [`alert()`] walks the compiled
//! automaton along the matched events and evaluates each step's guard on exactly the events the
//! engine had then; [`KeyTrace`] runs the pattern over the range as a partition of the service
//! does (same watermark, same lateness, same order), watching one key.
//!
//! What a trace can see: the key's matches and timed-out partial matches (engine outputs), its
//! partial matches after every step of the watermark
//! ([`Operator::partial_matches`](engine::runtime::Operator::partial_matches)), and so the
//! partial matches that ended in between without a match or a timeout. Why one ended is
//! re-derived from the automaton (a `not` element's guard held, an event could be neither taken
//! nor skipped, the skip strategy after a match, the budget); a partial match that started and
//! ended within one step of the watermark is not seen, and the report says so.
//!
//! The files, in layers (a file uses only those listed before it): `text.rs` (how things are
//! written: times, steps, guards and their values), `walk.rs` (walking the automaton),
//! `alert.rs` (one alert), `key.rs` (one key over a range), `partial.rs` (one partial match of
//! the key, written), `report.rs` (the key's report), `find.rs` (finding the alert, the pattern
//! version and the records for `tripline explain`). The tests share `fixtures.rs`.

mod alert;
mod find;
#[cfg(test)]
mod fixtures;
mod key;
mod partial;
mod report;
mod text;
mod walk;

pub use alert::alert;
pub use find::{alert as explain_alert, choice, key as explain_key, KeyOptions, Sources};
pub use key::KeyTrace;
pub use text::fmt_duration;
