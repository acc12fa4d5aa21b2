//! Expression typing: the static types, and the checks of literals, operators, `in`, `like`,
//! `if` and comparisons with enum symbols, with hints for values of the wrong kind.

use engine::{BinOp, Expr, UnOp, Value, VarId};

use super::Checker;
use crate::ast::{self, ExprKind, Span};
use crate::diag::did_you_mean;
use crate::schema::FieldType;

/// The static type of an expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ty {
    Bool,
    Int,
    Float,
    Str,
    Timestamp,
    Duration,
    Null,
}

impl Ty {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Ty::Bool => "a boolean",
            Ty::Int => "a whole number",
            Ty::Float => "a number",
            Ty::Str => "text",
            Ty::Timestamp => "a timestamp",
            Ty::Duration => "a duration",
            Ty::Null => "null",
        }
    }

    pub(super) fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float)
    }

    pub(super) fn from_field(t: FieldType) -> Option<Ty> {
        Some(match t {
            FieldType::Bool => Ty::Bool,
            FieldType::Int => Ty::Int,
            FieldType::Float => Ty::Float,
            FieldType::Str => Ty::Str,
            FieldType::Timestamp => Ty::Timestamp,
            FieldType::Unsupported => return None,
        })
    }

    /// Whether values of the two types can be compared with `==` / `<`.
    pub(super) fn comparable(a: Ty, b: Ty) -> bool {
        a == b || (a.numeric() && b.numeric())
    }
}

pub(super) struct Typed {
    pub(super) ty: Ty,
    pub(super) expr: Expr,
    /// Enum symbols when the expression is an enum field.
    pub(super) symbols: Option<Vec<String>>,
}

impl Typed {
    pub(super) fn new(ty: Ty, expr: Expr) -> Self {
        Typed { ty, expr, symbols: None }
    }
}

/// Where an expression is evaluated.
#[derive(Clone, Copy)]
pub(super) enum Scope {
    /// The condition (or until condition) of `owner`: bare fields are the candidate event's.
    Condition { owner: VarId },
    /// `emit` and `message`: evaluated on the complete match.
    Output,
}

