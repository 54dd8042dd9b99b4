//! The `stepgate` command line: `serve`, the offline tools `eval`, `check` and `test`
//! that use the same engine as the server, and `audit verify` for decision logs.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Instant,
};

use chrono::{SecondsFormat, Utc};
use clap::{CommandFactory, Parser, Subcommand};
use regorus::Value;

use crate::{
    config::{LogFormat, ServeArgs, ServeConfig},
    decision::Decision,
    policy::{Entrypoint, PolicyOptions, PolicySet, PolicySource, TestOutcome},
};

/// Exit code for a configuration error (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// `println!` for the tools' output. A reader that goes away early (`stepgate test -v |
/// head`) ends the command as SIGPIPE ends other Unix tools (exit 141, so `pipefail`
/// still sees it), instead of a panic; any other write error is reported.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout().lock(), $($arg)*) {
            stdout_failed(&err)
        }
    }};
}

fn stdout_failed(err: &std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("stepgate: cannot write the output: {err}");
    std::process::exit(1)
}

/// stepgate: a policy decision point sidecar that re-evaluates Rego at every step of an
/// access workflow.
#[derive(Debug, Parser)]
#[command(name = "stepgate", version = env!("STEPGATE_LONG_VERSION"), about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the decision service.
    Serve(ServeArgs),
    /// Evaluate one input document offline and print the decision as JSON.
    Eval(EvalArgs),
    /// Compile and lint a policy directory or bundle; errors carry file:line.
    Check {
        /// Policy directory or OPA bundle (.tar.gz).
        dir: PathBuf,
        /// The decision rule expected to exist.
        #[arg(long, default_value = "data.stepgate.decision", value_name = "RULE")]
        entrypoint: String,
    },
    /// Run the test_ rules of a policy directory or bundle, as `opa test` does.
    Test {
        /// Policy directory or OPA bundle (.tar.gz).
        dir: PathBuf,
        /// List every test, not only failures.
        #[arg(short, long)]
        verbose: bool,
        /// Only tests whose rule path contains this text.
        #[arg(long, value_name = "TEXT")]
        run: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), e.g.
    /// `stepgate completions bash > /etc/bash_completion.d/stepgate`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Decision-log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// `stepgate eval`.
