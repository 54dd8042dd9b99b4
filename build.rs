//! Generates the `stepgate.v1` gRPC code and the descriptor set used by server reflection,
//! and the server code of the Envoy ext_authz and `grpc.health.v1` services over the
//! crates' own message types: every service decodes with `api::codec::StrictCodec`, so a
//! malformed request is `INVALID_ARGUMENT` (the crates' generated servers use prost's
//! codec, which answers `INTERNAL`).
//!
//! `protoc` comes from `$PROTOC` when set, otherwise from the vendored binary of the
//! `protoc-bin-vendored` build dependency, so no system install is needed.
//!
//! It also tells the tests whether OPA's npm client is installed (see
//! [`opa_client_cfg`]).

use std::{
    env,
    path::{Path, PathBuf},
};

use tonic_build::manual::{Method, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .codec_path(CODEC)
        .file_descriptor_set_path(out_dir.join("stepgate_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("proto/stepgate/v1/stepgate.proto")],
            &[PathBuf::from("proto"), include],
        )?;
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[envoy_authorization(), health()]);
    println!("cargo:rerun-if-changed=proto");
    opa_client_cfg();
    Ok(())
}

/// The codec of every service (`src/api/codec.rs`).
const CODEC: &str = "crate::api::codec::StrictCodec";

fn unary(name: &str, route: &str, input: &str, output: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(input)
        .output_type(output)
        .codec_path(CODEC)
        .build()
}

/// `envoy.service.auth.v3.Authorization` over envoy-types' messages.
fn envoy_authorization() -> Service {
    const PB: &str = "::envoy_types::pb::envoy::service::auth::v3";
    Service::builder()
        .name("Authorization")
        .package("envoy.service.auth.v3")
        .method(unary(
            "check",
            "Check",
            &format!("{PB}::CheckRequest"),
            &format!("{PB}::CheckResponse"),
        ))
        .build()
}

/// `grpc.health.v1.Health` over tonic-health's messages.
fn health() -> Service {
    const PB: &str = "::tonic_health::pb";
    let request = format!("{PB}::HealthCheckRequest");
    let response = format!("{PB}::HealthCheckResponse");
    let watch = Method::builder()
        .name("watch")
        .route_name("Watch")
        .input_type(&request)
        .output_type(&response)
        .codec_path(CODEC)
        .server_streaming()
        .build();
    Service::builder()
        .name("Health")
        .package("grpc.health.v1")
        .method(unary("check", "Check", &request, &response))
        .method(watch)
        .build()
}

/// Sets `stepgate_opa_client_missing` when `tests/opa-client` has not been installed
/// (`npm ci --prefix tests/opa-client`) and `CI` is not `true`: the OPA SDK test is then
/// compiled `#[ignore]`d, so `cargo test` lists it as ignored with the command to run
/// instead of passing without running. Under CI the flag is never set: the test runs and
/// fails if the client is missing.
fn opa_client_cfg() {
    println!("cargo::rustc-check-cfg=cfg(stepgate_opa_client_missing)");
    println!("cargo:rerun-if-env-changed=CI");
    // The directory's tree: installing or removing node_modules re-runs this script.
    println!("cargo:rerun-if-changed=tests/opa-client");
    let installed = Path::new("tests/opa-client/node_modules/@styra/opa/package.json").exists();
    if !installed && env::var("CI").as_deref() != Ok("true") {
        println!("cargo:rustc-cfg=stepgate_opa_client_missing");
    }
}
