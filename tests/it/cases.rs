//! API cases as data: `tests/cases/*.toml` (the format: `tests/cases/README.md`). Each
//! case runs on every adapter that can express it, against the real server started once
//! per policy and settings of its file. A failure names the case, the adapter and what
//! differs; each file prints how many cases ran on each adapter and why the others were
//! skipped, and a case that ran on no adapter fails its file.

mod check;
mod envoy;
mod model;
mod outcome;

use std::collections::BTreeMap;

use model::{Adapter, Case, ServerKey, cases_dir, policy_files};

use super::support::Server;

/// Every case file: each has its test below.
const FILES: [&str; 6] = [
    "decisions.toml",
    "validation.toml",
    "fail_closed.toml",
    "identities.toml",
    "limits.toml",
    "ext_authz.toml",
];

#[tokio::test]
async fn decisions() {
    check::run_file("decisions.toml").await;
}

#[tokio::test]
async fn validation() {
    check::run_file("validation.toml").await;
}

#[tokio::test]
async fn fail_closed() {
    check::run_file("fail_closed.toml").await;
}

#[tokio::test]
async fn identities() {
    check::run_file("identities.toml").await;
}

#[tokio::test]
async fn limits() {
    check::run_file("limits.toml").await;
}

#[tokio::test]
async fn ext_authz() {
    envoy::run_file("ext_authz.toml").await;
}

#[test]
fn every_case_file_has_its_test() {
    let mut found: Vec<String> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    found.sort();
    let mut listed = FILES.map(String::from).to_vec();
    listed.sort();
    assert_eq!(found, listed, "tests/cases/*.toml against cases::FILES");
}

/// The batch size a server takes when its file sets none.
const MAX_BATCH: usize = 16;

/// A server for `key`'s cases, and the largest batch it takes.
async fn start(key: &ServerKey) -> (Server, usize) {
    let files = policy_files(key);
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let settings = key.settings.clone();
    let max_batch = settings.max_batch.unwrap_or(MAX_BATCH);
    let tweak = move |c: &mut stepgate::config::ServeConfig| {
        c.max_batch = max_batch;
        if let Some(n) = settings.max_instructions {
            c.policy.eval_limits.max_instructions = n;
        }
        if let Some(n) = settings.max_message_bytes {
            c.max_message_bytes = n;
        }
        if let Some(entrypoint) = settings.envoy_entrypoint {
            c.policy.envoy_entrypoint = entrypoint.into();
        }
        if let Some(dry_run) = settings.envoy_dry_run {
            c.envoy_dry_run = dry_run;
        }
    };
    let server = if key.settings.load_policies == Some(false) {
        Server::bound(&files, tweak).await
    } else {
        Server::start_with(&files, tweak).await
    };
    (server, max_batch)
}

/// What ran where in one file, and what failed.
struct Tally {
    file: String,
    about: String,
    ran: BTreeMap<Adapter, usize>,
    /// Per adapter: why cases were skipped, and how many for each reason.
    skipped: BTreeMap<Adapter, BTreeMap<String, usize>>,
    /// Per case: on how many adapters it ran.
    runs: BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Tally {
    fn new(file: &str, about: &str) -> Self {
        Self {
            file: file.into(),
            about: about.into(),
            ran: BTreeMap::new(),
            skipped: BTreeMap::new(),
            runs: BTreeMap::new(),
            failures: Vec::new(),
        }
    }

    /// `case` ran on `adapter`; `Err` says what differed.
    fn record(&mut self, case: &str, adapter: Adapter, result: Result<(), String>) {
        *self.ran.entry(adapter).or_default() += 1;
        *self.runs.entry(case.into()).or_default() += 1;
        if let Err(difference) = result {
            self.failures
                .push(format!("case {case:?} on {adapter}: {difference}"));
        }
    }

    /// `case` does not run on `adapter`, for `why`.
    fn skip(&mut self, case: &str, adapter: Adapter, why: &str) {
        self.runs.entry(case.into()).or_default();
        *self
            .skipped
            .entry(adapter)
            .or_default()
            .entry(why.into())
            .or_default() += 1;
    }

    /// `adapter` cannot express `case`, for `why`: a skip, unless the case names the
    /// adapter in `on` (an answer it inherits from its family is not one it must give).
    fn cannot<I, E>(&mut self, case: &Case<I, E>, adapter: Adapter, why: &str) {
        if case.on.contains_key(&adapter) {
            self.runs.entry(case.name.clone()).or_default();
            self.failures.push(format!(
                "case {:?} expects an answer from {adapter}, which cannot express it: {why}",
                case.name
            ));
        } else {
            self.skip(&case.name, adapter, why);
        }
    }

    /// Prints what ran where; fails on any difference or a case that ran nowhere.
    fn finish(mut self) {
        for (case, runs) in &self.runs {
            if *runs == 0 {
                self.failures
                    .push(format!("case {case:?} ran on no adapter"));
            }
        }
        let mut summary = format!(
            "tests/cases/{} ({}): {} cases\n",
            self.file,
            self.about,
            self.runs.len()
        );
        let adapters: std::collections::BTreeSet<Adapter> = self
            .ran
            .keys()
            .chain(self.skipped.keys())
            .copied()
            .collect();
        for adapter in adapters {
            let ran = self.ran.get(&adapter).copied().unwrap_or_default();
            summary.push_str(&format!("  {:<18} {ran:>3} ran", adapter.name()));
            for (why, count) in self.skipped.get(&adapter).into_iter().flatten() {
                summary.push_str(&format!("; {count} skipped: {why}"));
            }
            summary.push('\n');
        }
        println!("{summary}");
        assert!(
            self.failures.is_empty(),
            "{summary}\n{} failure(s):\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}
