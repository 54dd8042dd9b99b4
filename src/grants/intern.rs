//! Content-addressed sharing of what many grants repeat: the encoded subjects and
//! resources (a workload identity holds many grants, a resource is granted many times)
//! and short strings such as approver names, roles and policy revisions.
//!
//! An [`Interner`] hands out one `Arc` per distinct value among the live ones. Its table
//! holds only [`Weak`] references, so nothing is kept alive for the table's sake; a dead
//! entry still holds its value's allocation (a `Weak` keeps it) until it is purged or
//! reused by an equal value. Dead entries are purged by the insert that finds the table
//! grown past twice its live size at the last purge (amortised O(1) per insert), so the
//! table and the allocations it holds stay within about twice the live values; and,
//! when no new values come, after the store has dropped about half as many grants as
//! the table has entries ([`released`], called by the sweep: amortised O(1) per grant
//! dropped). Sharing is an optimisation only: a
//! value that cannot be shared (a hash collision with a live, different value) gets its
//! own `Arc`, and nothing depends on two equal values being the same allocation.
//!
//! The table is a sharded `DashMap` keyed by a keyed (randomly seeded) 64-bit hash of
//! the value, so callers cannot aim many values at one entry, and concurrent inserts of
//! different values rarely meet on a lock. Lookups happen when a grant is created,
//! approved or replayed: never on the read or revalidation path.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, LazyLock, Mutex, Weak,
        atomic::{AtomicUsize, Ordering},
    },
};

use dashmap::{DashMap, mapref::entry::Entry};

use super::id_hash::IdHash;

/// Table entries below which no purge is attempted.
const MIN_PURGE_LEN: usize = 1024;

/// Shares equal values of `T` among their holders (see the module doc).
pub struct Interner<T: ?Sized> {
    table: DashMap<u64, Weak<T>, IdHash>,
    seed: RandomState,
    /// About how many entries the table holds (counted on insert, set by a purge), so
    /// an insert need not visit every shard to learn the table's size.
    entries: AtomicUsize,
    /// Purge when the table grows past this many entries.
    purge_at: AtomicUsize,
    /// Holders dropped since the last purge (see [`released`]).
    released: AtomicUsize,
    purging: Mutex<()>,
}

impl<T: ?Sized> std::fmt::Debug for Interner<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner")
            .field("entries", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Self {
            table: DashMap::with_hasher(IdHash),
            seed: RandomState::new(),
            entries: AtomicUsize::new(0),
            purge_at: AtomicUsize::new(MIN_PURGE_LEN),
            released: AtomicUsize::new(0),
            purging: Mutex::new(()),
        }
    }
}

impl<T> Interner<T>
where
    T: ?Sized + std::hash::Hash + PartialEq,
    for<'a> Arc<T>: From<&'a T>,
{
    /// The shared `Arc` of a value equal to `value`, made from it when no live one is
    /// known.
    pub fn intern(&self, value: &T) -> Arc<T> {
        let hash = self.seed.hash_one(value);
        let shared = match self.table.entry(hash) {
            Entry::Occupied(mut slot) => match slot.get().upgrade() {
                Some(live) if *live == *value => live,
                // A live, different value with the same hash: not shared.
                Some(_) => return Arc::from(value),
                None => {
                    let fresh: Arc<T> = Arc::from(value);
                    slot.insert(Arc::downgrade(&fresh));
                    fresh
                }
            },
            Entry::Vacant(slot) => {
                let fresh: Arc<T> = Arc::from(value);
                slot.insert(Arc::downgrade(&fresh));
                self.entries.fetch_add(1, Ordering::Relaxed);
                fresh
            }
        };
        self.maybe_purge();
        shared
    }

    /// How many entries the table holds (live and not yet purged); for tests.
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.table.len()
    }

    /// Drops every entry whose value is no longer held; returns how many remain.
    pub fn purge(&self) -> usize {
        self.table.retain(|_, weak| weak.strong_count() > 0);
        let live = self.table.len();
        self.entries.store(live, Ordering::Relaxed);
        self.released.store(0, Ordering::Relaxed);
        self.purge_at
            .store((2 * live).max(MIN_PURGE_LEN), Ordering::Relaxed);
        live
    }

    /// Notes that `n` holders of values (grants) were dropped; purges once they are
    /// about half the table's entries.
    pub fn note_released(&self, n: usize) {
        let released = self.released.fetch_add(n, Ordering::Relaxed) + n;
        if released >= self.entries.load(Ordering::Relaxed) / 2 {
            self.try_purge();
        }
    }

    fn maybe_purge(&self) {
        if self.entries.load(Ordering::Relaxed) > self.purge_at.load(Ordering::Relaxed) {
            self.try_purge();
        }
    }

    /// Purges unless another thread is purging (the others go on inserting).
    fn try_purge(&self) {
        if let Ok(_one) = self.purging.try_lock() {
            self.purge();
        }
    }
}

