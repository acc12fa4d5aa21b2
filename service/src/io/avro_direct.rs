//! Avro datums straight to engine events: a [`Program`] compiled once per (writer schema,
//! stream) reads the binary datum into the event's field slots, with no Avro value tree, no
//! JSON and no lookup by name per record. For each writer field the program knows whether to
//! skip it or which slot it fills and how to convert it; defaults of the reader fields the writer
//! lacks are converted once, at compile time.
//!
//! It decides exactly as the generic path of `avro.rs` (apache_avro's value tree resolved
//! against the stream's schema, its JSON form, [`dsl::json_event`]) and is checked against it
//! (`avro_tests.rs`). That path stays the reference: the compiler declines any schema whose
//! resolution it does not model (see [`compile`]), and a compiled program hands a record back
//! ([`Outcome::Defer`]) whenever the generic path would say something other than an event, or
//! could: a malformed datum (truncated, a bad boolean, union index or enum index, invalid UTF-8,
//! a varint overflow), a value that does not resolve (an enum symbol the reader lacks, a writer
//! union branch the reader cannot take), a float that has no JSON form (NaN, infinities), text
//! that is not one of the field's symbols. Those records are rare and their messages are
//! apache_avro's, so they are left to the path that words them. The program itself reports the
//! two outcomes that need no wording of apache_avro's: bytes left over after the datum, and a
//! null event time.
//!
//! Which of the stream's record types a writer record type is read as is not apache_avro's
//! choice (the first whose fields it has) but the Avro specification's, by name
//! ([`reader_branch`]): both paths take it from here.

use std::collections::HashMap;

use apache_avro::schema::{
    EnumSchema, InnerDecimalSchema, NamesRef, RecordField, RecordSchema, ResolvedSchema, SchemaKind, UnionSchema,
};
use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use dsl::schema::StreamField;
use dsl::{EventError, FieldType, StreamSchema};
use engine::{Event, TypeId, Value};
use serde_json::Value as Json;

/// What a program says instead of an event.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Decode this record through the generic path: it is malformed, does not resolve, or is
    /// refused with a message of apache_avro's (see the module documentation).
    Defer,
    /// The datum decoded with this many bytes left over.
    LeftOver(usize),
    /// The record is not an event of the stream (its event time is null).
    Event(EventError),
}

/// The decoder of one writer schema for one stream.
#[derive(Debug)]
pub struct Program {
    /// The writer schema is a union: the datum starts with the branch index.
    union: bool,
    /// Per writer branch (one when the writer schema is a record); `None`: the branch never
    /// resolves to the stream's schema (the generic path words the reject).
    branches: Box<[Option<Branch>]>,
    nfields: usize,
    ts: usize,
    ts_path: String,
}

#[derive(Debug)]
struct Branch {
    kind: TypeId,
    op: Op,
}

/// One step of a program: how to read one writer value and where its reader value goes.
#[derive(Debug)]
enum Op {
    /// A null: nothing to read, nothing to write.
    Nothing,
    /// A boolean, to a slot or dropped.
    Bool(Option<usize>),
    /// An Avro int (32 bits: out of range is malformed), long, float or double.
    Int(Num),
    Long(Num),
    Float(Num),
    Double(Num),
    /// A string (or bytes read as one): must be UTF-8.
    Str(StrTo),
    /// Bytes, dropped.
    Bytes,
    /// A fixed of this size, dropped.
    Fixed(usize),
    /// An enum: per writer symbol index.
    Enum(Box<[EnumTo]>),
    /// A record: its fields in writer order, then the converted defaults of the reader fields
    /// the writer lacks.
    Record(Box<[Op]>, Box<[(usize, Value)]>),
    /// A union: per writer branch index.
    Union(Box<[Op]>),
    Array(Box<Op>),
    Map(Box<Op>),
    /// The value does not resolve to the reader's schema.
    Fail,
}

/// A number: how the reader's schema represents it (which the JSON form and the field table
/// see), and where it goes.
#[derive(Clone, Copy, Debug)]
struct Num {
    repr: Repr,
    to: NumTo,
}

#[derive(Clone, Copy, Debug)]
enum Repr {
    /// Not in the reader's value (a writer field the reader does not have): unchecked.
    Raw,
    I64,
    /// A reader float: the value is rounded to f32, and must be finite (JSON has no NaN).
    F32,
    /// A reader double: must be finite.
    F64,
}

#[derive(Clone, Copy, Debug)]
enum NumTo {
    Discard,
    Int(usize),
    /// A timestamp field: divided by the field's divisor.
    Ts(usize, i64),
    Float(usize),
}

const RAW: Num = Num { repr: Repr::Raw, to: NumTo::Discard };

#[derive(Debug)]
enum StrTo {
    Discard,
    /// One allocation per record.
    Alloc(usize),
    /// Looked up among texts (a string resolved to an enum, or a text field with symbols):
    /// what to do with each, and with any other text.
    Lookup(Box<[(Box<str>, EnumTo)]>, EnumTo),
}

#[derive(Clone, Debug)]
enum EnumTo {
    Discard,
    /// The reader's symbol, interned.
    Set(usize, Value),
    /// The symbol does not resolve, or is not one of the field's symbols.
    Fail,
}

/// Nested records beyond this depth are not flattened into fields (as in `dsl::schema`).
const MAX_DEPTH: usize = 16;
/// Recursion of the compiler (recursive schemas) and its total work, beyond which it declines.
const MAX_NESTING: usize = 48;
const MAX_STEPS: usize = 200_000;
/// Array and map items per value beyond which the generic path decides (apache_avro limits
/// allocations; this stays well below its limit).
const MAX_ITEMS: usize = 1 << 20;

