//! The input values of a grant's spec, built once per spec and worker thread.
//!
//! A grant's spec (id, subject, action, resource, scope, workflow, limits) never changes,
//! yet every `Check` naming the grant and every step on it puts the spec into the input
//! document. Decoding the compact terms and turning them into values cost a third of
//! the input building of such a call, so each worker thread keeps the values of the
//! specs it saw last in a small direct-mapped table.
//!
//! A slot holds a [`Weak`] to its spec and is used only when that is the very spec
//! asked for: a `Weak` keeps the allocation, so no other spec can appear at its address
//! while the slot holds it. The table is bounded (a few hundred KiB per thread at most);
//! a spec evicted or dropped only costs a rebuild. Nothing is shared between threads,
//! so the hot path takes no lock.

use std::{
    cell::RefCell,
    rc::Rc,
    sync::{Arc, Weak},
};

use regorus::Value;

use super::input::{TermValues, rfc3339};
use crate::grants::GrantSpec;

/// Slots per worker thread (a power of two).
const SLOTS: usize = 256;

/// A slot: the spec whose values it holds, and the values.
type Slot = Option<(Weak<GrantSpec>, Rc<SpecValues>)>;

/// What a grant's spec puts into an input document, as values.
#[derive(Debug)]
pub(super) struct SpecValues {
    /// Subject, action, resource and workflow: `input.grant.*`, and for a step on the
    /// grant also `input.*`.
    pub(super) terms: TermValues,
    /// `input.grant.id`.
    pub(super) id: Value,
    /// `input.grant.scope`.
    pub(super) scope: Value,
    /// `input.grant.required_approvals`.
    pub(super) required_approvals: Value,
    /// `input.grant.created_at`.
    pub(super) created_at: Value,
    /// `input.grant.ttl_seconds`.
    pub(super) ttl_seconds: Value,
    /// `input.grant.max_uses`.
    pub(super) max_uses: Value,
}

impl SpecValues {
    /// The values of `spec`, from this thread's table or built (and kept) now.
    pub(super) fn of(spec: &Arc<GrantSpec>) -> Rc<Self> {
        thread_local! {
            static TABLE: RefCell<Vec<Slot>> = RefCell::new(vec![None; SLOTS]);
        }
        let slot = slot_of(spec);
        TABLE.with(|table| {
            let mut table = table.borrow_mut();
            if let Some((held, values)) = &table[slot]
                && std::ptr::eq(held.as_ptr(), Arc::as_ptr(spec))
            {
                return values.clone();
            }
            let values = Rc::new(Self::build(spec));
            table[slot] = Some((Arc::downgrade(spec), values.clone()));
            values
        })
    }

    fn build(spec: &GrantSpec) -> Self {
        let terms = spec.terms.decode();
        Self {
            terms: TermValues::of(&terms),
            id: Value::from(spec.id.to_string()),
            scope: Value::from(
                terms
                    .scope
                    .iter()
                    .map(|s| Value::from(s.as_str()))
                    .collect::<Vec<_>>(),
            ),
            required_approvals: Value::from(u64::from(spec.required_approvals)),
            created_at: rfc3339(spec.created_at),
            ttl_seconds: Value::from(spec.ttl.num_seconds()),
            max_uses: Value::from(spec.max_uses),
        }
    }
}

/// The slot of a spec: its address, Fibonacci-hashed (allocations are aligned, so the
/// low bits alone would crowd a few slots).
fn slot_of(spec: &Arc<GrantSpec>) -> usize {
    let address = Arc::as_ptr(spec) as usize as u64;
    (address.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::{
        grants::Terms,
        proto::v1::{Resource, Subject},
    };

    fn spec(subject: &str) -> Arc<GrantSpec> {
        Arc::new(GrantSpec {
            id: Uuid::now_v7(),
            terms: Terms {
                subject: Subject {
                    id: subject.into(),
                    ..Default::default()
                },
                action: "read".into(),
                resource: Some(Resource {
                    id: "db".into(),
                    ..Default::default()
                }),
                scope: vec!["rows".into()],
                workflow: None,
            }
            .into(),
            required_approvals: 2,
            created_at: "2026-11-23T10:00:00Z"
                .parse()
                .unwrap_or_else(|_| Utc::now()),
            ttl: TimeDelta::seconds(60),
            max_uses: 5,
            policy_revision: "r1".into(),
        })
    }

    #[test]
    fn values_are_the_specs_own() {
        let spec = spec("svc-a");
        let values = SpecValues::of(&spec);
        assert_eq!(values.id, Value::from(spec.id.to_string()));
        assert_eq!(
            values.terms.subject.as_ref().unwrap()["id"],
            Value::from("svc-a")
        );
        assert_eq!(values.terms.action, Some(Value::from("read")));
        assert_eq!(values.scope, Value::from(vec![Value::from("rows")]));
        assert_eq!(values.created_at, Value::from("2026-11-23T10:00:00Z"));
        assert_eq!(values.required_approvals, Value::from(2u64));
        assert_eq!(values.ttl_seconds, Value::from(60i64));
        assert_eq!(values.max_uses, Value::from(5u64));
    }

    #[test]
    fn a_spec_is_built_once_and_never_confused_with_another() {
        let a = spec("svc-a");
        let first = SpecValues::of(&a);
        assert!(Rc::ptr_eq(&first, &SpecValues::of(&a)), "kept, not rebuilt");
        // Many specs alive at once: each gets its own values, whatever slot it lands in.
        let specs: Vec<_> = (0..4 * SLOTS).map(|i| spec(&format!("svc-{i}"))).collect();
        for (i, s) in specs.iter().enumerate() {
            let values = SpecValues::of(s);
            let id = &values.terms.subject.as_ref().unwrap()["id"];
            assert_eq!(*id, Value::from(format!("svc-{i}")));
        }
        // A spec dropped and another allocated (perhaps at the same address) is rebuilt.
        drop(specs);
        for i in 0..SLOTS {
            let s = spec(&format!("new-{i}"));
            let values = SpecValues::of(&s);
            let id = &values.terms.subject.as_ref().unwrap()["id"];
            assert_eq!(*id, Value::from(format!("new-{i}")));
        }
    }
}
