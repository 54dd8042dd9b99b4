//! `stepgate.v1.DecisionService`: Check and BatchCheck.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    caller::{caller_of, parent_of},
    convert::decision_message,
    error::status,
};
use crate::{
    decision::DecisionPipeline,
    proto::v1::{
        BatchCheckRequest, BatchCheckResponse, CheckRequest, CheckResponse,
        decision_service_server::DecisionService,
    },
};

/// The gRPC adapter over the decision pipeline (`stepgate.v1.DecisionService`).
#[derive(Debug, Clone)]
pub struct DecisionApi {
    pipeline: Arc<DecisionPipeline>,
}

impl DecisionApi {
    /// An adapter deciding through `pipeline`.
    pub fn new(pipeline: Arc<DecisionPipeline>) -> Self {
        Self { pipeline }
    }
}

#[tonic::async_trait]
impl DecisionService for DecisionApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let caller = caller_of(&request);
        let parent = parent_of(&request);
        let check = request.into_inner().into();
        let _turn = self.pipeline.admitted().await;
        let decision = self
            .pipeline
            .check(&check, &caller, &parent)
            .map_err(status)?;
        Ok(Response::new(CheckResponse {
            decision: Some(decision_message(decision)),
        }))
    }

    async fn batch_check(
        &self,
        request: Request<BatchCheckRequest>,
    ) -> Result<Response<BatchCheckResponse>, Status> {
        let caller = caller_of(&request);
        let parent = parent_of(&request);
        let checks = request.into_inner().checks;
        let decisions = self
            .pipeline
            .batch_check(
                "checks",
                checks.into_iter().map(|check| Ok(check.into())),
                caller,
                parent,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(BatchCheckResponse {
            decisions: decisions.into_iter().map(decision_message).collect(),
        }))
    }
}
