//! The workflow and subject indexes: `(hash of the name, id)` in ordered sets, sharded
//! by the hash (see the parent module doc: a hash says "maybe").

use std::{
    collections::BTreeSet,
    hash::{BuildHasher, RandomState},
    sync::{Mutex, MutexGuard},
};

use uuid::Uuid;

use super::lock;

/// Shards of each name index (a power of two).
const NAME_INDEX_SHARDS: usize = 64;

/// One shard of a [`NameIndex`]: `(hash of the name, id)`, ordered.
type NameShard = Mutex<BTreeSet<(u64, Uuid)>>;

/// The grants of each workflow (or subject), by name: `(hash of the name, id)` in
/// ordered sets, sharded by the hash. See the module doc.
pub(super) struct NameIndex {
    seed: RandomState,
    /// How a name is hashed with the seed: [`seeded`] (a test injects one under which
    /// every name collides).
    pub(super) hash_name: fn(&RandomState, &str) -> u64,
    shards: Box<[NameShard]>,
}

/// The hash of a name under the index's seed.
fn seeded(seed: &RandomState, name: &str) -> u64 {
    seed.hash_one(name)
}

impl NameIndex {
    pub(super) fn new() -> Self {
        Self {
            seed: RandomState::new(),
            shards: (0..NAME_INDEX_SHARDS)
                .map(|_| Mutex::new(BTreeSet::new()))
                .collect(),
            hash_name: seeded,
        }
    }

    pub(super) fn hash(&self, name: &str) -> u64 {
        (self.hash_name)(&self.seed, name)
    }

    pub(super) fn shard(&self, hash: u64) -> MutexGuard<'_, BTreeSet<(u64, Uuid)>> {
        // Truncation intended: the top bits pick the shard.
        lock(&self.shards[(hash >> 58) as usize & (NAME_INDEX_SHARDS - 1)])
    }

    pub(super) fn insert(&self, name: &str, key: Uuid) {
        let hash = self.hash(name);
        self.shard(hash).insert((hash, key));
    }

    pub(super) fn remove(&self, name: &str, key: Uuid) {
        let hash = self.hash(name);
        self.shard(hash).remove(&(hash, key));
    }

    /// Up to `limit` ids (in id order) of grants that may be named `name`, after
    /// `after`.
    pub(super) fn ids(&self, name: &str, after: Option<Uuid>, limit: usize) -> Vec<Uuid> {
        use std::ops::Bound::{Excluded, Included};
        let hash = self.hash(name);
        let start = match after {
            Some(after) => Excluded((hash, after)),
            None => Included((hash, Uuid::nil())),
        };
        self.shard(hash)
            .range((start, Included((hash, Uuid::max()))))
            .take(limit)
            .map(|&(_, key)| key)
            .collect()
    }

    /// Every entry, hash first; for tests.
    #[cfg(test)]
    pub(super) fn entries(&self) -> BTreeSet<(u64, Uuid)> {
        self.shards.iter().flat_map(|s| lock(s).clone()).collect()
    }
}