impl Checker<'_> {
    pub(super) fn expect_bool(&mut self, t: Typed, span: Span, what: &str) -> Option<Expr> {
        if t.ty == Ty::Bool {
            Some(t.expr)
        } else {
            self.err_hint(
                span,
                "type-mismatch",
                format!("{what} must be true or false, but this is {}", t.ty.describe()),
                "compare it with something, e.g. `amount > 100`",
            );
            None
        }
    }

    fn check_symbol(&mut self, field: &Typed, lit: &ast::Expr) {
        if let (Some(symbols), ExprKind::Str(s)) = (&field.symbols, &lit.kind) {
            if !symbols.contains(s) {
                let hint = did_you_mean(s, symbols.iter().map(String::as_str))
                    .unwrap_or_else(|| format!("it is one of: {}", symbols.join(", ")));
                self.err_hint(lit.span, "unknown-symbol", format!("\"{s}\" is not a value of this enum field"), hint);
            }
        }
    }

    pub(super) fn expr(&mut self, e: &ast::Expr, scope: Scope) -> Option<Typed> {
        match &e.kind {
            ExprKind::Int(i) => Some(Typed::new(Ty::Int, Expr::Lit(Value::Int(*i)))),
            ExprKind::Float(f) => {
                if !f.is_finite() {
                    self.err(e.span, "bad-number", "this number is too large");
                    return None;
                }
                Some(Typed::new(Ty::Float, Expr::Lit(Value::Float(*f))))
            }
            ExprKind::Str(s) => Some(Typed::new(Ty::Str, Expr::Lit(Value::str(s)))),
            ExprKind::Bool(b) => Some(Typed::new(Ty::Bool, Expr::Lit(Value::Bool(*b)))),
            ExprKind::Null => Some(Typed::new(Ty::Null, Expr::Lit(Value::Null))),
            ExprKind::Duration(ms) => {
                if *ms < 0 {
                    self.err(e.span, "bad-duration", "this duration is too large");
                    return None;
                }
                Some(Typed::new(Ty::Duration, Expr::Lit(Value::Int(*ms))))
            }
            ExprKind::Path(segs) => self.path(e, segs, scope),
            ExprKind::Call { name, distinct, args } => self.call(e, name, *distinct, args, scope),
            ExprKind::Unary(op, x) => self.unary(*op, x, scope),
            ExprKind::Binary(op, a, b) => {
                let ta = self.expr(a, scope);
                let tb = self.expr(b, scope);
                let (ta, tb) = (ta?, tb?);
                self.binary(e, *op, a, b, ta, tb)
            }
            ExprKind::IsNull { expr, negated } => {
                let t = self.expr(expr, scope)?;
                Some(Typed::new(Ty::Bool, Expr::IsNull { expr: Box::new(t.expr), negated: *negated }))
            }
            ExprKind::In { expr, list, negated } => self.in_list(expr, list, *negated, scope),
            ExprKind::InTable { expr, table, negated } => self.in_table(expr, table, *negated, scope),
            ExprKind::Like { expr, pattern, pattern_span, regex, negated } => {
                self.like(expr, pattern, *pattern_span, *regex, *negated, scope)
            }
            ExprKind::If(c, t, f) => self.if_else(c, t, f, scope),
        }
    }

    /// `not x` (a boolean) and `-x` (a number or a duration).
    fn unary(&mut self, op: UnOp, x: &ast::Expr, scope: Scope) -> Option<Typed> {
        let t = self.expr(x, scope)?;
        match op {
            UnOp::Not => {
                let inner = self.expect_bool(t, x.span, "the operand of `not`")?;
                Some(Typed::new(Ty::Bool, Expr::Unary(UnOp::Not, Box::new(inner))))
            }
            UnOp::Neg => {
                if !(t.ty.numeric() || t.ty == Ty::Duration) {
                    self.err(x.span, "type-mismatch", format!("cannot negate {}", t.ty.describe()));
                    return None;
                }
                Some(Typed::new(t.ty, Expr::Unary(UnOp::Neg, Box::new(t.expr))))
            }
        }
    }

    /// `expr [not] in (item, ...)`: items of the tested value's type, never `null`.
    fn in_list(&mut self, expr: &ast::Expr, list: &[ast::Expr], negated: bool, scope: Scope) -> Option<Typed> {
        let t = self.expr(expr, scope)?;
        let mut values = Vec::new();
        for item in list {
            let it = self.expr(item, scope)?;
            if it.ty == Ty::Null {
                self.err_hint(
                    item.span,
                    "null-in-list",
                    "`null` in a list never matches",
                    "test for null with `is null`",
                );
                return None;
            }
            if !Ty::comparable(t.ty, it.ty) {
                self.err(
                    item.span,
                    "type-mismatch",
                    format!("this list item is {}, but the value tested is {}", it.ty.describe(), t.ty.describe()),
                );
                return None;
            }
            self.check_symbol(&t, item);
            if let Expr::Lit(v) = it.expr {
                values.push(v);
            }
        }
        Some(Typed::new(Ty::Bool, Expr::In { expr: Box::new(t.expr), list: values.into(), negated }))
    }

    /// `expr [not] like "pattern"` and `expr [not] matches "regex"` (`regex`), on text.
    fn like(
        &mut self,
        expr: &ast::Expr,
        pattern: &str,
        pattern_span: Span,
        regex: bool,
        negated: bool,
        scope: Scope,
    ) -> Option<Typed> {
        let t = self.expr(expr, scope)?;
        let op = if regex { "matches" } else { "like" };
        if t.ty != Ty::Str {
            self.err(expr.span, "type-mismatch", format!("`{op}` needs text, but this is {}", t.ty.describe()));
            return None;
        }
        let compiled =
            if regex { engine::expr::TextPattern::regex(pattern) } else { engine::expr::TextPattern::like(pattern) };
        match compiled {
            Ok(p) => Some(Typed::new(Ty::Bool, Expr::Like { expr: Box::new(t.expr), pattern: p, negated })),
            Err(err) => {
                let first =
                    err.to_string().lines().last().unwrap_or("invalid").trim().trim_start_matches("error: ").to_owned();
                self.err_hint(
                    pattern_span,
                    "bad-regex",
                    format!("invalid regular expression: {first}"),
                    "see the `regex` crate syntax; escape special characters with `\\\\`",
                );
                None
            }
        }
    }

    /// `if c then t else f`: both branches of one type (or `null`).
    fn if_else(&mut self, c: &ast::Expr, t: &ast::Expr, f: &ast::Expr, scope: Scope) -> Option<Typed> {
        let tc = self.expr(c, scope);
        let tt = self.expr(t, scope);
        let tf = self.expr(f, scope);
        let (tc, tt, tf) = (tc?, tt?, tf?);
        let cond = self.expect_bool(tc, c.span, "the condition of `if`")?;
        let ty = if tt.ty == Ty::Null {
            tf.ty
        } else if tf.ty == Ty::Null || tt.ty == tf.ty {
            tt.ty
        } else if tt.ty.numeric() && tf.ty.numeric() {
            Ty::Float
        } else {
            self.err_hint(
                f.span,
                "type-mismatch",
                format!("the `then` branch is {} but the `else` branch is {}", tt.ty.describe(), tf.ty.describe()),
                "both branches must give the same kind of value (use `null` for \"nothing\")",
            );
            return None;
        };
        Some(Typed::new(ty, Expr::If(Box::new(cond), Box::new(tt.expr), Box::new(tf.expr))))
    }

    fn binary(
        &mut self,
        e: &ast::Expr,
        op: BinOp,
        a: &ast::Expr,
        b: &ast::Expr,
        ta: Typed,
        tb: Typed,
    ) -> Option<Typed> {
        use Ty::*;
        let mk =
            |ty: Ty, ta: Typed, tb: Typed| Some(Typed::new(ty, Expr::Binary(op, Box::new(ta.expr), Box::new(tb.expr))));
        let text = |x: &ast::Expr| self.src.text.get(x.span.start..x.span.end).unwrap_or("").to_owned();
        let (a_text, b_text) = (text(a), text(b));
        // `9000 < amount < 10000` parses as `(9000 < amount) < 10000`.
        let chained = match &a.kind {
            ExprKind::Binary(inner, _, mid) if is_comparison(*inner) && is_comparison(op) => {
                Some(format!("write `{a_text} and {} {} {b_text}`", text(mid), op.symbol()))
            }
            _ => None,
        };
        let hint = chained.unwrap_or_else(|| hint_for(op, (ta.ty, &a_text), (tb.ty, &b_text)));
        let mismatch = |this: &mut Self, what: String| {
            this.err_hint(e.span, "type-mismatch", what, hint);
            None
        };
        match op {
            BinOp::And | BinOp::Or => {
                let ea = self.expect_bool(ta, a.span, &format!("each side of `{}`", op.symbol()));
                let eb = self.expect_bool(tb, b.span, &format!("each side of `{}`", op.symbol()));
                Some(Typed::new(Bool, Expr::Binary(op, Box::new(ea?), Box::new(eb?))))
            }
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                if ta.ty == Null || tb.ty == Null {
                    let neg = if op == BinOp::Ne { "not " } else { "" };
                    let operand = if ta.ty == Null { &b_text } else { &a_text };
                    self.err_hint(
                        e.span,
                        "compare-null",
                        format!("`{}` with null is never true", op.symbol()),
                        format!("write `{operand} is {neg}null`"),
                    );
                    return None;
                }
                if !Ty::comparable(ta.ty, tb.ty) {
                    return mismatch(self, format!("cannot compare {} with {}", ta.ty.describe(), tb.ty.describe()));
                }
                if ta.ty == Bool && !matches!(op, BinOp::Eq | BinOp::Ne) {
                    return mismatch(self, "booleans can only be compared with `==` and `!=`".into());
                }
                self.check_symbol(&ta, b);
                self.check_symbol(&tb, a);
                mk(Bool, ta, tb)
            }
            BinOp::Contains | BinOp::StartsWith | BinOp::EndsWith => {
                if ta.ty != Str || tb.ty != Str {
                    return mismatch(
                        self,
                        format!(
                            "`{}` needs text on both sides, but has {} and {}",
                            op.symbol(),
                            ta.ty.describe(),
                            tb.ty.describe()
                        ),
                    );
                }
                mk(Bool, ta, tb)
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => match arithmetic_type(op, ta.ty, tb.ty) {
                Some(t) => mk(t, ta, tb),
                None => mismatch(
                    self,
                    format!("cannot apply `{}` to {} and {}", op.symbol(), ta.ty.describe(), tb.ty.describe()),
                ),
            },
        }
    }
}

