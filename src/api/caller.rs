//! The caller identity of a gRPC call, from the transport that carried it.

use tonic::{Request, transport::server::UdsConnectInfo};

use crate::decision::Caller;

/// The transport's word on who called: the Unix socket's peer uid, else anonymous.
/// Metadata and message bodies are never consulted, so they cannot spoof it.
pub(crate) fn caller_of<T>(request: &Request<T>) -> Caller {
    match request.extensions().get::<UdsConnectInfo>() {
        Some(info) => Caller::unix_peer(info.peer_cred.map(|cred| cred.uid())),
        None => Caller::anonymous(),
    }
}
