//! The hash chain: each record carries the SHA-256 of the record before it
//! (`prev_hash`) and its own (`hash`, the last field), computed over the exact bytes of
//! the line without the `hash` field. Editing, removing, inserting or reordering a
//! record breaks the chain at the next record; [`verify`] names the first bad one. It
//! also refuses a record holding raw a character the writer escapes (`json::must_escape`),
//! which the hash alone does not catch in a log written by an older build.

use std::{
    fmt,
    fs::File,
    io::{self, BufRead, BufReader},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev_hash` of the first record ever written.
    pub const GENESIS: Hash = Hash([0; 32]);

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        self.write_hex(&mut out);
        out
    }

    /// Appends the lowercase hex to `out`.
    pub(crate) fn write_hex(&self, out: &mut String) {
        super::json::push_hex(out, &self.0);
    }

    fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

const HASH_FIELD: &str = ",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`.
const SUFFIX_LEN: usize = HASH_FIELD.len() + 64 + 2;

/// Finishes a serialised record (a JSON object whose last field is `prev_hash`, written
/// on one line): hashes it and appends the hash field.
pub(crate) fn seal(mut body: String) -> (String, Hash) {
    let hash = Hash(Sha256::digest(body.as_bytes()).into());
    body.pop(); // the closing brace
    body.push_str(HASH_FIELD);
    hash.write_hex(&mut body);
    body.push_str("\"}");
    (body, hash)
}

/// Splits a line into its body (as hashed) and its claimed hash.
fn unseal(line: &str) -> Option<(String, Hash)> {
    if line.len() < SUFFIX_LEN || !line.ends_with("\"}") {
        return None;
    }
    let split = line.len() - SUFFIX_LEN;
    let suffix = line.get(split..)?;
    let hex = suffix.strip_prefix(HASH_FIELD)?.strip_suffix("\"}")?;
    let claimed = Hash::from_hex(hex)?;
    let mut body = line.get(..split)?.to_string();
    body.push('}');
    Some((body, claimed))
}

/// The hash a sealed line claims (to continue a chain from an existing file).
pub(crate) fn hash_of(line: &str) -> Option<Hash> {
    unseal(line).map(|(_, hash)| hash)
}

/// Where a chain is broken.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The first bad record.
    #[error("{}:{line}: {problem}", file.display())]
    Broken {
        /// The file.
        file: PathBuf,
        /// Its line number (1-based).
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// A record holding a character the writer always escapes (a control, a line
    /// separator or a format character such as a bidi override), raw: written by an
    /// older build, or edited; a reader may split the record or show it differently
    /// from what it holds.
    #[error(
        "{}:{line}: U+{:04X} written raw (records escape control, line-separator and format characters; an older build wrote this record, or it was edited)",
        file.display(),
        u32::from(*character)
    )]
    RawCharacter {
        /// The file.
        file: PathBuf,
        /// Its line number (1-based).
        line: usize,
        /// The first such character.
        character: char,
    },
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: usize,
    /// Whether the first record starts the chain (`prev_hash` all zeros); otherwise it
    /// continues records that were rotated away.
    pub from_genesis: bool,
    /// The last record's hash (to compare with a copy kept elsewhere: removing records
    /// from the end cannot be seen from the files alone).
    pub last: Option<Hash>,
}

#[derive(serde::Deserialize)]
struct PrevOnly {
    prev_hash: String,
}

/// Checks the chain across `files`, oldest first (e.g. `decisions.jsonl.8` …
/// `decisions.jsonl.1`, `decisions.jsonl`).
pub fn verify(files: &[impl AsRef<Path>]) -> Result<Verified, VerifyError> {
    let mut previous: Option<Hash> = None;
    let mut verified = Verified {
        records: 0,
        from_genesis: false,
        last: None,
    };
    for file in files {
        let file = file.as_ref();
        let io_err = |source| VerifyError::Io {
            file: file.to_path_buf(),
            source,
        };
        let reader = BufReader::new(File::open(file).map_err(io_err)?);
        for (index, line) in reader.lines().enumerate() {
            let line = line.map_err(io_err)?;
            let broken = |problem| VerifyError::Broken {
                file: file.to_path_buf(),
                line: index + 1,
                problem,
            };
            if let Some(character) = super::json::first_raw_escapable(&line) {
                return Err(VerifyError::RawCharacter {
                    file: file.to_path_buf(),
                    line: index + 1,
                    character,
                });
            }
            let (body, claimed) =
                unseal(&line).ok_or_else(|| broken("not a sealed record (no hash field)"))?;
            let actual = Hash(Sha256::digest(body.as_bytes()).into());
            if actual != claimed {
                return Err(broken("hash does not match the record (edited)"));
            }
            let prev = serde_json::from_str::<PrevOnly>(&body)
                .ok()
                .and_then(|p| Hash::from_hex(&p.prev_hash))
                .ok_or_else(|| broken("no valid prev_hash"))?;
            match previous {
                None => verified.from_genesis = prev == Hash::GENESIS,
                Some(expected) if expected != prev => {
                    return Err(broken(
                        "prev_hash is not the previous record's hash (a record was removed, inserted or reordered)",
                    ));
                }
                Some(_) => {}
            }
            previous = Some(claimed);
            verified.records += 1;
        }
    }
    verified.last = previous;
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips() {
        let (line, hash) = seal("{\"a\":\"x\",\"prev_hash\":\"00\"}".into());
        assert_eq!(hash_of(&line), Some(hash));
        assert_eq!(Hash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(unseal("{}"), None);
    }

    #[test]
    fn a_raw_format_character_is_reported_though_the_chain_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let genesis = Hash::GENESIS.to_hex();
        let (good, _) = seal(format!(r#"{{"a":"\u202e","prev_hash":"{genesis}"}}"#));
        let (raw, _) = seal(format!(
            "{{\"a\":\"x\u{202e}y\",\"prev_hash\":\"{genesis}\"}}"
        ));
        std::fs::write(&path, format!("{good}\n{raw}\n")).unwrap();
        let err = verify(&[&path]).expect_err("raw U+202E");
        assert!(
            matches!(
                err,
                VerifyError::RawCharacter {
                    line: 2,
                    character: '\u{202e}',
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(":2: U+202E written raw"), "{err}");
    }
}
