//! The bounds on an evaluation (time, RVM instructions, memory per evaluation, the
//! process heap), how an engine's limit error becomes an [`EvalError`], and counting the
//! evaluations each bound stopped.
//!
//! regorus checks its timer and the per-evaluation budget between steps, never inside a
//! builtin call; the process heap limit is the one bound builtins check as they grow
//! their result, which is what stops `numbers.range(1, 1e8)` before it has materialised
//! gigabytes. It needs regorus' `allocator-memory-limits` feature, whose mimalloc is the
//! global allocator and counts the bytes.

use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use regorus::{Engine, LimitError, rvm::vm::VmError, utils::limits::ExecutionTimerConfig};
use regorus_mimalloc::limits::{MemoryBudgetUsage, with_memory_budget_usage_scope};

/// Bounds on one evaluation. Exceeding any is an [`EvalError::Limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalLimits {
    /// Most RVM instructions one evaluation may execute.
    pub max_instructions: usize,
    /// Longest one evaluation may run (checked cooperatively by the engine).
    pub timeout: Duration,
    /// Most bytes one RVM evaluation may hold beyond what its thread held when it began
    /// (checked at every instruction; a single builtin call is bounded by the process
    /// heap limit instead, see [`set_heap_limit`]).
    pub max_memory: u64,
}

impl Default for EvalLimits {
    fn default() -> Self {
        Self {
            max_instructions: 1_000_000,
            timeout: Duration::from_millis(100),
            max_memory: 32 << 20,
        }
    }
}

impl EvalLimits {
    pub(super) fn timer(&self) -> ExecutionTimerConfig {
        timer(self.timeout)
    }
}

/// A cooperative timer of `limit`. Checking the clock every 256 work units keeps the
/// check's cost negligible.
pub(super) fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(256).unwrap_or(NonZeroU32::MIN),
    }
}

/// Sets the process heap limit: once the bytes live in the whole process exceed it,
/// every evaluation, compile and policy test stops with
/// [`EvalError::Limit`] instead of allocating more (`None`: no limit).
///
/// This is the only bound regorus checks *inside* a builtin call (`numbers.range`,
/// `strings.repeat`, ... check it as they grow their result), so it is what stops one
/// builtin call from materialising gigabytes before the time or per-evaluation budget
/// is looked at again. It counts what the global allocator regorus installs counts:
/// every live heap byte of the process, grants included, so size it above the
/// server's own needs. Process-wide: the last call wins.
pub fn set_heap_limit(limit: Option<u64>) {
    regorus::set_global_memory_limit(limit);
}

/// Which bound stopped an evaluation (counted in [`limit_hits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// The evaluation's time limit.
    Time,
    /// The RVM instruction limit.
    Instructions,
    /// The per-evaluation memory budget or the process heap limit.
    Memory,
}

impl LimitKind {
    /// Every kind, in [`limit_hits`] order.
    pub const ALL: [LimitKind; 3] = [LimitKind::Time, LimitKind::Instructions, LimitKind::Memory];

    /// The metric label, also the first word of the deny reason.
    pub const fn label(self) -> &'static str {
        match self {
            LimitKind::Time => "time",
            LimitKind::Instructions => "instructions",
            LimitKind::Memory => "memory",
        }
    }
}

static LIMIT_HITS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// How many evaluations (decisions, warm-ups and policy tests) each bound has stopped
/// since the process started, in [`LimitKind::ALL`] order.
pub fn limit_hits() -> [u64; 3] {
    LIMIT_HITS.each_ref().map(|n| n.load(Ordering::Relaxed))
}

/// How a heap-limit stop's reason begins (after `memory: `).
const HEAP_STOP: &str = "the process heap";

/// Heap-limit stops retried, at most, per evaluation.
const HEAP_RETRIES: u32 = 2;

/// The error of an evaluation stopped by `kind`: its reason is `<kind>: <detail>`.
fn stopped(kind: LimitKind, detail: String) -> EvalError {
    EvalError::Limit { kind, detail }
}

