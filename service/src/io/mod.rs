//! The adapters to the outside world: Kafka clients and settings ([`kafka`]), the one reader of
//! committed records ([`reader`]), Avro records through the schema registry ([`avro`], which
//! decodes through the programs of [`avro_direct`]), exported
//! record files ([`files`]), the RocksDB state store ([`store`]) and the HTTP endpoints
//! ([`http`]). Each turns the outside's types into `core`'s and never decides what a record means.

pub mod alert_avro;
pub mod avro;
pub mod avro_direct;
#[cfg(test)]
mod avro_tests;
pub mod files;
pub mod http;
pub mod kafka;
pub mod reader;
pub mod store;
