//! Decision-log tests: chain verification and tampering, rotation, hostile values,
//! masking. (The full-buffer paths run through the server in `tests/it/audit.rs`.)

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use opentelemetry::trace::{SpanId, TraceId};
use regorus::Value;
use uuid::Uuid;

use super::*;

/// What an [`Entry`] borrows from a decision: here a deny `because`, under `sha256:rev`,
/// made now.
#[derive(Debug, Clone)]
pub(crate) struct Decided {
    pub(crate) id: Uuid,
    pub(crate) decided_at: DateTime<Utc>,
    reasons: Vec<String>,
    pub(crate) obligations: Value,
    revision: Arc<str>,
}

impl Decided {
    pub(crate) fn deny() -> Self {
        Self {
            id: Uuid::now_v7(),
            decided_at: Utc::now(),
            reasons: vec!["because".into()],
            obligations: Value::new_object(),
            revision: "sha256:rev".into(),
        }
    }

    /// Its entry on `input`, untraced, about no grant.
    pub(crate) fn entry<'a>(&'a self, input: &'a Value) -> Entry<'a> {
        Entry {
            id: self.id,
            decided_at: self.decided_at,
            allow: false,
            reasons: &self.reasons,
            obligations: &self.obligations,
            policy_revision: &self.revision,
            bundle_revision: None,
            eval_duration: Duration::ZERO,
            input,
            trace: None,
            grant: None,
        }
    }
}

/// An input and a decision to log (an [`Entry`] borrows them).
fn entry(subject: &str) -> (Value, Decided) {
    let input = Value::from_json_str(
        &serde_json::json!({
            "step": "use",
            "subject": {"id": subject, "kind": "agent", "attributes": {"note": subject}},
            "caller": {"id": "uds:uid=0", "authenticated": true, "via": "uds"},
            "action": "read",
            "resource": {"type": "secret", "id": "db"},
            "agent": {"tool": "db.query", "arguments": {"password": "hunter2", "query": "select 1", "nested": [{"Api-Key": "k"}]}},
        })
        .to_string(),
    )
    .unwrap();
    (input, Decided::deny())
}

/// The trace and span of the `traceparent` header tests send.
pub(crate) fn trace() -> (TraceId, SpanId) {
    (
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
    )
}

/// The entry of `decision` on `input`, in [`trace`], about no grant.
pub(crate) fn traced<'a>(decision: &'a Decided, input: &'a Value) -> Entry<'a> {
    Entry {
        trace: Some(trace()),
        ..decision.entry(input)
    }
}

fn file_options(path: &Path) -> AuditOptions {
    AuditOptions {
        destination: Destination::File(path.to_path_buf()),
        ..AuditOptions::default()
    }
}

fn write_records(options: &AuditOptions, subjects: &[&str]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let log = DecisionLog::open(options).unwrap().unwrap();
    for subject in subjects {
        let (input, decision) = entry(subject);
        let entry = decision.entry(&input);
        log.send(log.reserve().unwrap(), &entry);
    }
    runtime.block_on(log.close());
    assert_eq!(log.stats().counts(), (subjects.len() as u64, 0, 0));
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn rewrite(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn broken_at(result: Result<Verified, VerifyError>) -> (PathBuf, usize) {
    match result {
        Err(VerifyError::Broken { file, line, .. }) => (file, line),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn a_verified_log_catches_edits_removals_and_reordering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    write_records(&file_options(&path), &["a", "b", "c", "d"]);
    let verified = verify(&[&path]).unwrap();
    assert_eq!(verified.records, 4);
    assert!(verified.from_genesis);
    let original = lines(&path);

    // Edit: a changed value no longer matches its hash.
    let mut edited = original.clone();
    edited[1] = edited[1].replace("\"allow\":false", "\"allow\":true");
    assert_ne!(edited[1], original[1]);
    rewrite(&path, &edited);
    assert_eq!(broken_at(verify(&[&path])), (path.clone(), 2));

    // Delete: the next record's prev_hash names the missing one.
    let mut deleted = original.clone();
    deleted.remove(1);
    rewrite(&path, &deleted);
    assert_eq!(broken_at(verify(&[&path])), (path.clone(), 2));

    // Reorder.
    let mut reordered = original.clone();
    reordered.swap(2, 3);
    rewrite(&path, &reordered);
    assert_eq!(broken_at(verify(&[&path])), (path.clone(), 3));

    // Re-hashing an edited record does not help: the next one still points at the old.
    rewrite(&path, &original);
    assert!(verify(&[&path]).is_ok());
}

#[test]
fn the_chain_survives_rotation_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let options = AuditOptions {
        max_file_bytes: 2_000,
        keep_files: 3,
        ..file_options(&path)
    };
    write_records(&options, &["a", "b", "c", "d", "e"]);
    // A restart continues the chain from the last record on disk.
    write_records(&options, &["f", "g"]);
    let mut files: Vec<PathBuf> = (1..=3)
        .rev()
        .map(|n| writer::numbered(&path, n))
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 2, "rotation happened: {files:?}");
    files.push(path.clone());
    let verified = verify(&files).unwrap();
    assert!(verified.records >= 3);
    // Files in the wrong order break the chain at the first record of the second file.
    let mut wrong = files.clone();
    wrong.swap(0, 1);
    assert_eq!(broken_at(verify(&wrong)).1, 1);
}

#[test]
fn hostile_values_keep_one_record_per_line_and_the_chain_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let hostile = [
        "line\nbreak",
        "sep\u{2028}arator\u{2029}",
        "ansi\u{1b}[31mred",
        "nul\0byte",
        "quote\"}{\"hash\":\"",
    ];
    write_records(&file_options(&path), &hostile);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(['\u{2028}', '\u{2029}', '\u{1b}', '\0']));
    let written = lines(&path);
    assert_eq!(written.len(), hostile.len());
    for (line, subject) in written.iter().zip(hostile) {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["subject"]["id"], subject);
        assert_eq!(record["input"]["subject"]["attributes"]["note"], subject);
    }
    assert_eq!(verify(&[&path]).unwrap().records, hostile.len());
}