impl Program {
    /// Decodes one Avro datum (the record value without the 5-byte wire header); `seq` is the
    /// event's coordinate.
    pub fn decode(&self, datum: &[u8], seq: u64) -> Result<Event, Outcome> {
        let mut r = Cursor { buf: datum, pos: 0 };
        let branch = if self.union {
            let i = r.long().map_err(|Defer| Outcome::Defer)?;
            usize::try_from(i).ok().and_then(|i| self.branches.get(i))
        } else {
            self.branches.first()
        };
        let Some(Some(b)) = branch else { return Err(Outcome::Defer) };
        let mut fields = vec![Value::Null; self.nfields];
        run(&b.op, &mut r, &mut fields).map_err(|Defer| Outcome::Defer)?;
        if r.pos < datum.len() {
            return Err(Outcome::LeftOver(datum.len() - r.pos));
        }
        let ts = match fields[self.ts] {
            Value::Int(ms) => ms,
            _ => return Err(Outcome::Event(EventError::NullTimestamp { field: self.ts_path.clone() })),
        };
        Ok(Event { seq, ts, kind: b.kind, fields: fields.into_boxed_slice() })
    }
}

/// The generic path decides this record.
#[derive(Debug)]
struct Defer;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn byte(&mut self) -> Result<u8, Defer> {
        let b = *self.buf.get(self.pos).ok_or(Defer)?;
        self.pos += 1;
        Ok(b)
    }

    /// A zigzag varint of at most 10 bytes, as apache_avro reads it.
    #[inline]
    fn long(&mut self) -> Result<i64, Defer> {
        let mut z = 0u64;
        for j in 0..10 {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << (j * 7);
            if b & 0x80 == 0 {
                return Ok(if z & 1 == 0 { (z >> 1) as i64 } else { !(z >> 1) as i64 });
            }
        }
        Err(Defer)
    }

    #[inline]
    fn int(&mut self) -> Result<i64, Defer> {
        let n = self.long()?;
        if i32::try_from(n).is_err() {
            return Err(Defer);
        }
        Ok(n)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Defer> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(Defer)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Defer> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'a [u8], Defer> {
        let n = usize::try_from(self.long()?).map_err(|_| Defer)?;
        self.take(n)
    }

    #[inline]
    fn str(&mut self) -> Result<&'a str, Defer> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Defer)
    }

    /// The item count of the next block of an array or map (0: the end); `total` counts the
    /// items so far.
    fn block(&mut self, total: &mut usize) -> Result<usize, Defer> {
        let raw = self.long()?;
        let n = match raw {
            0 => return Ok(0),
            n if n < 0 => {
                self.long()?; // the block's size in bytes
                n.checked_neg().ok_or(Defer)?
            }
            n => n,
        };
        let n = usize::try_from(n).map_err(|_| Defer)?;
        *total = total.saturating_add(n);
        if n > self.buf.len() - self.pos || *total > MAX_ITEMS {
            return Err(Defer);
        }
        Ok(n)
    }
}

fn run(op: &Op, r: &mut Cursor<'_>, out: &mut [Value]) -> Result<(), Defer> {
    match op {
        Op::Nothing => {}
        Op::Bool(slot) => {
            let b = match r.byte()? {
                0 => false,
                1 => true,
                _ => return Err(Defer),
            };
            if let Some(s) = slot {
                out[*s] = Value::Bool(b);
            }
        }
        Op::Int(n) => {
            let v = r.int()?;
            int_to(*n, v, out)?;
        }
        Op::Long(n) => {
            let v = r.long()?;
            int_to(*n, v, out)?;
        }
        Op::Float(n) => {
            let x = f32::from_le_bytes(r.array()?);
            match n.repr {
                Repr::Raw => {}
                Repr::I64 => return Err(Defer),
                Repr::F32 | Repr::F64 => float_to(n.to, f64::from(x), out)?,
            }
        }
        Op::Double(n) => {
            let x = f64::from_le_bytes(r.array()?);
            match n.repr {
                Repr::Raw => {}
                Repr::I64 => return Err(Defer),
                Repr::F32 => float_to(n.to, f64::from(x as f32), out)?,
                Repr::F64 => float_to(n.to, x, out)?,
            }
        }
        Op::Str(to) => {
            let s = r.str()?;
            match to {
                StrTo::Discard => {}
                StrTo::Alloc(slot) => out[*slot] = Value::str(s),
                StrTo::Lookup(table, other) => {
                    match table.iter().find(|(k, _)| **k == *s).map_or(other, |(_, to)| to) {
                        EnumTo::Discard => {}
                        EnumTo::Set(slot, v) => out[*slot] = v.clone(),
                        EnumTo::Fail => return Err(Defer),
                    }
                }
            }
        }
        Op::Bytes => {
            r.bytes()?;
        }
        Op::Fixed(n) => {
            r.take(*n)?;
        }
        Op::Enum(table) => {
            let i = usize::try_from(r.int()?).map_err(|_| Defer)?;
            match table.get(i).ok_or(Defer)? {
                EnumTo::Discard => {}
                EnumTo::Set(slot, v) => out[*slot] = v.clone(),
                EnumTo::Fail => return Err(Defer),
            }
        }
        Op::Record(ops, defaults) => {
            for op in ops.iter() {
                run(op, r, out)?;
            }
            for (slot, v) in defaults.iter() {
                out[*slot] = v.clone();
            }
        }
        Op::Union(ops) => {
            let i = r.long()?;
            let op = usize::try_from(i).ok().and_then(|i| ops.get(i)).ok_or(Defer)?;
            run(op, r, out)?;
        }
        Op::Array(item) => {
            let mut total = 0;
            loop {
                let n = r.block(&mut total)?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    run(item, r, out)?;
                }
            }
        }
        Op::Map(item) => {
            let mut total = 0;
            loop {
                let n = r.block(&mut total)?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    r.str()?;
                    run(item, r, out)?;
                }
            }
        }
        Op::Fail => return Err(Defer),
    }
    Ok(())
}

