//! The case files' format (`tests/cases/README.md`), read strictly: an unknown key or
//! adapter is an error naming the file, so a typo cannot turn a case into one that
//! checks nothing.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, de::DeserializeOwned};

/// The directory of the case files (`tests/cases`), and of their policies
/// (`tests/cases/policies`).
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases")
}

/// One way of asking stepgate for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// gRPC `DecisionService/Check`.
    Check,
    /// gRPC `DecisionService/BatchCheck`, the case as its one item.
    Batch,
    /// gRPC `BatchCheck` of every deciding case of a server, compared item by item.
    BatchAll,
    /// OPA REST `POST /v1/data/stepgate/decision`, the case's input as `input`.
    OpaRest,
    /// AuthZEN `POST /access/v1/evaluation`.
    Authzen,
    /// AuthZEN `POST /access/v1/evaluations`, the case as its one item.
    AuthzenBatch,
    /// AuthZEN `evaluations` of every deciding case of a server, item by item.
    AuthzenBatchAll,
    /// Envoy `envoy.service.auth.v3.Authorization/Check`.
    ExtAuthz,
}

impl Adapter {
    /// The adapters a case in stepgate's Check shape runs on, in the order they run.
    pub const CHECK_SHAPED: [Adapter; 7] = [
        Adapter::Check,
        Adapter::Batch,
        Adapter::BatchAll,
        Adapter::OpaRest,
        Adapter::Authzen,
        Adapter::AuthzenBatch,
        Adapter::AuthzenBatchAll,
    ];

    /// The adapter whose expectation (`on`) and skip (`not_on`) a batch form shares
    /// unless it has its own: its single call's.
    pub fn family(self) -> Adapter {
        match self {
            Adapter::Batch | Adapter::BatchAll => Adapter::Check,
            Adapter::AuthzenBatch | Adapter::AuthzenBatchAll => Adapter::Authzen,
            other => other,
        }
    }

    /// The name used in case files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Adapter::Check => "check",
            Adapter::Batch => "batch",
            Adapter::BatchAll => "batch_all",
            Adapter::OpaRest => "opa_rest",
            Adapter::Authzen => "authzen",
            Adapter::AuthzenBatch => "authzen_batch",
            Adapter::AuthzenBatchAll => "authzen_batch_all",
            Adapter::ExtAuthz => "ext_authz",
        }
    }
}

impl fmt::Display for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Server settings a file (or a case) asks for; unset ones keep the test defaults
/// (`support::config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `--eval-max-instructions`.
    pub max_instructions: Option<usize>,
    /// `--max-batch`.
    pub max_batch: Option<usize>,
    /// `--max-message-bytes` (gRPC messages and HTTP bodies).
    pub max_message_bytes: Option<usize>,
    /// `false`: the server answers before any policy revision is loaded.
    pub load_policies: Option<bool>,
    /// `--envoy-entrypoint`.
    pub envoy_entrypoint: Option<String>,
    /// `--envoy-dry-run`.
    pub envoy_dry_run: Option<bool>,
}

impl Settings {
    /// These settings, with `base`'s where these leave one unset.
    pub fn over(&self, base: &Settings) -> Settings {
        Settings {
            max_instructions: self.max_instructions.or(base.max_instructions),
            max_batch: self.max_batch.or(base.max_batch),
            max_message_bytes: self.max_message_bytes.or(base.max_message_bytes),
            load_policies: self.load_policies.or(base.load_policies),
            envoy_entrypoint: self
                .envoy_entrypoint
                .clone()
                .or_else(|| base.envoy_entrypoint.clone()),
            envoy_dry_run: self.envoy_dry_run.or(base.envoy_dry_run),
        }
    }
}

/// A case file: cases of one area, with inputs `I` and expectations `E`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "I: Deserialize<'de>, E: Deserialize<'de>")
)]
pub struct CaseFile<I, E> {
    /// What the file covers, in a line.
    pub about: String,
    /// The policy of every case that names none.
    pub policy: Option<String>,
    /// Server settings for every case.
    #[serde(default)]
    pub server: Settings,
    /// Adapters no case of the file runs on, and why.
    #[serde(default)]
    pub not_on: BTreeMap<Adapter, String>,
    /// The cases, run in this order on each server.
    #[serde(rename = "case")]
    pub cases: Vec<Case<I, E>>,
}

