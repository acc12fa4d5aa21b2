//! The syntax tree of a pattern file. Every node carries the byte span it came from, so the
//! checker can point at it. Built by [`crate::parser`]; pest types do not appear here.

pub use engine::{BinOp, UnOp};

/// A byte range in the source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    pub fn to(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub patterns: Vec<Pattern>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    pub name: Ident,
    pub description: Option<(String, Span)>,
    pub clauses: Vec<Clause>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Clause {
    pub kind: ClauseKind,
    /// The clause keyword.
    pub keyword: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ClauseKind {
    Version(u64, Span),
    Severity(Ident),
    Mode(Ident),
    From(Ident),
    Key(Vec<Ident>),
    Match(Sequence),
    Where(Vec<ConditionDef>),
    Within(i64, Span),
    Skip(Skip),
    Message(Template),
    Emit(Vec<EmitField>),
}

impl ClauseKind {
    pub fn keyword(&self) -> &'static str {
        match self {
            ClauseKind::Version(..) => "version",
            ClauseKind::Severity(_) => "severity",
            ClauseKind::Mode(_) => "mode",
            ClauseKind::From(_) => "from",
            ClauseKind::Key(_) => "key",
            ClauseKind::Match(_) => "match",
            ClauseKind::Where(_) => "where",
            ClauseKind::Within(..) => "within",
            ClauseKind::Skip(_) => "skip",
            ClauseKind::Message(_) => "message",
            ClauseKind::Emit(_) => "emit",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contiguity {
    Next,
    FollowedBy,
    FollowedByAny,
    NotNext,
    NotFollowedBy,
}

impl Contiguity {
    pub fn text(self) -> &'static str {
        match self {
            Contiguity::Next => "next",
            Contiguity::FollowedBy => "followed by",
            Contiguity::FollowedByAny => "followed by any",
            Contiguity::NotNext => "not next",
            Contiguity::NotFollowedBy => "not followed by",
        }
    }

    pub fn is_negation(self) -> bool {
        matches!(self, Contiguity::NotNext | Contiguity::NotFollowedBy)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub first: Element,
    /// Each following element with the operator that joins it to the one before.
    pub rest: Vec<(Contiguity, Span, Element)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ElementKind {
    Var { name: Ident, ty: Option<Ident> },
    Group(Box<Sequence>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantifier {
    /// `{min}`, `{min,max}`, `{min,}` (`max: None`).
    Range {
        min: u64,
        max: Option<u64>,
    },
    Plus,
    Star,
    Optional,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modifier {
    Optional,
    Greedy,
    Consecutive,
    AllowCombinations,
}

impl Modifier {
    pub fn text(self) -> &'static str {
        match self {
            Modifier::Optional => "optional",
            Modifier::Greedy => "greedy",
            Modifier::Consecutive => "consecutive",
            Modifier::AllowCombinations => "allow combinations",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Element {
    pub kind: ElementKind,
    pub quantifier: Option<(Quantifier, Span)>,
    pub modifiers: Vec<(Modifier, Span)>,
    pub window: Option<(i64, Span)>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConditionDef {
    pub var: Ident,
    pub cond: Expr,
    pub until: Option<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Skip {
    None,
    ToNext,
    PastLastEvent,
    ToFirst(Ident),
    ToLast(Ident),
}

#[derive(Clone, Debug, PartialEq)]
pub enum TemplatePart {
    Text(String),
    Hole(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EmitField {
    pub name: Ident,
    pub expr: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    /// Milliseconds.
    Duration(i64),
    /// `field`, `var.field`, `field.nested`.
    Path(Vec<Ident>),
    Call {
        name: Ident,
        distinct: bool,
        args: Vec<Expr>,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    /// `expr in list NAME` / `expr not in list NAME`: membership in a reference table.
    InTable {
        expr: Box<Expr>,
        table: Ident,
        negated: bool,
    },
    /// `like` (SQL wildcards) when `regex` is false, `matches` when true.
    Like {
        expr: Box<Expr>,
        pattern: String,
        pattern_span: Span,
        regex: bool,
        negated: bool,
    },
    If(Box<Expr>, Box<Expr>, Box<Expr>),
}
