//! Compiling a [`PolicySource`] into a [`PolicySet`]: one regorus engine with the modules
//! and data, and per entrypoint either an RVM program or the interpreter.

use std::{
    collections::BTreeMap,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use regorus::{Engine, Value, languages::rego::compiler::Compiler, rvm::program::Program};

use super::{
    BundleTrust, BundleVerifier, EvalLimits, FileKind, LoadError, PolicySource, SourceLimits,
    TestReport,
    limits::{apply_engine_limits, bounded, classify_engine_error},
};

/// The rules stepgate evaluates, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entrypoint {
    /// The decision rule every step is decided by (default `data.stepgate.decision`).
    Decision,
    /// The rule Envoy's ext_authz `Check` is decided by (default `data.envoy.authz.allow`),
    /// as the OPA-Envoy plugin evaluates it.
    Envoy,
}

impl Entrypoint {
    pub(super) const ALL: [Entrypoint; 2] = [Entrypoint::Decision, Entrypoint::Envoy];

    pub(super) const fn index(self) -> usize {
        self as usize
    }
}

/// How to load and evaluate policy sets.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// The decision rule, e.g. `data.stepgate.decision`.
    pub decision_entrypoint: Arc<str>,
    /// The Envoy ext_authz rule, e.g. `data.envoy.authz.allow`.
    pub envoy_entrypoint: Arc<str>,
    /// Guards applied to every file before parsing.
    pub source_limits: SourceLimits,
    /// Limits applied to every evaluation.
    pub eval_limits: EvalLimits,
    /// Longest a set may take to compile (and run its tests) before it is rejected.
    pub compile_timeout: Duration,
    /// Longest one of a set's `test_` rules may run. Larger than the evaluation limit:
    /// tests exercise whole workflows, and a debug build on a busy node must not refuse
    /// a correct set.
    pub test_timeout: Duration,
    /// The key bundles are verified with (`--bundle-verification-key`); `None`: a bundle
    /// server's signed bundles are refused and a bundle file's signatures are not
    /// verified.
    pub bundle_verifier: Option<Arc<BundleVerifier>>,
    /// The process heap limit `stepgate serve` sets (see [`super::set_heap_limit`]);
    /// `None`: no limit. Process-wide, so it is applied by whoever owns the process, not
    /// by loading a set.
    pub heap_limit: Option<u64>,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        Self {
            decision_entrypoint: "data.stepgate.decision".into(),
            envoy_entrypoint: "data.envoy.authz.allow".into(),
            source_limits: SourceLimits::default(),
            eval_limits: EvalLimits::default(),
            compile_timeout: Duration::from_secs(10),
            test_timeout: Duration::from_secs(2),
            heap_limit: Some(192 << 20),
            bundle_verifier: None,
        }
    }
}

impl PolicyOptions {
    /// How a bundle file given as `--policies` is trusted: verified when a key is set.
    pub fn local_bundle_trust(&self) -> BundleTrust<'_> {
        self.bundle_verifier
            .as_deref()
            .map_or(BundleTrust::WarnSigned, BundleTrust::Verify)
    }

    /// How a bundle server's bundle is trusted: verified when a key is set, else a
    /// signed one is refused (as OPA refuses it).
    pub fn remote_bundle_trust(&self) -> BundleTrust<'_> {
        self.bundle_verifier
            .as_deref()
            .map_or(BundleTrust::RefuseSigned, BundleTrust::Verify)
    }

    fn rule(&self, entrypoint: Entrypoint) -> &Arc<str> {
        match entrypoint {
            Entrypoint::Decision => &self.decision_entrypoint,
            Entrypoint::Envoy => &self.envoy_entrypoint,
        }
    }
}

/// How one entrypoint is evaluated in a set.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// Compiled to RVM bytecode: the fast path.
    Rvm(Arc<Program>),
    /// Evaluated by cloning the warmed interpreter engine (the RVM compiler refused it).
    Interpreter,
    /// No rule of that name exists in the set.
    Missing,
}

