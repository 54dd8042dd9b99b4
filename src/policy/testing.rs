//! Running a policy set's own `test_` rules, as `opa test` does: every rule whose name
//! starts with `test_` must evaluate to a defined value other than `false`.

use std::time::{Duration, Instant};

use regorus::Value;

use super::{
    PolicySet,
    limits::{bounded, classify_engine_error, timer},
};

/// How one test rule ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    /// Defined and not `false`.
    Pass,
    /// Undefined or `false`.
    Fail,
    /// The evaluation itself failed.
    Error(String),
}

/// One test rule's result.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// `data.<package>.<rule>`.
    pub name: String,
    /// `file:line` of the rule.
    pub location: String,
    /// How it ended.
    pub outcome: TestOutcome,
    /// How long it took.
    pub duration: Duration,
}

/// The results of a test run, in rule-path order.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    /// One entry per test rule.
    pub results: Vec<TestResult>,
}

impl TestReport {
    /// Number of passing tests.
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == TestOutcome::Pass)
            .count()
    }

    /// Number of failing or erroring tests.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// `name (file:line): why` for every test that did not pass.
    pub fn failure_summaries(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|r| match &r.outcome {
                TestOutcome::Pass => None,
                TestOutcome::Fail => Some(format!("{} ({}) failed", r.name, r.location)),
                TestOutcome::Error(e) => Some(format!("{} ({}) errored: {e}", r.name, r.location)),
            })
            .collect()
    }
}

/// Runs the tests, each under the set's test time limit (and the process heap limit).
/// With a `deadline`, no test runs past it: each one's limit is cut to the time left,
/// and those left when it passes are reported as not run, so a set whose tests take too
/// long stops doing work at its deadline rather than after it.
pub(super) fn run(set: &PolicySet, filter: Option<&str>, deadline: Option<Instant>) -> TestReport {
    let results = set
        .rules
        .iter()
        .filter(|(path, _)| {
            path.rsplit('.')
                .next()
                .is_some_and(|name| name.starts_with("test_"))
        })
        .filter(|(path, _)| filter.is_none_or(|f| path.contains(f)))
        .map(|(path, location)| {
            let started = Instant::now();
            let left = deadline.map_or(set.test_timeout, |d| d.saturating_duration_since(started));
            let outcome = if left.is_zero() {
                TestOutcome::Error("not run: the set's compile timeout passed".into())
            } else {
                let outcome = bounded(set.limits.max_memory, || {
                    let mut engine = set.engine.clone();
                    engine.set_execution_timer_config(timer(left.min(set.test_timeout)));
                    engine.set_input(Value::new_object());
                    engine
                        .eval_rule(path.clone())
                        .map_err(|err| classify_engine_error(&err))
                });
                match outcome {
                    Ok(Value::Undefined | Value::Bool(false)) => TestOutcome::Fail,
                    Ok(_) => TestOutcome::Pass,
                    Err(err) => TestOutcome::Error(err.to_string()),
                }
            };
            TestResult {
                name: path.clone(),
                location: location.clone(),
                outcome,
                duration: started.elapsed(),
            }
        })
        .collect();
    TestReport { results }
}

#[cfg(test)]
mod tests {
    use crate::policy::{
        FileKind, PolicyFile, PolicyOptions, PolicySet, PolicySource, SourceLimits, TestOutcome,
    };

    fn set(rego: &str) -> PolicySet {
        let files = vec![PolicyFile {
            path: "t.rego".into(),
            kind: FileKind::Rego,
            content: rego.into(),
        }];
        let source =
            PolicySource::from_files("mem".into(), files, &SourceLimits::default()).unwrap();
        PolicySet::compile(&source, &PolicyOptions::default()).unwrap()
    }

    #[test]
    fn passing_failing_and_erroring_tests_are_told_apart() {
        let set = set(concat!(
            "package t\n",
            "double(x) := x * 2\n",
            "test_pass if double(2) == 4\n",
            "test_fail if double(2) == 5\n",
            "test_false := false\n",
            "test_error if 1 + \"a\" == 2\n",
            "helper := true\n",
        ));
        let report = set.run_tests(None);
        let outcomes: Vec<_> = report
            .results
            .iter()
            .map(|r| (r.name.as_str(), &r.outcome))
            .collect();
        assert_eq!(outcomes[0], ("data.t.test_error", &outcomes[0].1.clone()));
        assert!(matches!(
            outcomes[0].1,
            TestOutcome::Error(_) | TestOutcome::Fail
        ));
        assert_eq!(outcomes[1], ("data.t.test_fail", &TestOutcome::Fail));
        assert_eq!(outcomes[2], ("data.t.test_false", &TestOutcome::Fail));
        assert_eq!(outcomes[3], ("data.t.test_pass", &TestOutcome::Pass));
        assert_eq!((report.passed(), report.failed()), (1, 3));
        assert!(
            report.failure_summaries()[1].contains("t.rego:4"),
            "{:?}",
            report.failure_summaries()
        );
    }

    #[test]
    fn load_verified_rejects_a_set_whose_tests_fail() {
        let files = vec![PolicyFile {
            path: "t.rego".into(),
            kind: FileKind::Rego,
            content: "package t\ntest_no := false\n".into(),
        }];
        let source =
            PolicySource::from_files("mem".into(), files, &SourceLimits::default()).unwrap();
        let err = PolicySet::load(source, &PolicyOptions::default(), true).unwrap_err();
        assert!(
            err.to_string().contains("data.t.test_no (t.rego:2) failed"),
            "{err}"
        );
    }
}
