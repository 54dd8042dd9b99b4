//! The gRPC listeners: one router (stepgate.v1, Envoy ext_authz, health, reflection)
//! served on TCP (plaintext, TLS or mTLS) and/or a Unix socket, with per-service caller
//! allow-lists, message-size limits enforced by the transport before decoding and a
//! graceful drain on shutdown.
//!
//! Peers are bounded ([`super::limits`]): each listener admits at most
//! `max_connections`, each connection must send its preface in time and is closed when
//! idle, HTTP/2 limits streams per connection, windows and header lists and PINGs silent
//! peers, and a call must arrive whole and be answered within the request timeout. The
//! Unix socket's connections also get their `:authority` rewritten
//! ([`super::uds_authority`]), so every gRPC client is served there.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinHandle,
};
use tokio_stream::StreamExt;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Server, server::Router},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tonic_reflection::pb::{
    v1::ServerReflectionRequest as ReflectionV1Request,
    v1alpha::ServerReflectionRequest as ReflectionV1AlphaRequest,
};

use super::{
    CallerAllowList, DecisionApi, ExtAuthzApi, GrantApi,
    allow_list::ServiceGuard,
    checked_stream::CheckedStream,
    content_type::GrpcContentType,
    limits::{
        CONNECTION_WINDOW_BYTES, CallAccounting, ConnectionCap, HTTP2_PREFACE_LEN, LimitedIo,
        MAX_HEADER_LIST_BYTES, MAX_PENDING_RESET_STREAMS, STREAM_WINDOW_BYTES, TransportLimits,
        admitted,
    },
    manual_services::{
        envoy_auth::authorization_server::AuthorizationServer,
        health::{self, health_server::HealthServer},
    },
    request_budget::{CallLimit, RequestBudget},
    tls::{Alpn, ReloadingTls},
    uds_authority::UdsAuthority,
};
use crate::{
    proto::v1::{
        self, decision_service_server::DecisionServiceServer,
        grant_service_server::GrantServiceServer,
    },
    telemetry::Metrics,
};

/// Transport limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest accepted request message; larger ones are refused before decoding.
    pub max_message_bytes: usize,
    /// Bounds on connections, streams and their timing.
    pub transport: TransportLimits,
}

/// The bound, not yet serving, sockets.
#[derive(Debug, Default)]
pub struct Listeners {
    /// TCP listener, if enabled.
    pub tcp: Option<TcpListener>,
    /// Unix socket listener and its path, if enabled.
    pub uds: Option<(UnixListener, PathBuf)>,
    /// TLS of the TCP listener, if enabled (the Unix socket stays plaintext: its peer
    /// is identified by its credentials).
    pub tls: Option<Arc<ReloadingTls>>,
}

/// The services the gRPC listeners carry, with who may call each.
#[derive(Debug, Clone)]
pub struct GrpcServices {
    /// `stepgate.v1.DecisionService`.
    pub decisions: DecisionApi,
    /// `stepgate.v1.GrantService`.
    pub grants: GrantApi,
    /// `envoy.service.auth.v3.Authorization`.
    pub ext_authz: ExtAuthzApi,
    /// Who may call DecisionService.
    pub decision_callers: CallerAllowList,
    /// Who may call GrantService (admin RPCs are further limited inside it).
    pub grant_callers: CallerAllowList,
    /// Who may call the ext_authz service.
    pub envoy_callers: CallerAllowList,
}

impl Listeners {
    /// The TCP address actually bound (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// The names the health service reports on: the whole server ("") and each service.
const HEALTH_NAMES: [&str; 4] = [
    "",
    "stepgate.v1.DecisionService",
    "stepgate.v1.GrantService",
    "envoy.service.auth.v3.Authorization",
];

/// Sets the health every service reports (SERVING or NOT_SERVING).
#[derive(Debug, Clone)]
pub struct ServingSwitch(HealthReporter);

impl ServingSwitch {
    /// Reports SERVING (`true`) or NOT_SERVING for the server and each service.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in HEALTH_NAMES {
            self.0.set_service_status(name, status).await;
        }
    }
}

