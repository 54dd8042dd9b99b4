//! Hostile policies against the real `stepgate` binary (a child process, so its memory
//! and threads can be read from `/proc` and its process-wide heap limit is its own):
//! evaluation is bounded in time and memory, cannot starve other calls, and a set whose
//! warm-up or tests run away is refused, quickly, with its work stopped.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use stepgate::proto::v1::{Decision, decision_service_client::DecisionServiceClient};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

use super::support::{
    eventually, http_request, policy_dir, request, serving_channel, write_policy,
};

/// The binary under test; `STEPGATE_BIN` points the `measure_` run at another build.
fn bin() -> String {
    std::env::var("STEPGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_stepgate").into())
}

/// The issue's policy (`numbers.range(1, 1e8)`: one builtin call that materialises
/// gigabytes), a per-evaluation memory hog (2,000,000 values, ~48 MB, then more), a
/// loop of many small steps collecting nothing, that only the time limit stops (with the
/// instruction limit raised), and a cheap allow.
const HOSTILE: &str = r#"package stepgate

huge := count([x | some x in numbers.range(1, 100000000)])

big := count(concat(",", [sprintf("%d-padding", [x]) | some x in numbers.range(1, 2000000)]))

slow := count([1 | some x in numbers.range(1, 20000); some y in numbers.range(1, 20000); x * y == -1])

decision := {"allow": huge > 0} if input.action == "huge"

decision := {"allow": big > 0} if input.action == "big"

decision := {"allow": slow > 0} if input.action == "slow"

decision := {"allow": true} if input.action == "read"
"#;

/// Test rules that run away: one builtin call asking for gigabytes (only the heap limit
/// stops it), and a loop of small steps collecting nothing (only a time limit stops it).
const RUNAWAY_TESTS: &str = "package stepgate_test

test_huge if count([x | some x in numbers.range(1, 100000000)]) > 0

test_spin if count([1 | some x in numbers.range(1, 20000); some y in numbers.range(1, 20000); x * y == -1]) > 0
";

/// A `stepgate serve` child on a Unix socket and an HTTP port of its choosing.
struct Child {
    process: tokio::process::Child,
    pid: u32,
    http: std::net::SocketAddr,
    channel: Channel,
    policies: TempDir,
    _sockets: TempDir,
}

impl Child {
    /// Starts `stepgate serve` on `policies` with `flags`, once it reports SERVING.
    async fn start(policies: TempDir, flags: &[&str]) -> Self {
        let sockets = tempfile::tempdir().unwrap();
        let socket = sockets.path().join("sg.sock");
        let mut process = spawn(policies.path(), &socket, flags);
        let pid = process.id().unwrap();
        let lines = log_lines(&mut process);
        let mut http = None;
        let listening = eventually(Duration::from_secs(30), async || {
            http = lines.lock().unwrap().iter().find_map(|line| {
                let log: serde_json::Value = serde_json::from_str(line).ok()?;
                let fields = &log["fields"];
                (fields["message"].as_str()?.starts_with("HTTP listening"))
                    .then(|| fields["addr"].as_str()?.parse().ok())?
            });
            http.is_some()
        })
        .await;
        assert!(
            listening,
            "no HTTP listener logged: {:?}",
            lines.lock().unwrap()
        );
        let channel = serving_channel(&socket, Duration::from_secs(30)).await;
        assert!(
            channel.is_some(),
            "never SERVING: {:?}",
            lines.lock().unwrap()
        );
        Self {
            process,
            pid,
            http: http.unwrap(),
            channel: channel.unwrap(),
            policies,
            _sockets: sockets,
        }
    }

    /// A `Check` of `action`, with how long it took.
    async fn check(&self, action: &str) -> (Decision, Duration) {
        let started = Instant::now();
        let decision = DecisionServiceClient::new(self.channel.clone())
            .check(request(action))
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap();
        (decision, started.elapsed())
    }

