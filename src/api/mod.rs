//! Adapters: the gRPC services, the HTTP routes, and the listeners that carry them.
//! Adapters translate wire messages to the decision pipeline's types and its errors to
//! statuses or HTTP responses; they hold no policy logic and never call each other.

mod allow_list;
mod authzen;
mod caller;
mod checked_stream;
pub(crate) mod codec;
mod content_type;
mod convert;
mod decision_service;
mod error;
mod ext_authz;
mod grant_convert;
mod grant_service;
mod http;
mod limits;
mod manual_services;
mod observability;
mod opa_rest;
mod request_budget;
mod request_convert;
mod server;
mod tls;
mod uds_authority;

pub use allow_list::{AdminCallers, CallerAllowList};
pub use decision_service::DecisionApi;
pub use ext_authz::{BadEnvoyRequest, ExtAuthzApi, envoy_input};
pub use grant_service::GrantApi;
pub use http::{HttpServer, HttpState, router as http_router};
pub use limits::{
    ConnectionCap, ConnectionInfo, InFlight, LimitedIo, RESERVED_DESCRIPTORS, TransportLimits,
    fit_descriptor_limit,
};
pub use request_budget::{BudgetedBody, CallLimit, CallPermit, RequestBudget};
pub use server::{GrpcServer, GrpcServices, Listeners, ServerLimits, ServingSwitch};
pub use tls::{Alpn, ReloadingTls, TlsConnectInfo, TlsConnection, TlsError, TlsWatcher};
pub use uds_authority::{Malformed, Rewriter, UdsAuthority};
