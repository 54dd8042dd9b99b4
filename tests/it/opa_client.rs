//! OPA's own TypeScript SDK (`@styra/opa`, installed by `.ci/run` from
//! `tests/opa-client/package-lock.json`) against the real server's OPA REST API.

use std::path::Path;

use super::{
    opa_rest::{EXAMPLE, ROLES},
    support::{ECHO_POLICY, Server},
};

#[tokio::test]
async fn opas_typescript_sdk_works_against_the_rest_api() {
    let client_dir = Path::new("tests/opa-client");
    let installed = client_dir
        .join("node_modules/@styra/opa/package.json")
        .exists();
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok();
    if !(installed && node) {
        let why = "node and tests/opa-client/node_modules are needed: run `npm ci --prefix tests/opa-client`";
        // CI installs the client; there a missing one is a failure, not a skip.
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
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