    /// Asserts that a `Check` of `action` is denied within `within`, for a reason that
    /// begins `evaluation limit exceeded: <limit>`.
    async fn assert_denied(&self, action: &str, limit: &str, within: Duration) {
        let (decision, took) = self.check(action).await;
        assert!(!decision.allow);
        assert!(
            decision.reasons[0].starts_with(&format!("evaluation limit exceeded: {limit}")),
            "{action}: {:?}",
            decision.reasons
        );
        assert!(took < within, "{action}: denied after {took:?}");
    }

    /// `GET /health`, with how long it took.
    async fn health(&self) -> Duration {
        let started = Instant::now();
        let reply = http_request(self.http, "GET", "/health", &[], "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        started.elapsed()
    }

    /// A line of `/proc/<pid>/status`, e.g. `VmHWM`, in kB.
    fn status_kb(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    }

    /// Threads of the process whose name starts with `prefix`.
    fn threads_named(&self, prefix: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .filter(|name| name.starts_with(prefix))
                    .count()
            })
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        let _ = self.process.kill().await;
    }
}

fn spawn(policies: &Path, socket: &PathBuf, flags: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(bin())
        .args(["serve", "--log-format", "json", "--grpc-addr", ""])
        .args(["--http-addr", "127.0.0.1:0", "--ephemeral"])
        .arg("--policies")
        .arg(policies)
        .arg("--grpc-uds")
        .arg(socket)
        .args(flags)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Collects the child's stderr lines as they come.
fn log_lines(process: &mut tokio::process::Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut reader = BufReader::new(process.stderr.take().unwrap()).lines();
    let sink = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A server on [`HOSTILE`] with a 100 ms time limit, the instruction limit out of the
/// way (so `slow` meets the time limit) and two workers.
async fn start_hostile() -> Arc<Child> {
    let flags = [
        "--eval-timeout",
        "100ms",
        "--eval-max-instructions",
        "100000000000",
        "--workers",
        "2",
    ];
    Arc::new(Child::start(policy_dir(&[("p.rego", HOSTILE)]), &flags).await)
}

/// What `samples` `/health` calls and unrelated `Check`s (`read`) met while one client
/// per entry of `hostile` kept checking that action: their times, and each hostile
/// Check's decision and time.
struct UnderLoad {
    health: Vec<Duration>,
    unrelated: Vec<(Decision, Duration)>,
    hostile: Vec<(Decision, Duration)>,
}

async fn under_load(server: &Arc<Child>, hostile: &[&'static str], samples: usize) -> UnderLoad {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = hostile
        .iter()
        .map(|&action| {
            let (server, stop) = (server.clone(), stop.clone());
            tokio::spawn(async move {
                let mut checks = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    checks.push(server.check(action).await);
                }
                checks
            })
        })
        .collect();
    let mut load = UnderLoad {
        health: Vec::new(),
        unrelated: Vec::new(),
        hostile: Vec::new(),
    };
    for _ in 0..samples {
        load.health.push(server.health().await);
        load.unrelated.push(server.check("read").await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        load.hostile.extend(client.await.unwrap());
    }
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_past_its_limits_is_denied_at_once_naming_the_limit_and_memory_stays_bounded() {
    let server = start_hostile().await;

    // One builtin call that would materialise 1e8 values (GBs, seconds): the process
    // heap limit stops it inside the call.
    server
        .assert_denied("huge", "memory: the process heap", Duration::from_secs(2))
        .await;
    // Growing step by step: the per-evaluation budget stops it.
    server
        .assert_denied(
            "big",
            "memory: the evaluation allocated",
            Duration::from_secs(5),
        )
        .await;
    // Many small steps: the time limit stops it, within a small multiple of 100 ms.
    server
        .assert_denied(
            "slow",
            "time: ran past its limit of 100ms",
            Duration::from_secs(2),
        )
        .await;

    // The process never held more than the heap limit (192 MiB by default) and its
    // code and stacks; before the limits it reached 4.3-4.6 GB.
    let peak_kb = server.status_kb("VmHWM");
    assert!(peak_kb < 400 * 1024, "peak RSS {peak_kb} kB");

    // Still serving, and the hits are counted.
    assert!(server.check("read").await.0.allow);
    let metrics = http_request(server.http, "GET", "/metrics", &[], "")
        .await
        .body;
    for limit in ["memory", "time"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!(
                "stepgate_eval_limit_exceeded_total{{limit=\"{limit}\"}}"
            )) && !l.ends_with(" 0")),
            "{limit}: {metrics}"
        );
    }
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn hostile_checks_do_not_stall_health_or_an_unrelated_check() {
    let server = start_hostile().await;
    let load = under_load(&server, &["huge", "slow", "huge", "slow"], 10).await;
    assert!(load.hostile.iter().all(|(decision, _)| !decision.allow));
    for (decision, _) in &load.unrelated {
        assert!(decision.allow, "{:?}", decision.reasons);
    }
    let worst_health = *load.health.iter().max().unwrap();
    let worst_check = load.unrelated.iter().map(|(_, took)| *took).max().unwrap();
    let metrics = http_request(server.http, "GET", "/metrics", &[], "")
        .await
        .body;
    assert!(
        !metrics.contains("stepgate_eval_admission_waits_total 0"),
        "{metrics}"
    );
    // Before the limits: 2.2 s for /health and 4.5 s for the Check (release build).
    assert!(
        worst_health < Duration::from_secs(1),
        "/health took {worst_health:?}"
    );
    assert!(
        worst_check < Duration::from_secs(2),
        "the Check took {worst_check:?}"
    );
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn a_reload_whose_tests_or_warm_up_run_away_is_refused_and_stops_working() {
    let server = Child::start(
        policy_dir(&[(
            "p.rego",
            "package stepgate\ndecision := {\"allow\": true}\n",
        )]),
        &[
            "--watch-policies",
            "false",
            "--compile-timeout",
            "3s",
            "--policy-test-timeout",
            "300ms",
        ],
    )
    .await;
    // The warm-up evaluates the decision on an empty input: `huge` would materialise
    // 1e8 values; the test spins until a time limit stops it.
    write_policy(
        server.policies.path(),
        "p.rego",
        "package stepgate\ndecision := {\"allow\": count([x | some x in numbers.range(1, 100000000)]) > 0}\n",
    );
    write_policy(server.policies.path(), "p_test.rego", RUNAWAY_TESTS);
    let reloads = || async {
        http_request(server.http, "GET", "/metrics", &[], "")
            .await
            .body
            .contains("stepgate_policy_reloads_total{result=\"rejected\"} 1")
    };
    let started = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &server.pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        eventually(Duration::from_secs(10), reloads).await,
        "the reload was not rejected"
    );
    let rejected_after = started.elapsed();
    assert!(
        rejected_after < Duration::from_secs(2),
        "rejected after {rejected_after:?}"
    );
    // The thread that compiled and tested the set is gone: nothing keeps spinning
    // (before, it went on for over 80 s at up to 4.6 GB).
    assert!(
        eventually(Duration::from_secs(3), async || server
            .threads_named("stepgate-policy")
            == 0)
        .await,
        "the compile thread is still running"
    );
    assert!(server.status_kb("VmHWM") < 400 * 1024);
    // The previous revision still serves.
    assert!(server.check("read").await.0.allow);
    server.stop().await;
}

#[tokio::test]
async fn startup_with_a_runaway_test_exits_non_zero_quickly_naming_it() {
    let policies = policy_dir(&[
        (
            "p.rego",
            "package stepgate\ndecision := {\"allow\": true}\n",
        ),
        ("p_test.rego", RUNAWAY_TESTS),
    ]);
    let sockets = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        spawn(
            policies.path(),
            &sockets.path().join("sg.sock"),
            &["--policy-test-timeout", "300ms"],
        )
        .wait_with_output(),
    )
    .await
    .expect("still running after 30 s")
    .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("data.stepgate_test.test_huge (p_test.rego:3) errored: evaluation limit exceeded: memory")
            && stderr.contains("data.stepgate_test.test_spin (p_test.rego:5) errored: evaluation limit exceeded: time"),
        "{stderr}"
    );
    // Before: refused after the 10 s compile timeout, its thread still spinning.
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
}

