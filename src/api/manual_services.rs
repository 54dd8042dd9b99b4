//! Server code `build.rs` generates for services whose messages other crates define
//! (Envoy ext_authz from envoy-types, `grpc.health.v1` from tonic-health), so they decode
//! with [`StrictCodec`](super::codec::StrictCodec) like stepgate.v1; the crates' own
//! generated servers decode with prost's codec.

#![allow(missing_docs, clippy::doc_lazy_continuation)]

/// `envoy.service.auth.v3.Authorization`.
pub mod envoy_auth {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.auth.v3.Authorization.rs"
    ));
}

/// `grpc.health.v1.Health`, served by tonic-health's `HealthService`.
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.Health.rs"));

    use tonic::{Request, Response, Status};
    use tonic_health::{
        pb::{HealthCheckRequest, HealthCheckResponse, health_server::Health as _},
        server::{HealthReporter, HealthService},
    };

    /// tonic-health's service, reporting what a [`HealthReporter`] sets.
    #[derive(Debug)]
    pub struct Reported(HealthService);

    impl Reported {
        /// The service answering from `reporter`'s statuses.
        pub fn new(reporter: HealthReporter) -> Self {
            Self(HealthService::from_health_reporter(reporter))
        }
    }

    #[tonic::async_trait]
    impl health_server::Health for Reported {
        type WatchStream = tonic_health::server::WatchStream;

        async fn check(
            &self,
            request: Request<HealthCheckRequest>,
        ) -> Result<Response<HealthCheckResponse>, Status> {
            self.0.check(request).await
        }

        async fn watch(
            &self,
            request: Request<HealthCheckRequest>,
        ) -> Result<Response<Self::WatchStream>, Status> {
            self.0.watch(request).await
        }
    }
}