#[test]
fn records_carry_the_evidence_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let options = AuditOptions {
        masks: Masks {
            pointers: vec!["/agent/arguments/query".into(), "/no/such/field".into()],
            ..Masks::default()
        },
        ..file_options(&path)
    };
    write_records(&options, &["a"]);
    let record: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    for field in [
        "decision_id",
        "time",
        "policy_revision",
        "step",
        "caller",
        "subject",
        "action",
        "resource",
        "allow",
        "reasons",
        "obligations",
        "eval_us",
        "input",
        "prev_hash",
        "hash",
    ] {
        assert!(record.get(field).is_some(), "{field} missing: {record}");
    }
    assert_eq!(record["caller"]["id"], "uds:uid=0");
    assert_eq!(record["reasons"][0], "because");
    let arguments = &record["input"]["agent"]["arguments"];
    assert_eq!(arguments["password"], MASKED);
    assert_eq!(arguments["query"], MASKED);
    assert_eq!(arguments["nested"][0]["Api-Key"], MASKED);
    assert!(!lines(&path)[0].contains("hunter2"));
}

#[test]
fn keys_shorter_than_every_fragment_are_never_masked_and_the_rest_still_are() {
    let masking = mask::Masking::new(Masks {
        pointers: Vec::new(),
        keys: vec!["pin".into(), "api_key".into()],
    })
    .unwrap();
    for key in ["pin", "PIN", "my_pin_code", "x-api-key", "Api_Key"] {
        assert!(masking.masks_key(key), "{key}");
    }
    for key in ["id", "pi", "kind", "pan", "api"] {
        assert!(!masking.masks_key(key), "{key}");
    }
}

/// Logs `entry` alone in a fresh file log with `options`'s masks; its line, after the
/// chain is verified.
fn log_one(masks: Masks, entry: &Entry<'_>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let options = AuditOptions {
        masks,
        ..file_options(&path)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let log = DecisionLog::open(&options).unwrap().unwrap();
    log.send(log.reserve().unwrap(), entry);
    runtime.block_on(log.close());
    assert_eq!(verify(&[&path]).unwrap().records, 1);
    lines(&path).remove(0)
}