/// Runs one evaluation (`attempt`), and counts and logs the bound that stopped it.
///
/// The process heap limit is process-wide: while one evaluation holds a builtin's
/// gigabyte-sized request (for the microseconds until the builtin checks and fails),
/// every other evaluation that checks the heap finds it over the limit too. So each
/// attempt's own allocations are counted (the allocator's per-execution accounting),
/// and a heap-limit stop of an attempt that asked for less than `own_budget` itself is
/// retried, up to [`HEAP_RETRIES`] times, after a pause: caught in another's spike, it
/// then succeeds. The evaluation that asked for the memory is not retried, and under
/// real memory pressure every try fails: a deny either way.
pub(super) fn bounded<T>(
    own_budget: u64,
    mut attempt: impl FnMut() -> Result<T, EvalError>,
) -> Result<T, EvalError> {
    let mut retries = 0;
    loop {
        let mut usage = Some(MemoryBudgetUsage::default());
        // `doc(hidden)` in regorus-mimalloc, but public: the accounting regorus' own
        // suspendable executions use (an allocation adds its size to the selected usage).
        let result = with_memory_budget_usage_scope(usage, &mut usage, &mut attempt);
        let Err(EvalError::Limit { kind, detail }) = &result else {
            return result;
        };
        let asked = usage.map_or(u64::MAX, |u| u.requested_bytes());
        // A heap stop is recognised by the message stepgate itself wrote ([`heap_message`]).
        if detail.starts_with(HEAP_STOP) && asked < own_budget && retries < HEAP_RETRIES {
            retries += 1;
            // Let the other evaluation fail and free: yield, then a millisecond.
            if retries == 1 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
            continue;
        }
        LIMIT_HITS[*kind as usize].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(limit = kind.label(), %detail, retries, "evaluation stopped by a limit (denied)");
        return result;
    }
}

/// Why an evaluation produced no result. The decision pipeline turns each into a deny.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The policy set defines no rule at the entrypoint.
    #[error("entrypoint {0} is not defined by the policy set")]
    MissingEntrypoint(Arc<str>),
    /// A bound (time, instructions, memory) stopped the evaluation.
    #[error("evaluation limit exceeded: {}: {detail}", kind.label())]
    Limit {
        /// Which bound.
        kind: LimitKind,
        /// What the engine measured against it.
        detail: String,
    },
    /// The engine reported an error (type error, builtin error, conflict, ...).
    #[error("policy evaluation failed: {0}")]
    Engine(String),
    /// The engine panicked (caught; its cached VM is dropped).
    #[error("policy evaluation failed: the policy engine panicked")]
    Panicked,
}

pub(super) fn apply_engine_limits(engine: &mut Engine, limits: &EvalLimits) {
    engine.set_execution_timer_config(limits.timer());
}

pub(super) fn classify_vm_error(err: VmError) -> EvalError {
    match err {
        VmError::InstructionLimitExceeded { limit, .. } => {
            stopped(LimitKind::Instructions, format!("more than {limit}"))
        }
        VmError::TimeLimitExceeded { limit, .. } => stopped(LimitKind::Time, time_message(limit)),
        VmError::MemoryBudgetExceeded { usage, budget, .. } => stopped(
            LimitKind::Memory,
            format!(
                "the evaluation allocated {} over its budget of {}",
                mib(usage),
                mib(budget)
            ),
        ),
        VmError::MemoryLimitExceeded { usage, limit, .. } => {
            stopped(LimitKind::Memory, heap_message(usage, limit))
        }
        VmError::RegexSizeLimitExceeded { .. } => stopped(LimitKind::Memory, err.to_string()),
        other => EvalError::Engine(other.to_string()),
    }
}

pub(super) fn classify_engine_error(err: &anyhow::Error) -> EvalError {
    let limit = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<LimitError>().copied());
    match limit {
        Some(LimitError::TimeLimitExceeded { limit, .. }) => {
            stopped(LimitKind::Time, time_message(limit))
        }
        Some(LimitError::MemoryLimitExceeded { usage, limit }) => {
            stopped(LimitKind::Memory, heap_message(usage, limit))
        }
        Some(LimitError::RegexSizeLimitExceeded { .. }) => {
            stopped(LimitKind::Memory, err.to_string())
        }
        None => {
            let message = err.to_string();
            match limit_in_message(&message) {
                // regorus' memory limit is the process heap limit (typed above as such).
                Some(LimitKind::Memory) if message.starts_with(HEAP_LIMIT_MESSAGE) => {
                    stopped(LimitKind::Memory, format!("{HEAP_STOP} limit: {message}"))
                }
                Some(kind) => stopped(kind, message),
                None => EvalError::Engine(message),
            }
        }
    }
}

/// How regorus' `LimitError::MemoryLimitExceeded` (the process heap limit) reads.
const HEAP_LIMIT_MESSAGE: &str = "execution exceeded memory limit";

