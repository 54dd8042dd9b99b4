//! What a gRPC call says about where it comes from: the caller identity, from the
//! transport that carried it, and the caller's trace position, from its metadata.

use tonic::{Request, transport::server::UdsConnectInfo};

use crate::{decision::Caller, telemetry::ParentContext};

/// The caller's span (W3C `traceparent` or B3 metadata), to parent the decision span.
pub(crate) fn parent_of<T>(request: &Request<T>) -> ParentContext {
    ParentContext::from_headers(request.metadata().as_ref())
}

/// The transport's word on who called: the Unix socket's peer uid, else anonymous.
/// Metadata and message bodies are never consulted, so they cannot spoof it.
pub(crate) fn caller_of<T>(request: &Request<T>) -> Caller {
    match request.extensions().get::<UdsConnectInfo>() {
        Some(info) => Caller::unix_peer(info.peer_cred.map(|cred| cred.uid())),
        None => Caller::anonymous(),
    }
}
