//! Identity strings: what makes one acceptable, its canonical form, and the key that
//! says whether two of them are one person.
//!
//! Every identity a decision or a separation-of-duties rule reads (subject id and
//! owner, workflow requester, approver, `revoked_by`, `on_behalf_of`, the delegation
//! chain, AuthZEN subject ids, the caller) goes through here, so that names which look
//! the same cannot be counted as different people:
//!
//! - [`check`] refuses leading or trailing whitespace, control characters (C0, C1,
//!   DEL), line and paragraph separators, and invisible characters: Unicode format
//!   characters (Cf, which includes every bidi control and the zero-width ones) and
//!   the other default-ignorable code points (variation selectors, fillers). Combining
//!   marks and any letter of any script are fine.
//! - [`canonical`] is the NFKC form policies see (fullwidth `ａlice` is `alice`).
//! - [`key`] is the Unicode TR #39 skeleton of the case-folded NFKC form: `bob`, `BOB`
//!   and `bоb` (Cyrillic о) share one key. The server counts people by key, so a
//!   lookalike only ever makes a workflow stricter, never looser.

use std::borrow::Cow;

use unicode_general_category::{GeneralCategory, get_general_category};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

/// Why an identity string is refused; the message completes "`<field>`: ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityProblem {
    /// Whitespace (of any kind) at either end.
    #[error("leading or trailing whitespace")]
    EdgeWhitespace,
    /// A C0 or C1 control, DEL, or a line or paragraph separator.
    #[error("control character U+{:04X}", u32::from(*.0))]
    Control(char),
    /// A format (Cf) or other default-ignorable character: invisible when shown.
    #[error("invisible or format character U+{:04X}", u32::from(*.0))]
    Invisible(char),
}

/// Default-ignorable code points that are not format (Cf) characters: combining
/// grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian and other
/// variation selectors, and the reserved ranges (from Unicode's
/// DerivedCoreProperties.txt, `Default_Ignorable_Code_Point`, minus `Cf`, which
/// [`check`] refuses by category).
const IGNORABLE: &[(char, char)] = &[
    ('\u{034F}', '\u{034F}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{2065}', '\u{2065}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFF8}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Whether `s` is acceptable as an identity: no whitespace at either end, no control,
/// separator, format or other invisible character anywhere. The empty string passes
/// (whether a field is required is the caller's business).
pub fn check(s: &str) -> Result<(), IdentityProblem> {
    // Printable ASCII (space inside only) is the common case: one pass over bytes.
    if s.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return if s.starts_with(' ') || s.ends_with(' ') {
            Err(IdentityProblem::EdgeWhitespace)
        } else {
            Ok(())
        };
    }
    if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return Err(IdentityProblem::EdgeWhitespace);
    }
    s.chars().try_for_each(check_char)
}

fn check_char(c: char) -> Result<(), IdentityProblem> {
    match get_general_category(c) {
        GeneralCategory::Control
        | GeneralCategory::LineSeparator
        | GeneralCategory::ParagraphSeparator => Err(IdentityProblem::Control(c)),
        GeneralCategory::Format => Err(IdentityProblem::Invisible(c)),
        _ if IGNORABLE.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) => {
            Err(IdentityProblem::Invisible(c))
        }
        _ => Ok(()),
    }
}

/// The NFKC form of `s`, borrowed when `s` already is (ASCII always is).
pub fn canonical(s: &str) -> Cow<'_, str> {
    if s.is_ascii() || is_nfkc_quick(s.chars()) == IsNormalized::Yes {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.nfkc().collect())
    }
}

/// [`check`] on `s` and on its canonical form (NFKC can move whitespace to an end: a
/// spacing accent such as `´` becomes a space and a combining mark), then the
/// canonical form.
pub fn accept(s: &str) -> Result<Cow<'_, str>, IdentityProblem> {
    check(s)?;
    let canonical = canonical(s);
    if let Cow::Owned(changed) = &canonical {
        check(changed)?;
    }
    Ok(canonical)
}

/// Replaces `s` by its canonical form (no allocation when it already is one).
pub fn canonicalize(s: &mut String) {
    if let Cow::Owned(changed) = canonical(s) {
        *s = changed;
    }
}

/// The confusable-safe key of `s`: the TR #39 skeleton of its case-folded NFKC form.
/// Two identities with one key are one person. Whitespace at the ends is ignored (and
/// the skeleton drops invisible characters), so a name recorded before names were
/// checked (a journal written by an older version) still counts as its person.
pub fn key(s: &str) -> String {
    let folded = caseless::default_case_fold_str(&canonical(s.trim()));
    unicode_security::skeleton(&folded).collect()
}

