//! What a call says about where it comes from: the caller identity, from the transport
//! that carried it, and the caller's trace position, from its metadata or headers.

use tonic::{Request, transport::server::UdsConnectInfo};

use super::tls::TlsConnectInfo;
use crate::{decision::Caller, telemetry::ParentContext};

/// The caller's span (W3C `traceparent` or B3 metadata), to parent the decision span.
pub(crate) fn parent_of<T>(request: &Request<T>) -> ParentContext {
    ParentContext::from_headers(request.metadata().as_ref())
}

/// The transport's word on who called: the verified mTLS client certificate, the Unix
/// socket's peer uid, else anonymous. Metadata and message bodies are never consulted,
/// so they cannot spoof it.
pub(crate) fn caller_of<T>(request: &Request<T>) -> Caller {
    let extensions = request.extensions();
    caller_from(extensions.get(), extensions.get())
}

/// The caller of an HTTP request: the mTLS identity the HTTP listener recorded for its
/// connection, else anonymous. Headers are never consulted.
pub(crate) fn http_caller<B>(request: &axum::http::Request<B>) -> Caller {
    let tls = request
        .extensions()
        .get::<axum::extract::ConnectInfo<TlsConnectInfo>>()
        .map(|info| &info.0);
    caller_from(tls, None)
}

/// The caller from what the listener recorded about the connection (shared by the gRPC
/// and HTTP adapters, whose extension maps differ in type).
pub(crate) fn caller_from(tls: Option<&TlsConnectInfo>, uds: Option<&UdsConnectInfo>) -> Caller {
    if let Some(tls) = tls {
        return tls.caller.clone();
    }
    match uds {
        Some(info) => Caller::unix_peer(info.peer_cred.map(|cred| cred.uid())),
        None => Caller::anonymous(),
    }
}
