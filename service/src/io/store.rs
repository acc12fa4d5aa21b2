//! The local state store: RocksDB, holding each assigned partition's engine state as the
//! changelog has it (same keys, same values; see [`crate::core::changelog`]). It is written only after
//! a transaction commits, so it never runs ahead of the changelog; it may lag (a crash between
//! the commit and the write), which the partition's position tells: a partition whose stored
//! position is not the group's committed offset is restored from the changelog instead.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

/// State records to apply (None deletes).
pub type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A [`Store`] whose writes after a commit happen on a thread of their own, off the service's
/// loop. Writes are applied in the order they were queued; every read first waits for the
/// writes queued before it, so it sees them; a failed write is returned by the next call. A
/// crash may lose queued writes: the store then lags the changelog, which the partition's stored
/// position tells (it is restored from the changelog).
#[derive(Debug)]
pub struct WriteBehind {
    store: Arc<Store>,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<Error>>>,
}

enum Job {
    Apply(Changes),
    /// Answered once every job before it is done.
    Barrier(Sender<()>),
}

impl WriteBehind {
    pub fn new(store: Store) -> Result<WriteBehind> {
        let store = Arc::new(store);
        let failed = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (store, failed) = (store.clone(), failed.clone());
            std::thread::Builder::new()
                .name("state-store".into())
                .spawn(move || write_loop(&store, &rx, &failed))
                .or_fail(Kind::Failed, "cannot start the state store's writer thread")?
        };
        Ok(WriteBehind { store, jobs: Some(tx), thread: Some(thread), failed })
    }

    /// Queues records to apply, atomically, after those queued before.
    pub fn apply(&self, records: Changes) -> Result<()> {
        self.check()?;
        self.send(Job::Apply(records))
    }

    /// Waits until every queued write is applied.
    pub fn sync(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Barrier(tx))?;
        rx.recv().map_err(|_| Error::failed("the state store's writer thread stopped"))?;
        self.check()
    }

    /// Every record under `prefix`, in key order (after the queued writes).
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.sync()?;
        self.store.scan(prefix)
    }

    /// Replaces everything under `prefix` with `records`, atomically (after the queued writes).
    pub fn replace(&self, prefix: &[u8], records: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        self.sync()?;
        self.store.replace(prefix, records)
    }

    /// The store's size in bytes (an estimate; queued writes may not be in it).
    pub fn size_bytes(&self) -> u64 {
        self.store.size_bytes()
    }

    fn send(&self, job: Job) -> Result<()> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| Error::failed("the state store's writer thread stopped"))
    }

    fn check(&self) -> Result<()> {
        match self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for WriteBehind {
    /// Applies what is queued before the store closes.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(store: &Store, jobs: &Receiver<Job>, failed: &Mutex<Option<Error>>) {
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Apply(records) => {
                if let Err(e) = store.apply(&records) {
                    failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                }
            }
            Job::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_every_write_queued_before_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = WriteBehind::new(Store::open(dir.path()).expect("store")).expect("writer");
        for i in 0..100u32 {
            let mut k = b"p".to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            store.apply(vec![(k, Some(vec![i as u8]))]).expect("queued");
        }
        store.apply(vec![(b"p\0\0\0\x05".to_vec(), None)]).expect("queued");
        let all = store.scan(b"p").expect("scan");
        assert_eq!(all.len(), 99);
        assert!(all.iter().all(|(k, v)| k[4] == v[0]));
        drop(store);
        // Queued writes are applied before the store closes.
        let store = WriteBehind::new(Store::open(dir.path()).expect("reopened")).expect("writer");
        store.apply(vec![(b"q".to_vec(), Some(b"1".to_vec()))]).expect("queued");
        drop(store);
        assert_eq!(Store::open(dir.path()).expect("reopened").scan(b"q").expect("scan").len(), 1);
    }
}
