//! Tripline's engine: the compiled program a pattern becomes ([`Nfa`], made with [`NfaBuilder`]),
//! and the runtime that runs it per key over event time.
//!
//! Invariants (see `ARCHITECTURE.md`):
//! - no I/O and no wall clock: time is an input;
//! - the compiled [`Nfa`] is immutable and shared (`Arc`), run state is per key;
//! - at run time fields, variables, states, record types and reference tables are newtype
//!   indices, never strings (an operator resolves table names once per installed
//!   [`RefData`] snapshot).

pub mod alert;
pub mod builder;
pub mod dump;
pub mod expr;
pub mod nfa;
pub mod refdata;
pub mod runtime;
pub mod value;

pub use builder::{BuildError, BuildErrorKind, NfaBuilder};
pub use expr::{AggFunc, BinOp, Cond, Expr, Func, MatchView, UnOp};
pub use nfa::{
    Action, CondId, Edge, FieldId, Mode, Nfa, OutputField, PatternMeta, Severity, SkipStrategy, State, StateId,
    StateKind, TableId, Template, TemplatePart, TypeId, VarId, VarInfo,
};
pub use refdata::{Bound, KeyError, RefData, RefTable, TableKind};
pub use value::{Event, Text, Value};
