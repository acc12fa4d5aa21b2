//! The local state store: RocksDB, holding each assigned partition's engine state as the
//! changelog has it (same keys, same values; see [`crate::core::changelog`]). It is written only after
//! a transaction commits, so it never runs ahead of the changelog; it may lag (a crash between
//! the commit and the write), which the partition's position tells: a partition whose stored
//! position is not the group's committed offset is restored from the changelog instead.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use crate::core::changelog::Changes;
use crate::core::changelog::{StateError, StoredState};
use crate::error::{Error, Kind, Result, ResultExt};
use rocksdb::{BlockBasedOptions, Options, WriteBatch, DB};

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
        // Most reads are of keys that may not be there (a key's first event): a bloom filter
        // answers those without reading a block.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        // RocksDB's memory is a fixed overhead, whatever the state's size: a 32 MB block cache
        // and at most two 16 MB memtables.
        table.set_block_cache(&rocksdb::Cache::new_lru_cache(32 << 20));
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(16 << 20);
        opts.set_max_write_buffer_number(2);
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

    /// Applies a transaction's changes, atomically.
    pub fn apply(&self, changes: &Changes) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (from, to) in &changes.delete_ranges {
            batch.delete_range(from, to);
        }
        for (k, v) in changes.records.iter().chain(&changes.local) {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        self.db.write(batch).or_fail(Kind::Failed, "writing the state store")
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).or_fail(Kind::Failed, "reading the state store")
    }

    /// The records with `from <= key < to`, in key order, while `visit` returns true.
    pub fn scan_range(&self, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(to.to_vec());
        for item in self.db.iterator_opt(rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward), opts) {
            let (k, v) = item.or_fail(Kind::Failed, "reading the state store")?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
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

/// A [`Store`] whose writes after a commit happen on a thread of their own, off the service's
/// loop. Writes are applied in the order they were queued; every read first waits for the
/// writes queued before it, so it sees them; a failed write is returned by the next call. A
/// crash may lose queued writes: the store then lags the changelog, which the partition's stored
/// position tells (it is restored from the changelog).
///
/// Point reads ([`WriteBehind::get`]) see queued writes at once, without waiting: the records
/// of queued transactions are kept in memory (one transaction's worth, usually) until they are
/// applied. Range reads wait for the queue.
///
/// A transaction that is still committing can be staged ([`WriteBehind::stage`]): point reads
/// see its records, as the partitions that go on processing expect, but nothing of it is
/// written until it is applied; if it aborts, [`WriteBehind::unstage`] forgets it.
#[derive(Debug)]
pub struct WriteBehind {
    store: Arc<Store>,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<Error>>>,
    pending: Arc<Mutex<Pending>>,
}

/// Records of queued transactions, by key: the last value queued and its job.
#[derive(Debug, Default)]
struct Pending {
    next_job: u64,
    records: HashMap<Vec<u8>, Queued>,
    /// The job of the staged transaction's records, if one is staged.
    staged: Option<u64>,
}

/// A queued value (`None` deletes) and the job that queued it.
type Queued = (u64, Option<Arc<[u8]>>);

enum Job {
    Apply(u64, Changes),
    /// Answered once every job before it is done.
    Barrier(Sender<()>),
}

impl WriteBehind {
    pub fn new(store: Store) -> Result<WriteBehind> {
        let store = Arc::new(store);
        let failed = Arc::new(Mutex::new(None));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (store, failed, pending) = (store.clone(), failed.clone(), pending.clone());
            std::thread::Builder::new()
                .name("state-store".into())
                .spawn(move || write_loop(&store, &rx, &failed, &pending))
                .or_fail(Kind::Failed, "cannot start the state store's writer thread")?
        };
        Ok(WriteBehind { store, jobs: Some(tx), thread: Some(thread), failed, pending })
    }

    /// Makes a transaction's changes visible to point reads before it commits; then it is
    /// either applied ([`WriteBehind::apply`], the same changes) or forgotten
    /// ([`WriteBehind::unstage`]). One transaction at a time is staged.
    pub fn stage(&self, changes: &Changes) -> Result<()> {
        self.check()?;
        let mut p = lock(&self.pending);
        p.next_job += 1;
        let job = p.next_job;
        p.staged = Some(job);
        for (k, v) in changes.records.iter().chain(&changes.local) {
            p.records.insert(k.clone(), (job, v.as_deref().map(Arc::from)));
        }
        Ok(())
    }

    /// Forgets the staged transaction's changes (it aborted): point reads see what was applied
    /// or queued before it again.
    pub fn unstage(&self) -> Result<()> {
        let Some(job) = lock(&self.pending).staged.take() else { return Ok(()) };
        // What the staged records hid is then in the store.
        self.sync()?;
        lock(&self.pending).records.retain(|_, (j, _)| *j != job);
        Ok(())
    }

    /// Queues a transaction's changes to apply, atomically, after those queued before (the
    /// staged transaction's, when one is staged: these are its changes).
    pub fn apply(&self, changes: Changes) -> Result<()> {
        self.check()?;
        let job = {
            let mut p = lock(&self.pending);
            let job = match p.staged.take() {
                Some(job) => job,
                None => {
                    p.next_job += 1;
                    p.next_job
                }
            };
            if changes.is_empty() {
                return Ok(());
            }
            for (k, v) in changes.records.iter().chain(&changes.local) {
                p.records.insert(k.clone(), (job, v.as_deref().map(Arc::from)));
            }
            job
        };
        // Range deletes touch only timer records, which only range reads (after a sync) see.
        self.send(Job::Apply(job, changes))
    }

    /// The value of `key`, queued writes included.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some((_, v)) = lock(&self.pending).records.get(key) {
            return Ok(v.as_deref().map(<[u8]>::to_vec));
        }
        self.store.get(key)
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoredState for WriteBehind {
    fn get(&self, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, StateError> {
        WriteBehind::get(self, key).map_err(|e| StateError::Store(e.to_string()))
    }

    /// Reads what is applied: the caller syncs first when it needs queued writes
    /// (the service does before it drops keys from memory, whose timer records this reads).
    fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> std::result::Result<(), StateError> {
        self.store.scan_range(from, to, visit).map_err(|e| StateError::Store(e.to_string()))
    }

    fn sync(&self) -> std::result::Result<(), StateError> {
        WriteBehind::sync(self).map_err(|e| StateError::Store(e.to_string()))
    }
}

fn write_loop(store: &Store, jobs: &Receiver<Job>, failed: &Mutex<Option<Error>>, pending: &Mutex<Pending>) {
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Apply(id, changes) => {
                if let Err(e) = store.apply(&changes) {
                    lock(failed).get_or_insert(e);
                }
                let mut p = lock(pending);
                for (k, _) in changes.records.iter().chain(&changes.local) {
                    if p.records.get(k).is_some_and(|(job, _)| *job == id) {
                        p.records.remove(k);
                    }
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

    fn records(records: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Changes {
        Changes { records, ..Changes::default() }
    }

    #[test]
    fn reads_see_every_write_queued_before_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = WriteBehind::new(Store::open(dir.path()).expect("store")).expect("writer");
        for i in 0..100u32 {
            let mut k = b"p".to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            store.apply(records(vec![(k, Some(vec![i as u8]))])).expect("queued");
        }
        store.apply(records(vec![(b"p\0\0\0\x05".to_vec(), None)])).expect("queued");
        assert_eq!(store.get(b"p\0\0\0\x05").expect("get"), None, "a point read sees the queued delete");
        let all = store.scan(b"p").expect("scan");
        assert_eq!(all.len(), 99);
        assert!(all.iter().all(|(k, v)| k[4] == v[0]));
        drop(store);
        // Queued writes are applied before the store closes.
        let store = WriteBehind::new(Store::open(dir.path()).expect("reopened")).expect("writer");
        store.apply(records(vec![(b"q".to_vec(), Some(b"1".to_vec()))])).expect("queued");
        drop(store);
        assert_eq!(Store::open(dir.path()).expect("reopened").scan(b"q").expect("scan").len(), 1);
    }

    #[test]
    fn a_staged_transaction_is_read_before_its_commit_then_applied_or_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = WriteBehind::new(Store::open(dir.path()).expect("store")).expect("writer");
        store
            .apply(records(vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), Some(b"1".to_vec()))]))
            .expect("queued");
        // Staged, then forgotten: reads see it meanwhile, and what it hid afterwards.
        let staged = records(vec![(b"a".to_vec(), Some(b"2".to_vec())), (b"b".to_vec(), None)]);
        store.stage(&staged).expect("staged");
        assert_eq!(store.get(b"a").expect("get"), Some(b"2".to_vec()));
        assert_eq!(store.get(b"b").expect("get"), None);
        store.unstage().expect("forgotten");
        assert_eq!(store.get(b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(store.get(b"b").expect("get"), Some(b"1".to_vec()));
        store.sync().expect("synced");
        assert_eq!(store.scan(b"a").expect("scan"), vec![(b"a".to_vec(), b"1".to_vec())], "nothing staged was written");
        // Staged, then applied: written.
        store.stage(&staged).expect("staged");
        store.apply(staged).expect("applied");
        drop(store);
        let store = Store::open(dir.path()).expect("reopened");
        assert_eq!(store.scan(b"a").expect("scan"), vec![(b"a".to_vec(), b"2".to_vec())]);
        assert!(store.scan(b"b").expect("scan").is_empty());
    }
}
