//! The local state store: RocksDB, holding each assigned partition's engine state as the
//! changelog has it (same keys, same values; see [`crate::core::changelog`]). It is written only after
//! a transaction commits, so it never runs ahead of the changelog; it may lag (a crash between
//! the commit and the write), which the partition's position tells: a partition whose stored
//! position is not the group's committed offset is restored from the changelog instead.

use std::path::Path;

use crate::error::{Error, Kind, Result, ResultExt};
use rocksdb::{Options, WriteBatch, DB};

/// A RocksDB database of state records.
#[derive(Debug)]
pub struct Store {
    db: DB,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .or_fail_with(Kind::Failed, || format!("cannot create the state directory {}", dir.display()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(2);
        let db = DB::open(&opts, dir).map_err(|e| {
            Error::failed(format!(
                "cannot open the state store in {}: {e} (is another instance using this directory?)",
                dir.display()
            ))
        })?;
        Ok(Store { db })
    }

    /// The store's size in bytes: RocksDB's estimate of its live data plus its memtables.
    pub fn size_bytes(&self) -> u64 {
        let prop = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        prop("rocksdb.estimate-live-data-size") + prop("rocksdb.cur-size-all-mem-tables")
    }

    /// Every record under `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.iterator(rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward)) {
            let (k, v) = item.or_fail(Kind::Failed, "reading the state store")?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Applies changelog records (None deletes), atomically.
    pub fn apply(&self, records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (k, v) in records {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        self.db.write(batch).or_fail(Kind::Failed, "writing the state store")
    }

    /// Replaces everything under `prefix` with `records`, atomically.
    pub fn replace(&self, prefix: &[u8], records: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (k, _) in self.scan(prefix)? {
            batch.delete(k);
        }
        for (k, v) in records {
            batch.put(k, v);
        }
        self.db.write(batch).or_fail(Kind::Failed, "writing the state store")
    }
}
