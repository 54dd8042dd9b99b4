//! What a decision-log record hides: values under secret-looking keys and values at
//! configured JSON pointers in the input, replaced by [`MASKED`] as the record is written.

use regorus::Value;

use super::json;

/// The value that replaces a masked one.
pub const MASKED: &str = "[masked]";

/// Which input values are masked: JSON pointers, and every value under an object key
/// that contains one of `keys` (case-insensitive, `-` read as `_`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masks {
    /// JSON pointers into the input document, e.g. `/agent/arguments/query`.
    pub pointers: Vec<String>,
    /// Key fragments, e.g. `password` (matched in any case).
    pub keys: Vec<String>,
}

/// The default key fragments.
pub const DEFAULT_MASK_KEYS: [&str; 6] = [
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
];

impl Default for Masks {
    fn default() -> Self {
        Self {
            pointers: Vec::new(),
            keys: DEFAULT_MASK_KEYS.iter().map(|k| k.to_string()).collect(),
        }
    }
}

impl Masks {
    /// Most pointers a log masks by: the masked walk follows the pointers still matching
    /// its path in a 64-bit set.
    pub const MAX_POINTERS: usize = 64;

    /// What is wrong with these masks, one line each; none when a log can apply them. A
    /// pointer must start with `/` (one that does not would mask nothing), and there may
    /// be at most [`Masks::MAX_POINTERS`].
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.pointers.len() > Self::MAX_POINTERS {
            problems.push(format!("at most {} pointers", Self::MAX_POINTERS));
        }
        for pointer in &self.pointers {
            if !pointer.starts_with('/') {
                problems.push(format!(
                    "{pointer:?} is not a JSON pointer (it starts with '/')"
                ));
            }
        }
        problems
    }

    /// The pointers split into unescaped segments (`~1` is `/`, `~0` is `~`).
    fn segments(&self) -> Vec<Vec<String>> {
        self.pointers
            .iter()
            .map(|p| {
                p.split('/')
                    .skip(1)
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect()
            })
            .collect()
    }
}

/// The masks prepared for one decision log: pointers pre-split, key fragments
/// normalised for [`Fragments::matches`] (it runs for every key of every record).
#[derive(Debug)]
pub(crate) struct Masking {
    pointers: Vec<Vec<String>>,
    fragments: Fragments,
}

impl Masking {
    /// The masks prepared; an error naming what is wrong with them ([`Masks::problems`])
    /// rather than a log that would silently leave a value unmasked.
    pub(crate) fn new(masks: Masks) -> Result<Self, String> {
        let problems = masks.problems();
        if !problems.is_empty() {
            return Err(format!("decision log masks: {}", problems.join("; ")));
        }
        Ok(Self {
            pointers: masks.segments(),
            fragments: Fragments::new(&masks.keys),
        })
    }

    /// Whether values under `key` are masked: it contains a fragment.
    pub(crate) fn masks_key(&self, key: &str) -> bool {
        self.fragments.matches(key)
    }

    /// Appends the input document as JSON, masked by key and by pointer.
    pub(crate) fn push_input(&self, out: &mut String, input: &Value) {
        let all = if self.pointers.is_empty() {
            0
        } else {
            u64::MAX
        };
        self.push_value(out, input, all, 0);
    }

    /// Appends `value` as JSON, masked by key only: the pointers address the input, and
    /// this is another part of the record (the caller, the obligations).
    pub(crate) fn push_by_key(&self, out: &mut String, value: &Value) {
        self.push_value(out, value, 0, 0);
    }

    /// Appends `value` as JSON with the masks applied on the way (no intermediate JSON
    /// tree). `live` holds the pointers whose segments matched the path so far (a bit per
    /// pointer, up to 64); `depth` is the path length.
    fn push_value(&self, out: &mut String, value: &Value, live: u64, depth: usize) {
        match value {
            Value::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let owned;
                    let key: &str = match key {
                        Value::String(s) => s,
                        other => {
                            owned = other.to_json_str().unwrap_or_default();
                            &owned
                        }
                    };
                    json::push_str(out, key);
                    out.push(':');
                    let (live, ends) = self.step(live, depth, |segment| segment == key);
                    match value {
                        _ if ends || self.masks_key(key) => json::push_str(out, MASKED),
                        // Most members are strings: no call to get there.
                        Value::String(s) => json::push_str(out, s),
                        _ => self.push_value(out, value, live, depth + 1),
                    }
                }
                out.push('}');
            }
            Value::Array(items) => self.push_sequence(out, items.iter(), live, depth),
            Value::Set(items) => self.push_sequence(out, items.iter(), live, depth),
            scalar => json::push_scalar(out, scalar),
        }
    }

    fn push_sequence<'v>(
        &self,
        out: &mut String,
        items: impl Iterator<Item = &'v Value>,
        live: u64,
        depth: usize,
    ) {
        out.push('[');
        for (index, item) in items.enumerate() {
            if index > 0 {
                out.push(',');
            }
            let (live, ends) =
                self.step(live, depth, |segment| segment.parse::<usize>() == Ok(index));
            if ends {
                json::push_str(out, MASKED);
            } else {
                self.push_value(out, item, live, depth + 1);
            }
        }
        out.push(']');
    }

    /// The pointers of `live` still matching after one more segment at `depth`, and
    /// whether one of them ends there.
    fn step(&self, live: u64, depth: usize, segment: impl Fn(&str) -> bool) -> (u64, bool) {
        let mut still = 0;
        let mut ends = false;
        if live == 0 {
            return (still, ends);
        }
        for (i, pointer) in self.pointers.iter().enumerate() {
            if live & (1 << i) != 0 && pointer.get(depth).is_some_and(|s| segment(s)) {
                if pointer.len() == depth + 1 {
                    ends = true;
                } else {
                    still |= 1 << i;
                }
            }
        }
        (still, ends)
    }
}