#[inline]
fn int_to(n: Num, v: i64, out: &mut [Value]) -> Result<(), Defer> {
    match n.repr {
        Repr::Raw => {}
        Repr::I64 => match n.to {
            NumTo::Discard => {}
            NumTo::Int(s) => out[s] = Value::Int(v),
            NumTo::Ts(s, div) => out[s] = Value::Int(v / div),
            NumTo::Float(s) => out[s] = Value::Float(v as f64),
        },
        Repr::F32 => float_to(n.to, f64::from(v as f32), out)?,
        Repr::F64 => float_to(n.to, v as f64, out)?,
    }
    Ok(())
}

#[inline]
fn float_to(to: NumTo, x: f64, out: &mut [Value]) -> Result<(), Defer> {
    if !x.is_finite() {
        return Err(Defer);
    }
    match to {
        NumTo::Discard => {}
        NumTo::Float(s) => out[s] = Value::Float(x),
        NumTo::Int(_) | NumTo::Ts(..) => return Err(Defer),
    }
    Ok(())
}

/// Compiles the decoder of records written with `writer` for the stream whose (reader) schema
/// is `reader` and whose field table is `catalog` (built from `reader`). The caller has checked
/// that `writer` is readable as `reader` (its record types are the stream's, resolution is
/// possible).
///
/// Declined (`Err`, with the reason; such records go through the generic path) are the shapes
/// it does not model: a value of the logical types decimal, big-decimal, uuid or duration that is
/// resolved or in a union (skipped writer fields of decimal, and of duration, are read), and
/// big-decimal or uuid writer fields at all; a long resolved to an int; a string resolved to a
/// float or double; an array resolved to bytes, bytes to a fixed, a fixed to a string, a map to
/// a record; recursive or very large schemas; a record with two fields of one name; record types
/// that collide by name in the field table; a field whose Avro type in this record type makes
/// the JSON path refuse every record (a conflict between record types in the field table, a
/// field with no place in it); a reader default that does not convert (or that names a type
/// without a namespace); a stream without a timestamp field.
/// Why the direct decoder does not take a pair of schemas (their records then go through the
/// generic path): the first construct it met that it does not handle, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

impl From<&str> for Unsupported {
    fn from(why: &str) -> Self {
        Unsupported(why.to_owned())
    }
}

impl From<String> for Unsupported {
    fn from(why: String) -> Self {
        Unsupported(why)
    }
}

pub fn compile(writer: &Schema, reader: &Schema, catalog: &StreamSchema) -> Result<Program, Unsupported> {
    let wres = ResolvedSchema::try_from(writer).map_err(|e| format!("the writer schema: {e}"))?;
    let rres = ResolvedSchema::try_from(reader).map_err(|e| format!("the stream's schema: {e}"))?;
    let ts = catalog.timestamp_field.ok_or("the stream has no timestamp field")?.index();
    let mut c = Compiler {
        wnames: wres.get_names().clone(),
        rnames: rres.get_names().clone(),
        catalog,
        kind: 0,
        covered: vec![false; catalog.fields.len()],
        symbols: HashMap::new(),
        nesting: 0,
        steps: 0,
    };
    let (union, wvariants): (bool, Vec<&Schema>) = match writer {
        Schema::Union(u) => (true, u.variants().iter().collect()),
        other => (false, vec![other]),
    };
    let mut branches = Vec::new();
    for wv in wvariants {
        let (wv, wns) = c.wderef(wv, None)?;
        if !matches!(wv, Schema::Record(_)) {
            return Err(Unsupported::from("the writer schema has a branch that is not a record"));
        }
        branches.push(c.root(wv, wns, reader)?);
    }
    Ok(Program {
        union,
        branches: branches.into(),
        nfields: catalog.fields.len(),
        ts,
        ts_path: catalog.fields[ts].path.clone(),
    })
}

type Ns = Option<String>;

/// Whether resolving a writer value to a reader schema succeeds: for every value, for none, or
/// depending on the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    Always,
    Sometimes,
    Never,
}

impl Tri {
    /// Both must succeed (the fields of a record).
    fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::Never, _) | (_, Tri::Never) => Tri::Never,
            (Tri::Sometimes, _) | (_, Tri::Sometimes) => Tri::Sometimes,
            _ => Tri::Always,
        }
    }

    /// One of them is taken, by the value (the branches of a writer union).
    fn either(all: &[Tri]) -> Tri {
        if all.iter().all(|t| *t == Tri::Always) {
            Tri::Always
        } else if all.iter().all(|t| *t == Tri::Never) {
            Tri::Never
        } else {
            Tri::Sometimes
        }
    }
}

/// Where a reader value goes: nowhere (it is checked only), or to the field table at `path`
/// (`depth`: the flattening depth of the record holding the field; `unwrapped`: the value is
/// the non-null branch of a nullable union).
#[derive(Clone, Debug)]
enum Dest {
    Discard,
    At { path: String, depth: usize, unwrapped: bool },
}

struct Compiler<'s> {
    wnames: NamesRef<'s>,
    rnames: NamesRef<'s>,
    catalog: &'s StreamSchema,
    /// The record type being compiled.
    kind: usize,
    /// Field slots the compiled branch fills (or leaves null as the JSON path would).
    covered: Vec<bool>,
    symbols: HashMap<String, Value>,
    nesting: usize,
    steps: usize,
}

