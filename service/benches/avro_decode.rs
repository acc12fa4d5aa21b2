//! Decoding Kafka record values of the `payments` stream (testdata/schemas/payments.avsc,
//! written with the stream's own schema) into events: the generic path (apache_avro's value
//! tree resolved against the stream's schema, its JSON form, `dsl::json_event`) against the
//! direct decoder compiled for the writer schema. One iteration decodes 100 000 payments.
//!
//!     cargo bench -p tripline-service --bench avro_decode

use std::hint::black_box;
use std::sync::Arc;

use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dsl::StreamSchema;
use schema_registry_converter::blocking::schema_registry::SrSettings;
use tripline_service::core::plan::StreamPlan;
use tripline_service::io::avro::{frame, AvroIn};

const N: usize = 100_000;
const SCHEMA: &str = include_str!("../../testdata/schemas/payments.avsc");

/// `n` payments like the demo's, deterministic, framed with schema id 1.
fn payments(schema: &Schema, n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 7;
    let mut next = move || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    const CHANNELS: [&str; 8] = [
        "CARD",
        "TRANSFER",
        "INSTANT_TRANSFER",
        "INTERNATIONAL_WIRE",
        "CASH_DEPOSIT",
        "ATM_WITHDRAWAL",
        "CHEQUE",
        "DIRECT_DEBIT",
    ];
    const COUNTRIES: [&str; 4] = ["FR", "DE", "NL", "GB"];
    let text = |s: String| AvroValue::String(s);
    let opt = |s: Option<String>| match s {
        Some(s) => AvroValue::Union(1, Box::new(AvroValue::String(s))),
        None => AvroValue::Union(0, Box::new(AvroValue::Null)),
    };
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema).build().expect("writer");
    (0..n)
        .map(|i| {
            let r = next();
            let account = r % 5000;
            let channel = (r >> 16) as usize % CHANNELS.len();
            let country = COUNTRIES[(r >> 24) as usize % COUNTRIES.len()];
            let value = AvroValue::Record(vec![
                ("payment_id".into(), text(format!("pay-{i:08}"))),
                ("account_id".into(), text(format!("ACC{account:06}"))),
                ("customer_id".into(), text(format!("CUST{:06}", account / 2))),
                ("counterparty_account_id".into(), text(format!("FR76300040000{:010}", r % 10_000_000_000))),
                ("counterparty_name".into(), opt((r % 3 != 0).then(|| format!("Counterparty {}", r % 977)))),
                ("counterparty_country".into(), opt((r % 4 != 0).then(|| country.to_owned()))),
                ("direction".into(), AvroValue::Enum((r >> 8) as u32 % 2, ["IN", "OUT"][(r >> 8) as usize % 2].into())),
                ("amount".into(), AvroValue::Double((r % 1_000_000) as f64 / 100.0)),
                ("currency".into(), text("EUR".into())),
                ("channel".into(), AvroValue::Enum(channel as u32, CHANNELS[channel].into())),
                ("country".into(), text(country.to_owned())),
                ("branch_id".into(), opt((channel == 4 || channel == 5).then(|| format!("ATM-{}", r % 300)))),
                ("reference".into(), opt((r % 5 == 0).then(|| format!("invoice {}", r % 100_000)))),
                ("event_time".into(), AvroValue::TimestampMillis(1_700_000_000_000 + i as i64 * 37)),
            ]);
            frame(1, &writer.write_value_to_vec(value).expect("a payment"))
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let schema = Schema::parse_str(SCHEMA).expect("schema");
    let records = payments(&schema, N);
    let stream = StreamSchema::from_avro_json("payments", SCHEMA, Some("event_time")).expect("stream");
    let plan = StreamPlan {
        stage: tripline_service::core::plan::Stage::Source { forwards: Vec::new() },
        name: "payments".into(),
        topic: "payments".into(),
        schema: Arc::new(stream),
        out_of_orderness: 0,
        patterns: Vec::new(),
        live_keys: Vec::new(),
    };
    let registry = SrSettings::new("http://127.0.0.1:9".into());
    let mut avro = AvroIn::new(registry, "http://127.0.0.1:9", &[("payments".into(), SCHEMA.into())]).expect("avro");
    avro.insert_writer_schema(1, SCHEMA).expect("writer schema");
    // Both paths give the same events.
    for (i, r) in records.iter().enumerate().take(1000) {
        let a = avro.decode(&plan, Some(r), i as u64).expect("direct");
        let b = avro.decode_generic(&plan, Some(r), i as u64).expect("generic");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
    let mut g = c.benchmark_group("avro_decode_100k_payments");
    g.throughput(Throughput::Elements(N as u64)).sample_size(10);
    g.bench_function("generic", |b| {
        b.iter(|| {
            for (i, r) in records.iter().enumerate() {
                black_box(avro.decode_generic(&plan, Some(r), i as u64).is_ok());
            }
        })
    });
    g.bench_function("direct", |b| {
        b.iter(|| {
            for (i, r) in records.iter().enumerate() {
                black_box(avro.decode(&plan, Some(r), i as u64).is_ok());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