#[derive(Debug, Clone)]
pub(super) struct CompiledEntrypoint {
    pub(super) rule: Arc<str>,
    pub(super) target: Target,
    /// Why the RVM compiler refused the entrypoint, when it did.
    pub(super) rvm_refusal: Option<String>,
}

/// What `stepgate check` reports about an entrypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrypointInfo {
    /// The rule.
    pub rule: String,
    /// `rvm`, `interpreter` or `missing`.
    pub engine: &'static str,
    /// Why the RVM compiler refused it, if it did.
    pub rvm_refusal: Option<String>,
}

/// Which policy a decision was made under: the set's content hash and, for a set from an
/// OPA bundle, the revision its manifest names. Cloning it clones two `Arc`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// `sha256:<hex>` of the set's files (`none` when no set is loaded).
    pub revision: Arc<str>,
    /// The bundle's manifest revision; `None` unless the set came from a bundle.
    pub bundle_revision: Option<Arc<str>>,
}

impl Provenance {
    /// No set loaded.
    pub fn none() -> Self {
        Self::from("none")
    }
}

impl From<Arc<str>> for Provenance {
    fn from(revision: Arc<str>) -> Self {
        Self {
            revision,
            bundle_revision: None,
        }
    }
}

impl From<&str> for Provenance {
    fn from(revision: &str) -> Self {
        Self::from(Arc::<str>::from(revision))
    }
}

/// A compiled, immutable policy revision. Cheap to share (`Arc`); evaluation never
/// takes a lock.
#[derive(Debug)]
pub struct PolicySet {
    pub(super) revision: Arc<str>,
    pub(super) bundle_revision: Option<Arc<str>>,
    pub(super) files: Vec<String>,
    /// Modules and data, warmed by one evaluation so clones evaluate at full speed.
    pub(super) engine: Engine,
    pub(super) data: Value,
    pub(super) entrypoints: Vec<CompiledEntrypoint>,
    pub(super) limits: EvalLimits,
    /// The time limit of each `test_` rule.
    pub(super) test_timeout: Duration,
    /// `data.<package>.<rule>` of every rule, with `file:line` of its first definition.
    pub(super) rules: BTreeMap<String, String>,
}

impl PolicySet {
    /// The revision: `sha256:<hex>` of the set's files.
    pub fn revision(&self) -> &Arc<str> {
        &self.revision
    }

    /// The bundle's manifest revision, for a set from a bundle.
    pub fn bundle_revision(&self) -> Option<&Arc<str>> {
        self.bundle_revision.as_ref()
    }

    /// The revision and bundle revision, as a decision records them.
    pub fn provenance(&self) -> Provenance {
        Provenance {
            revision: self.revision.clone(),
            bundle_revision: self.bundle_revision.clone(),
        }
    }

