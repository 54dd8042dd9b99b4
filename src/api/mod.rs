//! Adapters: the gRPC services, the HTTP routes, and the listeners that carry them.
//! Adapters translate wire messages to the decision pipeline's types and its errors to
//! statuses or HTTP responses; they hold no policy logic and never call each other.

mod caller;
mod convert;
mod decision_service;
mod grant_service;
mod http;
mod observability;
mod server;

pub use decision_service::DecisionApi;
pub use grant_service::{AdminCallers, GrantApi};
pub use http::{HttpServer, HttpState, router as http_router};
pub use server::{GrpcServer, Listeners, ServerLimits};
