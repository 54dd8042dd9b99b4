//! stepgate: a low-latency policy decision point sidecar for just-in-time access.
//!
//! At every step of an access workflow (request, approve, issue, use, renew, revoke,
//! close, break-glass) stepgate re-evaluates Rego policies with regorus against the
//! identity and the context, failing closed.
//!
//! Module map, in the direction data flows:
//! - [`api`]: gRPC adapters and listeners (no policy logic);
//! - [`decision`]: the input document, the one pipeline every adapter calls, the record;
//! - [`policy`]: loading, guarding, compiling, evaluating and reloading policy sets;
//! - [`grants`]: time-bound grants: model, store, journal, sweeper (no gRPC, no policy);
//! - [`workflow`]: the grant steps, decided by the pipeline and applied to the store;
//! - [`telemetry`]: spans (OpenTelemetry, OTLP export) and Prometheus metrics;
//! - [`audit`]: the hash-chained decision log;
//! - `document`: the input document's vocabulary (interned keys) that the pipeline
//!   writes and the decision log reads;
//! - [`config`], [`app`], [`cli`]: configuration, wiring, the command line;
//! - [`clock`]: injectable time; [`proto`]: the generated `stepgate.v1` contract;
//! - [`identity`]: which identity strings are accepted, their canonical form and the
//!   confusable-safe key that counts people.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decision;
pub(crate) mod document;
pub mod grants;
pub mod identity;
pub mod policy;
pub mod proto;
pub mod telemetry;
pub mod workflow;

/// Makes ring the process's default rustls provider (once). reqwest, which the bundle
/// client and the OTLP HTTP exporter share with one set of features, takes the process
/// default and panics when there is none (`rustls-no-provider`: no second crypto library
/// is built); the listeners name their provider explicitly.
pub(crate) fn install_rustls_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Err only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
