//! Reference data: lists and per-key tables maintained apart from the patterns (watchlists,
//! high-risk countries, a KYC tier per customer) that conditions, outputs and messages read with
//! `x in list NAME` and `lookup(NAME, x)`.
//!
//! - [`RefTable`]: one table, keys (whole numbers or texts) to values; a list is a table whose
//!   values are not read.
//! - [`RefData`]: an immutable snapshot of every table by name, cheap to clone (an `Arc`); the
//!   caller (the service) builds a new one when a table changes and installs it between events
//!   with `Operator::set_reference` / `MultiOperator::set_reference`.
//! - [`Bound`]: the tables one compiled pattern reads ([`crate::Nfa::tables`], by
//!   [`TableId`](crate::TableId)), resolved once when a snapshot is installed: at run time no
//!   table is looked up by name. A table missing from the snapshot reads as an empty table.
//!
//! Contents are never part of a pattern: changing them changes no content hash and resets no
//! state, and per-key snapshots of the operator's state do not hold them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::nfa::TableId;
use crate::value::{Text, Value};

/// Whether a table only tells membership (`in list`) or also maps keys to values (`lookup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// Keys only (`x in list NAME`); values are not read.
    List,
    /// Keys with values (`lookup(NAME, x)`, and `x in list NAME` for membership).
    Map,
}

/// A key that is neither a whole number nor text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("a table key is a whole number or text, not {0}")]
pub struct KeyError(pub Value);

/// One table: keys (`Value::Int` or `Value::Str`; a whole number and a text never equal) to
/// values, iterated in key order (whole numbers ascending, then texts by their bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct RefTable {
    kind: TableKind,
    ints: BTreeMap<i64, Value>,
    texts: BTreeMap<Text, Value>,
}

impl RefTable {
    pub fn new(kind: TableKind) -> Self {
        RefTable { kind, ints: BTreeMap::new(), texts: BTreeMap::new() }
    }

    pub fn kind(&self) -> TableKind {
        self.kind
    }

    /// Sets `key`'s value (for a list, conventionally `Value::Bool(true)`: it is not read);
    /// returns the value it replaces. Keys are whole numbers or texts.
    pub fn insert(&mut self, key: Value, value: Value) -> Result<Option<Value>, KeyError> {
        match key {
            Value::Int(i) => Ok(self.ints.insert(i, value)),
            Value::Str(s) => Ok(self.texts.insert(s, value)),
            other => Err(KeyError(other)),
        }
    }

