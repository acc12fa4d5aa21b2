//! The `match` sequence: its elements, their quantifiers, modifiers and windows, groups, and the
//! declaration of its variables.

use engine::{TypeId, VarId};

use super::clauses::Clauses;
use super::{Checker, Inner, RElement, RKind, VarDef, MAX_TIMES};
use crate::ast::{self, ClauseKind, Contiguity, ElementKind, Ident, Modifier, Quantifier, Span};
use crate::diag::did_you_mean;

/// How often an element occurs, as in [`RElement`]: `(times, optional)`.
type Repetition = (Option<(u32, Option<u32>)>, bool);

/// What an element's modifiers ask for.
struct Modifiers {
    optional: bool,
    greedy: bool,
    inner: Inner,
}

impl Checker<'_> {
    /// `match`: the sequence, its variables declared in order.
    pub(super) fn match_clause(&mut self, clauses: &Clauses<'_>) -> Vec<RElement> {
        let Some(ast::Clause { kind: ClauseKind::Match(s), .. }) = clauses.get("match") else { return Vec::new() };
        let seq = self.sequence(s, false, false);
        self.check_sequence_ends(&seq, s, clauses.contains_key("within"));
        seq
    }

    /// Resolves a sequence; `in_loop`: inside a quantified group (its variables take several events).
    pub(super) fn sequence(&mut self, s: &ast::Sequence, in_group: bool, in_loop: bool) -> Vec<RElement> {
        let mut out = Vec::new();
        let mut prev: Option<(bool, bool)> = None; // the previous element: (optional, greedy)
        let items = std::iter::once((None, &s.first)).chain(s.rest.iter().map(|(c, sp, e)| (Some((*c, *sp)), e)));
        for (contiguity, el) in items {
            let negated = contiguity.is_some_and(|(c, _)| c.is_negation());
            if let (Some((c, cspan)), Some((prev_optional, _))) = (contiguity, prev) {
                if c.is_negation() && prev_optional {
                    self.err_hint(cspan, "negation-after-optional", format!("`{}` cannot follow an optional element", c.text()),
                        "FlinkCEP does not support an optional path into a negation; write two patterns, one with and one without the optional element");
                }
            }
            let r = self.element(el, contiguity.map(|c| c.0), negated, in_group, in_loop);
            if let (Some(r), Some((_, prev_greedy))) = (&r, prev) {
                if r.optional && prev_greedy {
                    self.err_hint(
                        el.span,
                        "optional-after-greedy",
                        "an optional element cannot follow a greedy one",
                        "drop `greedy` from the element before, or make this one required",
                    );
                }
            }
            if let Some(r) = r {
                prev = Some((r.optional, r.greedy));
                out.push(r);
            } else {
                prev = Some((false, false));
            }
        }
        out
    }

    /// Resolves one element: its quantifier, modifiers and window, then its variable or group.
    fn element(
        &mut self,
        el: &ast::Element,
        contiguity: Option<Contiguity>,
        negated: bool,
        in_group: bool,
        in_loop: bool,
    ) -> Option<RElement> {
        let (times, quantified_optional) = self.quantifier(el, negated);
        let Modifiers { optional, greedy, inner } = self.modifiers(el, negated, times.is_some());
        let window_ms = self.element_window(el, contiguity, in_group);
        let kind = self.element_kind(el, negated, in_loop || times.is_some())?;
        let optional = optional || quantified_optional;
        if let (RKind::Group(inner_seq), Some((_, None))) = (&kind, times) {
            if inner_seq.iter().all(|e| self.takes_nothing_possibly(e)) {
                self.err_hint(
                    el.span,
                    "empty-loop",
                    "this group repeats, but every element in it may take no event: it could repeat for ever \
                     without taking one",
                    "make one element of the group required (drop its `?`, `*` or `optional`), or move the \
                     optional elements out of the group",
                );
            }
        }
        Some(RElement { kind, contiguity, times, optional, greedy, inner, window_ms })
    }

    /// Whether a resolved element can be passed without taking an event: it is optional, a
    /// negation, or a group of such elements.
    fn takes_nothing_possibly(&self, e: &RElement) -> bool {
        e.optional
            || match &e.kind {
                RKind::Var(v) => self.vars.get(v.index()).is_some_and(|d| d.negated),
                RKind::Group(seq) => seq.iter().all(|e| self.takes_nothing_possibly(e)),
            }
    }

    /// The repetition an element's quantifier asks for (none: exactly once).
    fn quantifier(&mut self, el: &ast::Element, negated: bool) -> Repetition {
        let Some((q, span)) = el.quantifier else { return (None, false) };
        if negated {
            self.err_hint(
                span,
                "negated-quantifier",
                "a negated element cannot have a quantifier",
                "`not next` / `not followed by` take a single variable",
            );
        }
        match q {
            Quantifier::Plus => (Some((1, None)), false),
            Quantifier::Star => (Some((1, None)), true),
            Quantifier::Optional => (None, true),
            Quantifier::Range { min, max } => self.range(min, max, span),
        }
    }

    /// `{n}`, `{n,m}` or `{n,}`; a minimum of zero makes the element optional.
    fn range(&mut self, min: u64, max: Option<u64>, span: Span) -> Repetition {
        let bad = |n: u64| n > MAX_TIMES;
        if bad(min) || max.is_some_and(bad) {
            self.err_hint(
                span,
                "bad-quantifier",
                format!("a repetition count must be at most {MAX_TIMES}"),
                "for more, use an open range `{n,}` and an aggregate such as `count(x) >= n` on the next element",
            );
        } else if max == Some(0) {
            self.err_hint(
                span,
                "bad-quantifier",
                "an element cannot occur zero times",
                "use `?` or `*` for an optional element",
            );
        } else if max.is_some_and(|m| m < min) {
            self.err_hint(
                span,
                "bad-quantifier",
                format!("the range `{{{min},{}}}` is empty: the maximum is below the minimum", max.unwrap_or(0)),
                format!("write `{{{},{min}}}`", max.unwrap_or(0)),
            );
        } else {
            // `{0,m}` is an optional `{1,m}`.
            let (lo, hi) = (min as u32, max.map(|m| m as u32));
            let times = match hi {
                Some(1) => None,
                h => Some((lo.max(1), h)),
            };
            return (times, lo == 0);
        }
        (None, false)
    }

    /// `optional`, `greedy`, `consecutive` and `allow combinations`; `repeats`: the element has
    /// a quantifier that repeats it.
    fn modifiers(&mut self, el: &ast::Element, negated: bool, repeats: bool) -> Modifiers {
        let mut optional = false;
        let mut greedy = false;
        let mut inner = Inner::Relaxed;
        let mut seen: Vec<Modifier> = Vec::new();
        for (m, span) in &el.modifiers {
            if seen.contains(m) {
                self.err(*span, "duplicate-modifier", format!("`{}` is given twice", m.text()));
                continue;
            }
            seen.push(*m);
            if negated {
                self.err_hint(
                    *span,
                    "negated-modifier",
                    format!("a negated element cannot be `{}`", m.text()),
                    "`not next` / `not followed by` take a single variable",
                );
                continue;
            }
            match m {
                Modifier::Optional => optional = true,
                Modifier::Greedy => {
                    if !repeats {
                        self.err_hint(
                            *span,
                            "needs-loop",
                            "`greedy` applies to loops and repetitions",
                            "add a quantifier such as `+` or `{2,4}`",
                        );
                    } else if matches!(el.kind, ElementKind::Group(_)) {
                        self.err(*span, "greedy-group", "a group cannot be `greedy` (FlinkCEP does not support it)");
                    }
                    greedy = true;
                }
                Modifier::Consecutive | Modifier::AllowCombinations => {
                    if !repeats {
                        self.err_hint(
                            *span,
                            "needs-loop",
                            format!("`{}` applies to loops and repetitions", m.text()),
                            "add a quantifier such as `+` or `{3}`",
                        );
                    }
                    let want = if *m == Modifier::Consecutive { Inner::Strict } else { Inner::Any };
                    if inner != Inner::Relaxed && inner != want {
                        self.err(
                            *span,
                            "conflicting-modifiers",
                            "`consecutive` and `allow combinations` exclude each other",
                        );
                    }
                    inner = want;
                }
            }
        }
        if greedy && inner == Inner::Any {
            let span = el.modifiers.iter().find(|(m, _)| *m == Modifier::Greedy).map_or(el.span, |(_, s)| *s);
            self.err(span, "conflicting-modifiers", "`greedy` and `allow combinations` exclude each other");
        }
        Modifiers { optional, greedy, inner }
    }

    /// The element's own `within`: a window to the previous event, inside the pattern's.
    fn element_window(&mut self, el: &ast::Element, contiguity: Option<Contiguity>, in_group: bool) -> Option<i64> {
        let (ms, span) = el.window?;
        if contiguity.is_none() && !in_group {
            self.err_hint(
                span,
                "bad-window",
                "the first element has no previous event to be `within` of",
                "put `within` on a later element, or a pattern-wide `within` clause",
            );
            None
        } else if self.pattern_window.is_some_and(|w| ms > w) {
            self.err_hint(
                span,
                "bad-window",
                "this element's `within` is longer than the pattern's `within`",
                "the whole match must fit in the pattern window anyway: shorten this one or drop it",
            );
            None
        } else {
            self.duration(ms, span)
        }
    }

    /// A variable (declared here) or a group (resolved as a sequence); `looping`: its events repeat.
    fn element_kind(&mut self, el: &ast::Element, negated: bool, looping: bool) -> Option<RKind> {
        Some(match &el.kind {
            ElementKind::Var { name, ty } => {
                let ty_id = ty.as_ref().and_then(|t| self.record_type(t));
                let id = self.declare(name, ty_id, looping, negated)?;
                self.vars[id.index()].bad_type = ty.is_some() && ty_id.is_none();
                RKind::Var(id)
            }
            ElementKind::Group(s) => {
                if negated {
                    self.err_hint(
                        el.span,
                        "negated-group",
                        "a group cannot be negated",
                        "negate a single variable: `not followed by x`",
                    );
                }
                let inner_seq = self.sequence(s, true, looping);
                if let Some((c, span, _)) = s.rest.last() {
                    if c.is_negation() {
                        self.err_hint(
                            *span,
                            "negation-at-group-end",
                            format!(
                                "a group cannot end with `{}`: nothing in the group comes after it to bound the \
                                 negation, so the group could never complete (FlinkCEP accepts it and never matches)",
                                c.text()
                            ),
                            "move the negation after the group: `(a next b) not followed by c followed by d`",
                        );
                    }
                }
                RKind::Group(inner_seq)
            }
        })
    }

    fn record_type(&mut self, t: &Ident) -> Option<TypeId> {
        let st = self.stream.clone()?;
        match st.record_type(&t.name) {
            Some(id) => Some(id),
            None => {
                let names: Vec<&str> = st.types.iter().map(|t| t.name.as_str()).collect();
                let hint = did_you_mean(&t.name, names.iter().copied())
                    .unwrap_or_else(|| format!("stream `{}` has: {}", st.name, names.join(", ")));
                self.err_hint(
                    t.span,
                    "unknown-type",
                    format!("stream `{}` has no record type `{}`", st.name, t.name),
                    hint,
                );
                None
            }
        }
    }

    fn declare(&mut self, name: &Ident, ty: Option<TypeId>, looping: bool, negated: bool) -> Option<VarId> {
        if let Some(prev) = self.by_name.get(&name.name) {
            let (line, col) = self.src.line_col(self.vars[prev.index()].span.start);
            self.err_hint(
                name.span,
                "duplicate-variable",
                format!("variable `{}` appears twice in the sequence", name.name),
                format!("it is first used at line {line}, column {col}; give each element its own name"),
            );
            return None;
        }
        if let Some(st) = &self.stream {
            if st.field(&name.name).is_some() {
                let hint = format!("rename the variable, e.g. `{}_event`", name.name);
                let msg = format!("variable `{}` has the same name as a field of stream `{}`", name.name, st.name);
                self.err_hint(name.span, "variable-shadows-field", msg, hint);
            }
        }
        let id = VarId(self.vars.len() as u16);
        self.vars.push(VarDef {
            name: name.name.clone(),
            span: name.span,
            ty,
            bad_type: false,
            looping,
            negated,
            cond: None,
            until: None,
        });
        self.by_name.insert(name.name.clone(), id);
        Some(id)
    }

    pub(super) fn check_sequence_ends(&mut self, seq: &[RElement], s: &ast::Sequence, has_within: bool) {
        if let (Some(last), Some((c, span, el))) = (seq.last(), s.rest.last()) {
            if *c == Contiguity::NotFollowedBy && !has_within && last.window_ms.is_none() && el.window.is_none() {
                self.err_hint(*span, "not-followed-by-at-end", "`not followed by` at the end of a pattern needs a `within` window",
                    "add `within 10m` (or another duration): the match is released when the window has passed without the event");
            }
        }
    }
}
