//! JSON text appended straight to a `String`, for decision-log records.
//!
//! A record is rendered on the deciding thread for every decision, so it is written by
//! hand rather than through serde: no `Serialize` dispatch per value, no byte buffer to
//! re-validate as UTF-8, strings copied in runs between the bytes that need escaping.
//! Strings are escaped exactly as `serde_json` escapes them, plus U+2028 and U+2029 (see
//! [`push_str`]).

use regorus::Value;

/// Bytes that need a look in a string: `"`, `\`, the control characters, and `0xE2`,
/// the first byte of U+2028 and U+2029 in UTF-8.
const ATTENTION: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0xE2] = true;
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string. `"`, `\` and the control characters are escaped as
/// `serde_json` escapes them (`\n`, `\t`, ..., else `\u00XX`), which keeps a record on
/// one line whatever it holds; U+2028 and U+2029 are escaped too (`\u2028`), since
/// JavaScript and Python read them as line breaks.
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    if needs_escaping(s.as_bytes()) {
        push_escaped(out, s);
    } else {
        out.push_str(s);
    }
    out.push('"');
}

/// Whether any byte of `bytes` needs a look, eight at a time (almost no text in a record
/// needs escaping); the last word overlaps the one before it.
fn needs_escaping(bytes: &[u8]) -> bool {
    match bytes.last_chunk::<8>() {
        Some(last) => bytes
            .as_chunks::<8>()
            .0
            .iter()
            .chain([last])
            .any(|word| needs_attention(u64::from_le_bytes(*word))),
        None => bytes.iter().any(|b| ATTENTION[usize::from(*b)]),
    }
}

/// Appends the contents of a JSON string for `s`, escaped (see [`push_str`]).
fn push_escaped(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !ATTENTION[usize::from(b)] {
            i += 1;
            continue;
        }
        let (escaped, len): (&str, usize) = match b {
            b'"' => ("\\\"", 1),
            b'\\' => ("\\\\", 1),
            b'\n' => ("\\n", 1),
            b'\r' => ("\\r", 1),
            b'\t' => ("\\t", 1),
            0x08 => ("\\b", 1),
            0x0C => ("\\f", 1),
            0xE2 => match bytes.get(i + 1..i + 3) {
                Some([0x80, 0xA8]) => ("\\u2028", 3),
                Some([0x80, 0xA9]) => ("\\u2029", 3),
                _ => {
                    i += 1;
                    continue;
                }
            },
            _ => ("", 1),
        };
        // `i` is at an ASCII byte or at the first byte of a three-byte character, and
        // `i + len` just past it: both are character boundaries.
        out.push_str(&s[run..i]);
        if escaped.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        } else {
            out.push_str(escaped);
        }
        i += len;
        run = i;
    }
    out.push_str(&s[run..]);
}

/// Whether any of the eight bytes in `word` needs a look ([`ATTENTION`]), by the
/// classic SWAR tests (exact as a yes/no): a byte below 0x20, or equal to `"`, `\`, 0xE2.
fn needs_attention(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS;
    let equal = |n: u8| below(word ^ (ONES * u64::from(n)), 1);
    (below(word, 0x20) | equal(b'"') | equal(b'\\') | equal(0xE2)) != 0
}

/// Appends `bytes` as lowercase hex digits (no quotes).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
}

/// Appends an unsigned integer.
pub(crate) fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends a scalar (null, boolean, string, number, undefined) as `serde_json` writes
/// regorus's own serialisation of it (`undefined` as the string `"<undefined>"`).
/// Objects, arrays and sets are the masked walk's to write (`mask.rs`): given one, this
/// writes `null` rather than anything unmasked.
pub(crate) fn push_scalar(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::String(s) => push_str(out, s),
        // An integral number is written as its digits, as regorus's own serialisation
        // does; other numbers are rare in an input and serde_json writes them.
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(n), _) => push_u64(out, n),
            (None, Some(n)) => out.push_str(itoa::Buffer::new().format(n)),
            (None, None) => push_serialized(out, value),
        },
        Value::Undefined => push_str(out, "<undefined>"),
        Value::Object(_) | Value::Array(_) | Value::Set(_) => {
            debug_assert!(false, "push_scalar given a compound value");
            out.push_str("null");
        }
    }
}

/// Appends `value` (a number) as serde_json writes it.
fn push_serialized(out: &mut String, value: &Value) {
    match serde_json::to_string(value) {
        Ok(text) => out.push_str(&text),
        Err(_) => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn quoted(s: &str) -> String {
        let mut out = String::new();
        push_str(&mut out, s);
        out
    }

    #[test]
    fn escapes_what_keeps_a_record_on_one_line() {
        assert_eq!(quoted("plain"), r#""plain""#);
        assert_eq!(quoted("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quoted("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(quoted("\0\u{1b}[31m\u{1f}"), r#""\u0000\u001b[31m\u001f""#);
        assert_eq!(quoted("x\u{2028}y\u{2029}"), r#""x\u2028y\u2029""#);
        // Other characters starting with 0xE2 are left alone.
        assert_eq!(quoted("→ €\u{2027}"), "\"→ €\u{2027}\"");
        assert_eq!(quoted(""), r#""""#);
    }

    #[test]
    fn words_need_attention_exactly_when_one_of_their_bytes_does() {
        for special in 0..=255u8 {
            for position in 0..8 {
                let mut word = *b"abcdefgh";
                word[position] = special;
                assert_eq!(
                    needs_attention(u64::from_le_bytes(word)),
                    ATTENTION[usize::from(special)],
                    "byte {special:#04x} at {position}"
                );
            }
        }
    }

    #[test]
    fn scalars_are_written_as_serde_json_writes_regorus_values() {
        for json in [
            "null",
            "true",
            "false",
            "0",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5",
            "-0.25",
            "1e300",
            "3.0",
            "1e19",
            "\"s\"",
        ] {
            let value = Value::from_json_str(json).unwrap();
            let mut out = String::new();
            push_scalar(&mut out, &value);
            assert_eq!(out, serde_json::to_string(&value).unwrap(), "{json}");
        }
        let mut out = String::new();
        push_scalar(&mut out, &Value::Undefined);
        assert_eq!(out, r#""<undefined>""#);
    }

    /// Any characters, with the ones that need escaping (and their neighbours in UTF-8)
    /// drawn often.
    fn hostile_string() -> impl Strategy<Value = String> {
        let special = prop_oneof![
            (0u8..0x20).prop_map(char::from),
            prop::sample::select(vec![
                '"', '\\', '\u{2028}', '\u{2029}', '\u{2027}', '€', '\u{7f}'
            ]),
        ];
        prop::collection::vec(prop_oneof![any::<char>(), special], 0..40)
            .prop_map(String::from_iter)
    }

    proptest! {
        /// Byte for byte what serde_json writes, but for the two line separators.
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in hostile_string()) {
            let expected = serde_json::to_string(&s)
                .unwrap()
                .replace('\u{2028}', "\\u2028")
                .replace('\u{2029}', "\\u2029");
            prop_assert_eq!(quoted(&s), expected);
        }

        #[test]
        fn any_word_needs_attention_exactly_when_a_byte_does(word in any::<[u8; 8]>()) {
            prop_assert_eq!(
                needs_attention(u64::from_le_bytes(word)),
                word.iter().any(|b| ATTENTION[usize::from(*b)])
            );
        }

        #[test]
        fn hex_is_lowercase_and_two_digits_per_byte(bytes in any::<Vec<u8>>()) {
            let mut out = String::new();
            push_hex(&mut out, &bytes);
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(out, expected);
        }
    }
}
