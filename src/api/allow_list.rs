//! Allow-lists of caller identities: per service (a tonic interceptor in front of it) and
//! for the GrantService admin RPCs. The identity is the transport's (see `caller`), so a
//! client cannot talk its way onto a list.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

use super::{caller::caller_of, error::ApiError};
use crate::decision::Caller;

/// Which callers may call something.
#[derive(Debug, Clone)]
pub enum CallerAllowList {
    /// Anyone who reaches the listener.
    Anyone,
    /// Only these caller identities.
    Only(Arc<[String]>),
}

/// The allow-list of the admin RPCs (Approve, Reject, Revoke, ConfirmRevocation).
pub type AdminCallers = CallerAllowList;

impl CallerAllowList {
    /// `Only(ids)` when a list is configured, else `Anyone`.
    pub fn from_config(ids: Option<&[String]>) -> Self {
        match ids {
            Some(ids) => Self::Only(ids.iter().cloned().collect()),
            None => Self::Anyone,
        }
    }

    /// Whether `caller` is on the list.
    pub fn allows(&self, caller: &Caller) -> bool {
        match self {
            Self::Anyone => true,
            Self::Only(ids) => ids.iter().any(|id| **id == *caller.id),
        }
    }

    /// A refusal naming the caller and what it may not do (`call Approve`, `query
    /// decisions`) when it is not on the list.
    pub(crate) fn check(&self, caller: &Caller, verb: &str, what: &str) -> Result<(), ApiError> {
        if self.allows(caller) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "caller {} may not {verb} {what}",
                caller.id
            )))
        }
    }
}

/// A tonic interceptor admitting only a service's allow-listed callers.
#[derive(Debug, Clone)]
pub(crate) struct ServiceGuard {
    callers: CallerAllowList,
    service: &'static str,
}

impl ServiceGuard {
    pub(crate) fn new(callers: CallerAllowList, service: &'static str) -> Self {
        Self { callers, service }
    }
}

impl Interceptor for ServiceGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if let CallerAllowList::Only(_) = self.callers {
            self.callers
                .check(&caller_of(&request), "call", self.service)?;
        }
        Ok(request)
    }
}
