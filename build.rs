//! Generates the `stepgate.v1` gRPC code and the descriptor set used by server reflection.
//!
//! `protoc` comes from `$PROTOC` when set, otherwise from the vendored binary of the
//! `protoc-bin-vendored` build dependency, so no system install is needed.

use std::{env, path::PathBuf};

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
        .file_descriptor_set_path(out_dir.join("stepgate_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("proto/stepgate/v1/stepgate.proto")],
            &[PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
