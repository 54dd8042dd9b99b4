//! Adapters: the gRPC services and the listeners that carry them. Adapters translate
//! wire messages to the decision pipeline's types and its errors to statuses; they hold
//! no policy logic and never call each other.

mod caller;
mod convert;
mod decision_service;
mod grant_service;
mod server;

pub use decision_service::DecisionApi;
pub use grant_service::{AdminCallers, GrantApi};
pub use server::{GrpcServer, Listeners, ServerLimits};