/// The type of `a op b` for an arithmetic operator, if the operator applies to those types.
fn arithmetic_type(op: BinOp, a: Ty, b: Ty) -> Option<Ty> {
    use Ty::*;
    match (op, a, b) {
        (BinOp::Div, x, y) if x.numeric() && y.numeric() => Some(Float),
        (_, Int, Int) => Some(Int),
        (_, x, y) if x.numeric() && y.numeric() => Some(Float),
        (BinOp::Add, Timestamp, Duration) | (BinOp::Add, Duration, Timestamp) => Some(Timestamp),
        (BinOp::Sub, Timestamp, Duration) => Some(Timestamp),
        (BinOp::Sub, Timestamp, Timestamp) => Some(Duration),
        (BinOp::Add | BinOp::Sub, Duration, Duration) => Some(Duration),
        (BinOp::Mul, Duration, x) | (BinOp::Mul, x, Duration) if x.numeric() => Some(Duration),
        (BinOp::Div, Duration, Duration) => Some(Float),
        (BinOp::Div, Duration, x) if x.numeric() => Some(Duration),
        _ => None,
    }
}

fn is_comparison(op: BinOp) -> bool {
    matches!(op, BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge)
}

/// A hint for an operator applied to values of the wrong kinds (each side's type and text).
fn hint_for(op: BinOp, (a, a_text): (Ty, &str), (b, b_text): (Ty, &str)) -> String {
    let arithmetic = matches!(op, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem);
    let text_op = matches!(op, BinOp::Contains | BinOp::StartsWith | BinOp::EndsWith);
    // The side that is not what the operator wants, for messages about one operand.
    let odd = |want: fn(Ty) -> bool| if !want(a) { (a, a_text) } else { (b, b_text) };
    match (a, b) {
        _ if text_op => {
            let (t, s) = odd(|t| t == Ty::Str);
            format!("`{s}` is {}; `{}` works on text", t.describe(), op.symbol())
        }
        _ if arithmetic && (a == Ty::Str || b == Ty::Str || a == Ty::Bool || b == Ty::Bool) => {
            let (t, s) = odd(|t| t != Ty::Str && t != Ty::Bool);
            format!("`{}` needs numbers (or durations and timestamps); `{s}` is {}", op.symbol(), t.describe())
        }
        (Ty::Str, x) | (x, Ty::Str) if x.numeric() => {
            "text and numbers do not mix: quote the number (\"42\") or compare with a numeric field".into()
        }
        (Ty::Duration, x) | (x, Ty::Duration) if x.numeric() => {
            "write the duration with a unit, e.g. `1h`, `30s` or `500ms`".into()
        }
        (Ty::Timestamp, x) | (x, Ty::Timestamp) if x.numeric() => {
            "timestamps compare with timestamps, and differ by durations (`event_time - prev.event_time > 10m`); there are no date literals".into()
        }
        (Ty::Bool, Ty::Bool) => format!("booleans compare with `==` and `!=`, e.g. `{a_text} == true`"),
        _ if arithmetic => "arithmetic works on numbers, durations and timestamps".into(),
        _ => "both sides must have the same kind of value".into(),
    }
}