/// Key fragments, found anywhere in a key, ASCII case-insensitively, `-` read as `_`.
///
/// Written out rather than built as an automaton: a key is a few bytes long, and most
/// hold no byte a fragment starts with, so a check is mostly one table lookup per byte
/// (an automaton's search costs more to set up than that).
#[derive(Debug)]
struct Fragments {
    /// Folded ([`FOLD`]), none empty, no two the same.
    patterns: Vec<Box<[u8]>>,
    /// Whether a key byte, folded, starts a pattern.
    starts: [bool; 256],
    /// Bytes of the shortest pattern: a shorter key (`id`, `kind`, ...) holds none.
    shortest: usize,
}

/// A key byte as fragments are compared: ASCII lowercase, `-` as `_`.
const FOLD: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).to_ascii_lowercase();
        b += 1;
    }
    table[b'-' as usize] = b'_';
    table
};

fn fold(b: u8) -> u8 {
    FOLD[usize::from(b)]
}

impl Fragments {
    fn new(keys: &[String]) -> Self {
        let mut patterns: Vec<Box<[u8]>> = Vec::new();
        for key in keys {
            let pattern: Box<[u8]> = key.bytes().map(fold).collect();
            if !pattern.is_empty() && !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
        let mut starts = [false; 256];
        for (b, start) in starts.iter_mut().enumerate() {
            *start = patterns.iter().any(|p| p.first() == Some(&FOLD[b]));
        }
        let shortest = patterns.iter().map(|p| p.len()).min().unwrap_or(0);
        Self {
            patterns,
            starts,
            shortest,
        }
    }

    fn matches(&self, key: &str) -> bool {
        let key = key.as_bytes();
        if self.patterns.is_empty() || key.len() < self.shortest {
            return false;
        }
        let last_start = key.len() - self.shortest;
        key[..=last_start].iter().enumerate().any(|(at, b)| {
            self.starts[usize::from(*b)]
                && self.patterns.iter().any(|pattern| {
                    key.get(at..at + pattern.len()).is_some_and(|window| {
                        window
                            .iter()
                            .zip(pattern.iter())
                            .all(|(k, p)| fold(*k) == *p)
                    })
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn masking(keys: &[&str]) -> Masking {
        Masking::new(Masks {
            pointers: Vec::new(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        })
        .unwrap()
    }

    /// Masks a log could not apply are refused, not applied in part: a pointer past the
    /// 64th, or one without its leading `/`, would leave its value in the record.
    #[test]
    fn masks_a_log_cannot_apply_are_refused() {
        let pointers = |pointers: Vec<String>| Masks {
            pointers,
            ..Masks::default()
        };
        let most: Vec<String> = (0..Masks::MAX_POINTERS).map(|i| format!("/p{i}")).collect();
        assert!(Masking::new(pointers(most.clone())).is_ok());
        let mut too_many = most;
        too_many.push("/p64".into());
        let err = Masking::new(pointers(too_many)).unwrap_err();
        assert!(err.contains("at most 64 pointers"), "{err}");
        let err = Masking::new(pointers(vec!["agent/arguments".into()])).unwrap_err();
        assert!(
            err.contains("\"agent/arguments\" is not a JSON pointer"),
            "{err}"
        );
    }

    #[test]
    fn fragments_match_anywhere_in_any_case_with_dash_as_underscore() {
        let masking = masking(&["api_key", "Token", ""]);
        for key in [
            "api_key",
            "API-KEY",
            "x-api-key-2",
            "token",
            "refresh_TOKEN",
            "tokens",
        ] {
            assert!(masking.masks_key(key), "{key}");
        }
        for key in ["", "api", "apikey", "tok", "api key", "to-ken", "kind"] {
            assert!(!masking.masks_key(key), "{key}");
        }
        assert!(!self::masking(&[]).masks_key("password"));
        assert!(!self::masking(&[""]).masks_key("password"));
    }

    proptest! {
        /// The same answer as folding both and searching.
        #[test]
        fn fragments_match_as_folded_containment(
            keys in prop::collection::vec("[a-cA-C_-]{1,4}", 0..4),
            key in "[a-cA-C_-]{0,10}",
        ) {
            let folded = |s: &str| s.bytes().map(fold).collect::<Vec<u8>>();
            let expected = keys.iter().any(|fragment| {
                let fragment = folded(fragment);
                folded(&key).windows(fragment.len()).any(|w| w == fragment.as_slice())
            });
            let masking = Masking::new(Masks { pointers: Vec::new(), keys }).unwrap();
            prop_assert_eq!(masking.masks_key(&key), expected);
        }
    }
}
