//! Scale benchmarks of the grant store (a plain `main` printing tables, no criterion):
//!
//! 1. **rss**: resident memory per ACTIVE grant at `GRANT_SCALE_RSS_N` (default
//!    1,000,000) grants in an ephemeral store, read from `/proc/self/statm` before and
//!    after, next to the heap bytes the program asked for (counted by the global
//!    allocator regorus installs). Each variant runs in a child process of
//!    this binary so freed memory of one does not hide the next. The headline variant is
//!    grants shaped like `benches/inputs/issue.json` (attributes on subject, resource
//!    and workflow; 10,000 subjects, 1,000 resources, one workflow per grant), created
//!    PENDING and approved once, as the approval path leaves them.
//! 2. **sweep**: time of one `store.sweep()` expiring `GRANT_SCALE_SWEEP_N` (default
//!    100,000) due ACTIVE grants, in memory and journaled with fsync (the journal is
//!    filled with fsync off, then reopened with fsync on, so the setup does not take
//!    100,000 fsyncs), without concurrent load; `GRANT_SCALE_ROUNDS` (default 3) fresh
//!    stores each.
//! 3. **p99**: per-call latency of `GrantSteps::revalidate` on 1 and 2 threads in a
//!    tight loop over `GRANT_SCALE_ACTIVE` (default 1,000) ACTIVE grants: in a window
//!    without a sweep, and for every call overlapping a sweep of `GRANT_SCALE_SWEEP_N`
//!    due grants. The same for a `Check` of step `use` naming the grant: without a
//!    sweep it is the yardstick for "`Revalidate` costs no more than `Check`"; during a
//!    sweep it takes no grant writer lock, so it separates lock waits from CPU sharing.
//!
//! Run: `cargo bench --bench grant_scale`. Quick run: `GRANT_SCALE_RSS_N=100000
//! GRANT_SCALE_SWEEP_N=20000 GRANT_SCALE_ROUNDS=1 cargo bench --bench grant_scale`.
//! `GRANT_SCALE_SECTIONS=rss,sweep,p99` picks sections, `GRANT_SCALE_MODES=memory,journal`
//! the stores, `GRANT_SCALE_THREADS=1,2` the calling thread counts, `GRANT_SCALE_ACTIVE`
//! the number of grants they call on, `GRANT_SCALE_WINDOW_MS` (default 300) the length of
//! the window without a sweep.

mod support;

use std::{
    io::Write as _,
    process::Command,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};
use stepgate::telemetry::ParentContext;

use chrono::{DateTime, TimeDelta, Utc};
use stepgate::{
    clock::ManualClock,
    grants::{Approval, Grant, GrantSpec, JournalOptions, MemoryGrantStore, SweepReport},
    policy::PolicyStore,
    proto::v1,
};
use support::{Fixture, Shape, check_use, direct_grant, env_usize, issuer, revalidate, t0};
use uuid::Uuid;

const PAGE_SIZE: u64 = 4096;

/// Bytes requested from the allocator and still live, process-wide. The global
/// allocator is the one regorus installs (`regorus-mimalloc`, for its evaluation memory
/// limits), which counts them; differences of two readings are what the data structures
/// asked for, so RSS can be set against it (the rest is allocator overhead and
/// fragmentation).
fn live_heap() -> i64 {
    i64::try_from(regorus_mimalloc::global_allocation_stats_snapshot().allocated)
        .unwrap_or(i64::MAX)
}

/// The headline shape: `issue.json`-like grants, many subjects and resources, one
/// workflow (ticket) per grant.
const REALISTIC: Shape = Shape {
    attributes: true,
    subjects: 10_000,
    resources: 1_000,
    workflows: usize::MAX,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        rss_child(args.get(i + 1).map_or("", String::as_str));
        return;
    }
    let sections = std::env::var("GRANT_SCALE_SECTIONS").unwrap_or_else(|_| "rss,sweep,p99".into());
    let sections: Vec<&str> = sections.split(',').map(str::trim).collect();
    println!(
        "grant_scale: {} cpus, load average {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    if sections.contains(&"rss") {
        rss();
    }
    let policies = support::policies();
    if sections.contains(&"sweep") {
        sweep_alone(&policies);
    }
    if sections.contains(&"p99") {
        p99(&policies);
    }
    println!("\nload average at the end: {}", loadavg());
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Resident set size in bytes (`/proc/self/statm`, second field, in pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    pages * PAGE_SIZE
}

