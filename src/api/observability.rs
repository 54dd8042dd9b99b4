//! Observability routes of the HTTP listener: `GET /health` (OPA style) and
//! `GET /metrics` (Prometheus text format).

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::http::HttpState;
use crate::telemetry::CONTENT_TYPE;

/// `/health` and `/metrics`.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
}

/// Every metric, rendered by the telemetry module.
async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.pipeline.metrics_text(),
    )
        .into_response()
}

/// 200 `{}` once a policy revision is serving; 500 `{"error": ...}` before (as OPA
/// answers before its bundles activate), so probes keep traffic away from a server that
/// would deny everything.
async fn health(State(state): State<HttpState>) -> Response {
    if state.pipeline.policies().current().is_some() {
        (StatusCode::OK, Json(serde_json::json!({}))).into_response()
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": "no policy revision is loaded"})),
        )
            .into_response()
    }
}
