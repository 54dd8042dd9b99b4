//! `stepgate serve` configuration: a TOML file and command-line flags, merged and
//! validated into a `ServeConfig`.
//!
//! Input: the TOML text, then optionally `\0` and flags separated by `\0` (each one
//! argument, as a shell would pass it). `--config` always names the TOML file.
//! Properties: no panic, no hang; merging is deterministic (the same file and flags give
//! the same configuration or the same problems).

#![no_main]

mod common;

use std::{ffi::OsString, os::unix::ffi::OsStringExt};

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use stepgate::config::{ServeArgs, ServeConfig};

/// The `serve` subcommand's flags, parsed as the binary parses them.
#[derive(Debug, Parser)]
struct Serve {
    #[command(flatten)]
    args: ServeArgs,
}

fn merged(flags: &[OsString], file: &std::path::Path) -> Option<Result<String, String>> {
    let mut serve = Serve::try_parse_from(
        std::iter::once(OsString::from("serve")).chain(flags.iter().cloned()),
    )
    .ok()?;
    serve.args.config = Some(file.to_path_buf());
    Some(
        ServeConfig::from_args(serve.args)
            .map(|config| format!("{config:?}"))
            .map_err(|problems| problems.to_string()),
    )
}

/// The shipped configuration file, alone and with flags that override it.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let shipped = std::fs::read(common::repo().join("deploy/stepgate.toml")).unwrap_or_default();
    let with_flags = |flags: &[&str]| {
        let mut bytes = shipped.clone();
        for flag in flags {
            bytes.push(0);
            bytes.extend_from_slice(flag.as_bytes());
        }
        bytes
    };
    vec![
        ("deploy-toml".into(), shipped.clone()),
        (
            "deploy-toml-flags".into(),
            with_flags(&[
                "--eval-timeout",
                "250ms",
                "--max-batch",
                "64",
                "--grpc-addr",
                "",
            ]),
        ),
        (
            "flags-only".into(),
            b"\0--grpc-uds\0/tmp/s.sock\0--log-format\0json\0--admin-callers\0uds:uid=0,spiffe://x"
                .to_vec(),
        ),
    ]
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let toml = parts.next().unwrap_or_default();
    let flags: Vec<OsString> = parts.map(|f| OsString::from_vec(f.to_vec())).collect();
    let dir = common::tempdir();
    let file = dir.path().join("stepgate.toml");
    std::fs::write(&file, toml).expect("written");
    let Some(first) = merged(&flags, &file) else {
        return;
    };
    assert_eq!(merged(&flags, &file), Some(first), "merging is deterministic");
});
