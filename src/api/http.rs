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

use super::observability;
use crate::decision::DecisionPipeline;

/// What HTTP handlers share: cheap to clone (reference counts only).
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The pipeline every decision goes through (and its policy store).
    pub pipeline: Arc<DecisionPipeline>,
}

/// Every HTTP route, one router per concern.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(observability::routes())
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
    /// Starts serving `router` on the bound `listener`.
    pub fn start(listener: TcpListener, router: Router) -> Self {
        let addr = listener.local_addr().ok();
        let (shutdown, mut signal) = watch::channel(false);
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = signal.wait_for(|stop| *stop).await;
                })
                .await
        });
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
