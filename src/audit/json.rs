//! JSON text appended straight to a `String`, for decision-log records.
//!
//! A record is rendered on the deciding thread for every decision, so it is written by
//! hand rather than through serde: no `Serialize` dispatch per value, no byte buffer to
//! re-validate as UTF-8, strings copied in runs between the bytes that need escaping.
//! Strings are escaped as `serde_json` escapes them, plus every character that can
//! break a line or change how a line reads (see [`push_str`]).

use regorus::Value;
use unicode_general_category::{GeneralCategory, get_general_category};

/// Bytes that need a look in a string: `"`, `\\`, the C0 controls, DEL, and every byte of
/// a non-ASCII character (which may be a C1 control, a line separator or a format
/// character: [`must_escape`]).
const ATTENTION: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b < 0x20 || b >= 0x7F;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether `c` is written as `\uXXXX` wherever it appears, so no reader splits a record
/// or shows it differently from what it holds: the C0 and C1 controls and DEL (NEL,
/// U+0085, and CSI, U+009B, among them), U+2028 and U+2029 (JavaScript and Python read
/// them as line breaks), and every Unicode format character (general category Cf: the
/// bidi overrides and isolates, zero-width characters, U+FEFF, the soft hyphen, tag
/// characters), as the Unicode tables of `unicode-general-category` list them. A sealed
/// record holds none of them raw; `verify` checks it.
pub(crate) fn must_escape(c: char) -> bool {
    match c {
        '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => true,
        c if c.is_ascii() => false,
        c => get_general_category(c) == GeneralCategory::Format,
    }
}

/// The first character of `line` that [`must_escape`], if any (printable ASCII, the
/// usual line, is passed over a byte at a time).
pub(crate) fn first_raw_escapable(line: &str) -> Option<char> {
    if line.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return None;
    }
    line.chars().find(|&c| must_escape(c))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string. `"`, `\` and the C0 controls are escaped as
/// `serde_json` escapes them (`\n`, `\t`, ..., else `\u00XX`), which keeps a record on
/// one line whatever it holds; so is every other character that [`must_escape`], as
/// `\uXXXX` (a surrogate pair beyond the BMP: `\udb40\udc01` for U+E0001).
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
    // `i` is always at a character boundary: it moves by one ASCII byte or by a whole
    // character.
    while i < bytes.len() {
        let b = bytes[i];
        if !ATTENTION[usize::from(b)] {
            i += 1;
            continue;
        }
        if b.is_ascii() {
            out.push_str(&s[run..i]);
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                0x08 => out.push_str("\\b"),
                0x0C => out.push_str("\\f"),
                _ => push_unit(out, u16::from(b)),
            }
            i += 1;
            run = i;
            continue;
        }
        let Some(c) = s[i..].chars().next() else {
            break;
        };
        if must_escape(c) {
            out.push_str(&s[run..i]);
            for unit in c.encode_utf16(&mut [0; 2]) {
                push_unit(out, *unit);
            }
            i += c.len_utf8();
            run = i;
        } else {
            i += c.len_utf8();
        }
    }
    out.push_str(&s[run..]);
}

/// Appends `\uXXXX` for one UTF-16 code unit, lowercase as serde_json writes it.
fn push_unit(out: &mut String, unit: u16) {
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        out.push(char::from(HEX[usize::from((unit >> shift) & 0xF)]));
    }
}

/// Whether any of the eight bytes in `word` needs a look ([`ATTENTION`]), by the
/// classic SWAR tests (exact as a yes/no): a byte below 0x20, equal to `"`, `\` or DEL,
/// or not ASCII.
fn needs_attention(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS;
    let equal = |n: u8| below(word ^ (ONES * u64::from(n)), 1);
    (below(word, 0x20) | equal(b'"') | equal(b'\\') | equal(0x7F) | (word & HIGHS)) != 0
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
    fn controls_separators_and_format_characters_are_escaped() {
        for (raw, escaped) in [
            ("\u{7f}", r"\u007f"),
            ("\u{80}", r"\u0080"),
            ("\u{85}", r"\u0085"),
            ("\u{9b}", r"\u009b"),
            ("\u{9f}", r"\u009f"),
            ("\u{ad}", r"\u00ad"),
            ("\u{61c}", r"\u061c"),
            ("\u{180e}", r"\u180e"),
            (
                "\u{200b}\u{200c}\u{200d}\u{200e}\u{200f}",
                r"\u200b\u200c\u200d\u200e\u200f",
            ),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}",
                r"\u202a\u202b\u202c\u202d\u202e",
            ),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                r"\u2066\u2067\u2068\u2069",
            ),
            ("\u{2060}\u{feff}", r"\u2060\ufeff"),
            ("\u{e0001}\u{e007f}", r"\udb40\udc01\udb40\udc7f"),
            ("\u{1d173}", r"\ud834\udd73"),
        ] {
            assert_eq!(
                quoted(&format!("a{raw}b")),
                format!("\"a{escaped}b\""),
                "{raw:?}"
            );
            let c = raw.chars().next().unwrap();
            assert!(must_escape(c), "{c:?}");
            assert_eq!(first_raw_escapable(&format!("x{raw}")), Some(c));
        }
        // Letters, symbols and spaces of other scripts stay as they are.
        for kept in [
            "é",
            "€",
            "日本",
            "\u{a0}",
            "\u{3000}",
            "\u{1f600}",
            "ｂob",
            "\u{2027}",
        ] {
            assert_eq!(quoted(kept), format!("\"{kept}\""));
            assert_eq!(first_raw_escapable(kept), None, "{kept:?}");
        }
        assert_eq!(first_raw_escapable(r#"{"a":"\u202e"}"#), None);
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
            (0x7Fu32..0xA0).prop_map(|c| char::from_u32(c).unwrap()),
            prop::sample::select(vec![
                '"',
                '\\',
                '\u{2028}',
                '\u{2029}',
                '\u{2027}',
                '€',
                '\u{ad}',
                '\u{a0}',
                '\u{200b}',
                '\u{200f}',
                '\u{202e}',
                '\u{2066}',
                '\u{feff}',
                '\u{e0001}',
            ]),
        ];
        prop::collection::vec(prop_oneof![any::<char>(), special], 0..40)
            .prop_map(String::from_iter)
    }

    proptest! {
        /// What serde_json writes, with each character it leaves raw that must not be
        /// raw as `\uXXXX`; and the result reads back as `s`.
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in hostile_string()) {
            let mut expected = String::new();
            for c in serde_json::to_string(&s).unwrap().chars() {
                if must_escape(c) {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        expected.push_str(&format!("\\u{unit:04x}"));
                    }
                } else {
                    expected.push(c);
                }
            }
            let written = quoted(&s);
            prop_assert_eq!(&written, &expected);
            prop_assert_eq!(first_raw_escapable(&written), None);
            prop_assert_eq!(serde_json::from_str::<String>(&written).unwrap(), s);
        }

        /// Exactly the C0 and C1 controls, DEL, U+2028, U+2029 and the format characters
        /// are escaped.
        #[test]
        fn must_escape_is_controls_separators_and_format(c in any::<char>()) {
            let category = get_general_category(c);
            prop_assert_eq!(
                must_escape(c),
                c.is_control()
                    || matches!(
                        category,
                        GeneralCategory::Format
                            | GeneralCategory::LineSeparator
                            | GeneralCategory::ParagraphSeparator
                    )
            );
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