    /// The files of the set, relative to its root.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Every policy module as `(file, source text)`, for `GET /v1/policies`.
    pub fn policy_sources(&self) -> Vec<(String, String)> {
        self.engine
            .get_policies()
            .map(|sources| {
                sources
                    .iter()
                    .map(|s| (s.file().clone(), s.contents().clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How each entrypoint is evaluated.
    pub fn entrypoints(&self) -> Vec<EntrypointInfo> {
        self.entrypoints
            .iter()
            .map(|e| EntrypointInfo {
                rule: e.rule.to_string(),
                engine: match e.target {
                    Target::Rvm(_) => "rvm",
                    Target::Interpreter => "interpreter",
                    Target::Missing => "missing",
                },
                rvm_refusal: e.rvm_refusal.clone(),
            })
            .collect()
    }

    /// Compiles a source into a set, without running its tests.
    pub fn compile(source: &PolicySource, options: &PolicyOptions) -> Result<Self, LoadError> {
        let mut engine = Engine::new();
        apply_engine_limits(&mut engine, &options.eval_limits);
        let mut data = Value::new_object();
        for file in &source.files {
            match file.kind {
                FileKind::Rego => {
                    engine
                        .add_policy(file.path.clone(), file.content.clone())
                        .map_err(|e| LoadError::Compile(e.to_string()))?;
                }
                FileKind::Json | FileKind::Yaml => {
                    let parsed = if file.kind == FileKind::Json {
                        Value::from_json_str(&file.content)
                    } else {
                        Value::from_yaml_str(&file.content)
                    };
                    let data_err = |message: String| LoadError::Data {
                        path: file.path.clone(),
                        message,
                    };
                    let value = parsed.map_err(|e| data_err(e.to_string()))?;
                    let placed = place_at_directory(&file.path, value);
                    if !matches!(placed, Value::Object(_)) {
                        return Err(data_err(
                            "a data file at the root must hold an object".into(),
                        ));
                    }
                    engine
                        .add_data(placed.clone())
                        .map_err(|e| data_err(e.to_string()))?;
                    data = merged(data, placed);
                }
            }
        }
        let rules = rule_locations(&mut engine);

        let mut entrypoints = Vec::with_capacity(Entrypoint::ALL.len());
        for entrypoint in Entrypoint::ALL {
            let rule = options.rule(entrypoint).clone();
            entrypoints.push(compile_entrypoint(&mut engine, &rules, rule)?);
        }
        // Warm the interpreter: clones of a never-evaluated engine re-prepare on every call.
        // Under the evaluation limits (set above): a warm-up that exceeds them stops, and
        // its error is of no interest (the entrypoint's evaluations will report it).
        engine.set_input(Value::new_object());
        for entry in &entrypoints {
            if !matches!(entry.target, Target::Missing) {
                let _ = bounded(options.eval_limits.max_memory, || {
                    engine
                        .eval_rule(entry.rule.to_string())
                        .map_err(|err| classify_engine_error(&err))
                });
            }
        }
        Ok(Self {
            revision: source.revision.clone(),
            bundle_revision: source.bundle_revision.clone(),
            files: source.files.iter().map(|f| f.path.clone()).collect(),
            engine,
            data,
            entrypoints,
            limits: options.eval_limits,
            test_timeout: options.test_timeout,
            rules,
        })
    }

    /// Compiles the set at `source` (and, with `verify`, runs its tests) on a separate
    /// thread bounded by `options.compile_timeout`, so no policy file can hang the
    /// caller. With `verify`, a set whose own `test_` rules fail is rejected.
    ///
    /// The bound is also inside the work: the warm-up runs under the evaluation limits
    /// and the tests under the test limit cut to the compile deadline, so a set that
    /// takes too long stops working at the deadline instead of spinning on after it.
    pub fn load(
        source: PolicySource,
        options: &PolicyOptions,
        verify: bool,
    ) -> Result<Self, LoadError> {
        let timeout = options.compile_timeout;
        let deadline = Instant::now() + timeout;
        let options = options.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("stepgate-policy-compile".into())
            .spawn(move || {
                let result = Self::compile(&source, &options).and_then(|set| {
                    if !verify {
                        return Ok(set);
                    }
                    let report = super::testing::run(&set, None, Some(deadline));
                    let failures = report.failure_summaries();
                    if failures.is_empty() {
                        Ok(set)
                    } else {
                        Err(LoadError::TestsFailed(failures))
                    }
                });
                let _ = tx.send(result);
            })
            .map_err(|e| LoadError::Compile(format!("cannot start the compile thread: {e}")))?;
        // On timeout the thread is abandoned: it holds no lock and swaps nothing in.
        rx.recv_timeout(timeout)
            .map_err(|_| LoadError::CompileTimeout(timeout))?
    }

    /// Runs the set's `test_` rules (optionally only those whose path contains `filter`),
    /// each under the test time limit.
    pub fn run_tests(&self, filter: Option<&str>) -> TestReport {
        super::testing::run(self, filter, None)
    }
}

fn compile_entrypoint(
    engine: &mut Engine,
    rules: &BTreeMap<String, String>,
    rule: Arc<str>,
) -> Result<CompiledEntrypoint, LoadError> {
    if !rules.contains_key(rule.as_ref()) {
        return Ok(CompiledEntrypoint {
            rule,
            target: Target::Missing,
            rvm_refusal: None,
        });
    }
    let compiled = engine
        .compile_with_entrypoint(&rule)
        .map_err(|e| LoadError::Compile(e.to_string()))?;
    match Compiler::compile_from_policy(&compiled, &[rule.as_ref()]) {
        Ok(program) => Ok(CompiledEntrypoint {
            rule,
            target: Target::Rvm(program),
            rvm_refusal: None,
        }),
        Err(e) => Ok(CompiledEntrypoint {
            rule,
            target: Target::Interpreter,
            rvm_refusal: Some(e.to_string()),
        }),
    }
}

/// Wraps `value` in objects named after the file's directories, as OPA does:
/// `a/b/data.json` lands at `data.a.b`.
fn place_at_directory(path: &str, value: Value) -> Value {
    let mut dirs: Vec<&str> = path.split('/').collect();
    dirs.pop();
    dirs.into_iter().rev().fold(value, |inner, dir| {
        let mut object = regorus::value::Object::new();
        object.insert(Value::from(dir), inner);
        object.into_value()
    })
}

/// Deep-merges two data objects (the later wins on non-object conflicts, which
/// `Engine::add_data` has already refused).
fn merged(base: Value, extra: Value) -> Value {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            let mut out = (*base).clone();
            for (key, value) in extra.iter() {
                let value = match out.get(key) {
                    Some(existing) => merged(existing.clone(), value.clone()),
                    None => value.clone(),
                };
                out.insert(key.clone(), value);
            }
            out.into_value()
        }
        (_, extra) => extra,
    }
}

/// Every rule's `data.<package>.<name>` path with `file:line`, from the parsed modules.
fn rule_locations(engine: &mut Engine) -> BTreeMap<String, String> {
    use regorus::unstable::{Rule, RuleHead};
    let mut rules = BTreeMap::new();
    for module in engine.get_modules().iter() {
        let package = module.package.refr.span().text();
        for rule in &module.policy {
            let refr = match rule.as_ref() {
                Rule::Spec {
                    head:
                        RuleHead::Compr { refr, .. }
                        | RuleHead::Set { refr, .. }
                        | RuleHead::Func { refr, .. },
                    ..
                } => refr,
                Rule::Default { refr, .. } => refr,
            };
            let span = refr.span();
            let name = span.text();
            // Only the first path component: `a.b := 1` and `a[x] := 1` define under `a`.
            let name = name.split(['.', '[']).next().unwrap_or(name).trim();
            rules
                .entry(format!("data.{package}.{name}"))
                .or_insert_with(|| format!("{}:{}", span.source.file(), span.line));
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyFile;

    fn source(files: &[(&str, &str)]) -> PolicySource {
        let files = files
            .iter()
            .map(|(path, content)| PolicyFile {
                path: (*path).into(),
                kind: if path.ends_with(".rego") {
                    FileKind::Rego
                } else if path.ends_with(".json") {
                    FileKind::Json
                } else {
                    FileKind::Yaml
                },
                content: (*content).into(),
            })
            .collect();
        PolicySource::from_files("mem".into(), files, &SourceLimits::default()).unwrap()
    }

    #[test]
    fn simple_decision_compiles_to_rvm() {
        let set = PolicySet::compile(
            &source(&[(
                "p.rego",
                "package stepgate\ndecision := {\"allow\": input.step == \"use\"}\n",
            )]),
            &PolicyOptions::default(),
        )
        .unwrap();
        let info = set.entrypoints();
        assert_eq!(info[0].engine, "rvm", "{info:?}");
    }

    /// A set whose one test runs for as long as it is let: many small steps (the timer is
    /// checked between them), not one long builtin call.
    const SLOW_TEST: &str = "package stepgate
decision := {\"allow\": true}
test_slow if count([1 | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000); x * y == -1]) > 0\n";

    #[test]
    fn compiling_is_bounded_in_time() {
        crate::policy::limits::test_heap_limit();
        let options = PolicyOptions {
            compile_timeout: Duration::from_millis(50),
            test_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let started = Instant::now();
        let err = PolicySet::load(source(&[("p.rego", SLOW_TEST)]), &options, true).unwrap_err();
        // Rejected at the deadline: by the wait, or by the test's own limit cut to it.
        assert!(
            matches!(&err, LoadError::CompileTimeout(_))
                || matches!(&err, LoadError::TestsFailed(f) if f[0].contains("time")),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn tests_stop_working_at_the_compile_deadline() {
        crate::policy::limits::test_heap_limit();
        let options = PolicyOptions {
            test_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let set = PolicySet::compile(&source(&[("p.rego", SLOW_TEST)]), &options).unwrap();
        let started = Instant::now();
        let report =
            super::super::testing::run(&set, None, Some(started + Duration::from_millis(50)));
        // The test itself stopped (this call returned), soon after the deadline.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(&report.results[0].outcome, crate::policy::TestOutcome::Error(e) if e.contains("time")),
            "{:?}",
            report.results
        );
    }

    #[test]
    fn tests_run_under_the_test_limit_not_the_evaluation_limit() {
        // A correct test slower than one decision may be: accepted under a test limit
        // larger than the evaluation limit (a debug build on a busy node).
        crate::policy::limits::test_heap_limit();
        let rego = "package stepgate
decision := {\"allow\": true}
test_many if count([y | some x in numbers.range(1, 20000); y := x * 2; y > 0]) == 20000\n";
        let options = PolicyOptions {
            eval_limits: EvalLimits {
                timeout: Duration::from_micros(1),
                ..EvalLimits::default()
            },
            ..Default::default()
        };
        assert!(PolicySet::load(source(&[("p.rego", rego)]), &options, true).is_ok());
        let options = PolicyOptions {
            test_timeout: Duration::from_micros(1),
            ..Default::default()
        };
        let err = PolicySet::load(source(&[("p.rego", rego)]), &options, true).unwrap_err();
        assert!(err.to_string().contains("time"), "{err}");
    }

    #[test]
    fn missing_entrypoint_is_reported_not_fatal() {
        let set = PolicySet::compile(
            &source(&[("p.rego", "package other\nx := 1\n")]),
            &PolicyOptions::default(),
        )
        .unwrap();
        assert_eq!(set.entrypoints()[0].engine, "missing");
    }

    #[test]
    fn compile_errors_carry_file_and_line() {
        let err = PolicySet::compile(
            &source(&[
                ("ok.rego", "package a\nx := 1\n"),
                ("bad.rego", "package b\n\ny := [1, 2\n"),
            ]),
            &PolicyOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("bad.rego:"), "{err}");
    }

    #[test]
    fn data_files_land_at_their_directory_path() {
        let set = PolicySet::compile(
            &source(&[
                ("p.rego", "package stepgate\ndecision := {\"allow\": data.teams.payments.owner == \"alice\"}\n"),
                ("teams/payments/data.yaml", "owner: alice\n"),
                ("data.json", "{\"top\": true}"),
            ]),
            &PolicyOptions::default(),
        )
        .unwrap();
        let out = set
            .evaluate(Entrypoint::Decision, Value::new_object())
            .unwrap();
        assert_eq!(out["allow"], Value::from(true));
        assert_eq!(set.data["top"], Value::from(true));
    }

    #[test]
    fn rule_locations_cover_every_rule_kind() {
        let set = PolicySet::compile(
            &source(&[(
                "p.rego",
                "package a.b\ndefault allow := false\nallow if input.x\ndeny contains \"m\" if input.y\nf(x) := x\nobj.key := 1\n",
            )]),
            &PolicyOptions::default(),
        )
        .unwrap();
        let names: Vec<_> = set.rules.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "data.a.b.allow",
                "data.a.b.deny",
                "data.a.b.f",
                "data.a.b.obj"
            ]
        );
        assert_eq!(set.rules["data.a.b.allow"], "p.rego:2");
    }
}
