//! Run-time values and events.

use crate::nfa::TypeId;
use std::cmp::Ordering;
use std::fmt;

/// A text value: up to 23 bytes are stored inline (no heap allocation per field value); longer
/// texts share one reference-counted allocation, so a clone never copies bytes.
pub type Text = smol_str::SmolStr;

/// A field value. Timestamps and durations are `Int` milliseconds; the checker knows which is which.
#[derive(Clone, Debug, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Text),
}

impl Value {
    pub fn str(s: &str) -> Self {
        Value::Str(Text::new(s))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Numeric view (ints widen to floats); `None` for null and non-numbers.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Three-valued comparison: `None` when either side is null or the kinds do not compare.
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Str(a), Value::Str(b)) => Some(a.as_str().cmp(b.as_str())),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (a, b) => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x.partial_cmp(&y),
                _ => None,
            },
        }
    }

    /// Equality used by `==`, `in` and `count(distinct ...)`: `1 == 1.0`; null equals nothing.
    pub fn sql_eq(&self, other: &Value) -> Option<bool> {
        match (self, other) {
            (Value::Null, _) | (_, Value::Null) => None,
            // Texts of different lengths differ without comparing bytes (`type == "auth"`).
            (Value::Str(a), Value::Str(b)) => Some(a.as_bytes() == b.as_bytes()),
            _ => self.compare(other).map(|o| o == Ordering::Equal),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a.sql_eq(b) == Some(true),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => {
                if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
                    write!(f, "{x:.1}")
                } else {
                    write!(f, "{x}")
                }
            }
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// One decoded input event of a stream: its event time, its record type (for streams whose schema
/// is a union of record types) and its field values in the stream's field order (`FieldId`).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Where the event came from, as the caller numbers it (arrival order, or a source offset):
    /// how matches point back at their input.
    pub seq: u64,
    pub ts: i64,
    pub kind: TypeId,
    pub fields: Box<[Value]>,
}

impl Event {
    pub fn field(&self, i: crate::nfa::FieldId) -> &Value {
        static NULL: Value = Value::Null;
        self.fields.get(i.index()).unwrap_or(&NULL)
    }
}
