//! The in-memory store behind the seams: [`GrantStore`] (its futures are ready at
//! once: the work is done on the calling thread, a few microseconds, or a sweep) and
//! [`GrantView`] (it is its own local view), and its event feed.

use std::{future::Future, sync::Arc};

use chrono::{DateTime, Utc};
use tokio_stream::{
    Stream, StreamExt,
    wrappers::{BroadcastStream, errors::BroadcastStreamRecvError},
};

use super::MemoryGrantStore;
use crate::grants::{
    model::{EventPosition, Grant, GrantEvent, Revocation},
    store::{
        Change, FeedGap, GrantStore, GrantView, ListFilter, Page, RevokeScope, StoreError,
        StoreStats, SweepReport, Updated,
    },
};

impl GrantStore for MemoryGrantStore {
    fn create(
        &self,
        grant: Grant,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Arc<Grant>, StoreError>> + Send {
        std::future::ready(self.create_at(grant, now))
    }

    fn get(&self, id: &str, now: DateTime<Utc>) -> impl Future<Output = Option<Arc<Grant>>> + Send {
        std::future::ready(self.get_at(id, now))
    }

    fn transition(
        &self,
        id: &str,
        now: DateTime<Utc>,
        change: Change<'_>,
    ) -> impl Future<Output = Result<Updated, StoreError>> + Send {
        std::future::ready(self.apply(id, change, now))
    }

    fn revoke_all(
        &self,
        scope: RevokeScope<'_>,
        revocation: &Revocation,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Arc<Grant>>, StoreError>> + Send {
        std::future::ready(self.revoke_scope(scope, revocation, now))
    }

    fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Page, StoreError>> + Send {
        std::future::ready(self.list_page(filter, page_size, page_token, now))
    }

    fn sweep(&self, now: DateTime<Utc>) -> impl Future<Output = SweepReport> + Send {
        std::future::ready(self.sweep_due(now))
    }

    /// The bounded broadcast, numbered. Only events sent after the call are buffered
    /// for it: resuming from an earlier position than the feed's last is a gap at once
    /// (counting every event since, some of which may then arrive too); events at or
    /// before `position` are left out.
    fn events_since(
        &self,
        position: Option<EventPosition>,
    ) -> impl Stream<Item = Result<GrantEvent, FeedGap>> + Send + Unpin + 'static {
        // Subscribed before the last position is read: an event sent before the
        // subscription took its position before, so it is counted in the gap.
        let receiver = self.events.subscribe();
        let last = self
            .last_position
            .load(std::sync::atomic::Ordering::Relaxed);
        let after = position.map_or(last, |p| p.0);
        let gap = (after < last).then_some(Err(FeedGap {
            missed: last - after,
        }));
        let live = BroadcastStream::new(receiver).filter_map(move |event| match event {
            Ok(event) if event.position.0 <= after => None,
            Ok(event) => Some(Ok(event)),
            Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Err(FeedGap { missed })),
        });
        tokio_stream::iter(gap).chain(live)
    }
}

impl GrantView for MemoryGrantStore {
    fn grant_at(&self, id: &str, now: DateTime<Utc>) -> Option<Arc<Grant>> {
        self.get_at(id, now)
    }

    fn stats(&self) -> StoreStats {
        self.counts.stats()
    }
}
