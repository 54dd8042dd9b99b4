//! Micro-benchmarks of the grant store, in process, on the example policy set:
//!
//! - `steps/request_approve`: `RequestGrant` + `Approve` through [`GrantSteps`] (two
//!   policy decisions, a create and an activation) on an ephemeral store;
//! - `steps/revalidate` vs `steps/check_use`: `Revalidate` of an ACTIVE grant (the hot
//!   path: read, decide step `use`, count the use) against a `Check` of step `use`
//!   naming the same grant (read and decide, no write); `steps/grant_input`: the input
//!   document of a step on a grant (its terms decoded, `input.grant` built), part of
//!   `revalidate`;
//! - `store/get`, `store/record_use`: the same store operations without policy;
//! - `journal/*`: what the journal adds per mutation in a temp dir on the target disk:
//!   `record_use` on a grant with `max_uses > 0` (a synced delta) and `create` (a synced
//!   whole grant), fsync on and off, and with group commit under N threads, each thread
//!   mutating its own grants. For the threaded cases one iteration is one mutation per
//!   thread, so the time is the per-mutation latency a caller sees and the throughput is
//!   mutations per second across the threads. `journal/raw_append_fdatasync` (a 64-byte
//!   append and `fdatasync` on a plain file) is the disk's own cost, for reference.
//!
//! Run: `cargo bench --bench grants` (add `-- --quick` for a fast pass, or a filter such
//! as `-- journal`).

mod support;

use std::{hint::black_box, sync::Arc, thread, time::Duration, time::Instant};
use stepgate::telemetry::ParentContext;

use chrono::TimeDelta;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stepgate::{
    clock::ManualClock,
    decision::GrantStepInput,
    grants::{JournalOptions, MemoryGrantStore},
};
use support::{Fixture, Shape, check_use, direct_grant, issuer, revalidate, store_options, t0};
use uuid::Uuid;

fn steps(c: &mut Criterion) {
    let policies = support::policies();
    let fx = Fixture::ephemeral(&policies);
    let shape = Shape::ONE;
    let mut group = c.benchmark_group("steps");
    group.throughput(Throughput::Elements(1));
    group.bench_function("request_approve", |b| {
        b.iter(|| black_box(fx.active_grant(0, &shape)))
    });

    // A fresh store for the hot path, so the request/approve grants above do not count.
    let fx = Fixture::ephemeral(&policies);
    let id = fx.active_grant(0, &shape);
    let caller = issuer();
    let req = revalidate(&id);
    let outcome = support::ready(fx.steps.revalidate(&req, &caller, &ParentContext::none()))
        .expect("revalidate runs");
    assert!(outcome.decision.allow(), "{:?}", outcome.decision.reasons());
    group.bench_function("revalidate", |b| {
        b.iter(|| {
            let outcome =
                support::ready(fx.steps.revalidate(&req, &caller, &ParentContext::none()))
                    .expect("revalidate");
            debug_assert!(outcome.decision.allow());
            black_box(outcome)
        })
    });
    // What a step on a grant spends on its input document (decoding the grant's terms
    // and building `input` with `input.grant`), part of `revalidate`.
    let grant = fx.store.get(&id).expect("the grant");
    let now = fx.store.now();
    let context = req.context.clone().map(stepgate::decision::Context::from);
    group.bench_function("grant_input", |b| {
        b.iter(|| {
            let input = GrantStepInput {
                step: "use",
                caller: &caller,
                agent: None,
                context: context.as_ref(),
            };
            black_box(input.build(&grant, now, &[]))
        })
    });
    let check: stepgate::decision::CheckRequest = check_use(&id, 0, &shape).into();
    let decision = fx
        .pipeline
        .check(&check, &caller, &ParentContext::none())
        .expect("valid check");
    assert!(decision.allow(), "{:?}", decision.reasons());
    group.bench_function("check_use", |b| {
        b.iter(|| {
            black_box(
                fx.pipeline
                    .check(&check, &caller, &ParentContext::none())
                    .expect("check"),
            )
        })
    });
    group.finish();
}