/// Encoded subjects and resources, shared by every grant naming the same one.
pub static PARTIES: LazyLock<Interner<[u8]>> = LazyLock::new(Interner::default);

/// Short repeated strings: approvers, roles, policy revisions.
pub static NAMES: LazyLock<Interner<str>> = LazyLock::new(Interner::default);

/// Tells the interners that `grants` grants were dropped, so the values only they held
/// are forgotten in time even when no new values come (see the module doc).
pub fn released(grants: usize) {
    if grants > 0 {
        PARTIES.note_released(grants);
        NAMES.note_released(grants);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_allocation_while_held() {
        let interner: Interner<str> = Interner::default();
        let a = interner.intern("bob");
        let b = interner.intern("bob");
        assert!(Arc::ptr_eq(&a, &b));
        let c = interner.intern("carol");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(interner.entries(), 2);
        drop((a, b));
        // Dead now: a new one is made, the entry reused.
        let again = interner.intern("bob");
        assert_eq!(&*again, "bob");
        assert_eq!(interner.entries(), 2);
        drop(again);
        assert_eq!(interner.purge(), 1, "only carol is held");
    }

    #[test]
    fn dead_entries_are_purged_as_the_table_grows() {
        let interner: Interner<[u8]> = Interner::default();
        let kept: Vec<_> = (0u32..10)
            .map(|i| interner.intern(&i.to_le_bytes()))
            .collect();
        for i in 10u32..(10 + 5 * MIN_PURGE_LEN as u32) {
            drop(interner.intern(&i.to_le_bytes()));
        }
        assert!(
            interner.entries() <= MIN_PURGE_LEN + 1,
            "{} entries left",
            interner.entries()
        );
        for (i, k) in kept.iter().enumerate() {
            assert!(Arc::ptr_eq(k, &interner.intern(&(i as u32).to_le_bytes())));
        }
    }

    #[test]
    fn releasing_holders_purges_without_new_values() {
        let interner: Interner<str> = Interner::default();
        let kept = interner.intern("kept");
        for i in 0..100 {
            drop(interner.intern(&format!("gone-{i}")));
        }
        assert_eq!(interner.entries(), 101, "below the growth threshold");
        interner.note_released(10);
        assert_eq!(interner.entries(), 101, "not yet half the entries");
        interner.note_released(41);
        assert_eq!(interner.entries(), 1);
        assert!(Arc::ptr_eq(&kept, &interner.intern("kept")));
    }

    #[test]
    fn concurrent_interning_agrees() {
        let interner: Arc<Interner<str>> = Arc::new(Interner::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let interner = interner.clone();
                std::thread::spawn(move || {
                    (0..2000)
                        .map(|i| interner.intern(&format!("name-{}", i % 50)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Vec<Arc<str>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for i in 0..2000 {
            for other in &all[1..] {
                assert!(Arc::ptr_eq(&all[0][i], &other[i]));
            }
        }
    }
}