    /// Removes `key`; returns its value, if it was there.
    pub fn remove(&mut self, key: &Value) -> Option<Value> {
        match key {
            Value::Int(i) => self.ints.remove(i),
            Value::Str(s) => self.texts.remove(s.as_str()),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.ints.len() + self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`: a whole number finds a whole-number key (so does a number with no
    /// fraction, as `==` compares them), a text a text key; anything else (null) finds nothing.
    pub fn get(&self, key: &Value) -> Option<&Value> {
        match key {
            Value::Int(i) => self.ints.get(i),
            Value::Str(s) => self.texts.get(s.as_str()),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => self.ints.get(&(*f as i64)),
            _ => None,
        }
    }

    pub fn contains(&self, key: &Value) -> bool {
        self.get(key).is_some()
    }

    /// The entries in key order: whole numbers ascending, then texts by their bytes.
    pub fn iter(&self) -> impl Iterator<Item = (Value, &Value)> + '_ {
        let ints = self.ints.iter().map(|(k, v)| (Value::Int(*k), v));
        ints.chain(self.texts.iter().map(|(k, v)| (Value::Str(k.clone()), v)))
    }
}

/// An immutable snapshot of every table, by name. Cloning it is cheap (an `Arc`); [`RefData::set`]
/// and [`RefData::remove`] copy the name map (not the tables) if the snapshot is shared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RefData {
    tables: Arc<BTreeMap<String, Arc<RefTable>>>,
}

impl RefData {
    /// Sets (or replaces) table `name`.
    pub fn set(&mut self, name: impl Into<String>, table: Arc<RefTable>) {
        Arc::make_mut(&mut self.tables).insert(name.into(), table);
    }

    /// Removes table `name` (patterns reading it then see an empty table).
    pub fn remove(&mut self, name: &str) -> Option<Arc<RefTable>> {
        Arc::make_mut(&mut self.tables).remove(name)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<RefTable>> {
        self.tables.get(name)
    }

    /// The tables' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tables.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// The tables one pattern reads, resolved from a [`RefData`] snapshot: by [`TableId`], as
/// [`crate::Nfa::tables`] names them (missing ones empty). What expressions are evaluated against
/// (`Expr::eval_with`, `Cond::holds_with`, `alert::body_with`); [`Bound::empty`] has no table
/// (every table reads as empty). For a pattern that reads no table it is empty and allocates
/// nothing; cloning it is cheap (an `Arc`).
#[derive(Clone, Debug, Default)]
pub struct Bound {
    tables: Option<Arc<[Option<Arc<RefTable>>]>>,
}

impl Bound {
    /// No tables: every table reads as empty.
    pub const NONE: Bound = Bound { tables: None };

    /// [`Bound::NONE`], borrowed.
    pub fn empty() -> &'static Bound {
        static EMPTY: Bound = Bound::NONE;
        &EMPTY
    }

    /// The tables named by `names` (a pattern's [`crate::Nfa::tables`]) in `data`.
    pub fn new(names: &[String], data: &RefData) -> Bound {
        if names.is_empty() {
            return Bound::NONE;
        }
        Bound { tables: Some(names.iter().map(|n| data.get(n).cloned()).collect()) }
    }

    /// Table `id`; `None` when the snapshot has none of that name (read it as empty).
    pub fn table(&self, id: TableId) -> Option<&RefTable> {
        self.tables.as_deref()?.get(id.index())?.as_deref()
    }

    /// Whether the same tables are bound (the same snapshots of them, by identity).
    pub fn same(&self, other: &Bound) -> bool {
        match (&self.tables, &other.tables) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b.iter()).all(|(x, y)| match (x, y) {
                        (None, None) => true,
                        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                        _ => false,
                    })
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_and_texts_are_different_keys() {
        let mut t = RefTable::new(TableKind::Map);
        assert_eq!(t.insert(Value::Int(1), Value::str("one")), Ok(None));
        assert_eq!(t.insert(Value::str("1"), Value::str("text one")), Ok(None));
        assert_eq!(t.insert(Value::Int(1), Value::str("uno")), Ok(Some(Value::str("one"))));
        assert_eq!(t.insert(Value::Null, Value::Bool(true)), Err(KeyError(Value::Null)));
        assert_eq!(t.insert(Value::Float(1.0), Value::Bool(true)), Err(KeyError(Value::Float(1.0))));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&Value::Int(1)), Some(&Value::str("uno")));
        assert_eq!(t.get(&Value::str("1")), Some(&Value::str("text one")));
        assert_eq!(t.get(&Value::Float(1.0)), Some(&Value::str("uno")), "1.0 == 1");
        assert_eq!(t.get(&Value::Float(1.5)), None);
        assert_eq!(t.get(&Value::Null), None);
        assert!(!t.contains(&Value::Int(2)));
        assert_eq!(t.remove(&Value::str("1")), Some(Value::str("text one")));
        assert_eq!(t.remove(&Value::str("1")), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn entries_iterate_in_key_order() {
        let mut t = RefTable::new(TableKind::List);
        for k in [Value::str("b"), Value::Int(10), Value::str("a"), Value::Int(-3)] {
            t.insert(k, Value::Bool(true)).expect("a valid key");
        }
        let keys: Vec<String> = t.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["-3", "10", "\"a\"", "\"b\""]);
    }

    #[test]
    fn a_snapshot_binds_the_tables_a_pattern_names() {
        let mut list = RefTable::new(TableKind::List);
        list.insert(Value::str("IR"), Value::Bool(true)).expect("a valid key");
        let list = Arc::new(list);
        let mut data = RefData::default();
        data.set("risky", list.clone());
        let copy = data.clone();
        data.set("other", Arc::new(RefTable::new(TableKind::Map)));
        assert_eq!(copy.names().collect::<Vec<_>>(), ["risky"], "a snapshot does not change");
        assert_eq!(data.names().collect::<Vec<_>>(), ["other", "risky"]);

        let names = ["missing".to_owned(), "risky".to_owned()];
        let bound = Bound::new(&names, &data);
        assert!(bound.table(TableId(0)).is_none(), "missing: read as empty");
        assert!(bound.table(TableId(1)).is_some_and(|t| t.contains(&Value::str("IR"))));
        assert!(bound.table(TableId(2)).is_none());
        assert!(bound.same(&Bound::new(&names, &copy)));
        data.set("risky", Arc::new(RefTable::new(TableKind::List)));
        assert!(!bound.same(&Bound::new(&names, &data)));
        assert!(Bound::new(&[], &data).same(Bound::empty()));
    }
}
