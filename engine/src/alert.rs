//! Turning a match into what an alert says: the output fields and the message, evaluated on the
//! complete match, and the coordinates of the events that made it.

use crate::expr::MatchView;
use crate::nfa::{Nfa, TemplatePart, VarId};
use crate::refdata::Bound;
use crate::runtime::MatchEvents;
use crate::value::{Event, Value};

impl MatchView for MatchEvents {
    fn visit(&self, var: VarId, f: &mut dyn FnMut(&Event) -> bool) {
        if let Some((_, list)) = self.iter().find(|(v, _)| *v == var) {
            for e in list {
                if !f(e) {
                    break;
                }
            }
        }
    }
}

/// The content of an alert, before it is given an id and serialized.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertBody {
    /// Output fields, in `emit` order.
    pub fields: Vec<(String, Value)>,
    pub message: String,
    /// Per variable (pattern order), the `seq` of each event it took.
    pub matched: Vec<(String, Vec<u64>)>,
}

impl Value {
    /// Text for messages: text as is, numbers as JSON writes them, `null` for null.
    pub fn render_text(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Value::Str(s) => out.push_str(s),
            Value::Float(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 => {
                let _ = write!(out, "{x:.1}");
            }
            Value::Float(x) => {
                let _ = write!(out, "{x}");
            }
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Value::Null => out.push_str("null"),
        }
    }
}

/// Evaluates the pattern's outputs and message on a complete match, with no reference tables
/// (every table reads as empty; see [`body_with`]).
pub fn body(nfa: &Nfa, events: &MatchEvents) -> AlertBody {
    body_with(nfa, events, Bound::empty())
}

/// [`body`], reading reference tables (`lookup`, `in list`) from `refs`: for an operator's
/// output, the tables it has installed when it gives the output
/// ([`crate::runtime::Operator::reference`]).
pub fn body_with(nfa: &Nfa, events: &MatchEvents, refs: &Bound) -> AlertBody {
    let fields = nfa.outputs.iter().map(|o| (o.name.clone(), o.expr.eval_with(None, events, refs))).collect();
    let mut message = String::new();
    for part in &nfa.message.parts {
        match part {
            TemplatePart::Lit(s) => message.push_str(s),
            TemplatePart::Expr(e) => e.eval_with(None, events, refs).render_text(&mut message),
        }
    }
    // Variables in pattern order (the match lists them in order of their first event).
    let mut matched = Vec::new();
    for (i, v) in nfa.vars.iter().enumerate() {
        if let Some((_, list)) = events.iter().find(|(var, _)| var.index() == i) {
            matched.push((v.name.clone(), list.iter().map(|e| e.seq).collect()));
        }
    }
    AlertBody { fields, message, matched }
}
