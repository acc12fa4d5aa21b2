//! The Kafka-free core of the service, shared by `run`, `replay` and `explain`: the typed
//! configuration, stream plans and the admission checks, one input partition's engine state
//! ([`partition::Partition`]) with its changelog encoding, the alert JSON, and compiling and
//! recording pattern sets. No rdkafka, RocksDB, Avro-runtime, HTTP or metrics types, and no
//! wall clock: what happens here is a function of the records and the configuration.

pub mod alert;
pub mod changelog;
pub mod config;
pub mod context;
pub mod coords;
pub mod partition;
pub mod pattern_sets;
pub mod plan;
pub mod range;
pub mod repartition;
pub mod schema_gate;
pub mod source;
pub mod stored;
pub mod tables;
pub mod times;
