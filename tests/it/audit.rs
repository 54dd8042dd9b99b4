//! The decision log through the real server: records with the evidence, hostile values
//! kept on one line, `stepgate audit verify` catching tampering, and the full-buffer
//! paths (drop and count; deny when audit is required).

use std::{
    io::{self, Write},
    process::Command,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use stepgate::{
    app::Overrides,
    audit::{AuditOptions, DecisionLog, Destination, LOG_FULL_DENY},
    proto::v1::{
        ApproveRequest, RequestGrantRequest, Resource, Subject,
        grant_service_client::GrantServiceClient,
    },
};

use super::support::{Server, decide, eventually, request};

const BIN: &str = env!("CARGO_BIN_EXE_stepgate");

const POLICY: &str = r#"package stepgate

decision := {"allow": true, "reasons": ["ok"], "obligations": {"max_ttl_seconds": 60, "required_approvals": object.get(input, ["resource", "attributes", "approvals"], 0)}}
"#;

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn every_decision_is_logged_with_its_evidence_and_verifies() {
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("decisions.jsonl");
    let log = path.clone();
    let server = Server::start_with(&[("p.rego", POLICY)], move |c| {
        c.audit.destination = Destination::File(log);
    })
    .await;
    let mut client = server.client().await;
    // In the resource id: identity fields refuse these characters (INVALID_ARGUMENT).
    let hostile = ["new\nline", "sep\u{2028}arator", "ansi\u{1b}[2J", "nul\0"];
    for id in hostile {
        let mut req = request("read");
        req.resource = Some(Resource {
            r#type: "doc".into(),
            id: id.into(),
            attributes: None,
        });
        let mut req = tonic::Request::new(req);
        req.metadata_mut().insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        client.check(req).await.unwrap();
    }
    let mut grants = GrantServiceClient::new(server.tcp_channel().await);
    let granted = grants
        .request_grant(RequestGrantRequest {
            subject: Some(Subject {
                id: "svc-a".into(),
                ..Default::default()
            }),
            action: "issue_credential".into(),
            resource: Some(Resource {
                r#type: "secret".into(),
                id: "db".into(),
                attributes: Some(super::support::strukt(
                    serde_json::json!({"approvals": 1, "api_key": "sk-live-123"}),
                )),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = granted.grant.unwrap().id;
    grants
        .approve(ApproveRequest {
            grant_id: id.clone(),
            approver: "bob".into(),
            role: "asset_owner".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    server.stop().await;

    let logged = records(&path);
    assert_eq!(logged.len(), hostile.len() + 2);
    for (record, id) in logged.iter().zip(hostile) {
        assert_eq!(record["resource"]["id"], id);
        assert_eq!(record["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(record["step"], "use");
        assert_eq!(record["caller"]["id"], "anonymous");
        assert_eq!(record["allow"], true);
    }
    let request = &logged[hostile.len()];
    assert_eq!(request["step"], "request");
    assert_eq!(request["grant"]["id"], id);
    assert_eq!(request["resource"]["type"], "secret");
    assert_eq!(
        request["input"]["resource"]["attributes"]["api_key"],
        "[masked]"
    );
    let approval = &logged[hostile.len() + 1];
    assert_eq!(approval["step"], "approve");
    assert_eq!(approval["grant"]["state"], "ACTIVE");
    assert_eq!(approval["grant"]["approvers"][0]["approver"], "bob");
    assert_eq!(approval["grant"]["approvers"][0]["role"], "asset_owner");
    assert!(
        !std::fs::read_to_string(&path)
            .unwrap()
            .contains("sk-live-123")
    );

    let verify = |files: &[&std::path::Path]| {
        Command::new(BIN)
            .args(["audit", "verify"])
            .args(files)
            .output()
            .unwrap()
    };
    let out = verify(&[&path]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 6 records"));

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"allow\":true", "\"allow\":false", 3)).unwrap();
    let out = verify(&[&path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:1: hash does not match", path.display())),
        "{stderr}"
    );
}

/// A sink that blocks in `write` until released, and says when it got there.
struct Stalled {
    entered: mpsc::Sender<()>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl Write for Stalled {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.entered.send(());
        let _ = self.release.lock().unwrap().recv();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A server whose decision log holds one record in its buffer and is stuck writing.
async fn stalled_server(required: bool) -> (Server, mpsc::Sender<()>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let sink = Stalled {
        entered: entered_tx,
        release: Arc::new(Mutex::new(release_rx)),
    };
    let options = AuditOptions {
        destination: Destination::Stdout,
        required,
        buffer: 1,
        ..AuditOptions::default()
    };
    let log = DecisionLog::to_writer(Box::new(sink), &options).unwrap();
    let overrides = Overrides {
        decision_log: Some(log),
        ..Overrides::default()
    };
    let server = Server::start_overridden(&[("p.rego", POLICY)], |_| {}, overrides).await;
    let mut client = server.client().await;
    // The first record is taken by the writer, which gets stuck; the second fills the
    // buffer.
    assert!(decide(&mut client, "read").await.allow);
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .unwrap();
    assert!(decide(&mut client, "read").await.allow);
    (server, release)
}

#[tokio::test]
async fn a_full_decision_log_drops_and_counts_without_slowing_decisions() {
    let (server, release) = stalled_server(false).await;
    let mut client = server.client().await;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let decision = decide(&mut client, "read").await;
        assert!(decision.allow);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let scrape = server.http_get("/metrics").await.body;
    assert!(
        scrape.contains("stepgate_decision_log_records_total{outcome=\"dropped\"} 20"),
        "{scrape}"
    );
    drop(release);
    server.stop().await;
}

#[tokio::test]
async fn a_required_decision_log_that_is_full_denies_and_changes_nothing() {
    let (server, release) = stalled_server(true).await;
    let mut client = server.client().await;
    let decision = decide(&mut client, "read").await;
    assert!(!decision.allow);
    assert_eq!(decision.reasons, [LOG_FULL_DENY]);

    let mut grants = GrantServiceClient::new(server.tcp_channel().await);
    let refused = grants
        .request_grant(RequestGrantRequest {
            subject: Some(Subject {
                id: "svc-a".into(),
                ..Default::default()
            }),
            action: "issue_credential".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(refused.grant.is_none());
    assert!(!refused.decision.unwrap().allow);
    assert!(server.app().grants().is_empty(), "no grant was created");

    // Once the writer catches up, decisions are allowed again.
    drop(release);
    let mut client = server.client().await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            decide(&mut client, "read").await.allow
        })
        .await
    );
    server.stop().await;
}
