//! Evaluating an entrypoint of a [`PolicySet`] with limits.
//!
//! RVM entrypoints run on a per-thread `RegoVM`, cached per program, so the hot path takes
//! no lock and builds no VM: a reload is picked up on the next call because the cached
//! program no longer matches. Interpreter entrypoints clone the warmed engine (~0.2 µs).

use std::{
    cell::RefCell,
    num::NonZeroU64,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

use regorus::{
    MemoryBudgetConfig, Value,
    rvm::{RegoVM, program::Program},
};

use super::{
    Entrypoint, EvalError, PolicySet,
    compile::{CompiledEntrypoint, Target},
    limits::{bounded, classify_engine_error, classify_vm_error},
};

struct CachedVm {
    program: Arc<Program>,
    vm: RegoVM,
}

thread_local! {
    /// One VM per entrypoint per thread, for the program it was built for.
    static VMS: RefCell<[Option<CachedVm>; Entrypoint::ALL.len()]> = const { RefCell::new([const { None }; Entrypoint::ALL.len()]) };
}

impl PolicySet {
    /// Evaluates `entrypoint` against `input`. `Ok(Value::Undefined)` when the rule is
    /// undefined for this input.
    pub fn evaluate(&self, entrypoint: Entrypoint, input: Value) -> Result<Value, EvalError> {
        let entry = &self.entrypoints[entrypoint.index()];
        match &entry.target {
            Target::Rvm(program) => bounded(self.limits.max_memory, || {
                self.evaluate_rvm(entrypoint.index(), program, input.clone())
            }),
            Target::Interpreter => bounded(self.limits.max_memory, || {
                self.evaluate_interpreter(entry, input.clone())
            }),
            Target::Missing => Err(EvalError::MissingEntrypoint(entry.rule.clone())),
        }
    }

    /// Evaluates `entrypoint` with the interpreter even where it compiled to the RVM:
    /// to cross-check the two engines (`stepgate eval --interpreter`) and to measure them.
    pub fn evaluate_interpreted(
        &self,
        entrypoint: Entrypoint,
        input: Value,
    ) -> Result<Value, EvalError> {
        let entry = &self.entrypoints[entrypoint.index()];
        match entry.target {
            Target::Missing => Err(EvalError::MissingEntrypoint(entry.rule.clone())),
            _ => bounded(self.limits.max_memory, || {
                self.evaluate_interpreter(entry, input.clone())
            }),
        }
    }

    /// Evaluates the document at `data.<path...>` (a rule, a package or data) for the
    /// OPA REST Data API: `Ok(Value::Undefined)` when nothing is defined there. A path
    /// naming a configured entrypoint takes its compiled path; any other path is
    /// answered by a fresh clone of the warmed interpreter, so per-request paths leave
    /// nothing behind (no cache can grow with them). `input: None` leaves `input`
    /// undefined.
    pub fn evaluate_path(&self, path: &[&str], input: Option<Value>) -> Result<Value, EvalError> {
        if let Some(input) = &input
            && path.iter().all(|segment| is_identifier(segment))
            && let Some(entrypoint) = Entrypoint::ALL.into_iter().find(|e| {
                let rule = &self.entrypoints[e.index()].rule;
                rule.strip_prefix("data.")
                    .is_some_and(|rest| rest.split('.').eq(path.iter().copied()))
            })
        {
            return self.evaluate(entrypoint, input.clone());
        }
        // `data["a"]["b"]`: each segment a JSON string literal, so no path can inject Rego.
        let mut query = String::from("data");
        for segment in path {
            query.push('[');
            query.push_str(&serde_json::to_string(segment).unwrap_or_default());
            query.push(']');
        }
        let input = input.unwrap_or(Value::Undefined);
        let results = bounded(self.limits.max_memory, || {
            let mut engine = self.engine.clone();
            engine.set_input(input.clone());
            match catch_unwind(AssertUnwindSafe(|| engine.eval_query(query.clone(), false))) {
                Ok(Ok(results)) => Ok(results),
                Ok(Err(err)) => Err(classify_engine_error(&err)),
                Err(_) => Err(EvalError::Panicked),
            }
        })?;
        Ok(results
            .result
            .into_iter()
            .next()
            .and_then(|r| r.expressions.into_iter().next())
            .map_or(Value::Undefined, |e| e.value))
    }

    fn evaluate_rvm(
        &self,
        slot: usize,
        program: &Arc<Program>,
        input: Value,
    ) -> Result<Value, EvalError> {
        VMS.with(|cell| {
            let mut vms = cell.borrow_mut();
            let cached = &mut vms[slot];
            if !cached
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(&c.program, program))
            {
                *cached = Some(self.new_vm(program)?);
            }
            let Some(cached) = cached.as_mut() else {
                return Err(EvalError::Engine("no VM".into()));
            };
            cached.vm.set_input(input);
            let result = catch_unwind(AssertUnwindSafe(|| cached.vm.execute()));
            // Drop the input now rather than keep it alive until the next call.
            cached.vm.set_input(Value::Null);
            match result {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(err)) => Err(classify_vm_error(err)),
                Err(_) => {
                    vms[slot] = None;
                    Err(EvalError::Panicked)
                }
            }
        })
    }

    fn new_vm(&self, program: &Arc<Program>) -> Result<CachedVm, EvalError> {
        let mut vm = RegoVM::new();
        vm.load_program(program.clone());
        vm.set_data(self.data.clone())
            .map_err(|e| EvalError::Engine(e.to_string()))?;
        vm.set_max_instructions(self.limits.max_instructions);
        vm.set_execution_timer_config(Some(self.limits.timer()));
        vm.set_memory_budget_config(
            NonZeroU64::new(self.limits.max_memory).map(|limit| MemoryBudgetConfig { limit }),
        );
        Ok(CachedVm {
            program: program.clone(),
            vm,
        })
    }

    fn evaluate_interpreter(
        &self,
        entry: &CompiledEntrypoint,
        input: Value,
    ) -> Result<Value, EvalError> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        match catch_unwind(AssertUnwindSafe(|| {
            engine.eval_rule(entry.rule.to_string())
        })) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(classify_engine_error(&err)),
            Err(_) => Err(EvalError::Panicked),
        }
    }
}