// ---- 1. RSS per grant -------------------------------------------------------------

const RSS_VARIANTS: &[(&str, &str)] = &[
    (
        "approved",
        "issue.json-like, PENDING then approved once (headline)",
    ),
    (
        "created_active",
        "issue.json-like, ACTIVE at once (no approval)",
    ),
    (
        "no_attributes",
        "approved, no attributes on subject/resource/workflow",
    ),
    (
        "shared_workflow",
        "approved, 1,000 workflows instead of one per grant",
    ),
    (
        "grants_only",
        "approved grants in a Vec<Arc<Grant>>, no store",
    ),
];

fn rss() {
    let n = env_usize("GRANT_SCALE_RSS_N", 1_000_000);
    println!("\n## RSS per active grant at {n} grants (ephemeral store, one child process each)\n");
    println!(
        "size_of: Grant {} B, GrantSpec {} B, Approval {} B, Subject {} B, Resource {} B, \
         Workflow {} B, prost Struct {} B, prost Value {} B",
        size_of::<Grant>(),
        size_of::<GrantSpec>(),
        size_of::<Approval>(),
        size_of::<v1::Subject>(),
        size_of::<v1::Resource>(),
        size_of::<v1::Workflow>(),
        size_of::<prost_types::Struct>(),
        size_of::<prost_types::Value>(),
    );
    println!();
    println!(
        "| {:<16} | {:>9} | {:>10} | {:>10} | {:>11} | {:>12} | {:>6} | what |",
        "variant", "grants", "RSS before", "RSS after", "RSS B/grant", "heap B/grant", "secs",
    );
    println!(
        "|{:-<18}|{:->11}|{:->12}|{:->12}|{:->13}|{:->14}|{:->8}|{:-<6}|",
        "", "", "", "", "", "", "", ""
    );
    let exe = std::env::current_exe().expect("own path");
    for (variant, what) in RSS_VARIANTS {
        let out = Command::new(&exe)
            .args(["--rss-child", variant])
            .output()
            .expect("child runs");
        if !out.status.success() {
            println!(
                "| {variant:<16} | child failed: {} |",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            continue;
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = line.split_whitespace().collect();
        let (before, after, grants, secs, heap): (u64, u64, u64, f64, i64) = (
            f[0].parse().expect("before"),
            f[1].parse().expect("after"),
            f[2].parse().expect("grants"),
            f[3].parse().expect("secs"),
            f[4].parse().expect("heap"),
        );
        println!(
            "| {variant:<16} | {grants:>9} | {:>6} MiB | {:>6} MiB | {:>11.0} | {:>12.0} | {secs:>6.2} | {what} |",
            before >> 20,
            after >> 20,
            (after - before) as f64 / grants as f64,
            heap as f64 / grants as f64,
        );
    }
    let out = Command::new(&exe)
        .args(["--rss-child", "breakdown"])
        .output()
        .expect("child runs");
    print!("\n{}", String::from_utf8_lossy(&out.stdout));
}

/// Heap bytes requested by each part of one approved `issue.json`-like grant (printed by
/// a child process, where the allocator counts).
fn breakdown() {
    let now = t0();
    let revision: Arc<str> = "rev-0123456789abcdef".into();
    let measure = |f: &mut dyn FnMut()| {
        let before = live_heap();
        f();
        live_heap() - before
    };
    let mut parts: Vec<(&str, i64)> = Vec::new();
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    for (name, attributes) in [("with attributes", true), ("without", false)] {
        let shape = Shape {
            attributes,
            ..REALISTIC
        };
        parts.push((
            name,
            measure(&mut || keep.push(Box::new(support::subject(12_345, &shape)))),
        ));
        parts.push((
            "resource",
            measure(&mut || keep.push(Box::new(support::resource(12_345, &shape)))),
        ));
        parts.push((
            "workflow",
            measure(&mut || keep.push(Box::new(support::workflow(12_345, &shape)))),
        ));
    }
    let pending = |i: usize| direct_grant(i, &REALISTIC, 1, TimeDelta::hours(1), 0, &revision, now);
    // Warm the interners' tables (allocated once per process) with an unrelated grant.
    let mut warm = pending(0);
    let _ = warm
        .approve(bobs_approval(now, Uuid::now_v7()), now)
        .expect("approves");
    keep.push(Box::new(warm));
    let mut first = None;
    let whole = measure(&mut || first = Some(pending(12_345)));
    keep.push(Box::new(first));
    // Grant 12,345 + 10,000,000 has the same subject (of 10,000) and resource (of 1,000).
    let mut grant = None;
    let sharing = measure(&mut || grant = Some(pending(10_012_345)));
    let mut grant = grant.expect("built");
    let approval = measure(&mut || {
        let _ = grant
            .approve(bobs_approval(now, Uuid::now_v7()), now)
            .expect("approves");
    });
    println!(
        "heap requested by one approved grant (bytes): as protos, subject {} (without \
         attributes {}), resource {} ({}), workflow {} ({}); what a PENDING grant points \
         to (spec, encoded terms ({} B its own), trail) {} (the first of its subject and \
         resource: {}); the store holds it in an Arc<Grant> of {} B, plus index entries; \
         approving it (a shared slice of {} B approvals, approver and role interned, trail \
         growth) {}",
        parts[0].1,
        parts[3].1,
        parts[1].1,
        parts[4].1,
        parts[2].1,
        parts[5].1,
        grant.spec.terms.own_len(),
        sharing,
        whole,
        size_of::<Grant>() + 16,
        size_of::<Approval>(),
        approval,
    );
    std::hint::black_box((keep, grant));
}

/// Bob's approval, as the approval path records it.
fn bobs_approval(at: DateTime<Utc>, decision_id: Uuid) -> Approval {
    Approval {
        approver: "bob".into(),
        role: "asset_owner".into(),
        at,
        decision_id,
        comment: "ok, approved in CAB".into(),
    }
}

/// One RSS variant; prints `before after grants seconds heap_bytes`.
fn rss_child(variant: &str) {
    if variant == "breakdown" {
        breakdown();
        return;
    }
    let n = env_usize("GRANT_SCALE_RSS_N", 1_000_000);
    let clock = ManualClock::at(t0());
    let revision: Arc<str> = "rev-0123456789abcdef".into();
    let (shape, approved) = match variant {
        "approved" | "grants_only" => (REALISTIC, true),
        "created_active" => (REALISTIC, false),
        "no_attributes" => (
            Shape {
                attributes: false,
                ..REALISTIC
            },
            true,
        ),
        "shared_workflow" => (
            Shape {
                workflows: 1_000,
                ..REALISTIC
            },
            true,
        ),
        other => panic!("unknown RSS variant {other}"),
    };
    let store = MemoryGrantStore::ephemeral(Arc::new(clock));
    let mut kept: Vec<Arc<Grant>> = Vec::new();
    if variant == "grants_only" {
        kept.reserve_exact(n);
    }
    let now = t0();
    let approval = |decision_id| bobs_approval(now, decision_id);
    let before = rss_bytes();
    let heap_before = live_heap();
    let started = Instant::now();
    for i in 0..n {
        let required = u32::from(approved);
        let mut grant = direct_grant(i, &shape, required, TimeDelta::hours(1), 0, &revision, now);
        if variant == "grants_only" {
            let _ = grant
                .approve(approval(Uuid::now_v7()), now)
                .expect("approves");
            kept.push(Arc::new(grant));
            continue;
        }
        let id = store.create(grant).expect("created").id().to_string();
        if approved {
            let updated = store
                .approve(&id, &approval(Uuid::now_v7()))
                .expect("approves");
            debug_assert_eq!(updated.grant.state, stepgate::grants::GrantState::Active);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let heap = live_heap() - heap_before;
    let after = rss_bytes();
    if variant != "grants_only" {
        assert_eq!(store.stats().active, n as u64);
    }
    println!("{before} {after} {n} {secs} {heap}");
    std::io::stdout().flush().expect("flush");
    std::hint::black_box((&store, &kept));
}

// ---- 2./3. sweep and concurrent p99 -----------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Memory,
    Journal,
}

/// The stores `GRANT_SCALE_MODES` (`memory,journal`, the default) asks for.
fn modes() -> Vec<Mode> {
    let modes = std::env::var("GRANT_SCALE_MODES").unwrap_or_else(|_| "memory,journal".into());
    modes
        .split(',')
        .map(|m| match m.trim() {
            "memory" => Mode::Memory,
            "journal" => Mode::Journal,
            other => panic!("GRANT_SCALE_MODES: unknown store {other} (memory, journal)"),
        })
        .collect()
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Journal => "journal+fsync",
        }
    }
}

/// A store holding `sets` sets of `due` grants (set `k` expires at t0 + 1 + 2k s, so
/// each [`sweep_due`] expires exactly one set), and `active` grants requested and
/// approved through policy (ACTIVE for an hour). Journaled: filled with fsync off, then
/// reopened with the journal options `stepgate serve` uses (fsync and group commit on).
struct Setup {
    fx: Fixture,
    active: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

fn setup(policies: &Arc<PolicyStore>, mode: Mode, due: usize, sets: usize, active: usize) -> Setup {
    let dir = match mode {
        Mode::Memory => None,
        Mode::Journal => Some(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")),
    };
    let clock = ManualClock::at(t0());
    let fill = JournalOptions {
        fsync: false,
        ..JournalOptions::default()
    };
    let fx = Fixture::open(
        policies,
        support::store_options(dir.as_ref().map(|d| d.path()), fill),
        clock.clone(),
    );
    let revision: Arc<str> = "rev-0123456789abcdef".into();
    for set in 0..sets {
        let ttl = TimeDelta::seconds(1 + 2 * set as i64);
        for i in 0..due {
            let grant = direct_grant(i, &REALISTIC, 0, ttl, 0, &revision, t0());
            fx.store.create(grant).expect("created");
        }
    }
    let active: Vec<String> = (0..active)
        .map(|i| fx.active_grant(i, &REALISTIC))
        .collect();
    let fx = match &dir {
        None => fx,
        Some(dir) => {
            drop(fx);
            // What `stepgate serve` runs with: fsync, group commit.
            let served = stepgate::config::GrantsConfig::default().store.journal;
            let synced = support::store_options(Some(dir.path()), served);
            Fixture::open(policies, synced, clock)
        }
    };
    assert_eq!(fx.store.len(), sets * due + active.len());
    Setup {
        fx,
        active,
        _dir: dir,
    }
}

/// Moves the clock past the next set of due grants' expiry and sweeps them.
fn sweep_due(s: &Setup, due: usize) -> (SweepReport, Duration) {
    s.fx.clock.advance(TimeDelta::seconds(2));
    let started = Instant::now();
    let report = s.fx.store.sweep();
    let wall = started.elapsed();
    assert_eq!(report.expired, due, "every due grant expired");
    (report, wall)
}

fn sweep_alone(policies: &Arc<PolicyStore>) {
    let due = env_usize("GRANT_SCALE_SWEEP_N", 100_000);
    let rounds = env_usize("GRANT_SCALE_ROUNDS", 3).max(1);
    println!(
        "\n## Sweep of {due} due grants, no concurrent load ({rounds} rounds, fresh store each)\n"
    );
    println!(
        "| {:<14} | {:>8} | {:>12} | {:>12} | {:>12} | {:>9} |",
        "store", "expired", "min ms", "median ms", "max ms", "compacted"
    );
    println!(
        "|{:-<16}|{:->10}|{:->14}|{:->14}|{:->14}|{:->11}|",
        "", "", "", "", "", ""
    );
    for mode in modes() {
        let mut times = Vec::new();
        let mut compacted = false;
        for _ in 0..rounds {
            let s = setup(policies, mode, due, 1, 0);
            let (report, _) = sweep_due(&s, due);
            compacted |= report.compacted;
            times.push(report.duration);
        }
        times.sort();
        println!(
            "| {:<14} | {due:>8} | {:>12.1} | {:>12.1} | {:>12.1} | {:>9} |",
            mode.name(),
            ms(times[0]),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
            compacted,
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Revalidate,
    Check,
}

/// One call: when it started (ns since `origin`) and how long it took (ns).
type Sample = (u64, u64);

/// Runs `threads` threads calling `op` in a tight loop over the active grants (thread
/// `t` starts at grant `t` and strides by `threads`) while `during` runs on this thread;
/// returns every call's sample.
fn under_load(
    s: &Setup,
    op: Op,
    threads: usize,
    origin: Instant,
    during: impl FnOnce(),
) -> Vec<Sample> {
    let stop = AtomicBool::new(false);
    let ready = Barrier::new(threads + 1);
    let caller = issuer();
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, ready, caller) = (&stop, &ready, &caller);
                // Grant `i` of `s.active` was requested as `request_grant(i, &REALISTIC)`.
                let mine: Vec<(usize, &String)> = s
                    .active
                    .iter()
                    .enumerate()
                    .skip(t)
                    .step_by(threads)
                    .collect();
                let reval: Vec<_> = mine.iter().map(|(_, id)| revalidate(id)).collect();
                let check: Vec<stepgate::decision::CheckRequest> = mine
                    .iter()
                    .map(|(i, id)| check_use(id, *i, &REALISTIC).into())
                    .collect();
                scope.spawn(move || {
                    let mut samples: Vec<Sample> = Vec::with_capacity(1 << 20);
                    ready.wait();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let allowed = match op {
                            Op::Revalidate => support::ready(s.fx.steps.revalidate(
                                &reval[i],
                                caller,
                                &ParentContext::none(),
                            ))
                            .expect("revalidate")
                            .decision
                            .allow(),
                            Op::Check => {
                                s.fx.pipeline
                                    .check(&check[i], caller, &ParentContext::none())
                                    .expect("check")
                                    .allow()
                            }
                        };
                        let took = started.elapsed();
                        assert!(allowed, "{op:?} denied");
                        samples
                            .push(((started - origin).as_nanos() as u64, took.as_nanos() as u64));
                        i = (i + 1) % mine.len();
                    }
                    samples
                })
            })
            .collect();
        ready.wait();
        during();
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("load thread"))
            .collect::<Vec<_>>()
    })
}

