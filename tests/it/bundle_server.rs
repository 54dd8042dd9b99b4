//! Policies from a bundle server on loopback: signed bundles activate through the guarded
//! reload path and every decision names the bundle's revision; a 304 costs nothing; a
//! bundle that is tampered with, unsigned, signed by another key, not covering a file,
//! not compiling or too large is refused and the previous revision keeps serving; a
//! server that is down at start leaves stepgate NOT_SERVING until it comes up.
//!
//! Polls are driven by `poll_now` (the poll interval is an hour) except where the retry
//! timer itself is under test, and waits are on events (a poll's outcome, the health
//! watch stream), each with a timeout.

use std::{future::Future, time::Duration};

use stepgate::{
    audit::Destination,
    config::{BundleVerification, ServeConfig},
    policy::{BundleOutcome, BundleServerOptions},
};
use tonic::Streaming;
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use super::{
    bundle_support::{BundleServer, Signer},
    support::{Server, bundle_bytes, connect_uds, decide, eventually},
};

const LIMIT: Duration = Duration::from_secs(20);

fn policy(reason: &str) -> String {
    format!(
        "package stepgate\n\ndecision := {{\"allow\": input.action == \"read\", \"reasons\": [\"{reason}\"]}}\n"
    )
}

fn manifest(revision: &str) -> String {
    format!("{{\"revision\":\"{revision}\"}}")
}

/// A bundle of revision `revision` whose policy gives `revision` as its reason.
fn files(revision: &str) -> Vec<(&'static str, String)> {
    vec![
        (".manifest", manifest(revision)),
        ("stepgate/policy.rego", policy(revision)),
        ("stepgate/data.json", "{\"limit\":3}".into()),
    ]
}

fn refs<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(n, c)| (*n, c.as_str())).collect()
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Starts stepgate on the bundle at `url`, verified with `signer`'s key when given,
/// polled only when a test says so (after the first poll, at start).
async fn stepgate(
    url: &str,
    signer: Option<&Signer>,
    tweak: impl FnOnce(&mut ServeConfig),
) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bundle-key.pem");
    if let Some(signer) = signer {
        std::fs::write(&key, &signer.public_pem).unwrap();
    }
    let url = url.to_string();
    let server = Server::bound(&[], |c| {
        c.bundle = Some(BundleServerOptions {
            url,
            poll_min: Duration::from_secs(3600),
            poll_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            bearer_token_file: None,
            ca_cert: None,
        });
        c.bundle_verification = signer.map(|_| BundleVerification {
            key,
            alg: None,
            key_id: None,
            scope: None,
        });
        tweak(c);
    })
    .await;
    (server, dir)
}

async fn poll(server: &Server) -> BundleOutcome {
    within("a poll", server.app().bundles().unwrap().poll_now())
        .await
        .expect("the poller runs")
}

async fn first_activation(server: &Server) {
    within(
        "the first bundle",
        server.app().bundles().unwrap().first_activation(),
    )
    .await;
}

