//! OPA's own TypeScript SDK (`@styra/opa`, installed by `.ci/run` from
//! `tests/opa-client/package-lock.json`) against the real server's OPA REST API.

use std::path::Path;

use super::{
    opa_rest::{EXAMPLE, ROLES},
    support::{ECHO_POLICY, Server},
};

/// Needs Node and `npm ci --prefix tests/opa-client`. Without them (and outside CI) the
/// build script compiles this test ignored, so `cargo test` reports it as ignored
/// rather than passing it unrun; under `CI=true` it always runs, and fails when the
/// client is missing.
#[tokio::test]
#[cfg_attr(
    stepgate_opa_client_missing,
    ignore = "needs node and tests/opa-client/node_modules: run `npm ci --prefix tests/opa-client` (CI always runs it)"
)]
async fn opas_typescript_sdk_works_against_the_rest_api() {
    let client_dir = Path::new("tests/opa-client");
    assert!(
        client_dir
            .join("node_modules/@styra/opa/package.json")
            .exists(),
        "tests/opa-client is not installed: run `npm ci --prefix tests/opa-client`"
    );
    let server = Server::start(&[
        ("example.rego", EXAMPLE),
        ("data.json", ROLES),
        ("stepgate.rego", ECHO_POLICY),
    ])
    .await;
    let url = format!("http://{}", server.http.unwrap());
    let output = tokio::process::Command::new("node")
        .arg(client_dir.join("check.mjs"))
        .arg(&url)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the OPA SDK disagreed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: @styra/opa agrees"), "{stdout}");
    server.stop().await;
}
