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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock,
        grants::{
            memory::tests::{did, grant, secs, store, t0},
            model::{GrantEventKind, GrantState},
        },
    };

    /// Through the seam, time is the caller's: the store's own clock is not read.
    #[tokio::test]
    async fn the_seam_judges_by_the_time_it_is_given() {
        let (store, clock) = store();
        let id = GrantStore::create(&store, grant(t0(), 0, "s", "w", 0), t0())
            .await
            .unwrap()
            .id()
            .to_string();
        let later = t0() + secs(7200);
        let seen = GrantStore::get(&store, &id, later).await.unwrap();
        assert_eq!(
            seen.state,
            GrantState::Expired,
            "past its end at the time given"
        );
        assert_eq!(clock.now(), t0(), "the store's clock did not move");
        let refused =
            GrantStore::transition(&store, &id, later, &mut |g, now| g.record_use(did(5), now))
                .await;
        assert!(matches!(refused, Err(StoreError::Refused { .. })));
        let page = GrantStore::list(&store, &ListFilter::default(), 0, None, later)
            .await
            .unwrap();
        assert_eq!(page.grants[0].state, GrantState::Expired);
        let report = GrantStore::sweep(&store, later).await;
        assert_eq!(report.expired, 1);
    }

    /// The feed's next item, failing the test (instead of hanging it) when none comes.
    async fn next(
        feed: &mut (impl Stream<Item = Result<GrantEvent, FeedGap>> + Unpin),
    ) -> Result<GrantEvent, FeedGap> {
        tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
            .await
            .expect("the feed yields within 10 s")
            .expect("the feed goes on")
    }

    /// The feed numbers every event, watched or not; a follower resuming from the last
    /// position it saw gets what came after, and one resuming from further back is told
    /// it missed events.
    #[tokio::test]
    async fn the_event_feed_resumes_from_a_position_or_reports_the_gap() {
        let (store, _) = store();
        let mut feed = store.events_since(None);
        store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
        let requested = next(&mut feed).await.unwrap();
        let activated = next(&mut feed).await.unwrap();
        assert_eq!(
            (requested.kind, requested.position.0),
            (GrantEventKind::Requested, 1)
        );
        assert_eq!(
            (activated.kind, activated.position.0),
            (GrantEventKind::Activated, 2)
        );
        drop(feed);
        // Unwatched events still take positions.
        store.create(grant(t0(), 1, "s2", "w", 0)).unwrap();
        let mut resumed = store.events_since(Some(activated.position));
        assert_eq!(
            next(&mut resumed).await,
            Err(FeedGap { missed: 1 }),
            "the request of s2 was not buffered for it"
        );
        let mut current = store.events_since(Some(crate::grants::EventPosition(3)));
        store.create(grant(t0(), 1, "s3", "w", 0)).unwrap();
        let next = next(&mut current).await.unwrap();
        assert_eq!((next.position.0, next.grant.subject_id()), (4, "s3"));
    }
}
