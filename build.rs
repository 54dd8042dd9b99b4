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
//! [`opa_client_cfg`]), and `--version` the commit and the regorus version (see
//! [`long_version`]).

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
    long_version();
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

/// Sets `STEPGATE_LONG_VERSION` for `stepgate --version`: the package version, the
/// commit it was built from (`unknown commit` outside a git checkout, e.g. in the image
/// build) and the regorus version from `Cargo.lock`. Re-runs when the checked-out commit
/// changes, watching only git files that exist (a missing one would re-run every build).
fn long_version() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    if commit.is_some() {
        let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(git(&["rev-parse", "--git-path", &branch]));
        }
        watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
        for path in watched.into_iter().flatten() {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let regorus = lock
        .split("[[package]]")
        .find(|package| package.contains("\nname = \"regorus\"\n"))
        .and_then(|package| package.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    println!(
        "cargo:rustc-env=STEPGATE_LONG_VERSION={} (commit {}, regorus {regorus})",
        env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        commit.as_deref().unwrap_or("unknown"),
    );
}
