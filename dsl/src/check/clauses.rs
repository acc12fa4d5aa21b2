//! The pattern's clauses: finding each once, and the `from`, `key`, `within`, `skip`, `version`,
//! `severity` and `mode` clauses.

use std::collections::BTreeMap;

use engine::FieldId;

use crate::ast;
use crate::diag::{Diagnostic, SourceFile};
use crate::schema::StreamSchema;

pub(super) fn clause_map<'p>(
    src: &SourceFile,
    p: &'p ast::Pattern,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<&'static str, &'p ast::Clause> {
    let mut m: BTreeMap<&'static str, &ast::Clause> = BTreeMap::new();
    for c in &p.clauses {
        let kw = c.kind.keyword();
        if let Some(first) = m.get(kw) {
            let (line, _) = src.line_col(first.keyword.start);
            diags.push(
                src.diag(c.keyword, "duplicate-clause", format!("`{kw}` is given twice in pattern `{}`", p.name.name))
                    .with_hint(format!("the first `{kw}` is at line {line}; keep one")),
            );
        } else {
            m.insert(kw, c);
        }
    }
    m
}

pub(super) fn missing_types(st: &StreamSchema, f: FieldId) -> String {
    st.types
        .iter()
        .zip(&st.fields[f.index()].in_types)
        .filter(|(_, has)| !**has)
        .map(|(t, _)| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