/// One case: an input, and what every adapter must answer.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "I: Deserialize<'de>, E: Deserialize<'de>")
)]
pub struct Case<I, E> {
    /// Unique in its file; failures name it.
    pub name: String,
    /// A file under `tests/cases/policies`, or inline Rego; else the file's.
    pub policy: Option<String>,
    /// Settings over the file's.
    #[serde(default)]
    pub server: Settings,
    /// What is asked.
    pub input: I,
    /// What every adapter answers...
    pub expect: E,
    /// ...except these, which answer this instead.
    #[serde(default)]
    pub on: BTreeMap<Adapter, E>,
    /// Adapters this case does not run on, and why.
    #[serde(default)]
    pub not_on: BTreeMap<Adapter, String>,
}

impl<I, E> Case<I, E> {
    /// What `adapter` must answer.
    pub fn expected(&self, adapter: Adapter) -> &E {
        self.on
            .get(&adapter)
            .or_else(|| self.on.get(&adapter.family()))
            .unwrap_or(&self.expect)
    }
}

/// Which server a case runs on: the same policy and settings share one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerKey {
    /// A file name under `tests/cases/policies`, or inline Rego.
    pub policy: String,
    /// The file's settings with the case's over them.
    pub settings: Settings,
}

impl<I: DeserializeOwned, E: DeserializeOwned> CaseFile<I, E> {
    /// Reads `tests/cases/<name>`; every adapter named in it must be one of `adapters`.
    pub fn load(name: &str, adapters: &[Adapter]) -> Self {
        let path = cases_dir().join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file: Self =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!file.cases.is_empty(), "{name}: no cases");
        let mut names = std::collections::BTreeSet::new();
        for case in &file.cases {
            assert!(
                names.insert(&case.name),
                "{name}: two cases named {:?}",
                case.name
            );
            assert!(
                case.policy.is_some() || file.policy.is_some(),
                "{name}: case {:?} names no policy and the file gives none",
                case.name
            );
            let named = case.on.keys().chain(case.not_on.keys());
            for adapter in named.chain(file.not_on.keys()) {
                assert!(
                    adapters.contains(adapter),
                    "{name}: case {:?} names {adapter}, which does not run these cases",
                    case.name
                );
            }
            for adapter in case.on.keys() {
                assert!(
                    file.skipped(case, *adapter).is_none(),
                    "{name}: case {:?} expects an answer from {adapter} and skips it",
                    case.name
                );
            }
        }
        file
    }

    /// The cases grouped by the server they need, in the order each server is first
    /// needed.
    pub fn by_server(&self) -> Vec<(ServerKey, Vec<&Case<I, E>>)> {
        let mut groups: Vec<(ServerKey, Vec<&Case<I, E>>)> = Vec::new();
        for case in &self.cases {
            let key = ServerKey {
                policy: case
                    .policy
                    .clone()
                    .or_else(|| self.policy.clone())
                    .unwrap_or_default(),
                settings: case.server.over(&self.server),
            };
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, cases)) => cases.push(case),
                None => groups.push((key, vec![case])),
            }
        }
        groups
    }

    /// Why `case` does not run on `adapter`, when the case or the file says it does not
    /// (for the adapter or its family).
    pub fn skipped<'a>(&'a self, case: &'a Case<I, E>, adapter: Adapter) -> Option<&'a str> {
        [adapter, adapter.family()]
            .iter()
            .find_map(|a| case.not_on.get(a).or_else(|| self.not_on.get(a)))
            .map(String::as_str)
    }
}

/// The policy files of `key`: a file of `tests/cases/policies`, or the inline Rego as
/// `inline.rego`.
pub fn policy_files(key: &ServerKey) -> Vec<(String, String)> {
    let spec = key.policy.trim();
    if spec.ends_with(".rego") && !spec.contains('\n') {
        let path = cases_dir().join("policies").join(spec);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        vec![(spec.to_string(), text)]
    } else {
        vec![("inline.rego".to_string(), key.policy.clone())]
    }
}