impl<'s> Compiler<'s> {
    /// The branch of writer record `w`: the record type it reads as (the stream's record type of
    /// its name, [`reader_branch`]), and its program (`None`: it never resolves).
    fn root(&mut self, w: &'s Schema, wns: Ns, reader: &'s Schema) -> Result<Option<Branch>, Unsupported> {
        let catalog = self.catalog;
        let Schema::Record(wrec) = w else { return Err(Unsupported::from("a writer branch that is not a record")) };
        let (rrec, kind) = match reader {
            Schema::Record(rrec) => {
                let full = rrec.name.fullname(None);
                if catalog.types.len() != 1 || catalog.types[0].full_name != full {
                    return Err(Unsupported::from("the field table's record types are not the stream schema's"));
                }
                (rrec, 0)
            }
            Schema::Union(ru) => {
                // The stream's record type of the writer's name, as the generic path takes it.
                let Some(i) = reader_branch(wrec, reader) else { return Ok(None) };
                let Schema::Record(rrec) = &ru.variants()[i] else {
                    return Err(Unsupported::from("a stream schema branch that is not a record"));
                };
                let full = rrec.name.fullname(None);
                let kind = if ru.variants().len() > 1 {
                    match catalog.record_type(&full) {
                        Some(k) if catalog.types[k.index()].full_name == full => k.index(),
                        _ => return Err(Unsupported(format!("record type `{full}` is ambiguous in the field table"))),
                    }
                } else if catalog.types.len() == 1 {
                    0
                } else {
                    return Err(Unsupported::from("the field table's record types are not the stream schema's"));
                };
                (rrec, kind)
            }
            _ => return Err(Unsupported::from("the stream schema is not a record or a union")),
        };
        self.kind = kind;
        self.covered = vec![false; catalog.fields.len()];
        // Every field of the record is a field of the table (else the JSON path refuses each
        // record: `UnknownField`).
        for f in &rrec.fields {
            if !catalog.fields.iter().any(|c| c.in_types[kind] && c.path.split('.').next() == Some(f.name.as_str())) {
                return Err(Unsupported(format!("field `{}` has no place in the field table", f.name)));
            }
        }
        let (op, tri) = self.record(wrec, wns, rrec, None, Some(("", 0)))?;
        if tri == Tri::Never {
            return Ok(None);
        }
        for (i, f) in catalog.fields.iter().enumerate() {
            if f.in_types[kind] && !self.covered[i] && !f.nullable {
                return Err(Unsupported(format!("field `{}` would be missing", f.path)));
            }
        }
        Ok(Some(Branch { kind: TypeId(kind as u16), op }))
    }

    fn wderef(&self, s: &'s Schema, ns: Ns) -> Result<(&'s Schema, Ns), Unsupported> {
        deref(&self.wnames, s, ns)
    }

    fn rderef(&self, s: &'s Schema, ns: Ns) -> Result<(&'s Schema, Ns), Unsupported> {
        deref(&self.rnames, s, ns)
    }

    fn enter(&mut self) -> Result<(), Unsupported> {
        self.nesting += 1;
        self.steps += 1;
        if self.nesting > MAX_NESTING || self.steps > MAX_STEPS {
            return Err(Unsupported::from("the schema is recursive or too large"));
        }
        Ok(())
    }

    /// The slot of field `path` of the current record type.
    fn slot(&mut self, path: &str) -> Result<usize, Unsupported> {
        let kind = self.kind;
        let i = self
            .catalog
            .fields
            .iter()
            .position(|f| f.path == path && f.in_types[kind])
            .ok_or_else(|| format!("field `{path}` is not in the field table"))?;
        self.covered[i] = true;
        Ok(i)
    }

    fn intern(&mut self, s: &str) -> Value {
        self.symbols.entry(s.to_owned()).or_insert_with(|| Value::str(s)).clone()
    }

    /// A writer value `w` (namespace `wns`) resolved to reader schema `r` (namespace `rns`),
    /// going to `dest`.
    fn resolve(
        &mut self,
        w: &'s Schema,
        wns: Ns,
        r: &'s Schema,
        rns: Ns,
        dest: &Dest,
    ) -> Result<(Op, Tri), Unsupported> {
        self.enter()?;
        let out = self.resolve_inner(w, wns, r, rns, dest);
        self.nesting -= 1;
        out
    }

    fn resolve_inner(
        &mut self,
        w: &'s Schema,
        wns: Ns,
        r: &'s Schema,
        rns: Ns,
        dest: &Dest,
    ) -> Result<(Op, Tri), Unsupported> {
        let (w, wns) = self.wderef(w, wns)?;
        // A writer union: the value is its branch's, whatever the reader's schema.
        if let Schema::Union(u) = w {
            if u.variants().is_empty() {
                return Err(Unsupported::from("an empty union"));
            }
            let mut ops = Vec::new();
            let mut tris = Vec::new();
            for v in u.variants() {
                let (op, tri) = self.resolve(v, wns.clone(), r, rns.clone(), dest)?;
                ops.push(op);
                tris.push(tri);
            }
            return Ok((Op::Union(ops.into()), Tri::either(&tris)));
        }
        let (r, rns) = self.rderef(r, rns)?;
        if let Schema::Union(ru) = r {
            let Some(i) = self.pick(w, &wns, ru, &rns)? else { return Ok((Op::Fail, Tri::Never)) };
            let variant = &ru.variants()[i];
            let dest = match dest {
                Dest::Discard => Dest::Discard,
                Dest::At { path, depth, unwrapped: false } if nullable_union(ru) => {
                    Dest::At { path: path.clone(), depth: *depth, unwrapped: true }
                }
                Dest::At { path, .. } => {
                    // A union of several types: a field patterns cannot read.
                    let slot = self.slot(path)?;
                    if self.catalog.fields[slot].ty != FieldType::Unsupported {
                        return Err(Unsupported(format!("field `{path}` is a union of several types")));
                    }
                    Dest::Discard
                }
            };
            if matches!(self.rderef(variant, rns.clone())?.0, Schema::Null) && !matches!(dest, Dest::Discard) {
                // The null branch of a nullable field or record: its fields stay null (they are
                // nullable in the field table).
                return self.resolve(w, wns, variant, rns, &Dest::Discard);
            }
            return self.resolve(w, wns, variant, rns, &dest);
        }
        match dest {
            Dest::Discard => self.value(w, wns, r, rns, None),
            Dest::At { path, depth, .. } => {
                if let Schema::Record(rrec) = r {
                    if *depth < MAX_DEPTH {
                        return match w {
                            Schema::Record(wrec) => self.record(wrec, wns, rrec, rns, Some((path, depth + 1))),
                            Schema::Map(_) => Err(Unsupported::from("a map resolved to a record")),
                            _ => Ok((Op::Fail, Tri::Never)),
                        };
                    }
                }
                let slot = self.slot(path)?;
                let catalog = self.catalog;
                let f = &catalog.fields[slot];
                if f.ty == FieldType::Unsupported {
                    return self.value(w, wns, r, rns, None);
                }
                self.value(w, wns, r, rns, Some((slot, f)))
            }
        }
    }