/// The health watch stream of the whole server.
async fn health_watch(server: &Server) -> Streaming<HealthCheckResponse> {
    HealthClient::new(server.tcp_channel().await)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `watch` reports SERVING.
async fn serving_reported(watch: &mut Streaming<HealthCheckResponse>) {
    loop {
        let status = within("SERVING", watch.message()).await.unwrap().unwrap();
        if status.status == ServingStatus::Serving as i32 {
            return;
        }
    }
}

/// The reason the serving policy gives, and the revision that decided.
async fn serving(server: &Server) -> (String, String) {
    let decision = decide(&mut server.client().await, "read").await;
    assert!(decision.allow);
    (decision.reasons[0].clone(), decision.policy_revision)
}

#[tokio::test]
async fn a_signed_bundle_activates_and_every_decision_names_its_revision() {
    let signer = Signer::es256();
    let v1 = files("v1");
    let bundles = BundleServer::start(signer.bundle(&refs(&v1)), "\"etag-1\"").await;
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("decisions.jsonl");
    let log_path = log.clone();
    let (mut server, _keys) = stepgate(&bundles.url(), Some(&signer), move |c| {
        c.audit.destination = Destination::File(log_path);
    })
    .await;
    first_activation(&server).await;
    let mut watch = health_watch(&server).await;
    serving_reported(&mut watch).await;
    let (reason, first_revision) = serving(&server).await;
    assert_eq!(reason, "v1");
    let reply = server.http_get("/health").await;
    assert_eq!(reply.status, 200);
    let bundle = &reply.json()["bundle"];
    assert_eq!(bundle["active_revision"], "v1");
    assert_eq!(bundle["etag"], "\"etag-1\"");
    assert_eq!(bundle["url"], bundles.url());
    assert_eq!(bundle["last_outcome"], "activated");
    assert_eq!(
        bundle["last_successful_activation"],
        "2026-11-23T10:00:00.000Z"
    );
    assert!(bundle["last_error"].is_null());

    // Unchanged: the ETag is sent back and the server answers 304.
    assert_eq!(poll(&server).await, BundleOutcome::NotModified);
    assert_eq!(bundles.counts(), (2, 1));

    // A new bundle under a new ETag is the new revision.
    let v2 = files("v2");
    bundles.publish(signer.bundle(&refs(&v2)), "\"etag-2\"");
    assert_eq!(poll(&server).await, BundleOutcome::Activated);
    let (reason, second_revision) = serving(&server).await;
    assert_eq!(reason, "v2");
    assert_ne!(second_revision, first_revision);
    // The same files under another ETag change nothing.
    bundles.publish(signer.bundle(&refs(&v2)), "\"etag-3\"");
    assert_eq!(poll(&server).await, BundleOutcome::Unchanged);
    let health = server.http_get("/health").await.json();
    assert_eq!(health["bundle"]["etag"], "\"etag-3\"");
    assert_eq!(health["bundle"]["active_revision"], "v2");

    let metrics = server.http_get("/metrics").await.body;
    for line in [
        "stepgate_bundle_polls_total{outcome=\"activated\"} 2",
        "stepgate_bundle_polls_total{outcome=\"not_modified\"} 1",
        "stepgate_bundle_polls_total{outcome=\"unchanged\"} 1",
        "stepgate_bundle_revision_info{revision=\"v2\"} 1",
        "stepgate_bundle_last_activation_timestamp_seconds 1795428000",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    server.app.take().unwrap().shutdown().await.unwrap();
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let named: Vec<_> = records
        .iter()
        .map(|r| (r["bundle_revision"].as_str(), r["policy_revision"].as_str()))
        .collect();
    assert_eq!(
        named,
        [
            (Some("v1"), Some(first_revision.as_str())),
            (Some("v2"), Some(second_revision.as_str()))
        ]
    );
}

#[tokio::test]
async fn refused_bundles_keep_the_previous_revision_serving() {
    let signer = Signer::es256();
    let v1 = files("v1");
    let bundles = BundleServer::start(signer.bundle(&refs(&v1)), "\"v1\"").await;
    let (server, _keys) = stepgate(&bundles.url(), Some(&signer), |c| {
        c.policy.source_limits.max_bundle_bytes = 32 * 1024;
    })
    .await;
    first_activation(&server).await;
    let (_, revision) = serving(&server).await;

    let v2 = files("v2");
    let v2 = refs(&v2);
    let tampered = {
        let mut listed: Vec<(&str, &[u8])> = v2.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
        listed[1].1 = b"package stepgate\n\ndecision := {\"allow\": false}\n";
        signer.bundle_listing(&v2, &listed)
    };
    let with_extra = {
        let listed: Vec<(&str, &[u8])> = v2.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
        let mut files = v2.clone();
        files.push(("stepgate/extra.rego", "package extra\n"));
        signer.bundle_listing(&files, &listed)
    };
    let missing_a_file = {
        let mut listed: Vec<(&str, &[u8])> = v2.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
        listed.push(("stepgate/gone.rego", b"package gone\n"));
        signer.bundle_listing(&v2, &listed)
    };
    let broken = files("v3");
    let mut broken = refs(&broken);
    broken[1].1 = "package stepgate\ndecision := {\n";
    let failing_test = {
        let mut files = v2.clone();
        files.push((
            "stepgate/p_test.rego",
            "package stepgate_test\n\ntest_fails := false\n",
        ));
        files
    };
    let noise: String = (0..100_000).map(|_| fastrand::alphanumeric()).collect();
    let mut oversized = v2.clone();
    oversized.push(("stepgate/noise.txt", &noise));

    let cases = [
        (
            "tampered file",
            tampered,
            BundleOutcome::BadDigest,
            "digest mismatch",
        ),
        (
            "unsigned",
            bundle_bytes(&v2),
            BundleOutcome::Unsigned,
            "not signed",
        ),
        (
            "another key",
            Signer::es256().bundle(&v2),
            BundleOutcome::BadSignature,
            "does not verify",
        ),
        (
            "unlisted file",
            with_extra,
            BundleOutcome::BadDigest,
            "stepgate/extra.rego: not included in the bundle signature",
        ),
        (
            "listed file missing",
            missing_a_file,
            BundleOutcome::BadDigest,
            "stepgate/gone.rego listed in the bundle signature but not in the bundle",
        ),
        (
            "compile error",
            signer.bundle(&broken),
            BundleOutcome::Rejected,
            "policy.rego",
        ),
        (
            "failing test",
            signer.bundle(&failing_test),
            BundleOutcome::Rejected,
            "test_fails",
        ),
        (
            "oversized",
            signer.bundle(&oversized),
            BundleOutcome::TooLarge,
            "over the 32768-byte limit",
        ),
        (
            "not a bundle",
            b"<html>".to_vec(),
            BundleOutcome::Malformed,
            "",
        ),
    ];
    for (i, (what, bundle, outcome, message)) in cases.into_iter().enumerate() {
        bundles.publish(bundle, &format!("\"bad-{i}\""));
        assert_eq!(poll(&server).await, outcome, "{what}");
        assert_eq!(
            serving(&server).await,
            ("v1".into(), revision.clone()),
            "after {what}"
        );
        let reply = server.http_get("/health").await;
        assert_eq!(reply.status, 200, "{what}");
        let bundle = &reply.json()["bundle"];
        assert_eq!(bundle["active_revision"], "v1", "{what}");
        assert_eq!(
            bundle["etag"], "\"v1\"",
            "{what}: the ETag of the serving bundle"
        );
        assert_eq!(bundle["last_outcome"], outcome.label(), "{what}");
        let error = bundle["last_error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{what}: {error}");
    }
    let metrics = server.http_get("/metrics").await.body;
    for line in [
        "stepgate_bundle_polls_total{outcome=\"bad_digest\"} 3",
        "stepgate_bundle_polls_total{outcome=\"rejected\"} 2",
        "stepgate_bundle_polls_total{outcome=\"too_large\"} 1",
        "stepgate_bundle_revision_info{revision=\"v1\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    // The good bundle is taken as soon as it is served again.
    bundles.publish(signer.bundle(&v2), "\"v2\"");
    assert_eq!(poll(&server).await, BundleOutcome::Activated);
    assert_eq!(serving(&server).await.0, "v2");
    server.stop().await;
}

#[tokio::test]
async fn a_bundle_server_down_at_start_leaves_stepgate_not_serving_until_it_comes_up() {
    // A free port, nothing listening on it yet.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/bundles/stepgate.tar.gz");
    let (server, _keys) = stepgate(&url, None, |c| {
        // Retries back off from 100ms to at most this.
        c.bundle.as_mut().unwrap().poll_max = Duration::from_millis(300);
        c.bundle.as_mut().unwrap().poll_min = Duration::from_millis(300);
    })
    .await;
    let mut watch = health_watch(&server).await;
    let first = within("health", watch.message()).await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::NotServing as i32);
    assert_eq!(poll(&server).await, BundleOutcome::DownloadFailed);
    let reply = server.http_get("/health").await;
    assert_eq!(reply.status, 500);
    let body = reply.json();
    assert_eq!(body["bundle"]["last_outcome"], "download_failed");
    assert!(body["bundle"]["active_revision"].is_null());
    let decision = decide(&mut server.client().await, "read").await;
    assert!(!decision.allow, "no policy: fail closed");

    // The server comes up; the retry timer (not a test poll) finds it.
    let v1 = files("v1");
    let _bundles = BundleServer::start_on(addr, bundle_bytes(&refs(&v1)), "\"v1\"").await;
    serving_reported(&mut watch).await;
    assert_eq!(serving(&server).await.0, "v1");
    server.stop().await;
}

#[tokio::test]
async fn an_rsa_signed_bundle_with_a_scope_behind_a_rotated_bearer_token() {
    let signer = Signer::rs256_fixture();
    let v1 = files("v1");
    // OPA hashes JSON documents in canonical form: the manifest as served is not.
    let pretty_manifest = "{\n  \"revision\": \"v1\"\n}\n";
    let mut served = refs(&v1);
    served[0].1 = pretty_manifest;
    let listed: Vec<(&str, &[u8])> = v1.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
    let bundles = BundleServer::start(signer.bundle_listing(&served, &listed), "\"v1\"").await;
    bundles.require_token("first");
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("token");
    std::fs::write(&token_file, "first\n").unwrap();
    let token_path = token_file.clone();
    let (server, _keys) = stepgate(&bundles.url(), Some(&signer), move |c| {
        c.bundle.as_mut().unwrap().bearer_token_file = Some(token_path);
        let key = c.bundle_verification.as_mut().unwrap();
        key.key_id = Some("global_key".into());
        key.scope = Some("write".into());
    })
    .await;
    first_activation(&server).await;
    assert_eq!(serving(&server).await.0, "v1");

    // A rotated token is read on the next poll.
    bundles.require_token("second");
    assert_eq!(poll(&server).await, BundleOutcome::DownloadFailed);
    let error = server.http_get("/health").await.json()["bundle"]["last_error"].clone();
    assert!(error.as_str().unwrap().contains("401"), "{error}");
    std::fs::write(&token_file, "second").unwrap();
    assert_eq!(poll(&server).await, BundleOutcome::NotModified);
    server.stop().await;
}

#[tokio::test]
async fn without_a_key_a_signed_bundle_is_refused_and_an_unsigned_one_taken() {
    let v1 = files("v1");
    let signed = Signer::es256().bundle(&refs(&v1));
    let bundles = BundleServer::start(signed, "\"signed\"").await;
    let (server, _keys) = stepgate(&bundles.url(), None, |_| {}).await;
    assert_eq!(poll(&server).await, BundleOutcome::BadSignature);
    let error = server.http_get("/health").await.json()["bundle"]["last_error"].clone();
    assert!(
        error
            .as_str()
            .unwrap()
            .contains("no verification key is configured"),
        "{error}"
    );
    bundles.publish(bundle_bytes(&refs(&v1)), "\"unsigned\"");
    assert_eq!(poll(&server).await, BundleOutcome::Activated);
    assert_eq!(serving(&server).await.0, "v1");
    server.stop().await;
}

#[tokio::test]
async fn a_bundle_file_is_verified_when_a_key_is_configured() {
    let signer = Signer::es256();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, &signer.public_pem).unwrap();
    let bundle = dir.path().join("bundle.tar.gz");
    let v1 = files("v1");
    std::fs::write(&bundle, bundle_bytes(&refs(&v1))).unwrap();
    let (policies, verification) = (bundle.clone(), key.clone());
    let mut server = Server::bound(&[], move |c| {
        c.policies = policies;
        c.bundle_verification = Some(BundleVerification {
            key: verification,
            alg: None,
            key_id: None,
            scope: None,
        });
    })
    .await;
    let err = server
        .app
        .as_mut()
        .unwrap()
        .load_policies()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    std::fs::write(&bundle, signer.bundle(&refs(&v1))).unwrap();
    server.app.as_mut().unwrap().load_policies().await.unwrap();
    let decision = decide(&mut server.client().await, "read").await;
    assert_eq!(decision.reasons, ["v1"]);
    server.stop().await;
}

/// The binary: a bad first bundle does not stop `serve` (it stays NOT_SERVING), and
/// SIGHUP polls at once rather than waiting an hour for the next poll.
#[tokio::test]
async fn serve_waits_for_a_good_bundle_and_sighup_polls_at_once() {
    let bundles = BundleServer::start(b"not a bundle".to_vec(), "\"bad\"").await;
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("sg.sock");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["serve", "--grpc-addr", "", "--http-addr", "", "--ephemeral"])
        .args(["--bundle-url", &bundles.url()])
        .args(["--bundle-poll-min", "1h", "--bundle-poll-max", "1h"])
        .arg("--grpc-uds")
        .arg(&socket)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = async || {
        let channel = connect_uds(&socket).await?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .ok()?;
        Some(reply.into_inner().status)
    };
    let polled = eventually(LIMIT, async || bundles.counts().0 >= 1).await;
    assert!(polled, "the first poll never came");
    let not_serving = eventually(LIMIT, async || {
        status().await == Some(ServingStatus::NotServing as i32)
    })
    .await;
    assert!(not_serving, "not NOT_SERVING after a bad first bundle");
    assert!(child.try_wait().unwrap().is_none(), "serve exited");

    let v1 = files("v1");
    bundles.publish(bundle_bytes(&refs(&v1)), "\"v1\"");
    let pid = child.id().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status();
    assert!(hup.unwrap().success());
    let serving = eventually(LIMIT, async || {
        status().await == Some(ServingStatus::Serving as i32)
    })
    .await;
    assert!(serving, "SIGHUP did not poll");
    assert_eq!(bundles.counts().0, 2, "one poll at start, one on SIGHUP");

    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(term.unwrap().success());
    let exit = within("exit", child.wait()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
}
