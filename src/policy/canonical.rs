//! The digest OPA signs a bundle file by: the raw bytes of most files, but for JSON
//! documents (`data.json`, `data.yaml`, `.manifest`) a canonical encoding, so a signature
//! does not depend on whitespace or key order.
//!
//! The canonical form is what OPA's `bundle/hash.go` writes: objects with their keys in
//! byte order, no whitespace, strings as Go's `encoding/json` escapes them (HTML
//! characters left alone) and numbers exactly as written in the file (OPA decodes with
//! `UseNumber`).

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Whether OPA hashes the file at `name` as a JSON document rather than as bytes
/// (`bundle.IsStructuredDoc`: by base name, so `data.yml` is hashed raw).
pub(super) fn is_structured(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    matches!(
        base,
        "data.json" | "data.yaml" | ".manifest" | "signatures.json"
    )
}

/// The SHA-256 of the canonical encoding of the structured file `name` holding `text`.
pub(super) fn structured_sha256(name: &str, text: &str) -> Result<[u8; 32], String> {
    let json;
    let document = if name.ends_with(".yaml") {
        // OPA converts YAML to JSON first; floats are written as regorus writes them,
        // which agrees with Go for every value a policy's data normally holds.
        json = regorus::Value::from_yaml_str(text)
            .and_then(|value| value.to_json_str())
            .map_err(|e| format!("not valid YAML: {e}"))?;
        json.as_str()
    } else {
        text
    };
    let mut out = Vec::with_capacity(document.len());
    encode(document, &mut out).map_err(|e| format!("not valid JSON: {e}"))?;
    Ok(Sha256::digest(&out).into())
}

/// Appends the canonical encoding of the JSON value `raw`.
fn encode(raw: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match raw.trim_start().as_bytes().first() {
        Some(b'{') => {
            // Later duplicates win, as in Go's map decoding.
            let members: BTreeMap<String, &RawValue> = serde_json::from_str(raw)?;
            out.push(b'{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_go_string(out, key);
                out.push(b':');
                encode(value.get(), out)?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(raw)?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                encode(item.get(), out)?;
            }
            out.push(b']');
        }
        Some(b'"') => push_go_string(out, &serde_json::from_str::<String>(raw)?),
        _ => {
            // A number (kept as written), true, false or null: checked, then copied.
            serde_json::from_str::<IgnoredAny>(raw)?;
            out.extend_from_slice(raw.trim().as_bytes());
        }
    }
    Ok(())
}

/// Appends `s` quoted as Go's `encoding/json` writes it with HTML escaping off.
fn push_go_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c if (c as u32) < 0x20 => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(raw: &str) -> String {
        let mut out = Vec::new();
        encode(raw, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn objects_are_sorted_and_compact_with_numbers_as_written() {
        assert_eq!(
            canonical(
                "{ \"b\": [1.50, 2e3, -0],\n  \"a\": {\"z\": null, \"y\": true},\n \"c\": 123.45678911111111111111111111111111 }"
            ),
            r#"{"a":{"y":true,"z":null},"b":[1.50,2e3,-0],"c":123.45678911111111111111111111111111}"#
        );
        assert_eq!(canonical(r#"{"k": 1, "k": 2}"#), r#"{"k":2}"#);
        assert_eq!(canonical(" [ ] "), "[]");
    }

    #[test]
    fn strings_are_escaped_as_go_escapes_them() {
        assert_eq!(
            canonical(r#""<a href=\"x\">&amp;</a>""#),
            r#""<a href=\"x\">&amp;</a>""#
        );
        assert_eq!(
            canonical(r#""\u0001\b\f\n\r\t\u001f\u007f\u2028\u2029é\/""#),
            "\"\\u0001\\b\\f\\n\\r\\t\\u001f\u{7f}\\u2028\\u2029é/\""
        );
        // Keys are strings too, and sort by their bytes.
        assert_eq!(
            canonical(r#"{"é": 1, "z": 2, "A": 3}"#),
            r#"{"A":3,"z":2,"é":1}"#
        );
    }

    #[test]
    fn only_opas_structured_names_are_hashed_as_documents() {
        for name in [
            "data.json",
            "a/b/data.yaml",
            ".manifest",
            "x/signatures.json",
        ] {
            assert!(is_structured(name), "{name}");
        }
        for name in ["data.yml", "policy.rego", "a/other.json", "manifest"] {
            assert!(!is_structured(name), "{name}");
        }
    }

    #[test]
    fn whitespace_and_key_order_do_not_change_the_digest() {
        let a = structured_sha256("data.json", "{\"b\": 1, \"a\": [true]}\n").unwrap();
        let b = structured_sha256("data.json", "{\"a\":[true],\"b\":1}").unwrap();
        assert_eq!(a, b);
        let c = structured_sha256("data.json", "{\"a\":[true],\"b\":1.0}").unwrap();
        assert_ne!(a, c, "numbers are compared as written");
        let yaml = structured_sha256("data.yaml", "b: 1\na:\n  - true\n").unwrap();
        assert_eq!(yaml, a);
        assert!(structured_sha256("data.json", "{\"a\": }").is_err());
        assert!(structured_sha256("data.json", "{} trailing").is_err());
    }
}
