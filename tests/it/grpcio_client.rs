//! Python's `grpcio` (gRPC C-core), with its default options, against the real server's
//! Unix socket: it sends the socket path as `:authority`, which the HTTP/2 layer alone
//! refuses. Run from `tests/grpcio-client/.venv` (made by `.ci/run` from
//! `tests/grpcio-client/requirements.txt`), else from `python3` if it has grpcio.

use std::path::Path;

use super::support::{ECHO_POLICY, Server};

/// A Python with grpcio: the test venv's, else the system's.
fn python_with_grpcio() -> Option<String> {
    let venv = Path::new("tests/grpcio-client/.venv/bin/python");
    let candidates = [venv.display().to_string(), "python3".to_string()];
    candidates.into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import grpc"])
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

#[tokio::test]
async fn pythons_grpcio_is_served_on_the_unix_socket() {
    let Some(python) = python_with_grpcio() else {
        let why = "Python's grpcio is needed: python3 -m venv tests/grpcio-client/.venv && tests/grpcio-client/.venv/bin/pip install -r tests/grpcio-client/requirements.txt";
        // CI installs it; there a missing one is a failure, not a skip.
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    };
    let server = Server::start(&[("stepgate.rego", ECHO_POLICY)]).await;
    let output = tokio::process::Command::new(&python)
        .arg("tests/grpcio-client/check.py")
        .arg(&server.uds)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "grpcio was not served:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: grpcio"), "{stdout}");
    server.stop().await;
}