fn store_ops(c: &mut Criterion) {
    let clock = ManualClock::at(t0());
    let store = MemoryGrantStore::ephemeral(Arc::new(clock));
    let revision: Arc<str> = "bench".into();
    let shape = Shape::ONE;
    let grant = direct_grant(0, &shape, 0, TimeDelta::hours(1), 0, &revision, t0());
    let id = store.create(grant).expect("created").id().to_string();
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    group.bench_function("get", |b| {
        b.iter(|| black_box(store.get(black_box(&id)).expect("found")))
    });
    let decision = Uuid::now_v7();
    group.bench_function("record_use", |b| {
        b.iter(|| black_box(store.record_use(black_box(&id), decision).expect("used")))
    });
    group.bench_function("create", |b| {
        b.iter_custom(|iters| {
            let store = MemoryGrantStore::ephemeral(Arc::new(ManualClock::at(t0())));
            let grants: Vec<_> = (0..iters)
                .map(|_| direct_grant(0, &shape, 0, TimeDelta::hours(1), 0, &revision, t0()))
                .collect();
            let started = Instant::now();
            for grant in grants {
                black_box(store.create(grant).expect("created"));
            }
            started.elapsed()
        })
    });
    group.finish();
}

/// What one journal benchmark mutates.
#[derive(Clone, Copy)]
enum Mutation {
    /// `record_use` on the thread's own grant with `max_uses > 0` (a synced delta).
    Use,
    /// `create` of a new ACTIVE grant (a synced whole-grant record).
    Create,
}

/// Runs `iters` rounds of one mutation on each of `threads` threads against a fresh
/// journaled store; returns the wall time of the rounds (setup excluded).
fn journaled_rounds(
    iters: u64,
    threads: usize,
    mutation: Mutation,
    journal: &JournalOptions,
) -> Duration {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let clock = ManualClock::at(t0());
    let (store, _) = MemoryGrantStore::open(
        store_options(Some(dir.path()), journal.clone()),
        Arc::new(clock),
    )
    .expect("journaled store opens");
    let revision: Arc<str> = "bench".into();
    let shape = Shape::ONE;
    let ttl = TimeDelta::hours(1);
    // Per thread: its grant to use, or the grants it will create (built untimed).
    let work: Vec<(String, Vec<_>)> = (0..threads)
        .map(|t| match mutation {
            Mutation::Use => {
                let grant = direct_grant(t, &shape, 0, ttl, u64::MAX, &revision, t0());
                let id = store.create(grant).expect("created").id().to_string();
                (id, Vec::new())
            }
            Mutation::Create => (
                String::new(),
                (0..iters)
                    .map(|_| direct_grant(t, &shape, 0, ttl, 0, &revision, t0()))
                    .collect(),
            ),
        })
        .collect();
    let barrier = std::sync::Barrier::new(threads + 1);
    let decision = Uuid::now_v7();
    let elapsed = thread::scope(|s| {
        for (id, grants) in work {
            let (store, barrier) = (&store, &barrier);
            s.spawn(move || {
                barrier.wait();
                match mutation {
                    Mutation::Use => {
                        for _ in 0..iters {
                            black_box(store.record_use(&id, decision).expect("used"));
                        }
                    }
                    Mutation::Create => {
                        for grant in grants {
                            black_box(store.create(grant).expect("created"));
                        }
                    }
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let started = Instant::now();
        barrier.wait();
        started.elapsed()
    });
    drop(store);
    elapsed
}

/// The disk's own cost, for reference: append a 64-byte record to a file and
/// `fdatasync` it, no store.
fn raw_fdatasync(iters: u64) -> Duration {
    use std::io::Write as _;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw"))
        .expect("file");
    let record = [0x5au8; 64];
    let started = Instant::now();
    for _ in 0..iters {
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
    }
    started.elapsed()
}

fn journal(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw_append_fdatasync", |b| b.iter_custom(raw_fdatasync));
    for (mutation, name) in [(Mutation::Use, "record_use"), (Mutation::Create, "create")] {
        for fsync in [true, false] {
            let options = JournalOptions {
                fsync,
                ..JournalOptions::default()
            };
            group.throughput(Throughput::Elements(1));
            let label = if fsync { "fsync" } else { "no_fsync" };
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| journaled_rounds(iters, 1, mutation, &options))
            });
        }
        for group_commit in [false, true] {
            let options = JournalOptions {
                group_commit,
                ..JournalOptions::default()
            };
            let threads_list: &[usize] = if group_commit { &[1, 4, 16] } else { &[4] };
            for &threads in threads_list {
                group.throughput(Throughput::Elements(threads as u64));
                let label = format!(
                    "fsync_{}_threads_{threads}",
                    if group_commit {
                        "group_commit"
                    } else {
                        "no_group_commit"
                    }
                );
                group.bench_function(BenchmarkId::new(name, label), |b| {
                    b.iter_custom(|iters| journaled_rounds(iters, threads, mutation, &options))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, steps, store_ops, journal);
criterion_main!(benches);
