//! What a partition keeps of its stored state: the reader of the local store (a trait: `core`
//! uses no RocksDB), what the engine's backings of one partition share, and the errors of
//! reading stored state. The records' format is in [`super::changelog`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use engine::runtime::{Key, SnapshotError};

/// Reads the local store (the last committed state: the changelog's records and the timer
/// records).
pub trait StoredState: Send + Sync + fmt::Debug {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// The records with `from <= key < to`, in key order, while `visit` returns true (those
    /// applied: see [`StoredState::sync`]).
    fn scan(&self, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StateError>;
    /// Waits until every write queued before is applied (a store that writes behind), so that
    /// a scan sees it.
    fn sync(&self) -> Result<(), StateError> {
        Ok(())
    }
}

/// Keys holding more events than this are stored as split snapshots: the head in the key's
/// record, each event's values in a record of its own, written once (see `core::changelog`).
/// Smaller keys are cheaper as one record.
pub const INLINE_EVENTS: usize = 8;

/// A record of a key's state: (pattern hash, key, sub-key; empty for the key's head).
pub(super) type ChunkedRecord = (String, Key, Vec<u8>);

/// The stored state a partition reads keys from, and what its backings share.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub(super) raw: Arc<dyn StoredState>,
    /// Chunked records by (pattern hash, key, sub-key; empty for the key's head): their number
    /// of parts as last written or read (to delete parts a smaller record no longer uses). Only
    /// big records are here.
    pub(super) chunked: Arc<Mutex<HashMap<ChunkedRecord, u32>>>,
    /// The first error reading the store; the service stops on it before committing.
    pub(super) error: Arc<Mutex<Option<StateError>>>,
}

impl Stored {
    pub(super) fn fail(&self, e: StateError) {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
    }
}

/// Why a partition's state records cannot be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("a state record of another partition")]
    OtherPartition,
    #[error("an unknown kind of state record")]
    UnknownKind,
    #[error("a state key: {0}")]
    Key(SnapshotError),
    #[error("the state of pattern `{pattern}`: {error}")]
    Snapshot { pattern: String, error: SnapshotError },
    #[error("a corrupt partition meta record")]
    CorruptMeta,
    #[error(
        "partition meta record format {0}; this build reads formats 1 and 2: run the Tripline \
         version that wrote it, or reset the group's state (delete the changelog topic and the state directory, \
         and the group's offsets) to start over"
    )]
    MetaVersion(u8),
    #[error("the stored state of key {0} is missing some of its parts")]
    CorruptChunk(String),
    #[error("a corrupt record of key {0}'s split state in the store")]
    CorruptSplit(String),
    #[error("a corrupt timer record in the state store")]
    CorruptTimer,
    #[error("the local store holds state format 1, which keeps every key in memory: restore from the changelog")]
    OldStore,
    #[error("reading the state store: {0}")]
    Store(String),
}
