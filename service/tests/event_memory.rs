//! Compact events (issue 14, item 6): decoding a record allocates the event's field slice and
//! nothing per field value. Texts of up to 23 bytes are stored inline in the value
//! ([`engine::Text`]); a longer text costs one allocation, shared by every clone.
//!
//! This test binary counts allocations with `allocation-counter`'s global allocator (per thread).

use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use dsl::StreamSchema;
use engine::Value;
use tripline_service::io::avro_direct::compile;

/// A record schema with a timestamp and `texts` string fields.
fn schema(texts: usize) -> String {
    let mut fields = vec![r#"{"name": "ts", "type": "long"}"#.to_owned()];
    fields.extend((0..texts).map(|i| format!(r#"{{"name": "t{i}", "type": "string"}}"#)));
    format!(r#"{{"type": "record", "name": "E", "fields": [{}]}}"#, fields.join(", "))
}

/// Decodes one record whose texts are `text(i)`; returns the allocations the decode made and
/// the decoded text values.
fn decode(texts: usize, text: impl Fn(usize) -> String) -> (u64, Vec<String>) {
    let json = schema(texts);
    let avro = Schema::parse_str(&json).expect("schema");
    let stream = StreamSchema::from_avro_json("e", &json, Some("ts")).expect("stream schema");
    let program = compile(&avro, &avro, &stream).expect("compiles");
    let mut record = vec![("ts".to_owned(), AvroValue::Long(1_700_000_000_000))];
    record.extend((0..texts).map(|i| (format!("t{i}"), AvroValue::String(text(i)))));
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&avro)
        .build()
        .expect("writer")
        .write_value_to_vec(AvroValue::Record(record))
        .expect("datum");
    let mut event = None;
    let info = allocation_counter::measure(|| event = Some(program.decode(&datum, 7)));
    let Some(Ok(event)) = event else { panic!("the record does not decode") };
    assert_eq!(event.ts, 1_700_000_000_000);
    let values = event
        .fields
        .iter()
        .filter_map(|v| match v {
            Value::Str(s) => Some(s.to_string()),
            _ => None,
        })
        .collect();
    (info.count_total, values)
}

#[test]
fn decoding_allocates_per_event_not_per_field_value() {
    let short = |i: usize| format!("merchant-{i:014}"); // 23 bytes: the longest inline text
    let (two, values) = decode(2, short);
    assert_eq!(values, vec![short(0), short(1)]);
    let (forty, values) = decode(40, short);
    assert_eq!(values.len(), 40);
    assert_eq!(values[39], short(39));
    assert_eq!(two, forty, "a record of 40 texts allocates as much as one of 2");
    assert!(two <= 1, "one allocation per event (its field slice), got {two}");
}

#[test]
fn a_text_longer_than_23_bytes_costs_one_allocation() {
    let long = |i: usize| format!("a-long-merchant-name-{i:06}"); // 27 bytes
    let (short, _) = decode(3, |i| format!("m{i}"));
    let (long3, values) = decode(3, long);
    assert_eq!(values, vec![long(0), long(1), long(2)]);
    assert_eq!(long3, short + 3, "three long texts, three allocations more");
}
