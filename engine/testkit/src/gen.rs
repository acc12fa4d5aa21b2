//! Generated patterns and streams for the differential harness: patterns over `cep_events`
//! written in the language (sequences, loops with their modifiers, `until`, optional elements,
//! every contiguity, negations, groups, windows of both kinds, conditions on the event and on
//! earlier elements, every skip strategy) and random streams for them (equal timestamps, out of
//! order, window boundaries, late events, watermark jumps, several keys). Each case runs through
//! every tier the engine has and must come out the same ([`crate::differential`]).
//!
//! The decisions come from a [`Choices`]: the bytes of a fuzzer's input ([`Bytes`], the
//! `engine/fuzz` target) or a seeded generator ([`crate::streams::Rng`], the proptest in
//! `tests/generated.rs`). The generator keeps the language's rules, so what it writes compiles
//! (`tests/generated.rs` checks that most does); a pattern the compiler refuses anyway is left
//! out of the case and counted in [`Case::refused`], not an error (the compiler's messages are
//! tested elsewhere).

use std::sync::Arc;

use dsl::SourceFile;
use engine::runtime::{Config, Output};
use engine::{Event, Nfa, Value};

use crate::differential::{all_configs, differential, multi_is_exact, skip_is_exact, Differs, Plan};
use crate::streams::{cep_steps, CepEvent, Rng, Step};
use crate::test_catalog;

/// Where the generator's decisions come from.
pub trait Choices {
    /// A number in `0..n` (0 when `n` is 0 or 1).
    fn below(&mut self, n: u64) -> u64;

    /// True with probability `num / den`.
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

impl Choices for Rng {
    fn below(&mut self, n: u64) -> u64 {
        Rng::below(self, n)
    }
}

/// Decisions read from bytes, one byte per decision; zeros once they run out (so a short input
/// is a small case, and a fuzzer's mutations change one decision at a time).
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }
}

impl Choices for Bytes<'_> {
    fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        u64::from(b) % n
    }
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const PRICES: [&str; 4] = ["1.0", "5.0", "9.0", "12.0"];

/// One element of a generated pattern, as written.
struct Element {
    var: &'static str,
    /// Negated (`not next` / `not followed by` before it).
    negated: bool,
    /// Has a quantifier that takes more than one event (its own or its group's).
    looping: bool,
    /// `+`, `*` or `{n,}`: may take `until`.
    open_ended: bool,
    sub_event: bool,
}

/// A condition on the event, optionally on an earlier element too.
fn condition(c: &mut impl Choices, el: &Element, earlier: &[&Element]) -> String {
    let name = *c.pick(&NAMES);
    let mut cond = match c.below(6) {
        0 => format!("name == \"{name}\""),
        1 => format!("name == \"{name}\" and price > {}", c.pick(&PRICES)),
        2 => format!("name in (\"{name}\", \"{}\")", c.pick(&NAMES)),
        3 => format!("price < {}", c.pick(&PRICES)),
        4 => format!("name != \"{name}\""),
        _ => format!("name == \"{name}\" or price >= {}", c.pick(&PRICES)),
    };
    if el.sub_event && c.chance(1, 2) {
        cond = format!("({cond}) and volume > 100.0");
    }
    let readable: Vec<&&Element> = earlier.iter().filter(|e| !e.negated).collect();
    if !readable.is_empty() && c.chance(1, 3) {
        let e = c.pick(&readable);
        let v = e.var;
        let reference = if e.looping {
            match c.below(6) {
                0 => format!("price > first({v}.price)"),
                1 => format!("price < last({v}.price)"),
                2 => format!("price >= avg({v}.price)"),
                3 => format!("count({v}) >= 2"),
                4 => format!("sum({v}.price) > 10.0"),
                _ => format!("price <= max({v}.price)"),
            }
        } else {
            match c.below(3) {
                0 => format!("price > {v}.price"),
                1 => format!("abs(price - {v}.price) / {v}.price > 0.05"),
                _ => format!("name == {v}.name"),
            }
        };
        cond = format!("{cond} and {reference}");
    }
    cond
}

