//! The `stepgate` binary as an operator runs it: startup failures, signals, CLI tools.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use stepgate::proto::v1::decision_service_client::DecisionServiceClient;

use super::support::{
    ECHO_POLICY, decide, eventually, policy_dir, serving_channel, write_bundle, write_policy,
};

const BIN: &str = env!("CARGO_BIN_EXE_stepgate");

fn stepgate(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// `stepgate eval --policies POLICIES --input INPUT`, which must succeed: its decision.
fn eval(policies: &Path, input: &Path) -> serde_json::Value {
    let out = stepgate(&[
        "eval",
        "--policies",
        policies.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn startup_with_a_bad_policy_set_exits_non_zero_naming_file_and_line() {
    let dir = policy_dir(&[
        ("ok.rego", ECHO_POLICY),
        ("bad.rego", "package bad\n\nx := [1,\n"),
    ]);
    let out = stepgate(&[
        "serve",
        "--policies",
        dir.path().to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--state-dir-unused-check",
    ]);
    // Unknown flags are usage errors (clap exits 2).
    assert_eq!(out.status.code(), Some(2));

    let out = stepgate(&[
        "serve",
        "--policies",
        dir.path().to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "",
        "--ephemeral",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.rego:"), "{stderr}");
}

/// A missing policy directory is refused before any listener opens, and the log written
/// to a file (not a terminal) carries no colour escapes.
#[test]
fn a_missing_policy_directory_is_refused_before_listening_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("policies");
    let out = Command::new(BIN)
        .args(["serve", "--policies", missing.to_str().unwrap()])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--ephemeral")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no such directory or bundle (set --policies)"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour escapes in a file: {stderr:?}"
    );
}

/// `stepgate test policies/ -v | head`: a reader that goes away ends the command as
/// SIGPIPE would (141), without a panic.
#[test]
fn a_closed_stdout_ends_the_tools_quietly() {
    let mut child = Command::new(BIN)
        .args(["test", "policies", "-v"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn configuration_errors_exit_64_listing_every_problem() {
    let out = stepgate(&["serve", "--grpc-addr", "nowhere", "--max-batch", "0"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("grpc_addr") && stderr.contains("max_batch"),
        "{stderr}"
    );
}

#[test]
fn environment_variables_configure_serve() {
    let out = Command::new(BIN)
        .args(["serve"])
        .env("STEPGATE_GRPC_ADDR", "bad-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"bad-address\""));
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains_and_exits_zero() {
    let policies = policy_dir(&[("p.rego", ECHO_POLICY)]);
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("sg.sock");
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "",
            "--http-addr",
            "",
            "--watch-policies",
            "false",
            "--ephemeral",
        ])
        .arg("--policies")
        .arg(policies.path())
        .arg("--grpc-uds")
        .arg(&socket)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let channel = serving_channel(&socket, Duration::from_secs(20))
        .await
        .expect("the server never reported SERVING");

    let mut client = DecisionServiceClient::new(channel);
    let first = decide(&mut client, "read").await;
    assert!(first.allow);

    write_policy(
        policies.path(),
        "p.rego",
        "package stepgate\ndecision := {\"allow\": false}\n",
    );
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let reloaded = eventually(Duration::from_secs(10), async || {
        let decision = decide(&mut client, "read").await;
        decision.policy_revision != first.policy_revision && !decision.allow
    })
    .await;
    assert!(reloaded, "SIGHUP did not reload");

    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

/// A stop sent as soon as stepgate says it is listening (while it is still loading its
/// policies) is caught and drained like any other, not the signal's default action.
#[tokio::test]
async fn sigterm_right_after_listening_still_drains_and_exits_zero() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", ""])
        .args([
            "--watch-policies",
            "false",
            "--ephemeral",
            "--policies",
            "policies",
        ])
        .env("STEPGATE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("gRPC listening on TCP") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(listening, Ok(true), "stepgate never said it was listening");
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Keep reading, so a full pipe cannot stall its shutdown logging.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    drain.abort();
    assert!(status.success(), "{status:?}");
}

#[test]
fn test_subcommand_runs_test_rules_and_fails_on_any_failure() {
    let dir = policy_dir(&[
        ("p.rego", "package p\nallow if input.ok\n"),
        (
            "p_test.rego",
            "package p_test\nimport data.p\ntest_allow if p.allow with input as {\"ok\": true}\ntest_deny if not p.allow with input as {}\n",
        ),
    ]);
    let out = stepgate(&["test", dir.path().to_str().unwrap(), "-v"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("PASS data.p_test.test_allow (p_test.rego:3)"),
        "{stdout}"
    );
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");

    write_policy(
        dir.path(),
        "q_test.rego",
        "package q_test\ntest_broken if 1 == 2\n",
    );
    let out = stepgate(&["test", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL data.q_test.test_broken (q_test.rego:2)"),
        "{stdout}"
    );
    assert!(stdout.contains("2 passed, 1 failed"), "{stdout}");
}

#[test]
fn cli_tools_read_opa_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.tgz");
    write_bundle(
        &bundle,
        &[
            (".manifest", r#"{"revision": "7", "roots": ["p"]}"#),
            ("p/p.rego", "package p\nallow if input.ok\n"),
            ("p/data.json", r#"{"limit": 2}"#),
            (
                "p/p_test.rego",
                "package p_test\nimport data.p\ntest_allow if p.allow with input as {\"ok\": true}\ntest_data if data.p.limit == 2\n",
            ),
        ],
    );
    let out = stepgate(&["test", bundle.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");

    write_bundle(
        &bundle,
        &[
            (".manifest", r#"{"rego_version": 0}"#),
            ("p.rego", "package p"),
        ],
    );
    let out = stepgate(&["check", bundle.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bundle.tgz: .manifest: rego_version 0"),
        "{stderr}"
    );
}

#[test]
fn check_subcommand_reports_locations_and_engines() {
    let dir = policy_dir(&[("p.rego", ECHO_POLICY)]);
    let out = stepgate(&["check", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("entrypoint data.stepgate.decision: rvm"),
        "{stdout}"
    );

    write_policy(
        dir.path(),
        "net.rego",
        "package net\n\nr := http.send({})\n",
    );
    let out = stepgate(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("net.rego:3: http.send"));
}

#[test]
fn eval_subcommand_prints_the_decision_as_json() {
    let dir = policy_dir(&[("p.rego", ECHO_POLICY)]);
    let input = dir.path().join("input.json.txt");
    std::fs::write(&input, r#"{"action": "read", "step": "use", "caller": {"id": "cli", "via": "tcp"}, "subject": {"id": "s"}}"#).unwrap();
    let decision = eval(dir.path(), &input);
    assert_eq!(decision["allow"], true);
    assert_eq!(decision["reasons"][0], "cli");
    assert_eq!(decision["obligations"]["max_ttl_seconds"], 900);
    assert!(
        decision["policy_revision"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    // The server's clock fills context.time when the input has none.
    assert!(decision["reasons"][2].as_str().unwrap().ends_with('Z'));
}

/// `eval --input -` reads standard input; `--fail` exits 1 on a deny and
/// `--fail-defined` on an allow, as `opa eval` does on undefined and defined results;
/// without them a decision of either kind exits 0.
#[test]
fn eval_reads_stdin_and_fails_as_asked() {
    use std::io::Write as _;
    let dir = policy_dir(&[("p.rego", ECHO_POLICY)]);
    let run = |action: &str, flag: Option<&str>| {
        let mut child = Command::new(BIN)
            .args(["eval", "--policies", dir.path().to_str().unwrap()])
            .args(["--input", "-"])
            .args(flag)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let input = format!(
            r#"{{"action": "{action}", "step": "use", "caller": {{"id": "cli", "via": "tcp"}}, "subject": {{"id": "s"}}}}"#
        );
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let decision: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (decision["allow"].as_bool().unwrap(), out.status.code())
    };
    let cases = [
        ("read", None, (true, Some(0))),
        ("write", None, (false, Some(0))),
        ("read", Some("--fail"), (true, Some(0))),
        ("write", Some("--fail"), (false, Some(1))),
        ("read", Some("--fail-defined"), (true, Some(1))),
        ("write", Some("--fail-defined"), (false, Some(0))),
    ];
    for (action, flag, expected) in cases {
        assert_eq!(run(action, flag), expected, "{action} {flag:?}");
    }
}

/// `--version` names the commit and the regorus engine; `completions SHELL` prints a
/// script that knows every subcommand.
#[test]
fn version_and_completions() {
    let out = stepgate(&["--version"]);
    let version = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    let lock = std::fs::read_to_string("Cargo.lock").unwrap();
    let regorus = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"regorus\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .unwrap()
        .trim_matches('"');
    assert!(
        version.starts_with(&format!("stepgate {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(
        version
            .trim_end()
            .ends_with(&format!(", regorus {regorus})")),
        "{version}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = stepgate(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["serve", "eval", "check", "test", "audit", "policies"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    assert_eq!(stepgate(&["completions", "cmd.exe"]).status.code(), Some(2));
}

/// `benches/load.sh` can run `benches/policies/minimal` or `benches/policies/constant` in
/// place of the example set (to tell evaluation's cost from the rest of the path): the
/// minimal set must decide the harness's requests as the example set does, allowing a
/// live grant and refusing a lapsed one; the constant one allows with the same shape.
#[test]
fn the_bench_policies_decide_the_bench_input() {
    let minimal = Path::new("benches/policies/minimal");
    let issue = Path::new("benches/inputs/issue.json");
    let constant = eval("benches/policies/constant".as_ref(), issue);
    assert_eq!(constant["allow"], true, "{constant}");
    assert_eq!(constant["obligations"]["max_ttl_seconds"], 3600);

    let live = eval(minimal, issue);
    assert_eq!(live["allow"], true, "{live}");
    // 55 minutes left on the grant, under the one-hour cap.
    assert_eq!(live["obligations"]["max_ttl_seconds"], 3300);

    let mut lapsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(issue).unwrap()).unwrap();
    lapsed["context"]["time"] = "2026-11-23T11:00:00Z".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lapsed.json");
    std::fs::write(&path, lapsed.to_string()).unwrap();
    let refused = eval(minimal, &path);
    assert_eq!(refused["allow"], false, "{refused}");
}