/// A running gRPC server: its serve tasks, its health reporter and its shutdown switch.
#[derive(Debug)]
pub struct GrpcServer {
    health: HealthReporter,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl GrpcServer {
    /// Starts serving on `listeners`. Health says NOT_SERVING until [`set_serving`].
    /// Connections are counted in `metrics`; request bytes held come from `budget`, calls
    /// not yet answered are bounded by `calls`.
    ///
    /// [`set_serving`]: GrpcServer::set_serving
    pub async fn start(
        services: GrpcServices,
        listeners: Listeners,
        limits: ServerLimits,
        metrics: &Metrics,
        (budget, calls): (Arc<RequestBudget>, Arc<CallLimit>),
    ) -> Result<Self, tonic_reflection::server::Error> {
        let health = HealthReporter::new();
        let health_service = HealthServer::new(health::Reported::new(health.clone()));
        for name in HEALTH_NAMES {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let max = limits.max_message_bytes;
        let decisions = InterceptedService::new(
            DecisionServiceServer::new(services.decisions).max_decoding_message_size(max),
            ServiceGuard::new(services.decision_callers, "stepgate.v1.DecisionService"),
        );
        let grants = InterceptedService::new(
            GrantServiceServer::new(services.grants).max_decoding_message_size(max),
            ServiceGuard::new(services.grant_callers, "stepgate.v1.GrantService"),
        );
        let ext_authz = InterceptedService::new(
            AuthorizationServer::new(services.ext_authz).max_decoding_message_size(max),
            ServiceGuard::new(
                services.envoy_callers,
                "envoy.service.auth.v3.Authorization",
            ),
        );
        let transport = limits.transport;
        let router: Router<_> = Server::builder()
            .max_concurrent_streams(transport.max_concurrent_streams)
            .http2_keepalive_interval(Some(transport.keepalive_interval))
            .http2_keepalive_timeout(Some(transport.keepalive_timeout))
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESET_STREAMS))
            // A unary call's future reads the whole request: this bounds stalled bodies.
            .timeout(transport.request_timeout)
            .layer(CallAccounting::new(budget, calls))
            .layer(GrpcContentType)
            .add_service(health_service)
            .add_service(CheckedStream::<_, ReflectionV1Request>::new(
                reflection().build_v1()?,
            ))
            .add_service(CheckedStream::<_, ReflectionV1AlphaRequest>::new(
                reflection().build_v1alpha()?,
            ))
            .add_service(decisions)
            .add_service(grants)
            .add_service(ext_authz);

        let (shutdown, signal) = watch::channel(false);
        let drained = move || {
            let mut signal = signal.clone();
            async move {
                let _ = signal.wait_for(|stop| *stop).await;
            }
        };
        let mut tasks = Vec::new();
        if let Some(listener) = listeners.tcp {
            let metrics = metrics.listener("grpc_tcp");
            let cap = ConnectionCap::new(transport.max_connections, metrics.clone());
            match listeners.tls {
                None => {
                    let incoming = admitted(listener, cap).map(move |accepted| {
                        accepted.map(|(io, slot)| {
                            LimitedIo::new(
                                io,
                                Some(slot),
                                HTTP2_PREFACE_LEN,
                                &transport,
                                metrics.clone(),
                            )
                        })
                    });
                    tasks.push(tokio::spawn(
                        router
                            .clone()
                            .serve_with_incoming_shutdown(incoming, drained()),
                    ));
                }
                Some(tls) => {
                    let incoming = tls
                        .incoming(listener, Alpn::Grpc, cap, transport.handshake_timeout)
                        .map(move |accepted| {
                            accepted.map(|io| {
                                LimitedIo::new(
                                    io,
                                    None,
                                    HTTP2_PREFACE_LEN,
                                    &transport,
                                    metrics.clone(),
                                )
                            })
                        });
                    tasks.push(tokio::spawn(
                        router
                            .clone()
                            .serve_with_incoming_shutdown(incoming, drained()),
                    ));
                }
            }
        }
        if let Some((listener, _)) = listeners.uds {
            let metrics = metrics.listener("grpc_uds");
            let cap = ConnectionCap::new(transport.max_connections, metrics.clone());
            let incoming = admitted(listener, cap).map(move |accepted| {
                accepted.map(|(io, slot)| {
                    let io = UdsAuthority::new(io, metrics.clone());
                    LimitedIo::new(
                        io,
                        Some(slot),
                        HTTP2_PREFACE_LEN,
                        &transport,
                        metrics.clone(),
                    )
                })
            });
            tasks.push(tokio::spawn(
                router.serve_with_incoming_shutdown(incoming, drained()),
            ));
        }
        Ok(Self {
            health,
            shutdown,
            tasks,
        })
    }

    /// Reports SERVING (policies are loaded) or NOT_SERVING.
    pub async fn set_serving(&self, serving: bool) {
        self.serving_switch().set(serving).await;
    }

    /// A handle that sets what health reports, for a task that decides it later (the
    /// first bundle from a bundle server).
    pub fn serving_switch(&self) -> ServingSwitch {
        ServingSwitch(self.health.clone())
    }

    /// Stops accepting calls and lets in-flight calls finish, for at most `grace`; calls
    /// still open then are closed.
    pub async fn shutdown(self, grace: Duration) -> Result<(), tonic::transport::Error> {
        self.set_serving(false).await;
        let _ = self.shutdown.send(true);
        let aborts: Vec<_> = self.tasks.iter().map(JoinHandle::abort_handle).collect();
        let drained = async {
            for task in self.tasks {
                if let Ok(result) = task.await {
                    result?;
                }
            }
            Ok(())
        };
        match tokio::time::timeout(grace, drained).await {
            Ok(result) => result,
            Err(_) => {
                // Long-lived streams (health watches) never finish on their own.
                tracing::warn!(
                    ?grace,
                    "calls still open after the shutdown grace period; closing them"
                );
                aborts.iter().for_each(tokio::task::AbortHandle::abort);
                Ok(())
            }
        }
    }
}