#[test]
fn a_record_names_its_decision_trace_span_and_the_grant_its_input_carries() {
    // A Check naming a grant: the grant is in its input only.
    let input = Value::from_json_str(
        r#"{"step": "issue", "grant": {"id": "01a2090a-73aa-7404-a269-dbd998082c82", "state": "ACTIVE"}}"#,
    )
    .unwrap();
    let decision = Decided::deny();
    let entry = traced(&decision, &input);
    let record: serde_json::Value =
        serde_json::from_str(&log_one(Masks::default(), &entry)).unwrap();
    assert_eq!(record["decision_id"], decision.id.to_string());
    assert_eq!(record["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(record["span_id"], "00f067aa0ba902b7");
    assert_eq!(
        record["grant"],
        serde_json::json!({"id": "01a2090a-73aa-7404-a269-dbd998082c82", "state": "ACTIVE", "approvers": []})
    );
}

#[test]
fn a_record_holds_the_input_as_json_whatever_its_keys_and_values() {
    let input = serde_json::json!({
        "step": "use",
        "subject": "not an object",
        "resource": {"type": 7},
        "agent": {"arguments": {"list": ["keep", "hide", "keep"], "ratio": 0.25, "big": 1e300,
                                "neg": -12, "max": u64::MAX, "none": null, "flag": false}},
        "a/b": {"c~d": "hide", "c": "keep"},
        "quote\"key\n": {"Authorization": "Bearer x", "\u{2028}": "\u{1b}[0m"},
    });
    let mut value = Value::from_json_str(&input.to_string()).unwrap();
    // Keys that are not strings, and a set, are possible in a policy's own values.
    let set = Value::from(std::collections::BTreeSet::from([Value::Bool(true)]));
    value
        .as_object_mut()
        .unwrap()
        .insert(Value::from(3u64), set);
    let mut decision = Decided::deny();
    // Obligations are masked by key too (the pointers address the input).
    decision.obligations =
        Value::from_json_str(r#"{"max_ttl_seconds": 60, "session_token": "t", "list": [1, 2]}"#)
            .unwrap();
    let entry = decision.entry(&value);
    let masks = Masks {
        pointers: vec![
            "/agent/arguments/list/1".into(),
            "/a~1b/c~0d".into(),
            "/list/1".into(),
        ],
        ..Masks::default()
    };
    let line = &log_one(masks, &entry);
    let record: serde_json::Value = serde_json::from_str(line).unwrap();
    let mut expected = input.clone();
    expected["agent"]["arguments"]["list"][1] = MASKED.into();
    expected["a/b"]["c~d"] = MASKED.into();
    expected["quote\"key\n"]["Authorization"] = MASKED.into();
    expected["3"] = serde_json::json!([true]);
    assert_eq!(record["input"], expected);
    assert_eq!(record["subject"], serde_json::Value::Null);
    assert_eq!(record["resource"], serde_json::json!({}));
    assert_eq!(
        record["obligations"],
        serde_json::json!({"max_ttl_seconds": 60, "session_token": MASKED, "list": [1, 2]})
    );
    assert!(!line.contains(['\n', '\u{2028}', '\u{1b}']));
}

#[test]
fn a_log_refuses_masks_it_cannot_apply() {
    let options = AuditOptions {
        masks: Masks {
            pointers: vec!["agent/arguments/query".into()],
            ..Masks::default()
        },
        ..AuditOptions::default()
    };
    let err = DecisionLog::to_writer(Box::new(std::io::sink()), &options).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("is not a JSON pointer"), "{err}");
}

/// With its OTLP queue full, a record is still written to the file (and counted as
/// dropped from OTLP) unless the log is required or OTLP is its only sink: then it has
/// no slot at all (counted as dropped from the log), and a required log denies.
#[test]
fn a_full_otlp_queue_leaves_the_file_unless_required_or_it_is_the_only_sink() {
    use crate::telemetry::{OtlpExporter, OtlpProtocol};
    let options = |destination, required| AuditOptions {
        destination,
        required,
        otlp: Some(OtlpSinkOptions {
            exporter: OtlpExporter {
                endpoint: Some("http://127.0.0.1:9".into()),
                protocol: OtlpProtocol::HttpProtobuf,
            },
            service_name: "stepgate".into(),
            queue: 1,
        }),
        ..AuditOptions::default()
    };
    let written = |required| {
        DecisionLog::to_writer(
            Box::new(std::io::sink()),
            &options(Destination::Stdout, required),
        )
        .unwrap()
    };
    let only_otlp = DecisionLog::open(&options(Destination::Off, false))
        .unwrap()
        .unwrap();
    for (log, second_has_a_slot, dropped) in [
        (written(false), true, 0),
        (written(true), false, 1),
        (only_otlp, false, 1),
    ] {
        let first = log.reserve().unwrap();
        assert!(first.otlp.is_some());
        let second = log.reserve();
        assert_eq!(second.is_some(), second_has_a_slot);
        assert!(second.is_none_or(|slot| slot.otlp.is_none()));
        assert_eq!(log.stats().counts(), (0, dropped, 0));
        assert_eq!(log.stats().otlp_counts(), (0, 1, 0));
        drop(first);
        assert!(log.reserve().unwrap().otlp.is_some(), "a place is freed");
    }
}