    /// A writer record resolved to a reader record; `at`: the path prefix and depth of its
    /// fields in the field table (`None`: dropped).
    fn record(
        &mut self,
        w: &'s RecordSchema,
        wns: Ns,
        r: &'s RecordSchema,
        rns: Ns,
        at: Option<(&str, usize)>,
    ) -> Result<(Op, Tri), Unsupported> {
        let w_child: Ns = w.name.fully_qualified_name(wns.as_deref()).namespace().map(str::to_owned);
        let r_child: Ns = r.name.namespace().map(str::to_owned).or(rns);
        if has_duplicates(&w.fields) || has_duplicates(&r.fields) {
            return Err(Unsupported::from("a record with two fields of one name"));
        }
        let mut tri = Tri::Always;
        let mut ops = Vec::with_capacity(w.fields.len());
        for wf in &w.fields {
            match r.fields.iter().find(|rf| rf.name == wf.name) {
                Some(rf) => {
                    let dest = match at {
                        None => Dest::Discard,
                        Some((prefix, depth)) => Dest::At { path: join(prefix, &rf.name), depth, unwrapped: false },
                    };
                    let (op, t) = self.resolve(&wf.schema, w_child.clone(), &rf.schema, r_child.clone(), &dest)?;
                    ops.push(op);
                    tri = tri.and(t);
                }
                None => ops.push(self.skip(&wf.schema, w_child.clone())?),
            }
        }
        let mut defaults = Vec::new();
        for rf in r.fields.iter().filter(|rf| !w.fields.iter().any(|wf| wf.name == rf.name)) {
            let Some(json) = self.default(rf, &r_child)? else {
                tri = Tri::Never;
                continue;
            };
            if let Some((prefix, _)) = at {
                let path = join(prefix, &rf.name);
                let kind = self.kind;
                let catalog = self.catalog;
                for (i, f) in catalog.fields.iter().enumerate() {
                    let rest = match f.path.strip_prefix(path.as_str()) {
                        Some("") => Some(""),
                        Some(rest) => rest.strip_prefix('.'),
                        None => None,
                    };
                    let Some(rest) = rest.filter(|_| f.in_types[kind]) else { continue };
                    let v = if rest.is_empty() {
                        Some(&json)
                    } else {
                        rest.split('.').try_fold(&json, |v, seg| v.get(seg))
                    };
                    let value = dsl::json_field(f, v)
                        .map_err(|e| format!("the default of `{}` does not convert: {e}", f.path))?;
                    self.covered[i] = true;
                    if !value.is_null() {
                        defaults.push((i, value));
                    }
                }
            }
        }
        if tri == Tri::Never {
            return Ok((Op::Fail, Tri::Never));
        }
        Ok((Op::Record(ops.into(), defaults.into()), tri))
    }

    /// The JSON form of reader field `rf`'s default, resolved as apache_avro resolves a missing
    /// field (`None`: it has none, or it does not resolve).
    fn default(&self, rf: &'s RecordField, ns: &Ns) -> Result<Option<Json>, Unsupported> {
        let Some(json) = &rf.default else { return Ok(None) };
        if ns.is_some() && has_unqualified_ref(&rf.schema) {
            return Err(Unsupported(format!("the default of `{}` names a type without a namespace", rf.name)));
        }
        let names = &self.rnames;
        let value = match &rf.schema {
            Schema::Union(u) => match u.variants().first() {
                None => return Err(Unsupported::from("an empty union")),
                Some(Schema::Null) => Ok(AvroValue::Union(0, Box::new(AvroValue::Null))),
                Some(first) => AvroValue::try_from(json.clone())
                    .and_then(|v| v.resolve_with_names(first, names))
                    .map(|v| AvroValue::Union(0, Box::new(v))),
            },
            _ => AvroValue::try_from(json.clone()),
        };
        match value.and_then(|v| v.resolve_with_names(&rf.schema, names)) {
            Err(_) => Ok(None),
            Ok(v) => Json::try_from(v)
                .map(Some)
                .map_err(|e| Unsupported(format!("the default of `{}` does not convert: {e}", rf.name))),
        }
    }

    /// A writer value read and dropped (a field the reader does not have), checked as
    /// apache_avro decodes it.
    fn skip(&mut self, w: &'s Schema, ns: Ns) -> Result<Op, Unsupported> {
        self.enter()?;
        let out = self.skip_inner(w, ns);
        self.nesting -= 1;
        out
    }