#[derive(Debug, clap::Args)]
struct EvalArgs {
    /// Policy directory or OPA bundle (.tar.gz).
    #[arg(long, default_value = "./policies", value_name = "DIR")]
    policies: PathBuf,
    /// JSON file holding the input document; `-` reads it from standard input.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// The decision rule.
    #[arg(long, default_value = "data.stepgate.decision", value_name = "RULE")]
    entrypoint: String,
    /// Evaluate with the interpreter even where the rule compiles to the RVM
    /// (to cross-check the two engines).
    #[arg(long)]
    interpreter: bool,
    /// Exit 1 when the decision denies (including an undefined or failed evaluation),
    /// as `opa eval --fail` does on an undefined result.
    #[arg(long, conflicts_with = "fail_defined")]
    fail: bool,
    /// Exit 1 when the decision allows, as `opa eval --fail-defined` does on a defined
    /// result.
    #[arg(long)]
    fail_defined: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of decision-log files, given oldest first (e.g.
    /// decisions.jsonl.2 decisions.jsonl.1 decisions.jsonl); names the first bad record
    /// as FILE:LINE and exits 1.
    Verify {
        /// The files, oldest first.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // The offline tools evaluate under the server's default heap limit; `serve` sets its
    // configured one.
    crate::policy::set_heap_limit(PolicyOptions::default().heap_limit);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Eval(args) => eval(args),
        Command::Check { dir, entrypoint } => check(&dir, entrypoint),
        Command::Test { dir, verbose, run } => test(&dir, verbose, run.as_deref()),
        Command::Completions { shell } => completions(shell),
        Command::Audit {
            command: AuditCommand::Verify { files },
        } => audit_verify(&files),
    }
}

fn audit_verify(files: &[PathBuf]) -> ExitCode {
    match crate::audit::verify(files) {
        Ok(verified) => {
            let start = if verified.from_genesis {
                "from its first record"
            } else {
                "continuing records rotated away before the first file"
            };
            let last = verified
                .last
                .map_or_else(|| "none".to_string(), |h| h.to_hex());
            out!(
                "ok: {} records in {} file(s), chained {start}; last hash {last}",
                verified.records,
                files.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err.to_string()),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match ServeConfig::from_args(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("stepgate: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(config.log_format);
    // Process-wide, so set here, by the process's owner, rather than by `App` (which
    // tests run many of in one process).
    crate::policy::set_heap_limit(config.policy.heap_limit);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("stepgate-worker");
    if let Some(workers) = config.workers {
        runtime.worker_threads(workers);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("stepgate: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = {
        let _in_runtime = runtime.enter();
        shutdown_signal()
    };
    match runtime.block_on(crate::app::serve(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "stepgate stopped");
            eprintln!("stepgate: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Catches SIGTERM and SIGINT from the call on (inside the runtime), resolving on the
/// first. Called before any listener opens: a handler installed only when the future
/// is first polled, after the policies loaded, left a window in which a stop sent to a
/// process already announcing itself killed it by the default action (exit by signal,
/// no drain).
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match signals {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal: a file, a pipe or a journal gets plain
    // text, and NO_COLOR (https://no-color.org) turns them off everywhere.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "stepgate", &mut script);
    out!("{}", String::from_utf8_lossy(&script).trim_end());
    ExitCode::SUCCESS
}

fn load(dir: &Path, entrypoint: String) -> Result<PolicySet, String> {
    let options = PolicyOptions {
        decision_entrypoint: entrypoint.into(),
        ..PolicyOptions::default()
    };
    let source = PolicySource::read(dir, &options.source_limits).map_err(|e| e.to_string())?;
    PolicySet::load(source, &options, false).map_err(|e| e.to_string())
}

fn eval(args: EvalArgs) -> ExitCode {
    let set = match load(&args.policies, args.entrypoint) {
        Ok(set) => set,
        Err(err) => return fail(&err),
    };
    let input = &args.input;
    let read = if input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(input)
    };
    let text = match read {
        Ok(text) => text,
        Err(err) => return fail(&format!("{}: {err}", input.display())),
    };
    let mut document = match Value::from_json_str(&text) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => {
            return fail(&format!(
                "{}: the input document must be a JSON object",
                input.display()
            ));
        }
        Err(err) => return fail(&format!("{}: {err}", input.display())),
    };
    let now = Utc::now();
    // As the server does, the evaluation sees the current time unless the file pins one.
    if let Ok(object) = document.as_object_mut() {
        let context = object
            .get(&Value::from("context"))
            .cloned()
            .unwrap_or_else(Value::new_object);
        if let Value::Object(mut ctx) = context {
            let ctx = Arc::make_mut(&mut ctx);
            if ctx.get(&Value::from("time")).is_none() {
                ctx.insert(
                    Value::from("time"),
                    Value::from(now.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                );
            }
            object.insert(Value::from("context"), ctx.clone().into_value());
        }
    }
    let started = Instant::now();
    let outcome = if args.interpreter {
        set.evaluate_interpreted(Entrypoint::Decision, document)
    } else {
        set.evaluate(Entrypoint::Decision, document)
    };
    let decision = Decision::from_evaluation(outcome, set.provenance(), now, started.elapsed());
    out!("{}", decision_json(&decision));
    if (args.fail && !decision.allow()) || (args.fail_defined && decision.allow()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn decision_json(decision: &Decision) -> String {
    let obligations: serde_json::Value = decision
        .obligations()
        .to_json_str()
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let json = serde_json::json!({
        "allow": decision.allow(),
        "reasons": decision.reasons(),
        "obligations": obligations,
        "decision_id": decision.id().to_string(),
        "policy_revision": &**decision.policy_revision(),
        "decided_at": decision.decided_at().to_rfc3339_opts(SecondsFormat::AutoSi, true),
        "eval_duration_us": decision.eval_duration().as_secs_f64() * 1e6,
    });
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

fn check(dir: &Path, entrypoint: String) -> ExitCode {
    let set = match load(dir, entrypoint) {
        Ok(set) => set,
        Err(err) => return fail(&err),
    };
    let mut warnings = 0;
    for entry in set.entrypoints() {
        match (entry.engine, &entry.rvm_refusal) {
            ("missing", _) => {
                warnings += 1;
                out!(
                    "warning: entrypoint {} is not defined: every decision would deny",
                    entry.rule
                );
            }
            (_, Some(why)) => {
                warnings += 1;
                out!(
                    "warning: entrypoint {} runs on the slower interpreter: {why}",
                    entry.rule
                );
            }
            (engine, None) => out!("entrypoint {}: {engine}", entry.rule),
        }
    }
    out!(
        "ok: {} files, revision {}, {warnings} warning(s)",
        set.files().len(),
        set.revision()
    );
    ExitCode::SUCCESS
}

fn test(dir: &Path, verbose: bool, filter: Option<&str>) -> ExitCode {
    let set = match load(
        dir,
        PolicyOptions::default().decision_entrypoint.to_string(),
    ) {
        Ok(set) => set,
        Err(err) => return fail(&err),
    };
    let report = set.run_tests(filter);
    for result in &report.results {
        let micros = result.duration.as_secs_f64() * 1e6;
        match &result.outcome {
            TestOutcome::Pass if verbose => {
                out!("PASS {} ({}) {micros:.0}µs", result.name, result.location)
            }
            TestOutcome::Pass => {}
            TestOutcome::Fail => out!("FAIL {} ({})", result.name, result.location),
            TestOutcome::Error(e) => out!("ERROR {} ({}): {e}", result.name, result.location),
        }
    }
    out!("{} passed, {} failed", report.passed(), report.failed());
    if report.results.is_empty() {
        out!("no test_ rules found under {}", dir.display());
    }
    if report.failed() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("stepgate: {message}");
    ExitCode::FAILURE
}
