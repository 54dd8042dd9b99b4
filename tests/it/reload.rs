//! Live reload: a good set becomes the new revision without dropping calls; a bad set is
//! rejected and the previous revision keeps serving.

use std::time::Duration;

use stepgate::policy::PolicyStore;

use super::support::{
    ECHO_POLICY, Server, decide, eventually, request, write_bundle, write_policy,
};

const DENY_ALL: &str =
    "package stepgate\n\ndecision := {\"allow\": false, \"reasons\": [\"v2\"]}\n";

async fn revision_and_allow(server: &Server) -> (String, bool) {
    let decision = decide(&mut server.client().await, "read").await;
    (decision.policy_revision, decision.allow)
}

/// The revision and verdict once a revision other than `old` serves.
async fn next_revision(server: &Server, old: &str) -> (String, bool) {
    assert!(
        eventually(Duration::from_secs(10), async || revision_and_allow(server)
            .await
            .0
            != old)
        .await,
        "no revision after {old} arrived"
    );
    revision_and_allow(server).await
}

/// Makes `change` to the policy files and waits until the store has rejected a set.
async fn rejected_after(store: &PolicyStore, change: impl FnOnce()) {
    let rejected = store.reload_counts().rejected;
    change();
    assert!(
        eventually(Duration::from_secs(10), async || store
            .reload_counts()
            .rejected
            > rejected)
        .await,
        "the change was never rejected"
    );
}

#[tokio::test]
async fn file_changes_swap_in_a_good_set_and_reject_a_bad_one() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| c.watch_policies = true).await;
    let (first, allow) = revision_and_allow(&server).await;
    assert!(allow);

    write_policy(server.policies.path(), "p.rego", DENY_ALL);
    let (second, allow) = next_revision(&server, &first).await;
    assert!(!allow);

    // A syntax error, a failing test, an http.send call, a nesting bomb: each rejected.
    let bad_sets = [
        ("p.rego", "package stepgate\ndecision := {\n"),
        (
            "p_test.rego",
            "package stepgate_test\ntest_fails := false\n",
        ),
        (
            "p.rego",
            "package stepgate\ndecision := http.send({\"url\": \"http://x\"})\n",
        ),
        (
            "p.rego",
            &format!("package stepgate\nx := {}\n", "[".repeat(43)),
        ),
    ];
    let store = server.app.as_ref().unwrap().policies().clone();
    for (name, text) in bad_sets {
        rejected_after(&store, || {
            write_policy(server.policies.path(), name, text);
        })
        .await;
        assert_eq!(
            revision_and_allow(&server).await,
            (second.clone(), false),
            "after a bad {name}"
        );
        let accepted = store.reload_counts().accepted;
        std::fs::remove_file(server.policies.path().join(name)).unwrap();
        write_policy(server.policies.path(), "p.rego", DENY_ALL);
        assert!(
            eventually(Duration::from_secs(10), async || store
                .reload_counts()
                .accepted
                > accepted)
            .await
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn explicit_reload_reports_the_error_with_file_and_line() {
    let server = Server::start(&[("p.rego", ECHO_POLICY)]).await;
    let (first, _) = revision_and_allow(&server).await;
    write_policy(
        server.policies.path(),
        "sub/broken.rego",
        "package broken\n\nx := [1,\n",
    );
    let store = server.app.as_ref().unwrap().policies().clone();
    let err = tokio::task::spawn_blocking(move || store.reload())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("sub/broken.rego:"), "{err}");
    assert_eq!(revision_and_allow(&server).await.0, first);

    // Unchanged files are the same revision: reloading is a no-op.
    std::fs::remove_file(server.policies.path().join("sub/broken.rego")).unwrap();
    let store = server.app.as_ref().unwrap().policies().clone();
    let again = tokio::task::spawn_blocking(move || store.reload())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*again, first);
    server.stop().await;
}

#[tokio::test]
async fn calls_keep_succeeding_across_reloads() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| c.watch_policies = true).await;
    let client = server.client().await;
    let caller = tokio::spawn(async move {
        let mut client = client;
        let mut revisions = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let decision = client
                .check(request("read"))
                .await
                .expect("no call fails during reload")
                .into_inner();
            revisions.insert(decision.decision.unwrap().policy_revision);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        revisions
    });
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        write_policy(
            server.policies.path(),
            "p.rego",
            &format!("{ECHO_POLICY}\n# edit {i}\n"),
        );
    }
    let revisions = caller.await.unwrap();
    assert!(revisions.len() >= 2, "reloads were observed: {revisions:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_opa_bundle_serves_and_reloads_when_replaced() {
    let server = Server::start_with(&[], |c| {
        let bundle = c.policies.join("bundle.tar.gz");
        write_bundle(
            &bundle,
            &[
                (".manifest", r#"{"revision": "1"}"#),
                ("stepgate/p.rego", ECHO_POLICY),
            ],
        );
        c.policies = bundle;
        c.watch_policies = true;
    })
    .await;
    let (first, allow) = revision_and_allow(&server).await;
    assert!(allow);

    let bundle = server.policies.path().join("bundle.tar.gz");
    write_bundle(&bundle, &[("stepgate/p.rego", DENY_ALL)]);
    let (second, allow) = next_revision(&server, &first).await;
    assert!(!allow);

    // A bundle that does not compile is rejected; the previous revision keeps serving.
    let store = server.app.as_ref().unwrap().policies().clone();
    rejected_after(&store, || {
        write_bundle(
            &bundle,
            &[("stepgate/p.rego", "package stepgate\ndecision := {\n")],
        );
    })
    .await;
    assert_eq!(revision_and_allow(&server).await, (second, false));
    server.stop().await;
}
