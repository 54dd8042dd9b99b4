//! Listing: pages in id order, from the id index or a name index, and their tokens.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{MemoryGrantStore, lock, view};
use crate::grants::store::{DEFAULT_PAGE_SIZE, ListFilter, MAX_PAGE_SIZE, Page, StoreError};

/// Candidate ids a listing copies out of an index per lock.
const LIST_CHUNK: usize = 256;
/// Prefix of page tokens (versioned, so the format can change).
const PAGE_TOKEN_PREFIX: &str = "g1.";

/// Encodes a page token: the last id of the page.
fn encode_page_token(key: Uuid) -> String {
    format!("{PAGE_TOKEN_PREFIX}{}", key.simple())
}

fn parse_page_token(token: &str) -> Result<Uuid, StoreError> {
    token
        .strip_prefix(PAGE_TOKEN_PREFIX)
        .filter(|rest| rest.len() == 32)
        .and_then(|rest| Uuid::try_parse(rest).ok())
        .ok_or(StoreError::InvalidPageToken)
}

impl MemoryGrantStore {
    /// One page of [`GrantStore::list`](crate::grants::GrantStore::list).
    pub(super) fn list_page(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Page, StoreError> {
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let mut cursor = match page_token {
            None | Some("") => None,
            Some(token) => Some(parse_page_token(token)?),
        };
        let chunk_after = |set: &BTreeSet<Uuid>, after: Option<Uuid>| -> Vec<Uuid> {
            let range = match after {
                Some(after) => {
                    set.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                }
                None => set.range(..),
            };
            range.take(LIST_CHUNK).copied().collect()
        };
        let mut page = Page::default();
        let mut last = None;
        'scan: loop {
            let chunk = match (&filter.workflow_id, &filter.subject_id) {
                (Some(w), _) => self.by_workflow.ids(w, cursor, LIST_CHUNK),
                (None, Some(s)) => self.by_subject.ids(s, cursor, LIST_CHUNK),
                (None, None) => chunk_after(&lock(&self.ids), cursor),
            };
            let Some(&chunk_last) = chunk.last() else {
                break;
            };
            cursor = Some(chunk_last);
            for key in chunk {
                let Some(grant) = self.current(&key) else {
                    continue;
                };
                let grant = view(grant, now);
                if !filter.matches(&grant) {
                    continue;
                }
                if page.grants.len() == page_size {
                    page.next_page_token = last.map(encode_page_token);
                    break 'scan;
                }
                last = Some(key);
                page.grants.push(grant);
            }
        }
        Ok(page)
    }
}
