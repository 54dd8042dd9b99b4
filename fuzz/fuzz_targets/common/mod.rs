//! What several targets share: the repository's example policy set behind a real
//! decision pipeline (built once per process), callers, and the JSON round trip every
//! input document must survive.

#![allow(dead_code)] // Each target uses its own part.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use stepgate::{
    clock::ManualClock,
    decision::{Caller, DecisionPipeline},
    grants::MemoryGrantStore,
    policy::{PolicyOptions, PolicyStore},
};

/// The repository's `policies/` directory (the example set the product ships).
pub fn example_policies() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
}

/// A decision pipeline over the example policies, an empty in-memory grant store and a
/// stopped clock, built on first use and shared by every run of the process. Its
/// evaluation time limit is 2 s instead of 100 ms (the instruction limit is unchanged):
/// a limit that depends on the machine's load would make the fuzzer's runs unrepeatable.
pub fn pipeline() -> &'static Arc<DecisionPipeline> {
    static PIPELINE: OnceLock<Arc<DecisionPipeline>> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let clock = Arc::new(ManualClock::at(
            "2026-11-23T10:00:00Z".parse().expect("a valid time"),
        ));
        // The instruction limit is the server's; the time limit is longer, so that a
        // busy machine does not turn the same input into a different answer.
        let mut options = PolicyOptions::default();
        options.eval_limits.timeout = std::time::Duration::from_secs(2);
        let policies = Arc::new(PolicyStore::new(example_policies(), options));
        policies.reload().expect("the example policies load");
        let grants = Arc::new(MemoryGrantStore::ephemeral(clock.clone()));
        Arc::new(DecisionPipeline::new(policies, grants, clock, 16))
    })
}

/// One of the transport callers, chosen by `byte`.
pub fn caller(byte: u8) -> Caller {
    match byte % 4 {
        0 => Caller::anonymous(),
        1 => Caller::unix_peer(Some(u32::from(byte))),
        2 => Caller::unix_peer(None),
        _ => Caller::tls_peer(Some(format!("spiffe://example.org/ns/{byte}"))),
    }
}

/// An input document must be JSON that reads back as the same document (the decision
/// log and OPA's clients see it as JSON).
pub fn assert_json_round_trip(value: &regorus::Value) {
    let json = value
        .to_json_str()
        .expect("an input document serialises to JSON");
    let back = regorus::Value::from_json_str(&json).expect("its JSON parses");
    assert_eq!(
        &back, value,
        "the input document changed through JSON: {json}"
    );
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// When `STEPGATE_FUZZ_SEEDS` names a directory, writes `seeds()` there (one file each,
/// `seed-<name>`) before fuzzing starts; `fuzz/smoke.sh` points it at the target's
/// corpus, so every corpus starts from the repository's real policies, requests and
/// configuration, built with the real types.
pub fn write_seeds(seeds: impl FnOnce() -> Vec<(String, Vec<u8>)>) {
    let Some(dir) = std::env::var_os("STEPGATE_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("the seed directory is created");
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed is written");
    }
}

/// Every file under `dir` with one of `extensions`, as (path relative to `dir`, bytes),
/// sorted by path.
pub fn files_under(dir: &std::path::Path, extensions: &[&str]) -> Vec<(String, Vec<u8>)> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        ext: &[&str],
        out: &mut Vec<(String, Vec<u8>)>,
    ) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, ext, out);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ext.contains(&e))
                && let Ok(bytes) = std::fs::read(&path)
            {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                out.push((relative.to_string_lossy().into_owned(), bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, extensions, &mut out);
    out.sort();
    out
}

/// A protobuf `Struct` from a JSON object (anything else is an empty struct).
pub fn strukt(json: serde_json::Value) -> prost_types::Struct {
    use prost_types::value::Kind;
    fn value(json: serde_json::Value) -> prost_types::Value {
        let kind = match json {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.into_iter().map(value).collect(),
            }),
            object @ serde_json::Value::Object(_) => Kind::StructValue(strukt(object)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match json {
        serde_json::Value::Object(fields) => prost_types::Struct {
            fields: fields.into_iter().map(|(k, v)| (k, value(v))).collect(),
        },
        _ => prost_types::Struct::default(),
    }
}

/// The layout of the protobuf targets' inputs: one byte choosing the caller, then the
/// message. `None` when the bytes do not decode.
pub fn caller_and_message<M: prost::Message + Default>(data: &[u8]) -> Option<(Caller, M)> {
    let (&who, bytes) = data.split_first()?;
    Some((caller(who), M::decode(bytes).ok()?))
}

/// A seed in that layout.
pub fn message_seed(who: u8, message: &impl prost::Message) -> Vec<u8> {
    let mut bytes = vec![who];
    bytes.extend(message.encode_to_vec());
    bytes
}

/// A temporary directory, in memory (`/dev/shm`) where there is one: the journal syncs
/// its files, and on a disk every sync would cost the fuzzer a millisecond or more.
pub fn tempdir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("a temp dir")
}
