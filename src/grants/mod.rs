//! Time-bound grants: the data layer behind `GrantService` (no gRPC, no policy).
//!
//! - [`model`]: the [`Grant`] and its pure, all-or-nothing state transitions (no way
//!   back from REJECTED, EXPIRED or REVOKED; lazy expiry against the clock);
//! - [`terms`]: what a grant was requested for, kept encoded, its subject and resource
//!   shared between grants (through a private interner of repeated values);
//! - [`store`]: the [`GrantStore`] trait (the seam a backend fills) and the types its
//!   operations take and return;
//! - [`memory`]: the embedded [`MemoryGrantStore`] (dashmap by id, indexes by workflow,
//!   subject and due time, bounded event broadcast, retention and
//!   revocation-confirmation deadlines), its listing, counts and sweep;
//! - [`journal`]: the append-only, checksummed journal that makes the store durable
//!   (format, scan, replay, writer with optional group commit, compaction by snapshot);
//! - [`sweeper`]: the periodic task that expires, reports and drops due grants.
//!
//! The adapter decides (policy) and then asks the store to apply a transition: a
//! refused transition, or one the journal could not keep, changes nothing. Time comes
//! from an injected [`Clock`](crate::clock::Clock), so tests move it instead of
//! sleeping.

mod id_hash;
mod intern;
pub mod journal;
pub mod memory;
pub mod model;
pub mod store;
pub mod sweeper;
pub mod terms;

#[cfg(test)]
mod tests;

pub use journal::{JournalError, JournalOptions};
pub use memory::MemoryGrantStore;
pub use model::{
    Approval, Ending, EventPosition, Grant, GrantEvent, GrantEventKind, GrantRequest, GrantSpec,
    GrantState, Revocation, Transition, TransitionError,
};
pub use store::{
    Change, FeedGap, GrantStore, GrantView, ListFilter, Page, RevokeScope, StoreError,
    StoreOptions, StoreStats, SweepReport, Updated,
};
pub use sweeper::{Sweeper, SweeperStats, spawn_sweeper};
pub use terms::{CompactTerms, Terms};
