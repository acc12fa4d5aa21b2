//! What a match produces: the `emit` fields and the `message` template (or the default message).

use std::collections::BTreeMap;

use engine::OutputField;

use super::clauses::Clauses;
use super::expr::Scope;
use super::Checker;
use crate::ast::{self, ClauseKind, Span};

impl Checker<'_> {
    /// `emit`: the named output fields, evaluated on the complete match.
    pub(super) fn emit_clause(&mut self, clauses: &Clauses<'_>) -> Vec<OutputField> {
        let mut outputs = Vec::new();
        if let (Some(ast::Clause { kind: ClauseKind::Emit(fields), .. }), true) =
            (clauses.get("emit"), self.stream.is_some())
        {
            let mut names: BTreeMap<&str, Span> = BTreeMap::new();
            for f in fields {
                if names.insert(&f.name.name, f.name.span).is_some() {
                    self.err_hint(
                        f.name.span,
                        "duplicate-output",
                        format!("output field `{}` is given twice", f.name.name),
                        "give it another name: `name: expression`",
                    );
                }
                if let Some(t) = self.expr(&f.expr, Scope::Output) {
                    outputs.push(OutputField { name: f.name.name.clone(), expr: t.expr });
                }
            }
        }
        outputs
    }

    /// `message`: its text and holes; without one, the description or `pattern NAME matched`.
    pub(super) fn message_clause(
        &mut self,
        clauses: &Clauses<'_>,
        pattern: &str,
        description: &str,
    ) -> Vec<engine::TemplatePart> {
        let mut message = Vec::new();
        match clauses.get("message") {
            Some(ast::Clause { kind: ClauseKind::Message(t), .. }) if self.stream.is_some() => {
                for part in &t.parts {
                    match part {
                        ast::TemplatePart::Text(s) => message.push(engine::TemplatePart::Lit(s.clone())),
                        ast::TemplatePart::Hole(e) => {
                            if let Some(t) = self.expr(e, Scope::Output) {
                                message.push(engine::TemplatePart::Expr(t.expr));
                            }
                        }
                    }
                }
            }
            _ => {
                let text =
                    if description.is_empty() { format!("pattern {pattern} matched") } else { description.to_owned() };
                message.push(engine::TemplatePart::Lit(text));
            }
        }
        message
    }
}