    fn skip_inner(&mut self, w: &'s Schema, ns: Ns) -> Result<Op, Unsupported> {
        let (w, ns) = self.wderef(w, ns)?;
        Ok(match w {
            Schema::Null => Op::Nothing,
            Schema::Boolean => Op::Bool(None),
            Schema::Int | Schema::Date | Schema::TimeMillis => Op::Int(RAW),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Op::Long(RAW),
            Schema::Float => Op::Float(RAW),
            Schema::Double => Op::Double(RAW),
            Schema::Bytes => Op::Bytes,
            Schema::String => Op::Str(StrTo::Discard),
            Schema::Fixed(f) => Op::Fixed(f.size),
            Schema::Enum(e) => Op::Enum(vec![EnumTo::Discard; e.symbols.len()].into()),
            Schema::Record(r) => {
                let child: Ns = r.name.fully_qualified_name(ns.as_deref()).namespace().map(str::to_owned);
                let mut ops = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    ops.push(self.skip(&f.schema, child.clone())?);
                }
                Op::Record(ops.into(), Box::new([]))
            }
            Schema::Array(a) => Op::Array(Box::new(self.skip(&a.items, ns)?)),
            Schema::Map(m) => Op::Map(Box::new(self.skip(&m.types, ns)?)),
            Schema::Union(u) => {
                let mut ops = Vec::with_capacity(u.variants().len());
                for v in u.variants() {
                    ops.push(self.skip(v, ns.clone())?);
                }
                Op::Union(ops.into())
            }
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => Op::Bytes,
                InnerDecimalSchema::Fixed(f) => Op::Fixed(f.size),
            },
            Schema::Duration(f) if f.size == 12 => Op::Fixed(12),
            other => return Err(Unsupported(format!("a writer field of type {:?}", SchemaKind::from(other)))),
        })
    }

    /// A writer value `w` (not a union) resolved to reader schema `r` (not a union), into
    /// `slot` (field `f` of the table) or dropped; as apache_avro's `Value::resolve` and then
    /// the JSON path convert it.
    fn value(
        &mut self,
        w: &'s Schema,
        wns: Ns,
        r: &'s Schema,
        rns: Ns,
        slot: Option<(usize, &'s StreamField)>,
    ) -> Result<(Op, Tri), Unsupported> {
        use Schema as S;
        const NEVER: (Op, Tri) = (Op::Fail, Tri::Never);
        if matches!(w, S::Decimal(_) | S::BigDecimal | S::Uuid(_) | S::Duration(_)) {
            return Err(Unsupported(format!("a resolved value of type {:?}", SchemaKind::from(w))));
        }
        let mismatch = || {
            Unsupported(format!(
                "field `{}`: its Avro type is not its type in the field table",
                slot.map_or("", |s| &s.1.path)
            ))
        };
        // The number conversion of a reader numeric type.
        let num = |repr: Repr| -> Result<Num, Unsupported> {
            let to = match (slot, repr) {
                (None, _) => NumTo::Discard,
                (Some((s, f)), Repr::I64) => match f.ty {
                    FieldType::Int => NumTo::Int(s),
                    FieldType::Timestamp => NumTo::Ts(s, f.time_divisor.max(1)),
                    FieldType::Float => NumTo::Float(s),
                    _ => return Err(mismatch()),
                },
                (Some((s, f)), _) if f.ty == FieldType::Float => NumTo::Float(s),
                (Some(_), _) => return Err(mismatch()),
            };
            Ok(Num { repr, to })
        };
        let int_like = |w: &Schema, accept: &[SchemaKind]| -> Result<(Op, Tri), Unsupported> {
            let k = SchemaKind::from(w);
            if !accept.contains(&k) {
                return Ok(NEVER);
            }
            let n = num(Repr::I64)?;
            Ok((if matches!(w, S::Int | S::Date | S::TimeMillis) { Op::Int(n) } else { Op::Long(n) }, Tri::Always))
        };
        use SchemaKind as K;
        Ok(match r {
            S::Null => match (w, slot) {
                (S::Null, None) => (Op::Nothing, Tri::Always),
                (S::Null, Some((_, f))) if f.nullable => (Op::Nothing, Tri::Always),
                (S::Null, Some(_)) => return Err(mismatch()),
                _ => NEVER,
            },
            S::Boolean => match (w, slot) {
                (S::Boolean, None) => (Op::Bool(None), Tri::Always),
                (S::Boolean, Some((s, f))) if f.ty == FieldType::Bool => (Op::Bool(Some(s)), Tri::Always),
                (S::Boolean, Some(_)) => return Err(mismatch()),
                _ => NEVER,
            },
            S::Int => match w {
                S::Long => return Err(Unsupported::from("a long resolved to an int")),
                w => int_like(w, &[K::Int])?,
            },
            S::Long => int_like(w, &[K::Int, K::Long])?,
            S::Date => int_like(w, &[K::Date, K::Int])?,
            S::TimeMillis => int_like(w, &[K::TimeMillis, K::Int])?,
            S::TimeMicros => int_like(w, &[K::TimeMicros, K::Long, K::Int])?,
            S::TimestampMillis => int_like(w, &[K::TimestampMillis, K::Long, K::Int])?,
            S::TimestampMicros => int_like(w, &[K::TimestampMicros, K::Long, K::Int])?,
            S::TimestampNanos => int_like(w, &[K::TimestampNanos, K::Long, K::Int])?,
            S::LocalTimestampMillis => int_like(w, &[K::LocalTimestampMillis, K::Long, K::Int])?,
            S::LocalTimestampMicros => int_like(w, &[K::LocalTimestampMicros, K::Long, K::Int])?,
            S::LocalTimestampNanos => int_like(w, &[K::LocalTimestampNanos, K::Long, K::Int])?,
            S::Float | S::Double => {
                let n = num(if matches!(r, S::Float) { Repr::F32 } else { Repr::F64 })?;
                match w {
                    S::Int => (Op::Int(n), Tri::Always),
                    S::Long => (Op::Long(n), Tri::Always),
                    S::Float => (Op::Float(n), Tri::Always),
                    S::Double => (Op::Double(n), Tri::Always),
                    S::String => return Err(Unsupported::from("a string resolved to a float")),
                    _ => NEVER,
                }
            }
            S::String => {
                let to = match slot {
                    None => StrTo::Discard,
                    Some((s, f)) if f.ty == FieldType::Str => match &f.symbols {
                        None => StrTo::Alloc(s),
                        // Not one of them: `NotASymbol`.
                        Some(symbols) => StrTo::Lookup(
                            symbols
                                .iter()
                                .map(|sym| (Box::from(sym.as_str()), EnumTo::Set(s, self.intern(sym))))
                                .collect(),
                            EnumTo::Fail,
                        ),
                    },
                    Some(_) => return Err(mismatch()),
                };
                match w {
                    S::String => (Op::Str(to), Tri::Always),
                    // Bytes that must be UTF-8.
                    S::Bytes => (Op::Str(to), Tri::Sometimes),
                    S::Fixed(_) => return Err(Unsupported::from("a fixed resolved to a string")),
                    _ => NEVER,
                }
            }
            S::Enum(re) => {
                if let Some((_, f)) = slot {
                    if f.ty != FieldType::Str {
                        return Err(mismatch());
                    }
                }
                match w {
                    S::Enum(we) => self.enumeration(we, re, slot),
                    S::String => {
                        // Looked up among the reader's symbols; another text takes the reader
                        // enum's default, if it has one.
                        let table =
                            re.symbols.iter().map(|sym| (Box::from(sym.as_str()), self.enum_to(sym, slot))).collect();
                        let other = match re.default.as_ref().filter(|d| re.symbols.contains(d)) {
                            Some(d) => self.enum_to(d, slot),
                            None => EnumTo::Fail,
                        };
                        let tri = if matches!(other, EnumTo::Fail) { Tri::Sometimes } else { Tri::Always };
                        (Op::Str(StrTo::Lookup(table, other)), tri)
                    }
                    _ => NEVER,
                }
            }
            _ if slot.is_some() => return Err(mismatch()),
            S::Bytes => match w {
                S::Bytes => (Op::Bytes, Tri::Always),
                S::String => (Op::Str(StrTo::Discard), Tri::Always),
                S::Array(_) => return Err(Unsupported::from("an array resolved to bytes")),
                _ => NEVER,
            },
            S::Fixed(rf) => match w {
                S::Fixed(wf) if wf.size == rf.size => (Op::Fixed(wf.size), Tri::Always),
                S::String => (Op::Str(StrTo::Discard), Tri::Always),
                S::Bytes => return Err(Unsupported::from("bytes resolved to a fixed")),
                _ => NEVER,
            },
            S::Array(ra) => match w {
                S::Array(wa) => {
                    let (item, t) = self.resolve(&wa.items, wns, &ra.items, rns, &Dest::Discard)?;
                    // An empty array resolves whatever its items.
                    (Op::Array(Box::new(item)), if t == Tri::Always { Tri::Always } else { Tri::Sometimes })
                }
                _ => NEVER,
            },
            S::Map(rm) => match w {
                S::Map(wm) => {
                    let (item, t) = self.resolve(&wm.types, wns, &rm.types, rns, &Dest::Discard)?;
                    (Op::Map(Box::new(item)), if t == Tri::Always { Tri::Always } else { Tri::Sometimes })
                }
                _ => NEVER,
            },
            S::Record(rr) => match w {
                S::Record(wr) => self.record(wr, wns, rr, rns, None)?,
                S::Map(_) => return Err(Unsupported::from("a map resolved to a record")),
                _ => NEVER,
            },
            S::Decimal(_) | S::BigDecimal | S::Uuid(_) | S::Duration(_) => {
                return Err(Unsupported(format!("a reader value of type {:?}", SchemaKind::from(r))));
            }
            S::Union(_) | S::Ref { .. } => return Err(Unsupported::from("an unresolved reader schema")),
        })
    }

    /// A writer enum resolved to a reader enum: per writer symbol, the reader's symbol (or the
    /// reader enum's default), checked against the field's symbols.
    fn enumeration(
        &mut self,
        we: &'s EnumSchema,
        re: &'s EnumSchema,
        slot: Option<(usize, &'s StreamField)>,
    ) -> (Op, Tri) {
        let mut table = Vec::with_capacity(we.symbols.len());
        let mut resolved = 0;
        for s in &we.symbols {
            let symbol =
                if re.symbols.contains(s) { Some(s) } else { re.default.as_ref().filter(|d| re.symbols.contains(d)) };
            let Some(symbol) = symbol else {
                table.push(EnumTo::Fail);
                continue;
            };
            resolved += 1;
            table.push(self.enum_to(symbol, slot));
        }
        let tri = if resolved == we.symbols.len() {
            Tri::Always
        } else if resolved == 0 {
            Tri::Never
        } else {
            Tri::Sometimes
        };
        (Op::Enum(table.into()), tri)
    }

    /// Reader symbol `symbol` into `slot`: interned, checked against the field's symbols (a
    /// text field sharing its path with another record type's enum).
    fn enum_to(&mut self, symbol: &str, slot: Option<(usize, &StreamField)>) -> EnumTo {
        match slot {
            None => EnumTo::Discard,
            Some((_, f)) if f.symbols.as_ref().is_some_and(|sym| !sym.iter().any(|s| s == symbol)) => EnumTo::Fail,
            Some((i, _)) => EnumTo::Set(i, self.intern(symbol)),
        }
    }

    /// The branch of reader union `ru` (a union inside a record type, not the stream's union of
    /// record types) a value of writer schema `w` (not a union) resolves to, as apache_avro's
    /// `UnionSchema::find_schema_with_known_schemata` picks it (`None`: no branch). apache_avro
    /// takes the first candidate the value resolves to: a candidate that resolves for some
    /// values only is taken here, and its program fails (the record goes to the generic path,
    /// which tries the next candidates) exactly where its resolution would.
    fn pick(&mut self, w: &'s Schema, wns: &Ns, ru: &'s UnionSchema, rns: &Ns) -> Result<Option<usize>, Unsupported> {
        let (unnamed, named) = value_kinds(w)?;
        let variants = ru.variants();
        let mut index: HashMap<SchemaKind, usize> = HashMap::new();
        let mut named_index = Vec::new();
        for (i, v) in variants.iter().enumerate() {
            if v.name().is_some() {
                named_index.push(i);
            } else {
                index.entry(base_kind(v)).or_insert(i);
            }
        }
        let trial = |c: &mut Self, i: usize| -> Result<Tri, Unsupported> {
            let v = &variants[i];
            let ns = v.namespace().map(str::to_owned).or(rns.clone());
            Ok(c.resolve(w, wns.clone(), v, ns, &Dest::Discard)?.1)
        };
        let unnamed = match unnamed.and_then(|k| index.get(&k).copied()) {
            Some(i) if matches!(base_kind(&variants[i]), SchemaKind::Map | SchemaKind::Array) => {
                (trial(self, i)? != Tri::Never).then_some(i)
            }
            other => other,
        };
        let mut named_pick = None;
        if let Some(k) = named {
            for &i in &named_index {
                let sk = base_kind(&variants[i]);
                if (sk == k || sk == SchemaKind::Ref) && trial(self, i)? != Tri::Never {
                    named_pick = Some(i);
                    break;
                }
            }
        }
        Ok(match (unnamed, named_pick) {
            (Some(u), Some(n)) => Some(u.min(n)),
            (Some(u), None) => Some(u),
            (None, Some(n)) => Some(n),
            (None, None) => {
                for i in 0..variants.len() {
                    if trial(self, i)? != Tri::Never {
                        return Ok(Some(i));
                    }
                }
                None
            }
        })
    }
}

/// The branch of stream schema `reader` (its index among the union's branches; 0 when `reader`
/// is one record type) that records of writer record type `writer` are read as, by the Avro
/// specification's schema resolution: named types match only when their (unqualified) names
/// do, or when the reader's type lists the writer's name among its aliases, and a writer value
/// is resolved against the first branch of the reader's union that matches it. `None`: no
/// branch does (the record type is not one of the stream's). Never by the fields (apache_avro
/// resolves a record value against the first union branch its fields satisfy): a
/// `ProfileChange` that has every field of a `PasswordReset` is still a `ProfileChange`.
///
/// Both decoders take it: the generic path (`AvroIn::decode_json` of [`super::avro`]) and the
/// direct one ([`compile`]).
pub fn reader_branch(writer: &RecordSchema, reader: &Schema) -> Option<usize> {
    let name = writer.name.name();
    let matches = |s: &Schema| match s {
        Schema::Record(r) => r.name.name() == name || r.aliases.iter().flatten().any(|a| a.name() == name),
        _ => false,
    };
    match reader {
        Schema::Union(u) => u.variants().iter().position(matches),
        other => matches(other).then_some(0),
    }
}

fn deref<'s>(names: &NamesRef<'s>, s: &'s Schema, ns: Ns) -> Result<(&'s Schema, Ns), Unsupported> {
    match s {
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(ns.as_deref());
            let target: &'s Schema =
                names.get(full.as_ref()).copied().ok_or_else(|| format!("type `{}` is not defined", full.as_ref()))?;
            Ok((target, full.namespace().map(str::to_owned)))
        }
        s => Ok((s, ns)),
    }
}

