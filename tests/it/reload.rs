//! Live reload: a good set becomes the new revision without dropping calls; a bad set is
//! rejected and the previous revision keeps serving.

use std::{path::Path, time::Duration};

use stepgate::policy::{PolicySource, PolicyStore, ReloadCounts, SourceLimits};

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

/// The revision the files under `dir` make.
fn revision_on_disk(dir: &Path) -> String {
    PolicySource::read(dir, &SourceLimits::default())
        .expect("the set on disk reads")
        .revision
        .to_string()
}

/// The revision the store serves.
fn serving(store: &PolicyStore) -> Option<String> {
    store
        .current()
        .as_ref()
        .map(|set| set.revision().to_string())
}

#[tokio::test]
async fn calls_keep_succeeding_across_reloads() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| c.watch_policies = true).await;
    // A caller that never pauses, reporting each revision it is answered by.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut client = server.client().await;
    let caller = tokio::spawn(async move {
        let mut last = String::new();
        let mut calls = 0u64;
        while !*stopped.borrow() {
            let decision = client
                .check(request("read"))
                .await
                .expect("no call fails during reload")
                .into_inner()
                .decision
                .unwrap();
            calls += 1;
            if decision.policy_revision != last {
                last = decision.policy_revision;
                let _ = seen_tx.send(last.clone());
            }
        }
        calls
    });
    let first = seen.recv().await.expect("the first answer");
    let mut revisions = vec![first];
    for i in 0..3 {
        write_policy(
            server.policies.path(),
            "p.rego",
            &format!("{ECHO_POLICY}\n# edit {i}\n"),
        );
        let expected = revision_on_disk(server.policies.path());
        // Each edit is awaited until the caller is answered by it, so the three are three
        // reloads under calls, whatever the machine's speed.
        let arrived = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(revision) = seen.recv().await {
                if revision == expected {
                    return;
                }
            }
        })
        .await;
        assert!(arrived.is_ok(), "edit {i} never answered a call");
        revisions.push(expected);
    }
    stop.send(true).unwrap();
    let calls = caller.await.unwrap();
    revisions.dedup();
    assert_eq!(revisions.len(), 4, "{revisions:?}");
    assert!(calls >= 4, "{calls} calls");
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_writes_is_one_reload_of_the_last() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| c.watch_policies = true).await;
    let dir = server.policies.path();
    let store = server.app().policies().clone();
    let before = store.reload_counts();
    // Five writes 20 ms apart, an editor's or a ConfigMap's burst: each lands inside the
    // quiet window (200 ms) the previous one opened, and the runtime is free between
    // them, so without the debounce each would be a reload of its own. (The pause paces
    // the stimulus; nothing here waits for an event by sleeping.)
    for i in 0..5 {
        write_policy(dir, "p.rego", &format!("{ECHO_POLICY}\n# burst {i}\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = revision_on_disk(dir);
    assert!(
        eventually(Duration::from_secs(10), async || store
            .reload_counts()
            .accepted
            > before.accepted)
        .await,
        "the burst never reloaded"
    );
    // The first reload after the burst is its only one, and it saw the burst's end: a
    // reload per event, or one started mid-burst, shows here as a second count or an
    // intermediate revision.
    assert_eq!(store.reload_counts().accepted, before.accepted + 1);
    assert_eq!(serving(&store).as_deref(), Some(last.as_str()));

    // A later write is a reload of its own, and the burst left nothing pending: the
    // count is exactly one more once the new revision serves.
    write_policy(dir, "p.rego", DENY_ALL);
    let sentinel = revision_on_disk(dir);
    assert!(
        eventually(Duration::from_secs(10), async || serving(&store).as_deref()
            == Some(sentinel.as_str()))
        .await,
        "the later write never reloaded"
    );
    assert_eq!(
        store.reload_counts(),
        ReloadCounts {
            accepted: before.accepted + 2,
            rejected: before.rejected,
        }
    );
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
