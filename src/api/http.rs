//! The HTTP listener (axum): one router composed from per-concern routers, served on
//! its own TCP port with the same bounded graceful drain as the gRPC server.
//!
//! Each concern (observability, and later the OPA REST Data API and AuthZEN) owns a
//! `routes()` function returning an `axum::Router<HttpState>`; [`router`] merges them, so
//! adding an adapter is one `.merge(...)` line. Handlers translate HTTP to the decision
//! pipeline and back; they hold no policy logic.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use super::{
    CallerAllowList, authzen, observability, opa_rest,
    tls::{Alpn, ReloadingTls, TlsConnectInfo},
};
use crate::decision::DecisionPipeline;

/// What HTTP handlers share: cheap to clone (reference counts only).
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The pipeline every decision goes through (and its policy store).
    pub pipeline: Arc<DecisionPipeline>,
    /// Who may ask for decisions (OPA REST, AuthZEN); same list as DecisionService.
    pub decision_callers: CallerAllowList,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

/// Every HTTP route, one router per concern.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(observability::routes())
        .merge(opa_rest::routes())
        .merge(authzen::routes())
        .with_state(state)
}

/// A running HTTP server: its serve task and its shutdown switch.
#[derive(Debug)]
pub struct HttpServer {
    addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Starts serving `router` on the bound `listener`, over TLS when `tls` is given
    /// (each request then carries its connection's [`TlsConnectInfo`]).
    pub fn start(listener: TcpListener, router: Router, tls: Option<Arc<ReloadingTls>>) -> Self {
        let addr = listener.local_addr().ok();
        let (shutdown, mut signal) = watch::channel(false);
        let stopped = async move {
            let _ = signal.wait_for(|stop| *stop).await;
        };
        let task = match tls {
            None => tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }),
            Some(tls) => {
                let listener = TlsListener {
                    incoming: tls.incoming(listener, Alpn::Http),
                    addr,
                };
                tokio::spawn(async move {
                    axum::serve(
                        listener,
                        router.into_make_service_with_connect_info::<TlsConnectInfo>(),
                    )
                    .with_graceful_shutdown(stopped)
                    .await
                })
            }
        };
        Self {
            addr,
            shutdown,
            task,
        }
    }

    /// The address served on.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Stops accepting connections and lets in-flight requests finish, for at most
    /// `grace`; connections still open then are closed.
    pub async fn shutdown(self, grace: Duration) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        let abort = self.task.abort_handle();
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(result)) => result,
            // The serve task cannot panic in normal operation; a join error means it did.
            Ok(Err(err)) => Err(std::io::Error::other(err)),
            Err(_) => {
                // Idle keep-alive connections would otherwise hold shutdown open.
                tracing::warn!(
                    ?grace,
                    "HTTP requests still open after the shutdown grace period; closing them"
                );
                abort.abort();
                Ok(())
            }
        }
    }
}

/// TLS connections as axum's listener: handshakes happen in [`ReloadingTls::incoming`].
struct TlsListener {
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<super::TlsConnection>>,
    addr: Option<SocketAddr>,
}

impl axum::serve::Listener for TlsListener {
    type Io = super::TlsConnection;
    type Addr = TlsConnectInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(connection)) => {
                    let info = connection.connect_info().clone();
                    return (connection, info);
                }
                Some(Err(_)) => continue,
                // The acceptor ended (it only does when this listener is dropped).
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsConnectInfo {
            remote_addr: self.addr,
            caller: crate::decision::Caller::anonymous(),
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsConnectInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}
