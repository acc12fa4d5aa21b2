//! Reference tables: `x in list NAME`, `x not in list NAME` and `lookup(NAME, x)`. A table is
//! declared in the catalog ([`TableDecl`], `[tables.NAME]` in the config) with the type of its
//! keys (a whole number or text) and, for a map, of its values; its contents are maintained
//! apart and never seen here. `in list` works on lists and maps (membership of the key);
//! `lookup` needs a map, and gives its value type, nullable (an absent key gives null).

use engine::{Expr, TableId, TableKind};

use super::expr::{Scope, Ty, Typed};
use super::Checker;
use crate::ast::{self, ExprKind, Ident};
use crate::diag::did_you_mean;
use crate::schema::TableDecl;

impl Checker<'_> {
    /// The declaration of table `name`, or a diagnostic at its name.
    fn table_decl(&mut self, name: &Ident) -> Option<TableDecl> {
        if let Some(decl) = self.tables.get(&name.name) {
            return Some(*decl);
        }
        let known: Vec<&str> = self.tables.keys().map(String::as_str).collect();
        let msg = if known.is_empty() {
            format!("unknown table `{}`: no tables are declared", name.name)
        } else {
            format!("unknown table `{}` (declared: {})", name.name, known.join(", "))
        };
        let hint = did_you_mean(&name.name, known.iter().copied())
            .unwrap_or_else(|| format!("declare it under `[tables.{}]` in the config", name.name));
        self.err_hint(name.span, "unknown-table", msg, hint);
        None
    }

    /// The id the compiled pattern gives table `name` (in order of first use).
    fn table_id(&mut self, name: &str) -> TableId {
        let at = match self.tables_used.iter().position(|t| t == name) {
            Some(at) => at,
            None => {
                self.tables_used.push(name.to_owned());
                self.tables_used.len() - 1
            }
        };
        TableId(u16::try_from(at).unwrap_or(u16::MAX))
    }

    /// Checks that `key` (from `key_expr`) can be a key of `table`: keys of whole numbers take
    /// numbers, keys of text take text (as `in (...)` compares its items).
    fn check_key(&mut self, table: &Ident, decl: &TableDecl, key: &Typed, key_expr: &ast::Expr) -> Option<()> {
        let Some(key_ty) = Ty::from_field(decl.key) else {
            self.err(table.span, "bad-table", format!("table `{}` has keys patterns cannot read", table.name));
            return None;
        };
        if Ty::comparable(key_ty, key.ty) {
            return Some(());
        }
        self.err_hint(
            key_expr.span,
            "type-mismatch",
            format!("`{}` is keyed by {}, but this is {}", table.name, key_ty.describe(), key.ty.describe()),
            format!("look `{}` up with {}", table.name, key_ty.describe()),
        );
        None
    }

    /// `expr [not] in list NAME`: a boolean, null when the value is null.
    pub(super) fn in_table(&mut self, expr: &ast::Expr, table: &Ident, negated: bool, scope: Scope) -> Option<Typed> {
        let t = self.expr(expr, scope);
        let decl = self.table_decl(table);
        let (t, decl) = (t?, decl?);
        self.check_key(table, &decl, &t, expr)?;
        let id = self.table_id(&table.name);
        Some(Typed::new(Ty::Bool, Expr::InTable { expr: Box::new(t.expr), table: id, negated }))
    }

    /// `lookup(NAME, key)`: the value of a map for the key, of its value type; null when the
    /// key is null or absent.
    pub(super) fn lookup(
        &mut self,
        e: &ast::Expr,
        name: &Ident,
        distinct: bool,
        args: &[ast::Expr],
        scope: Scope,
    ) -> Option<Typed> {
        const EXAMPLE: &str = "e.g. `lookup(kyc_tier, customer_id) == \"LOW\"`";
        if distinct {
            self.err_hint(
                name.span,
                "bad-aggregate",
                "`distinct` is only allowed in `count(distinct ...)`",
                "`lookup` is not an aggregate: drop `distinct`",
            );
            return None;
        }
        let [table_arg, key_arg] = args else {
            self.err_hint(
                e.span,
                "bad-arguments",
                format!("`lookup` takes 2 arguments (a table name and a key), but was given {}", args.len()),
                EXAMPLE,
            );
            return None;
        };
        let table = match &table_arg.kind {
            ExprKind::Path(segs) if segs.len() == 1 => segs[0].clone(),
            _ => {
                self.err_hint(
                    table_arg.span,
                    "bad-arguments",
                    "the first argument of `lookup` is the name of a table",
                    EXAMPLE,
                );
                return None;
            }
        };
        let key = self.expr(key_arg, scope);
        let decl = self.table_decl(&table)?;
        let value = match (decl.kind, decl.value.and_then(Ty::from_field)) {
            (TableKind::Map, Some(v)) => v,
            (TableKind::Map, None) => {
                self.err(table.span, "bad-table", format!("table `{}` has values patterns cannot read", table.name));
                return None;
            }
            (TableKind::List, _) => {
                self.err_hint(
                    table.span,
                    "lookup-on-list",
                    format!("`lookup` needs a table with values, but `{}` is a list", table.name),
                    format!("`{0}` is a list: use `in list {0}`", table.name),
                );
                return None;
            }
        };
        let key = key?;
        self.check_key(&table, &decl, &key, key_arg)?;
        let id = self.table_id(&table.name);
        Some(Typed::new(value, Expr::Lookup { table: id, key: Box::new(key.expr) }))
    }
}