/// The source of one generated pattern named `name` over `cep_events`, keyed by `id`. It keeps
/// the language's rules (docs/language.md) so that most patterns compile: a negated element is a
/// single variable, not the first, not right after an optional one, and a pattern ending in
/// `not followed by` has a window; `until` goes on open-ended loops, aggregates read loops; an
/// element's window is within the pattern's; no optional element after a greedy one; a
/// repeated group has a required element.
///
/// One pattern in four is a chain (single elements joined by `next` or `followed by`, no window
/// on an element), the shape the fast tier runs.
pub fn pattern_text(c: &mut impl Choices, name: &str) -> String {
    let chain = c.chance(1, 4);
    let n = 1 + c.below(4) as usize;
    // Sometimes elements `g` and `g + 1` form a group, with a quantifier of its own.
    let group = (!chain && n >= 3 && c.chance(1, 5)).then(|| 1 + c.below(n as u64 - 2) as usize);
    let mut group_quantifier = *c.pick(&["", "+", "{2}", "?", "{1,2}"]);
    let window = c.chance(3, 4).then(|| *c.pick(&[1, 500, 1_000, 2_000, 5_000]));
    let mut elements: Vec<Element> = Vec::new();
    let mut text = String::new();
    let (mut after_greedy, mut after_optional) = (false, false);
    for (i, &var) in NAMES.iter().enumerate().take(n) {
        let opens = group == Some(i);
        let closes = group.is_some_and(|g| g + 1 == i);
        let in_group = opens || closes;
        if opens && after_greedy && group_quantifier == "?" {
            group_quantifier = "";
        }
        let group_loops = !matches!(group_quantifier, "" | "?");
        let last = i + 1 == n;
        let negated = i > 0
            && !chain
            && !in_group
            && !after_optional
            && (!last || window.is_some())
            && group.is_none_or(|g| g != i + 1)
            && c.chance(1, 5);
        if i > 0 {
            let contiguity = if negated {
                if last {
                    "not followed by"
                } else {
                    *c.pick(&["not next", "not followed by"])
                }
            } else if chain {
                *c.pick(&["next", "followed by", "followed by"])
            } else {
                *c.pick(&["next", "followed by", "followed by", "followed by any"])
            };
            text.push_str(&format!(" {contiguity} "));
        }
        let quantifiers: &[&str] = if negated {
            &[""]
        } else if after_greedy || (closes && group_loops) {
            // No optional element after a greedy one; a repeated group needs a required element.
            &["", "", "", "+", "{2}", "{1,3}", "{2,}"]
        } else {
            &["", "", "", "?", "+", "*", "{2}", "{1,3}", "{2,}"]
        };
        let quantifier = if chain { "" } else { *c.pick(quantifiers) };
        let looping = !matches!(quantifier, "" | "?");
        let open_ended = matches!(quantifier, "+" | "*" | "{2,}");
        let optional = matches!(quantifier, "?" | "*");
        let sub_event = c.chance(1, 8);
        if opens {
            text.push('(');
        }
        text.push_str(var);
        if sub_event {
            text.push_str(": SubEvent");
        }
        text.push_str(quantifier);
        let mut greedy = false;
        if looping {
            let modifier = *c.pick(&["", "", " consecutive", " allow combinations", " greedy", " consecutive greedy"]);
            greedy = modifier.contains("greedy");
            text.push_str(modifier);
        }
        if i > 0 && !negated && !chain && c.chance(1, 6) {
            let ms = *c.pick(&[1, 300, 1_000, 2_500]);
            text.push_str(&format!(" within {}ms of previous", window.map_or(ms, |w| ms.min(w))));
        }
        if closes {
            text.push(')');
            text.push_str(group_quantifier);
        }
        after_greedy = greedy && (!closes || group_quantifier.is_empty());
        after_optional = optional || (closes && matches!(group_quantifier, "?"));
        let looping = looping || (in_group && group_loops);
        elements.push(Element { var, negated, looping, open_ended, sub_event });
    }
    let mut out = format!("pattern {name} from cep_events key id\n  match {text}\n  where\n");
    for (i, el) in elements.iter().enumerate() {
        let earlier: Vec<&Element> = elements[..i].iter().collect();
        let mut cond = condition(c, el, &earlier);
        if el.open_ended && c.chance(1, 4) {
            cond.push_str(&format!(" until price > {}", c.pick(&PRICES)));
        }
        out.push_str(&format!("    {}: {cond}\n", el.var));
    }
    if let Some(w) = window {
        out.push_str(&format!("  within {w}ms\n"));
    }
    let takers: Vec<&str> = elements.iter().filter(|e| !e.negated).map(|e| e.var).collect();
    let v = c.pick(&takers);
    let skip = [
        String::new(),
        "  skip to next\n".to_owned(),
        "  skip past last event\n".to_owned(),
        format!("  skip to first {v}\n"),
        format!("  skip to last {v}\n"),
    ];
    let skip = c.pick(&skip).clone();
    out.push_str(&skip);
    out
}

/// Compiles a generated pattern; `None` when the language refuses it.
pub fn compile(text: &str) -> Option<Arc<Nfa>> {
    let compiled = dsl::compile_source(&SourceFile::new("generated.tl", text), &test_catalog());
    if !compiled.is_ok() {
        return None;
    }
    compiled.patterns.into_iter().next().map(|p| Arc::new(p.nfa))
}

