//! Observability routes of the HTTP listener: `GET /health` (OPA style) and
//! `GET /metrics` (Prometheus text format).

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use chrono::{DateTime, SecondsFormat, Utc};

use super::http::HttpState;
use crate::{
    policy::{BundleOutcome, BundleStatus},
    telemetry::CONTENT_TYPE,
};

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
/// would deny everything. With a bundle server, `bundle` tells its state: the serving
/// bundle's revision and ETag, when it was last polled and activated, and why the last
/// poll failed (a refused bundle leaves the previous revision serving, and health 200).
async fn health(State(state): State<HttpState>) -> Response {
    let provenance = state.pipeline.serving_provenance();
    let serving = state.pipeline.policies().current().is_some();
    let mut body = if serving {
        serde_json::json!({})
    } else {
        serde_json::json!({"error": "no policy revision is loaded"})
    };
    if let Some(stats) = state.pipeline.telemetry().bundles() {
        body["bundle"] = bundle_status(&stats.status(), provenance.bundle_revision.as_deref());
    }
    let status = if serving {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (status, Json(body)).into_response()
}

/// The bundle server's state as `/health` shows it.
fn bundle_status(status: &BundleStatus, active_revision: Option<&str>) -> serde_json::Value {
    let time =
        |at: Option<DateTime<Utc>>| at.map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true));
    serde_json::json!({
        "url": status.url,
        "active_revision": active_revision,
        "etag": status.etag,
        "last_request": time(status.last_request),
        "last_successful_request": time(status.last_successful_request),
        "last_successful_activation": time(status.last_successful_activation),
        "last_outcome": status.last_outcome.map(BundleOutcome::label),
        "last_error": status.last_error,
    })
}
