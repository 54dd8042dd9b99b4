//! The decision log through the real server with inputs carrying every kind of
//! character a reader could split a line on or display differently (C0 and C1 controls,
//! DEL, line separators, bidi overrides and isolates, zero-width and other format
//! characters): one record per line however a reader splits lines, and
//! `stepgate audit verify` refusing a record that holds one raw.

use std::{path::Path, process::Command};

use sha2::{Digest, Sha256};
use stepgate::{
    audit::Destination,
    proto::v1::{CheckRequest, Resource},
};

use super::support::{Server, request, strukt};

const BIN: &str = env!("CARGO_BIN_EXE_stepgate");

const POLICY: &str = "package stepgate\n\ndecision := {\"allow\": true, \"reasons\": [\"ok\"]}\n";

/// One of each kind of character the log escapes, beside what a record must keep.
const HOSTILE: [char; 29] = [
    '\0',
    '\n',
    '\r',
    '\u{b}',
    '\u{c}',
    '\u{1b}',
    '\u{1c}',
    '\u{1e}',
    '\u{7f}',
    '\u{80}',
    '\u{85}',
    '\u{9b}',
    '\u{9f}',
    '\u{ad}',
    '\u{61c}',
    '\u{200b}',
    '\u{200e}',
    '\u{200f}',
    '\u{2028}',
    '\u{2029}',
    '\u{202a}',
    '\u{202e}',
    '\u{2066}',
    '\u{2069}',
    '\u{206f}',
    '\u{feff}',
    '\u{fff9}',
    '\u{e0001}',
    '\u{e0041}',
];

/// A decision whose input carries `c` in an attribute's key and value.
fn carrying(c: char) -> CheckRequest {
    let mut check = request("read");
    check.resource = Some(Resource {
        r#type: "doc".into(),
        id: "d1".into(),
        attributes: Some(strukt(serde_json::json!({
            format!("key{c}"): format!("admin{c}user"),
            "list": [format!("{c}"), format!("{c}{c}")],
        }))),
    });
    check
}

fn verify(file: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["audit", "verify"])
        .arg(file)
        .output()
        .unwrap()
}

/// Logs one decision per [`HOSTILE`] character to a file; its path and text.
async fn hostile_log(dir: &Path) -> (std::path::PathBuf, String) {
    let path = dir.join("decisions.jsonl");
    let log = path.clone();
    let server = Server::start_with(&[("p.rego", POLICY)], move |c| {
        c.audit.destination = Destination::File(log);
    })
    .await;
    let mut client = server.client().await;
    for c in HOSTILE {
        client.check(carrying(c)).await.unwrap();
    }
    server.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

#[tokio::test]
async fn hostile_characters_keep_one_record_per_line_for_any_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (path, text) = hostile_log(dir.path()).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), HOSTILE.len());
    for (line, c) in lines.iter().zip(HOSTILE) {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let attributes = &record["input"]["resource"]["attributes"];
        assert_eq!(
            attributes[format!("key{c}")],
            format!("admin{c}user"),
            "{c:?}"
        );
        // Nothing a reader could break a line on or render differently is raw.
        assert!(
            line.chars()
                .all(|c| (' '..='~').contains(&c) || c.is_alphanumeric()),
            "{c:?} raw in {line:?}"
        );
    }
    // A reader splitting on every line break Unicode or Python knows sees as many lines.
    let naive = text
        .trim_end_matches('\n')
        .split([
            '\n', '\r', '\u{b}', '\u{c}', '\u{1c}', '\u{1d}', '\u{1e}', '\u{85}', '\u{2028}',
            '\u{2029}',
        ])
        .count();
    assert_eq!(naive, HOSTILE.len());
    let out = verify(&path);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("ok: {} records", HOSTILE.len())),
        "{stdout}"
    );
}

/// `line` with its hash field recomputed, as a forger who knows the format would.
fn resealed(line: &str) -> String {
    const SUFFIX: usize = ",\"hash\":\"".len() + 64 + 2;
    let body = format!("{}}}", &line[..line.len() - SUFFIX]);
    let hash: String = Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{},\"hash\":\"{hash}\"}}", &line[..line.len() - SUFFIX])
}

#[tokio::test]
async fn verify_reports_a_raw_bidi_override_in_a_well_chained_record() {
    let dir = tempfile::tempdir().unwrap();
    let (path, text) = hostile_log(dir.path()).await;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // A raw U+202E put in the last record and its hash recomputed: the chain holds
    // (only a next record would break it), as in a log an older build wrote.
    assert!(verify(&path).status.success());
    let last = lines.pop().unwrap();
    lines.push(resealed(&last.replacen("admin", "admin\u{202e}", 1)));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let out = verify(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:{}: U+202E written raw",
            path.display(),
            HOSTILE.len()
        )),
        "{stderr}"
    );
}
