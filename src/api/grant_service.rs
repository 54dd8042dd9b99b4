//! `stepgate.v1.GrantService`: the grant steps over gRPC, with the admin RPCs
//! (Approve, Reject, Revoke, ConfirmRevocation) limited to `--admin-callers`.

use std::{pin::Pin, sync::Arc};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{
    AdminCallers,
    caller::{caller_of, parent_of},
    convert::decision_message,
    error::{ApiError, status},
    grant_convert::state_filter,
};
use crate::{
    decision::validate_identity,
    grants::{GrantStore, ListFilter, MemoryGrantStore},
    identity,
    proto::v1::{
        self, ApproveRequest, ConfirmRevocationRequest, GetGrantRequest, GrantEvent, GrantResponse,
        ListGrantsRequest, ListGrantsResponse, RejectRequest, RenewRequest, RequestGrantRequest,
        RevalidateRequest, RevokeRequest, RevokeResponse, WatchGrantsRequest,
        grant_service_server::GrantService,
    },
    workflow::{GrantSteps, StepOutcome},
};

/// The gRPC adapter over the grant steps (on the embedded store unless another
/// backend is named).
#[derive(Debug)]
pub struct GrantApi<S: GrantStore = MemoryGrantStore> {
    steps: Arc<GrantSteps<S>>,
    admins: AdminCallers,
}

impl<S: GrantStore> Clone for GrantApi<S> {
    fn clone(&self) -> Self {
        Self {
            steps: self.steps.clone(),
            admins: self.admins.clone(),
        }
    }
}

impl<S: GrantStore> GrantApi<S> {
    /// An adapter running `steps`, with admin RPCs limited to `admins`.
    pub fn new(steps: Arc<GrantSteps<S>>, admins: AdminCallers) -> Self {
        Self { steps, admins }
    }
}

fn grant_response(outcome: StepOutcome) -> Response<GrantResponse> {
    Response::new(GrantResponse {
        grant: outcome.grant.as_deref().map(v1::Grant::from),
        decision: Some(decision_message(outcome.decision)),
    })
}

/// A subject filter as the grants hold subject ids: canonical (a malformed one is
/// `INVALID_ARGUMENT`); empty means no filter.
fn subject_filter(mut subject_id: String) -> Result<Option<String>, Status> {
    validate_identity(&subject_id, "subject_id").map_err(status)?;
    identity::canonicalize(&mut subject_id);
    Ok(Some(subject_id).filter(|s| !s.is_empty()))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<GrantEvent, Status>> + Send>>;

#[tonic::async_trait]
impl<S: GrantStore> GrantService for GrantApi<S> {
    async fn request_grant(
        &self,
        request: Request<RequestGrantRequest>,
    ) -> Result<Response<GrantResponse>, Status> {
        let caller = caller_of(&request);
        let _turn = self.steps.pipeline().admitted().await;
        self.steps
            .request(request.get_ref(), &caller, &parent_of(&request))
            .await
            .map(grant_response)
            .map_err(status)
    }

    async fn approve(
        &self,
        request: Request<ApproveRequest>,
    ) -> Result<Response<GrantResponse>, Status> {
        let caller = caller_of(&request);
        self.admins.check(&caller, "call", "Approve")?;
        let _turn = self.steps.pipeline().admitted().await;
        self.steps
            .approve(request.get_ref(), &caller, &parent_of(&request))
            .await
            .map(grant_response)
            .map_err(status)
    }

    async fn reject(
        &self,
        request: Request<RejectRequest>,
    ) -> Result<Response<GrantResponse>, Status> {
        let caller = caller_of(&request);
        self.admins.check(&caller, "call", "Reject")?;
        let _turn = self.steps.pipeline().admitted().await;
        self.steps
            .reject(request.get_ref(), &caller, &parent_of(&request))
            .await
            .map(grant_response)
            .map_err(status)
    }

    async fn revalidate(
        &self,
        request: Request<RevalidateRequest>,
    ) -> Result<Response<GrantResponse>, Status> {
        let caller = caller_of(&request);
        let _turn = self.steps.pipeline().admitted().await;
        self.steps
            .revalidate(request.get_ref(), &caller, &parent_of(&request))
            .await
            .map(grant_response)
            .map_err(status)
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<GrantResponse>, Status> {
        let caller = caller_of(&request);
        let _turn = self.steps.pipeline().admitted().await;
        self.steps
            .renew(request.get_ref(), &caller, &parent_of(&request))
            .await
            .map(grant_response)
            .map_err(status)
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let caller = caller_of(&request);
        self.admins.check(&caller, "call", "Revoke")?;
        let _turn = self.steps.pipeline().admitted().await;
        let outcome = self
            .steps
            .revoke(request.get_ref(), &caller, &parent_of(&request))
            .await
            .map_err(status)?;
        Ok(Response::new(RevokeResponse {
            revoked: outcome
                .revoked
                .iter()
                .map(|g| v1::Grant::from(&**g))
                .collect(),
            decision: Some(decision_message(outcome.decision)),
        }))
    }

    async fn confirm_revocation(
        &self,
        request: Request<ConfirmRevocationRequest>,
    ) -> Result<Response<GrantResponse>, Status> {
        let caller = caller_of(&request);
        self.admins.check(&caller, "call", "ConfirmRevocation")?;
        let _turn = self.steps.pipeline().admitted().await;
        self.steps
            .confirm_revocation(request.get_ref(), &caller, &parent_of(&request))
            .await
            .map(grant_response)
            .map_err(status)
    }

    async fn get_grant(
        &self,
        request: Request<GetGrantRequest>,
    ) -> Result<Response<v1::Grant>, Status> {
        let grant = self
            .steps
            .get(&request.get_ref().grant_id)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::Grant::from(&*grant)))
    }

    async fn list_grants(
        &self,
        request: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        let req = request.into_inner();
        let state = match v1::GrantState::try_from(req.state) {
            Ok(v1::GrantState::Unspecified) => None,
            Ok(state) => state_filter(state),
            Err(_) => {
                return Err(status(ApiError::Invalid(format!(
                    "state: {} is not a GrantState",
                    req.state
                ))));
            }
        };
        let filter = ListFilter {
            subject_id: subject_filter(req.subject_id)?,
            workflow_id: Some(req.workflow_id).filter(|s| !s.is_empty()),
            state,
        };
        let token = Some(req.page_token.as_str()).filter(|t| !t.is_empty());
        let page = self
            .steps
            .list(&filter, req.page_size as usize, token)
            .await
            .map_err(status)?;
        Ok(Response::new(ListGrantsResponse {
            grants: page.grants.iter().map(|g| v1::Grant::from(&**g)).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    type WatchGrantsStream = EventStream;

    async fn watch_grants(
        &self,
        request: Request<WatchGrantsRequest>,
    ) -> Result<Response<Self::WatchGrantsStream>, Status> {
        let req = request.into_inner();
        let filter = ListFilter {
            subject_id: subject_filter(req.subject_id)?,
            workflow_id: Some(req.workflow_id).filter(|s| !s.is_empty()),
            state: None,
        };
        let events = self.steps.events(None);
        // A watcher that falls behind is told so (tonic ends the stream at the first
        // error, with ABORTED) and re-lists; it never holds the store back.
        let stream = events.filter_map(move |event| match event {
            Ok(event) if filter.matches(&event.grant) => Some(Ok(GrantEvent::from(&event))),
            Ok(_) => None,
            Err(gap) => Some(Err(status(gap))),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