/// A random `cep_events` stream of up to `max` events (see [`cep_steps`]).
pub fn stream(c: &mut impl Choices, max: u64) -> Vec<Step> {
    let n = 1 + c.below(max);
    let mut events: Vec<CepEvent> = Vec::new();
    for _ in 0..n {
        let mut b = || c.below(256) as u8;
        events.push((b(), b(), b(), b(), b() % 5 == 0, b(), b()));
    }
    let steps = cep_steps(&events);
    // Sometimes time starts at 0 (FlinkCEP registers no window timer for a run started at a
    // time that is not positive), with early out-of-order events before it.
    if c.chance(1, 4) {
        shift(&steps, -1_000)
    } else {
        steps
    }
}

/// The steps with every time (event times and watermarks, not the final end of time) moved by
/// `by`.
fn shift(steps: &[Step], by: i64) -> Vec<Step> {
    let at = |t: i64| if t == i64::MAX { t } else { t + by };
    steps
        .iter()
        .map(|s| match s {
            Step::Event(k, e) => {
                let mut e = Event::clone(e);
                e.ts = at(e.ts);
                let mut fields = e.fields.to_vec();
                if let Some(t) = fields.get_mut(3) {
                    *t = Value::Int(e.ts);
                }
                e.fields = fields.into();
                Step::Event(k.clone(), Arc::new(e))
            }
            Step::Watermark(wm) => Step::Watermark(at(*wm)),
        })
        .collect()
}

/// One generated case: patterns (those the compiler took, with their sources), a stream and a
/// configuration.
#[derive(Debug)]
pub struct Case {
    pub sources: Vec<String>,
    pub patterns: Vec<Arc<Nfa>>,
    pub refused: usize,
    pub steps: Vec<Step>,
    pub config: Config,
    /// When the snapshot tier checkpoints and restarts.
    pub plan: Plan,
}

/// What a checked case gave (the reference's outputs, summed over its patterns): a harness
/// whose cases never match would check little.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub matches: usize,
    pub timeouts: usize,
    pub late: usize,
    /// Key runs on the fast tier, and those that fell back to the exact runtime.
    pub fast_runs: u64,
    pub fallbacks: u64,
}

impl std::ops::AddAssign for Checked {
    fn add_assign(&mut self, o: Checked) {
        self.matches += o.matches;
        self.timeouts += o.timeouts;
        self.late += o.late;
        self.fast_runs += o.fast_runs;
        self.fallbacks += o.fallbacks;
    }
}

pub fn case(c: &mut impl Choices) -> Case {
    let configs = all_configs();
    let config = *c.pick(&configs);
    let wanted = 1 + c.below(3) as usize;
    let (mut sources, mut patterns, mut refused) = (Vec::new(), Vec::new(), 0);
    for i in 0..wanted {
        let text = pattern_text(c, &format!("g{i}"));
        match compile(&text) {
            Some(nfa) => {
                patterns.push(nfa);
                sources.push(text);
            }
            None => refused += 1,
        }
    }
    // `allow combinations`, `followed by any` and repeated groups keep many combinations of the
    // matching events: without a budget on partial matches, a long stream would take for ever
    // (in FlinkCEP too).
    let combinatorial = sources.iter().any(|s| {
        s.contains("allow combinations") || s.contains("followed by any") || s.contains(")+") || s.contains("){")
    });
    let max = match (config.max_partial_matches_per_key, combinatorial) {
        (Some(_), _) => 80,
        (None, false) => 40,
        (None, true) => 8,
    };
    let steps = stream(c, max);
    let plan = Plan { checkpoint: 10 + c.below(90), crash: c.below(40), seed: c.below(1 << 16) };
    Case { sources, patterns, refused, steps, config, plan }
}

/// Runs a case through every tier: each pattern with and without the skip of unchanged steps
/// (outputs, stats, snapshot bytes) and with checkpoints and restarts from snapshots (outputs,
/// stats), and the patterns together through the multi-pattern operator against one operator
/// each. The error names the sources.
pub fn check(case: &Case) -> Result<Checked, Differs> {
    let context =
        |e: Differs| Differs(format!("{e}\nconfig {:?}\npatterns:\n{}", case.config, case.sources.join("\n")));
    let mut checked = Checked::default();
    for nfa in &case.patterns {
        let (outputs, tiers) = skip_is_exact(nfa, case.config, &case.steps).map_err(context)?;
        checked.fast_runs += tiers.fast_runs;
        checked.fallbacks += tiers.fallbacks;
        for o in outputs {
            match o {
                Output::Match { .. } => checked.matches += 1,
                Output::Timeout { .. } => checked.timeouts += 1,
                Output::Late { .. } => checked.late += 1,
            }
        }
        differential(nfa, case.config, &case.steps, case.plan).map_err(context)?;
    }
    if !case.patterns.is_empty() {
        multi_is_exact(&case.patterns, case.config, &case.steps).map_err(context)?;
    }
    Ok(checked)
}

/// The fuzz target's entry: a case from `data`, checked.
pub fn check_bytes(data: &[u8]) -> Result<Checked, Differs> {
    check(&case(&mut Bytes::new(data)))
}