#[derive(Default)]
struct Latencies(Vec<u64>);

/// Count and percentiles (µs) of a set of latencies.
struct Summary {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latencies {
    fn summary(&mut self) -> Summary {
        let v = &mut self.0;
        v.sort_unstable();
        let at = |q: f64| {
            if v.is_empty() {
                return 0.0;
            }
            v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1e3
        };
        Summary {
            n: v.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

fn p99(policies: &Arc<PolicyStore>) {
    let due = env_usize("GRANT_SCALE_SWEEP_N", 100_000);
    let active = env_usize("GRANT_SCALE_ACTIVE", 1_000);
    let rounds = env_usize("GRANT_SCALE_ROUNDS", 3).max(1);
    let window = Duration::from_millis(env_usize("GRANT_SCALE_WINDOW_MS", 300) as u64);
    let threads_list: Vec<usize> = std::env::var("GRANT_SCALE_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .map(|t| t.trim().parse().expect("GRANT_SCALE_THREADS: numbers"))
        .collect();
    println!(
        "\n## Concurrent latency (µs) over {active} ACTIVE grants; sweeps of {due} due grants; \
         {rounds} rounds, {} ms windows without a sweep\n",
        window.as_millis()
    );
    println!(
        "| {:<14} | {:>3} | {:<24} | {:>7} | {:>6} | {:>6} | {:>7} | {:>8} | {:>8} | {:<17} |",
        "store", "thr", "calls", "n", "p50", "p90", "p99", "max", "sweep ms", "p99 ratio"
    );
    println!(
        "|{:-<16}|{:->5}|{:-<26}|{:->9}|{:->8}|{:->8}|{:->9}|{:->10}|{:->10}|{:-<19}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    for mode in modes() {
        for &threads in &threads_list {
            // [check quiet, check during sweep, revalidate quiet, revalidate during sweep]
            let mut lat: [Latencies; 4] = Default::default();
            let mut sweeps: [Vec<Duration>; 2] = Default::default();
            for _ in 0..rounds {
                let s = setup(policies, mode, due, 2, active);
                // Warm the grants' evidence trails to their cap, as a long-lived grant's.
                for id in &s.active {
                    for _ in 0..40 {
                        support::ready(s.fx.steps.revalidate(
                            &revalidate(id),
                            &issuer(),
                            &ParentContext::none(),
                        ))
                        .expect("revalidate");
                    }
                }
                for (k, op) in [Op::Check, Op::Revalidate].into_iter().enumerate() {
                    let origin = Instant::now();
                    let mut quiet = (0, 0);
                    let mut sweep = (0, 0);
                    let mut report = None;
                    let samples = under_load(&s, op, threads, origin, || {
                        thread::sleep(window / 4);
                        quiet.0 = origin.elapsed().as_nanos() as u64;
                        thread::sleep(window);
                        quiet.1 = origin.elapsed().as_nanos() as u64;
                        sweep.0 = origin.elapsed().as_nanos() as u64;
                        report = Some(sweep_due(&s, due));
                        sweep.1 = origin.elapsed().as_nanos() as u64;
                        thread::sleep(window / 4);
                    });
                    let (report, _) = report.expect("swept");
                    sweeps[k].push(report.duration);
                    lat[2 * k].0.extend(
                        samples
                            .iter()
                            .filter(|(at, _)| (quiet.0..quiet.1).contains(at))
                            .map(|(_, l)| *l),
                    );
                    // Every call that overlapped the sweep.
                    lat[2 * k + 1].0.extend(
                        samples
                            .iter()
                            .filter(|(at, l)| *at < sweep.1 && at + l > sweep.0)
                            .map(|(_, l)| *l),
                    );
                }
            }
            let sweep_ms = sweeps.map(|mut v| {
                v.sort();
                format!("{:.1}", ms(v[v.len() / 2]))
            });
            let summaries: Vec<_> = lat.iter_mut().map(Latencies::summary).collect();
            let p99 = |i: usize| summaries[i].p99;
            let rows = [
                ("check (no sweep)", String::new(), String::new()),
                (
                    "check during sweep",
                    sweep_ms[0].clone(),
                    format!("{:.2} x no sweep", p99(1) / p99(0)),
                ),
                (
                    "revalidate (no sweep)",
                    String::new(),
                    format!("{:.2} x check", p99(2) / p99(0)),
                ),
                (
                    "revalidate during sweep",
                    sweep_ms[1].clone(),
                    format!("{:.2} x no sweep", p99(3) / p99(2)),
                ),
            ];
            for ((label, sweep, ratio), l) in rows.iter().zip(&summaries) {
                println!(
                    "| {:<14} | {threads:>3} | {label:<24} | {:>7} | {:>6.1} | {:>6.1} | {:>7.1} | {:>8.1} | {sweep:>8} | {ratio:<17} |",
                    mode.name(),
                    l.n,
                    l.p50,
                    l.p90,
                    l.p99,
                    l.max,
                );
            }
        }
    }
}