/// Whether `text` can stand as a Rego reference segment after a dot.
fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::{EvalLimits, LimitKind, limit_hits, limits::test_heap_limit};
    use crate::policy::{FileKind, PolicyFile, PolicyOptions, PolicySource, SourceLimits};

    fn set(rego: &str, limits: EvalLimits) -> PolicySet {
        let files = vec![PolicyFile {
            path: "p.rego".into(),
            kind: FileKind::Rego,
            content: rego.into(),
        }];
        let source =
            PolicySource::from_files("mem".into(), files, &SourceLimits::default()).unwrap();
        PolicySet::compile(
            &source,
            &PolicyOptions {
                eval_limits: limits,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn input(json: &str) -> Value {
        Value::from_json_str(json).unwrap()
    }

    const LOOP: &str = "package stepgate\ndecision := {\"allow\": count([x | some x in numbers.range(1, input.n); x > 0]) > 0}\n";

    #[test]
    fn rvm_evaluates_and_sees_each_input() {
        let set = set(
            "package stepgate\ndecision := {\"allow\": input.step == \"use\"}\n",
            EvalLimits::default(),
        );
        let allow =
            |json| set.evaluate(Entrypoint::Decision, input(json)).unwrap()["allow"].clone();
        assert_eq!(allow(r#"{"step":"use"}"#), Value::from(true));
        assert_eq!(allow(r#"{"step":"issue"}"#), Value::from(false));
        assert_eq!(allow(r#"{"step":"use"}"#), Value::from(true));
    }

    #[test]
    fn undefined_is_a_value_not_an_error() {
        let set = set(
            "package stepgate\ndecision := {\"allow\": true} if input.ok\n",
            EvalLimits::default(),
        );
        assert_eq!(
            set.evaluate(Entrypoint::Decision, input("{}")).unwrap(),
            Value::Undefined
        );
    }

    #[test]
    fn instruction_limit_is_enforced() {
        test_heap_limit();
        let set = set(
            LOOP,
            EvalLimits {
                max_instructions: 1_000,
                ..Default::default()
            },
        );
        assert_eq!(set.entrypoints()[0].engine, "rvm");
        let err = set
            .evaluate(Entrypoint::Decision, input(r#"{"n": 100000}"#))
            .unwrap_err();
        assert!(
            matches!(
                err,
                EvalError::Limit {
                    kind: LimitKind::Instructions,
                    ..
                }
            ),
            "{err}"
        );
        // Small inputs still evaluate under the same limit.
        assert!(
            set.evaluate(Entrypoint::Decision, input(r#"{"n": 3}"#))
                .is_ok()
        );
    }

    #[test]
    fn time_limit_is_enforced() {
        test_heap_limit();
        let limits = EvalLimits {
            max_instructions: usize::MAX,
            timeout: Duration::from_millis(5),
            max_memory: 1 << 30,
        };
        let set = set(LOOP, limits);
        let err = set
            .evaluate(Entrypoint::Decision, input(r#"{"n": 2000000}"#))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                EvalError::Limit {
                    kind: LimitKind::Time,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn interpreter_fallback_honours_the_time_limit() {
        // `with` keeps the entrypoint off the RVM.
        test_heap_limit();
        let rego = "package stepgate\nn := input.n\nbig := count([x | some x in numbers.range(1, n); x > 0])\ndecision := {\"allow\": big > 0} if { true with input.z as 1 }\n";
        let limits = EvalLimits {
            max_instructions: usize::MAX,
            timeout: Duration::from_millis(5),
            max_memory: 1 << 30,
        };
        let set = set(rego, limits);
        assert_eq!(set.entrypoints()[0].engine, "interpreter");
        let err = set
            .evaluate(Entrypoint::Decision, input(r#"{"n": 2000000}"#))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                EvalError::Limit {
                    kind: LimitKind::Time,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_limit_hit_inside_a_function_is_still_a_limit() {
        // A user-defined function re-raises its body's error as text: the typed limit
        // error is gone, and only its message says which bound stopped it.
        test_heap_limit();
        let rego = "package stepgate\nf(n) := count([x | some x in numbers.range(1, n); x > 0])\ndecision := {\"allow\": f(input.n) > 0}\n";
        let limits = EvalLimits {
            max_instructions: usize::MAX,
            timeout: Duration::from_millis(2),
            max_memory: 1 << 30,
        };
        let set = set(rego, limits);
        let err = set
            .evaluate_interpreted(Entrypoint::Decision, input(r#"{"n": 300000}"#))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                EvalError::Limit {
                    kind: LimitKind::Time,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn memory_budget_stops_an_rvm_evaluation_and_says_so() {
        test_heap_limit();
        let rego = "package stepgate\ndecision := {\"allow\": count(concat(\",\", [sprintf(\"%d-padding-padding-padding\", [x]) | some x in numbers.range(1, input.n)])) > 0}\n";
        let limits = EvalLimits {
            max_instructions: usize::MAX,
            timeout: Duration::from_secs(30),
            max_memory: 1 << 20,
        };
        let set = set(rego, limits);
        assert_eq!(set.entrypoints()[0].engine, "rvm");
        let before = limit_hits()[LimitKind::Memory as usize];
        let err = set
            .evaluate(Entrypoint::Decision, input(r#"{"n": 200000}"#))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                EvalError::Limit {
                    kind: LimitKind::Memory,
                    ..
                }
            ),
            "{err}"
        );
        assert!(limit_hits()[LimitKind::Memory as usize] > before);
        // The same policy under the budget still evaluates, on the same cached VM.
        assert!(
            set.evaluate(Entrypoint::Decision, input(r#"{"n": 10}"#))
                .is_ok()
        );
    }

    #[test]
    fn heap_limit_stops_a_builtin_before_it_materialises_its_result() {
        // numbers.range(1, 1e8) is one builtin call: neither the timer nor the
        // per-evaluation budget is looked at until it returns, gigabytes later.
        test_heap_limit();
        let limits = EvalLimits {
            max_instructions: usize::MAX,
            timeout: Duration::from_millis(100),
            ..Default::default()
        };
        let set = set(LOOP, limits);
        let started = std::time::Instant::now();
        let err = set
            .evaluate(Entrypoint::Decision, input(r#"{"n": 100000000}"#))
            .unwrap_err();
        assert!(
            matches!(&err, EvalError::Limit { kind: LimitKind::Memory, detail } if detail.contains("heap limit")),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn data_paths_evaluate_rules_packages_and_data_and_undefined_is_not_an_error() {
        let set = set(
            "package stepgate\ndecision := {\"allow\": input.ok == true}\nodd[\"a-b\"] := 1\nhas_input if input\n",
            EvalLimits::default(),
        );
        let path = |p: &[&str], input: Option<&str>| {
            set.evaluate_path(p, input.map(|i| Value::from_json_str(i).unwrap()))
                .unwrap()
        };
        assert_eq!(
            path(&["stepgate", "decision"], Some(r#"{"ok": true}"#))["allow"],
            Value::from(true)
        );
        assert_eq!(path(&["stepgate", "odd", "a-b"], None), Value::from(1));
        assert_eq!(
            path(&["stepgate"], Some("{}"))["odd"]["a-b"],
            Value::from(1)
        );
        assert_eq!(path(&["nothing", "here"], None), Value::Undefined);
        assert_eq!(path(&["stepgate", "has_input"], None), Value::Undefined);
        assert_eq!(
            path(&["stepgate", "has_input"], Some("{}")),
            Value::from(true)
        );
        // A segment cannot break out of its string literal.
        assert_eq!(path(&["stepgate\"] | data[\"x"], None), Value::Undefined);
    }
}
