//! The policy engine: loading a policy directory, compiling it (regorus RVM where an
//! entrypoint compiles to bytecode, the interpreter where it does not), evaluating with
//! limits, running a set's own `test_` rules, and swapping revisions live.
//!
//! This module knows nothing of gRPC, grants or decisions: it turns an input [`Value`]
//! into a result [`Value`] under a [`PolicySet`] revision, or an error. Failing closed is
//! the decision pipeline's job.
//!
//! [`Value`]: regorus::Value

mod bundle;
mod canonical;
mod compile;
mod eval;
mod limits;
mod remote;
mod signature;
mod source;
mod store;
mod testing;
mod watch;

use std::{path::PathBuf, time::Duration};

pub use bundle::BundleTrust;
pub use compile::{Entrypoint, EntrypointInfo, PolicyOptions, PolicySet, Provenance};
pub use limits::{EvalError, EvalLimits, LimitKind, limit_hits, set_heap_limit};
pub use remote::{
    BundleOutcome, BundlePoller, BundleServerOptions, BundleStats, BundleStatus, ClientError,
    spawn_poller,
};
pub use signature::{BundleVerifier, KeyError, SignatureError, SigningAlg};
pub use source::{FileKind, PolicyFile, PolicySource, SourceLimits};
pub use store::{Activation, PolicyStore, ReloadCounts};
pub use testing::{TestOutcome, TestReport, TestResult};
pub use watch::{PolicyWatcher, watch_policies};

/// Why a policy set could not be loaded. Every variant names the file (and line where
/// there is one), so an operator can fix it without guessing.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The policy path is neither a directory nor a bundle (`.tar.gz`, `.tgz`).
    #[error("{}: not a directory or an OPA bundle (.tar.gz)", .0.display())]
    NotADirectory(PathBuf),
    /// An OPA bundle is malformed or asks for what stepgate refuses.
    #[error("{}: {problem}", path.display())]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong, naming the entry where there is one.
        problem: String,
    },
    /// A bundle's signature is missing, does not verify, or does not cover its files.
    #[error("{}: {source}", bundle.display())]
    Signature {
        /// The bundle file or URL.
        bundle: PathBuf,
        /// What is wrong with the signature.
        source: SignatureError,
    },
    /// The directory tree is nested too deeply (or loops through links).
    #[error("{}: directory tree nested too deeply", .0.display())]
    TooDeepTree(PathBuf),
    /// The set has more files than allowed.
    #[error("{}: more than {limit} policy and data files", root.display())]
    TooManyFiles {
        /// The set's root.
        root: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The set has no `.rego` file at all.
    #[error("{}: no .rego files found", .0.display())]
    NoPolicies(PathBuf),
    /// A file is over the size limit.
    #[error("{path}: {size} bytes is over the {limit}-byte limit for a policy file")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A file is not UTF-8.
    #[error("{0}: not valid UTF-8")]
    NotUtf8(String),
    /// A Rego file nests brackets deeper than allowed (parsing it could take forever).
    #[error("{path}:{line}: brackets nested deeper than {limit} levels")]
    TooDeep {
        /// The file.
        path: String,
        /// The line where the limit was crossed.
        line: usize,
        /// The limit.
        limit: usize,
    },
    /// A Rego file calls a builtin stepgate refuses.
    #[error("{path}:{line}: {call} is not supported (regorus always returns undefined for it)")]
    Forbidden {
        /// The file.
        path: String,
        /// The line of the call.
        line: usize,
        /// The builtin.
        call: &'static str,
    },
    /// A data file does not parse or conflicts with other data.
    #[error("{path}: {message}")]
    Data {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// regorus rejected the set; its message carries file:line:col.
    #[error("{0}")]
    Compile(String),
    /// Compiling took longer than allowed.
    #[error("compiling the policy set took longer than {0:?}")]
    CompileTimeout(Duration),
    /// The set's own `test_` rules failed.
    #[error("{} policy test(s) failed: {}", .0.len(), .0.join("; "))]
    TestsFailed(Vec<String>),
}