/// The bound a limit error names when only its message reached us.
///
/// The interpreter keeps regorus' typed [`LimitError`] through `?`, but a user-defined
/// function collects its bodies' errors and re-raises the first as its text
/// (`anyhow!(e.to_string())` in regorus 0.14's `eval_user_defined_function`), so a limit
/// hit inside a function arrives as `LimitError`'s `Display` alone. These are its
/// prefixes; `limit_messages_are_regorus_own` pins them, so an upgrade that rewords them
/// fails that test instead of turning limit stops into engine errors.
fn limit_in_message(message: &str) -> Option<LimitKind> {
    if message.starts_with("execution exceeded time limit") {
        Some(LimitKind::Time)
    } else if message.starts_with(HEAP_LIMIT_MESSAGE)
        || message.starts_with("compiled regex exceeded size limit")
    {
        Some(LimitKind::Memory)
    } else {
        None
    }
}

fn time_message(limit: Duration) -> String {
    format!("ran past its limit of {limit:?}")
}

fn heap_message(usage: u64, limit: u64) -> String {
    format!(
        "{HEAP_STOP} reached {}, over the heap limit of {}",
        mib(usage),
        mib(limit)
    )
}

/// `bytes` in MiB with one decimal, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The process heap limit of the unit-test binary: far above what its tests need
/// together, far below what a hostile policy would take. Process-wide: every test that
/// evaluates something hostile sets it first (the same value), so none runs unbounded
/// and bloats the heap under the others.
#[cfg(test)]
pub(crate) fn test_heap_limit() {
    set_heap_limit(Some(512 << 20));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_stop() -> EvalError {
        stopped(LimitKind::Memory, heap_message(300 << 20, 192 << 20))
    }

    #[test]
    fn a_quick_heap_stop_is_retried_and_one_that_persists_is_a_deny() {
        // Caught in another evaluation's spike: the retry succeeds.
        let mut tries = 0;
        let result = bounded(1 << 20, || {
            tries += 1;
            if tries == 1 { Err(heap_stop()) } else { Ok(7) }
        });
        assert_eq!((result, tries), (Ok(7), 2));
        // The heap stays over the limit (or the evaluation asks for it every time).
        let mut tries = 0;
        let before = limit_hits()[LimitKind::Memory as usize];
        let result: Result<(), _> = bounded(1 << 20, || {
            tries += 1;
            Err(heap_stop())
        });
        assert_eq!(tries, 1 + HEAP_RETRIES);
        assert!(
            matches!(&result, Err(EvalError::Limit { kind: LimitKind::Memory, detail }) if detail.starts_with("the process heap reached 300.0 MiB")),
            "{result:?}"
        );
        assert!(limit_hits()[LimitKind::Memory as usize] > before);
    }

    #[test]
    fn the_evaluation_that_asked_for_the_memory_is_not_retried() {
        let mut tries = 0;
        let result: Result<(), _> = bounded(1 << 20, || {
            tries += 1;
            let held = vec![0u8; 2 << 20];
            std::hint::black_box(&held);
            Err(heap_stop())
        });
        assert!(result.is_err());
        assert_eq!(tries, 1);
    }

    #[test]
    fn other_stops_are_not_retried() {
        for error in [
            stopped(LimitKind::Time, time_message(Duration::from_millis(100))),
            stopped(
                LimitKind::Memory,
                "the evaluation allocated 40.0 MiB over its budget of 32.0 MiB".into(),
            ),
            EvalError::Engine("type error".into()),
        ] {
            let mut tries = 0;
            let result: Result<(), _> = bounded(1 << 20, || {
                tries += 1;
                Err(error.clone())
            });
            assert_eq!((result, tries), (Err(error), 1));
        }
    }

    #[test]
    fn limit_messages_are_regorus_own() {
        let errors = [
            (
                LimitError::TimeLimitExceeded {
                    elapsed: Duration::from_millis(7),
                    limit: Duration::from_millis(5),
                },
                LimitKind::Time,
            ),
            (
                LimitError::MemoryLimitExceeded {
                    usage: 2 << 20,
                    limit: 1 << 20,
                },
                LimitKind::Memory,
            ),
            (
                LimitError::RegexSizeLimitExceeded { limit: 1 << 20 },
                LimitKind::Memory,
            ),
        ];
        for (error, kind) in errors {
            let message = error.to_string();
            assert_eq!(limit_in_message(&message), Some(kind), "{message}");
            // Typed, and as the text a user-defined function re-raises.
            for err in [anyhow::Error::new(error), anyhow::anyhow!(message.clone())] {
                let classified = classify_engine_error(&err);
                assert!(
                    matches!(&classified, EvalError::Limit { kind: k, .. } if *k == kind),
                    "{classified}"
                );
            }
        }
        let other = classify_engine_error(&anyhow::anyhow!("rego_type_error: x"));
        assert_eq!(other, EvalError::Engine("rego_type_error: x".into()));
    }
}
