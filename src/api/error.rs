//! Every error an adapter answers with, in one type, mapped once per transport: to a
//! gRPC `Status` ([`From<ApiError> for Status`]) and to an HTTP response (OPA's
//! `{"code", "message"}` shape, used by the OPA REST API and AuthZEN alike). A service or
//! route says what went wrong; the code and status come from here.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use tonic::Status;

use super::codec::Malformed;
use crate::{decision::InvalidField, grants::FeedGap, workflow::GrantStepError};

/// What went wrong with a call, as an adapter reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// The request is malformed or a field is invalid (the message names it).
    Invalid(String),
    /// The caller is not on the allow-list of what it called.
    Forbidden(String),
    /// What the request names does not exist (a grant, an undefined document).
    NotFound(String),
    /// A dependency cannot serve the call now (the grant store).
    Unavailable(String),
    /// A stream can no longer follow what it was following (a watcher that fell behind).
    Aborted(String),
    /// A bound of the server's is reached (calls in flight, request bytes held): the
    /// call may be tried again.
    Exhausted(String),
    /// The call could not be answered (a policy evaluation that produced no result).
    Failed(String),
}

impl From<InvalidField> for ApiError {
    fn from(field: InvalidField) -> Self {
        Self::Invalid(field.to_string())
    }
}

impl From<Malformed> for ApiError {
    fn from(malformed: Malformed) -> Self {
        Self::Invalid(malformed.to_string())
    }
}

impl From<GrantStepError> for ApiError {
    fn from(err: GrantStepError) -> Self {
        match err {
            GrantStepError::Invalid(field) => field.into(),
            GrantStepError::NotFound(id) => Self::NotFound(format!("grant {id} not found")),
            GrantStepError::Store(err) => Self::Unavailable(format!("grant store: {err}")),
        }
    }
}

impl From<FeedGap> for ApiError {
    fn from(FeedGap { missed }: FeedGap) -> Self {
        Self::Aborted(format!(
            "watcher fell {missed} events behind; re-list with ListGrants and watch again"
        ))
    }
}

/// The gRPC mapping.
impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::Invalid(message) => Status::invalid_argument(message),
            ApiError::Forbidden(message) => Status::permission_denied(message),
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::Unavailable(message) => Status::unavailable(message),
            ApiError::Aborted(message) => Status::aborted(message),
            ApiError::Exhausted(message) => Status::resource_exhausted(message),
            ApiError::Failed(message) => Status::unknown(message),
        }
    }
}

/// Any error an adapter reports, as the gRPC status it answers with.
pub(crate) fn status(err: impl Into<ApiError>) -> Status {
    Status::from(err.into())
}

/// The HTTP mapping: OPA's status codes and error codes.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::Invalid(message) => (StatusCode::BAD_REQUEST, "invalid_parameter", message),
            ApiError::Forbidden(message) => (StatusCode::FORBIDDEN, "unauthorized", message),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, "undefined_document", message),
            ApiError::Unavailable(message) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            ApiError::Aborted(message) => (StatusCode::CONFLICT, "aborted", message),
            ApiError::Exhausted(message) => {
                (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", message)
            }
            ApiError::Failed(message) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
            }
        };
        let body = serde_json::json!({"code": code, "message": message});
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_one_grpc_code_and_one_http_status() {
        let cases = [
            (
                ApiError::Invalid("x: required".into()),
                tonic::Code::InvalidArgument,
                400,
            ),
            (
                ApiError::Forbidden("no".into()),
                tonic::Code::PermissionDenied,
                403,
            ),
            (
                ApiError::NotFound("gone".into()),
                tonic::Code::NotFound,
                404,
            ),
            (
                ApiError::Unavailable("down".into()),
                tonic::Code::Unavailable,
                503,
            ),
            (
                ApiError::Aborted("behind".into()),
                tonic::Code::Aborted,
                409,
            ),
            (
                ApiError::Exhausted("busy".into()),
                tonic::Code::ResourceExhausted,
                429,
            ),
            (ApiError::Failed("failed".into()), tonic::Code::Unknown, 500),
        ];
        for (err, code, http) in cases {
            let status = status(err.clone());
            assert_eq!(status.code(), code, "{err:?}");
            let response = err.clone().into_response();
            assert_eq!(response.status().as_u16(), http, "{err:?}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        }
    }
}