/// Whether `a` and `b` name one person (equal [`key`]s).
pub fn same_person(a: &str, b: &str) -> bool {
    a == b || key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_identities_name_the_problem() {
        use IdentityProblem::*;
        let cases: &[(&str, IdentityProblem)] = &[
            ("bob ", EdgeWhitespace),
            (" alice", EdgeWhitespace),
            ("bob\u{00A0}", EdgeWhitespace),
            ("\u{3000}bob", EdgeWhitespace),
            ("bob\t", EdgeWhitespace),
            ("bob\u{0085}", EdgeWhitespace),
            ("b\tob", Control('\t')),
            ("b\u{7F}ob", Control('\u{7F}')),
            ("b\u{0085}ob", Control('\u{85}')),
            ("b\u{009B}ob", Control('\u{9B}')),
            ("b\nob", Control('\n')),
            ("b\u{2028}ob", Control('\u{2028}')),
            ("bob\u{200B}", Invisible('\u{200B}')),
            ("alice\u{200B}", Invisible('\u{200B}')),
            ("b\u{200D}ob", Invisible('\u{200D}')),
            ("b\u{200C}ob", Invisible('\u{200C}')),
            ("bo\u{200F}b", Invisible('\u{200F}')),
            ("\u{202E}bob", Invisible('\u{202E}')),
            ("bob\u{2066}x", Invisible('\u{2066}')),
            ("b\u{FEFF}ob", Invisible('\u{FEFF}')),
            ("b\u{00AD}ob", Invisible('\u{AD}')),
            ("bo\u{034F}b", Invisible('\u{34F}')),
            ("bob\u{FE0F}", Invisible('\u{FE0F}')),
            ("b\u{3164}ob", Invisible('\u{3164}')),
            ("b\u{E0041}ob", Invisible('\u{E0041}')),
        ];
        for (name, problem) in cases {
            assert_eq!(accept(name), Err(*problem), "{name:?}");
        }
        assert_eq!(
            Invisible('\u{200B}').to_string(),
            "invisible or format character U+200B"
        );
        assert_eq!(Control('\u{7F}').to_string(), "control character U+007F");
        assert_eq!(EdgeWhitespace.to_string(), "leading or trailing whitespace");
        // A spacing accent becomes a space under NFKC: refused after normalising.
        assert_eq!(accept("\u{00B4}bob"), Err(EdgeWhitespace));
    }

    #[test]
    fn legitimate_names_pass_and_come_out_nfkc() {
        let cases: &[(&str, &str)] = &[
            ("alice", "alice"),
            ("Bob Smith", "Bob Smith"),
            (
                "spiffe://prod/ns/payments/sa/deployer",
                "spiffe://prod/ns/payments/sa/deployer",
            ),
            ("uds:uid=1000", "uds:uid=1000"),
            ("josé", "josé"),
            ("jose\u{0301}", "josé"),
            ("Zoë", "Zoë"),
            ("田中太郎", "田中太郎"),
            ("Дмитрий", "Дмитрий"),
            ("ａlice", "alice"),
            ("ｂob", "bob"),
            ("bo\u{00A0}b", "bo b"),
            ("ﬁona", "fiona"),
            ("", ""),
        ];
        for (name, canonical_form) in cases {
            assert_eq!(accept(name).as_deref(), Ok(*canonical_form), "{name:?}");
        }
        assert!(matches!(canonical("alice"), Cow::Borrowed(_)));
        assert!(matches!(canonical("josé"), Cow::Borrowed(_)));
    }

    #[test]
    fn lookalikes_share_a_key_and_different_people_do_not() {
        let same: &[(&str, &str)] = &[
            ("bob", "BOB"),
            ("bob", "Bob"),
            ("bob", "b\u{043E}b"),
            ("bob", "ｂob"),
            ("alice", "\u{0430}lice"),
            ("alice", "ａlice"),
            ("alice", "ALICE"),
            ("strasse", "STRASSE"),
            ("straße", "STRASSE"),
            ("josé", "jose\u{0301}"),
            ("paypal", "p\u{0430}yp\u{0430}l"),
        ];
        for (a, b) in same {
            assert!(same_person(a, b), "{a:?} {b:?}");
            assert_eq!(key(a), key(b), "{a:?} {b:?}");
        }
        let different: &[(&str, &str)] = &[
            ("bob", "rob"),
            ("alice", "alicia"),
            ("bob", "bobby"),
            ("carol", "erin"),
            ("田中", "山中"),
        ];
        // Names recorded before names were checked count as the person they look like.
        for old in ["bob ", " bob", "bob\u{200B}", "bo\u{200D}b", "bob\u{00A0}"] {
            assert_eq!(key(old), key("bob"), "{old:?}");
        }
        for (a, b) in different {
            assert!(!same_person(a, b), "{a:?} {b:?}");
        }
    }
}
