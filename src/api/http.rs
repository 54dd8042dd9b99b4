//! The HTTP listener (axum): one router composed from per-concern routers, served on
//! its own TCP port with the same bounded graceful drain as the gRPC server.
//!
//! Each concern (observability, and later the OPA REST Data API and AuthZEN) owns a
//! `routes()` function returning an `axum::Router<HttpState>`; [`router`] merges them, so
//! adding an adapter is one `.merge(...)` line. Handlers translate HTTP to the decision
//! pipeline and back; they hold no policy logic.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, body::Bytes, extract::ConnectInfo, response::IntoResponse};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_stream::{Stream, StreamExt};
use tower::ServiceExt;

use super::{
    CallerAllowList, authzen,
    limits::{ConnectionCap, ConnectionSlot, CountedBody, LimitedIo, TransportLimits, admitted},
    observability, opa_rest,
    request_budget::{BudgetedBody, RequestBudget},
    tls::{Alpn, ReloadingTls, TlsConnectInfo},
};
use crate::{
    decision::{DecisionPipeline, InvalidField},
    telemetry::ListenerMetrics,
};

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

impl HttpState {
    /// A request's body, refused past `max_body_bytes` (`request body: length limit
    /// exceeded`) in the same words by every adapter.
    pub(crate) async fn read_body(&self, body: axum::body::Body) -> Result<Bytes, InvalidField> {
        axum::body::to_bytes(body, self.max_body_bytes)
            .await
            .map_err(|e| InvalidField::new("request body", e.to_string()))
    }
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
    /// (each request then carries its connection's [`TlsConnectInfo`]), within
    /// `limits` (connections counted in `metrics`, request bytes taken from `budget`).
    pub fn start(
        listener: TcpListener,
        router: Router,
        tls: Option<Arc<ReloadingTls>>,
        limits: (TransportLimits, Arc<RequestBudget>),
        metrics: ListenerMetrics,
    ) -> Self {
        let (limits, budget) = limits;
        let addr = listener.local_addr().ok();
        let (shutdown, signal) = watch::channel(false);
        let cap = ConnectionCap::new(limits.max_connections, metrics.clone());
        let task = match tls {
            None => {
                let incoming =
                    admitted(listener, cap).map(|r| r.map(|(io, slot)| (io, Some(slot), None)));
                tokio::spawn(serve(incoming, router, (limits, budget), metrics, signal))
            }
            Some(tls) => {
                let incoming = tls
                    .incoming(listener, Alpn::Http, cap, limits.handshake_timeout)
                    .map(|r| {
                        r.map(|connection| {
                            let info = connection.connect_info().clone();
                            (connection, None, Some(info))
                        })
                    });
                tokio::spawn(serve(incoming, router, (limits, budget), metrics, signal))
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

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Serves each connection of `incoming` (with its slot under the cap and, over TLS, its
/// identity) until `stop`, then lets open ones finish their requests.
async fn serve<IO>(
    incoming: impl Stream<Item = std::io::Result<(IO, Option<ConnectionSlot>, Option<TlsConnectInfo>)>>,
    router: Router,
    (limits, budget): (TransportLimits, Arc<RequestBudget>),
    metrics: ListenerMetrics,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .keep_alive(true);
    // Each connection task holds a sender: all dropped = all connections closed.
    let (open, mut closed) = mpsc::channel::<()>(1);
    let mut incoming = std::pin::pin!(incoming);
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            () = stopped(&mut stop) => break,
        };
        let Some(Ok((io, slot, info))) = next else {
            if next.is_none() {
                break;
            }
            continue;
        };
        // An HTTP/1 request's first byte, then hyper's header timeout takes over.
        let io = LimitedIo::new(io, slot, 1, &limits, metrics.clone());
        let in_flight = io.in_flight().clone();
        let router = router.clone();
        let request_timeout = limits.request_timeout;
        let budget = budget.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let call = in_flight.start();
            let budget = budget.clone();
            let mut request =
                request.map(|body| axum::body::Body::new(BudgetedBody::bytes(body, budget)));
            if let Some(info) = &info {
                request.extensions_mut().insert(ConnectInfo(info.clone()));
            }
            let response = tokio::time::timeout(request_timeout, router.clone().oneshot(request));
            async move {
                let response = match response.await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => (
                        axum::http::StatusCode::REQUEST_TIMEOUT,
                        "request not received and answered within the request timeout\n",
                    )
                        .into_response(),
                };
                Ok::<_, Infallible>(response.map(|body| CountedBody::new(body, Some(call))))
            }
        });
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let _open = open;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(open);
    let _ = closed.recv().await;
    Ok(())
}