/// The kinds of apache_avro's value of writer schema `w`, as union branches are looked up:
/// unnamed and named (`UnionSchema::value_to_base_schemakind`).
fn value_kinds(w: &Schema) -> Result<(Option<SchemaKind>, Option<SchemaKind>), Unsupported> {
    use Schema as S;
    use SchemaKind as K;
    Ok(match w {
        S::Date | S::TimeMillis => (Some(K::Int), None),
        S::TimeMicros
        | S::TimestampMillis
        | S::TimestampMicros
        | S::TimestampNanos
        | S::LocalTimestampMillis
        | S::LocalTimestampMicros
        | S::LocalTimestampNanos => (Some(K::Long), None),
        S::Record(_) | S::Enum(_) | S::Fixed(_) => (None, Some(SchemaKind::from(w))),
        S::Map(_) => (Some(K::Map), Some(K::Record)),
        S::Null | S::Boolean | S::Int | S::Long | S::Float | S::Double | S::Bytes | S::String | S::Array(_) => {
            (Some(SchemaKind::from(w)), None)
        }
        other => return Err(Unsupported(format!("a value of type {:?} in a union", SchemaKind::from(other)))),
    })
}

/// A schema's kind with logical types reduced to their base type (apache_avro's
/// `schema_to_base_schemakind`).
fn base_kind(s: &Schema) -> SchemaKind {
    use apache_avro::schema::UuidSchema;
    use Schema as S;
    use SchemaKind as K;
    match s {
        S::Date | S::TimeMillis => K::Int,
        S::TimeMicros
        | S::TimestampMillis
        | S::TimestampMicros
        | S::TimestampNanos
        | S::LocalTimestampMillis
        | S::LocalTimestampMicros
        | S::LocalTimestampNanos => K::Long,
        S::Uuid(UuidSchema::Bytes) => K::Bytes,
        S::Uuid(UuidSchema::String) => K::String,
        S::Uuid(UuidSchema::Fixed(_)) => K::Fixed,
        S::Decimal(d) => match d.inner {
            InnerDecimalSchema::Bytes => K::Bytes,
            InnerDecimalSchema::Fixed(_) => K::Fixed,
        },
        S::Duration(_) => K::Fixed,
        other => SchemaKind::from(other),
    }
}

/// A union of null and one other type: flattened into nullable fields (as in `dsl::schema`).
fn nullable_union(u: &UnionSchema) -> bool {
    let non_null = u.variants().iter().filter(|v| !matches!(v, Schema::Null)).count();
    non_null == 1 && non_null < u.variants().len()
}

fn has_duplicates(fields: &[RecordField]) -> bool {
    fields.iter().enumerate().any(|(i, f)| fields[..i].iter().any(|g| g.name == f.name))
}

/// Whether `s` refers to a named type without a namespace (which apache_avro's resolution would
/// look up in the enclosing namespace).
fn has_unqualified_ref(s: &Schema) -> bool {
    match s {
        Schema::Ref { name } => name.namespace().is_none(),
        Schema::Union(u) => u.variants().iter().any(has_unqualified_ref),
        Schema::Array(a) => has_unqualified_ref(&a.items),
        Schema::Map(m) => has_unqualified_ref(&m.types),
        Schema::Record(r) => r.fields.iter().any(|f| has_unqualified_ref(&f.schema)),
        _ => false,
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}