/// The figures of the issue, for a before/after comparison (flags both builds have):
/// `STEPGATE_BIN=target/release/stepgate cargo test --test integration
/// eval_bounds::measure -- --ignored --nocapture` (`HOSTILE_CHECKS`, default 4, of
/// `HOSTILE_ACTION`, default `huge`; `slow` is the loop only the time limit stops).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore = "a measurement, run by hand"]
async fn measure_hostile_policy() {
    let server = start_hostile().await;
    let quiet_health = server.health().await;
    let quiet_check = server.check("read").await.1;
    let (decision, took) = server.check("huge").await;
    println!(
        "one hostile Check: {took:?}, allow {}, {:?}; peak RSS {} MB",
        decision.allow,
        decision.reasons,
        server.status_kb("VmHWM") / 1024
    );
    let hostile: usize = std::env::var("HOSTILE_CHECKS").map_or(4, |n| n.parse().unwrap());
    let action: &'static str = match std::env::var("HOSTILE_ACTION").as_deref() {
        Ok("slow") => "slow",
        _ => "huge",
    };
    let load = under_load(&server, &vec![action; hostile], 10).await;
    let mut health = load.health;
    let mut check: Vec<_> = load.unrelated.into_iter().map(|(_, took)| took).collect();
    let mut denials: Vec<_> = load.hostile.into_iter().map(|(_, took)| took).collect();
    health.sort();
    check.sort();
    denials.sort();
    println!(
        "quiet: /health {quiet_health:?}, Check {quiet_check:?}; with {hostile} hostile {action} Checks: \
         /health median {:?} max {:?}, unrelated Check median {:?} max {:?}; \
         hostile Checks: {} taking median {:?} max {:?}; peak RSS {} MB",
        health[health.len() / 2],
        health[health.len() - 1],
        check[check.len() / 2],
        check[check.len() - 1],
        denials.len(),
        denials[denials.len() / 2],
        denials[denials.len() - 1],
        server.status_kb("VmHWM") / 1024
    );
    Arc::into_inner(server).unwrap().stop().await;
}

/// Server CPU per `Check` on the example set, for a before/after comparison of the hot
/// path (the counting allocator, the memory checks, the evaluation gate):
/// `STEPGATE_BIN=<binary> CHECKS=40000 cargo test --test integration
/// eval_bounds::measure_server -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore = "a measurement, run by hand"]
async fn measure_server_cpu_per_check() {
    let policies = tempfile::tempdir().unwrap();
    copy_dir(Path::new("policies"), policies.path());
    let server = Arc::new(Child::start(policies, &["--workers", "2"]).await);
    let checks: usize = std::env::var("CHECKS").map_or(40_000, |n| n.parse().unwrap());
    let clients = 8;
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid)).unwrap();
        let fields: Vec<u64> = stat
            .rsplit_once(") ")
            .unwrap()
            .1
            .split(' ')
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1]
    };
    let before = cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move {
                for _ in 0..checks / clients {
                    server.check("read").await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let ticks = cpu() - before;
    println!(
        "{checks} Checks in {:?}: server CPU {} ms, {:.1} µs per Check",
        started.elapsed(),
        ticks * 10,
        (ticks * 10_000) as f64 / checks as f64
    );
    Arc::into_inner(server).unwrap().stop().await;
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
