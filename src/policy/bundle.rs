//! OPA bundles: a gzipped tar of Rego modules and `data.json` / `data.yaml` files with an
//! optional `.manifest`, read into the same [`PolicyFile`]s a directory gives, so a team
//! moving from OPA can point `--policies` at the bundle its pipeline already builds, or
//! `--bundle-url` at the bundle server it already runs.
//!
//! A bundle comes from elsewhere (a build job, a bundle server), so it is read as
//! untrusted input: every entry's path must stay inside the bundle, only regular files
//! are accepted, and the archive is bounded while it is decompressed, so a decompression
//! bomb stops at the bound instead of filling memory. What stepgate cannot honour is
//! refused rather than half-applied: Rego v0 modules. A signed bundle is verified as OPA
//! verifies it (`signature.rs`) when a key is configured, and then every entry counts,
//! including those stepgate does not load.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, Read},
    path::{Component, Path},
    sync::Arc,
};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::{
    FileKind, LoadError, PolicyFile, SourceLimits,
    canonical::{is_structured, structured_sha256},
    signature::{BundleVerifier, SignatureError},
};

/// How a bundle's signature is treated.
#[derive(Debug, Clone, Copy)]
pub enum BundleTrust<'a> {
    /// Verify it with this key; an unsigned bundle is refused.
    Verify(&'a BundleVerifier),
    /// No key is configured: a signed bundle is refused, as OPA refuses it (a bundle
    /// server's bundles).
    RefuseSigned,
    /// No key is configured: signatures are not verified, and a warning says so (a
    /// bundle file given as `--policies`).
    WarnSigned,
}

/// What a bundle holds: its policy and data files, and its manifest's revision.
#[derive(Debug)]
pub(super) struct Bundle {
    /// The Rego modules and data files to load.
    pub(super) files: Vec<PolicyFile>,
    /// The `.manifest`'s `revision` (empty without one).
    pub(super) revision: Arc<str>,
}

/// Whether `path` names a bundle (`.tar.gz` or `.tgz`) rather than a directory.
pub(super) fn is_bundle(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Reads the bundle file at `path`.
pub(super) fn read_bundle(
    path: &Path,
    limits: &SourceLimits,
    trust: BundleTrust<'_>,
) -> Result<Bundle, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Io {
        path: path.into(),
        source,
    })?;
    read_archive(file, path, limits, trust)
}

/// Reads a gzipped bundle from `archive`; `origin` names it in errors.
pub(super) fn read_archive(
    archive: impl Read,
    origin: &Path,
    limits: &SourceLimits,
    trust: BundleTrust<'_>,
) -> Result<Bundle, LoadError> {
    let bad = |problem: String| LoadError::Bundle {
        path: origin.into(),
        problem,
    };
    let mut archive = tar::Archive::new(Bounded {
        inner: GzDecoder::new(archive),
        limit: limits.max_bundle_bytes,
        left: limits.max_bundle_bytes,
    });
    let verifying = matches!(trust, BundleTrust::Verify(_));
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    let mut manifest = None;
    let mut signatures = None;
    // Every entry's digest as OPA signs it, when the signature is to be verified.
    let mut digests: Vec<(String, [u8; 32])> = Vec::new();
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let name = entry_path(&raw)
            .map_err(|problem| bad(format!("entry \"{}\": {problem}", raw.display())))?;
        match entry.header().entry_type() {
            EntryType::Directory | EntryType::XGlobalHeader => continue,
            EntryType::Regular | EntryType::Continuous => {}
            other => {
                return Err(bad(format!(
                    "entry \"{name}\" is a {other:?}: only regular files are accepted"
                )));
            }
        }
        if !seen.insert(name.clone()) {
            return Err(bad(format!("entry \"{name}\" appears twice")));
        }
        let role = role_of(&name);
        if role == Role::Signatures {
            signatures = Some(read_entry(&mut entry, &name, limits, &bad)?);
            continue;
        }
        if role == Role::Skip && !(verifying && is_structured(&name)) {
            if verifying {
                let mut hasher = Sha256::new();
                io::copy(&mut entry, &mut hasher)
                    .map_err(|e| bad(format!("entry \"{name}\": {e}")))?;
                digests.push((name, hasher.finalize().into()));
            }
            continue;
        }
        let bytes = read_entry(&mut entry, &name, limits, &bad)?;
        let content = String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8(name.clone()))?;
        if verifying {
            let digest = if is_structured(&name) {
                structured_sha256(&name, &content)
                    .map_err(|problem| bad(format!("entry \"{name}\": {problem}")))?
            } else {
                Sha256::digest(content.as_bytes()).into()
            };
            digests.push((name.clone(), digest));
        }
        let kind = match role {
            Role::Load(kind) => kind,
            Role::Manifest => {
                manifest = Some(content);
                continue;
            }
            Role::Skip | Role::Signatures => continue,
        };
        if files.len() >= limits.max_files {
            return Err(LoadError::TooManyFiles {
                root: origin.into(),
                limit: limits.max_files,
            });
        }
        files.push(PolicyFile {
            path: name,
            kind,
            content,
        });
    }
    let unverified = |source| LoadError::Signature {
        bundle: origin.into(),
        source,
    };
    match (trust, signatures) {
        (BundleTrust::Verify(verifier), Some(signatures)) => verifier
            .verify(&signatures)
            .and_then(|signed| signed.check(digests.iter().map(|(n, d)| (n.as_str(), d))))
            .map_err(unverified)?,
        (BundleTrust::Verify(_), None) => return Err(unverified(SignatureError::Unsigned)),
        (BundleTrust::RefuseSigned, Some(_)) => return Err(unverified(SignatureError::NoKey)),
        (BundleTrust::WarnSigned, Some(_)) => tracing::warn!(
            bundle = %origin.display(),
            "bundle signatures are not verified: no verification key is configured"
        ),
        (BundleTrust::RefuseSigned | BundleTrust::WarnSigned, None) => {}
    }
    let revision = match manifest {
        Some(manifest) => {
            check_manifest(&manifest).map_err(|problem| bad(format!(".manifest: {problem}")))?
        }
        None => String::new(),
    };
    Ok(Bundle {
        files,
        revision: revision.into(),
    })
}

/// What an entry is to the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A Rego module or data file to load.
    Load(FileKind),
    /// The `.manifest`.
    Manifest,
    /// The `.signatures.json`.
    Signatures,
    /// Anything OPA would not load as Rego or data (Wasm, hidden files, other files).
    Skip,
}

fn role_of(name: &str) -> Role {
    match name {
        ".manifest" => Role::Manifest,
        ".signatures.json" => Role::Signatures,
        _ if name.split('/').any(|part| part.starts_with('.')) => Role::Skip,
        _ => bundle_file_kind(name).map_or(Role::Skip, Role::Load),
    }
}

/// Reads one entry whole, refusing it unread when its header says it is too large.
fn read_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &str,
    limits: &SourceLimits,
    bad: &dyn Fn(String) -> LoadError,
) -> Result<Vec<u8>, LoadError> {
    let size = entry.header().size().map_err(|e| bad(e.to_string()))?;
    if size > limits.max_file_bytes {
        return Err(LoadError::TooLarge {
            path: name.into(),
            size,
            limit: limits.max_file_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("entry \"{name}\": {e}")))?;
    Ok(bytes)
}

/// An entry's path inside the bundle, `/`-separated, without a leading `/` or `./`.
fn entry_path(raw: &Path) -> Result<String, &'static str> {
    let mut parts = Vec::new();
    for component in raw.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_str().ok_or("path is not UTF-8")?),
            Component::ParentDir | Component::Prefix(_) => return Err("path leaves the bundle"),
        }
    }
    if parts.is_empty() {
        return Err("empty path");
    }
    Ok(parts.join("/"))
}

/// OPA loads `.rego` modules and files named `data.json` / `data.yaml` from a bundle.
fn bundle_file_kind(name: &str) -> Option<FileKind> {
    let file = name.rsplit('/').next().unwrap_or(name);
    if file.ends_with(".rego") {
        Some(FileKind::Rego)
    } else if file == "data.json" {
        Some(FileKind::Json)
    } else if file == "data.yaml" || file == "data.yml" {
        Some(FileKind::Yaml)
    } else {
        None
    }
}

/// The manifest's `revision`, refusing manifests that ask for what stepgate does not do:
/// Rego v0 modules.
fn check_manifest(text: &str) -> Result<String, String> {
    let manifest: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(manifest) = manifest.as_object() else {
        return Err("must be a JSON object".into());
    };
    let v0 = |v: &serde_json::Value| v.as_u64() == Some(0);
    if manifest.get("rego_version").is_some_and(v0) {
        return Err("rego_version 0 (pre-1.0 Rego syntax) is not supported: rebuild the bundle with Rego v1".into());
    }
    if let Some(files) = manifest
        .get("file_rego_versions")
        .and_then(|f| f.as_object())
        && let Some((file, _)) = files.iter().find(|(_, v)| v0(v))
    {
        return Err(format!(
            "file_rego_versions marks \"{file}\" as Rego v0, which is not supported"
        ));
    }
    match manifest.get("revision") {
        None => Ok(String::new()),
        Some(serde_json::Value::String(revision)) => Ok(revision.clone()),
        Some(_) => Err("\"revision\" must be a string".into()),
    }
}

/// A reader that fails once more than `limit` bytes have come through.
struct Bounded<R> {
    inner: R,
    limit: u64,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!("over {} bytes once decompressed", self.limit))
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flate2::{Compression, write::GzEncoder};

    use super::*;

    /// A gzipped tar written header by header, so it can say what `tar::Builder` refuses
    /// to write (absolute paths as `opa build` writes them, `..`, links).
    fn tar_gz(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
        let mut tar = Vec::new();
        for (name, kind, contents) in entries {
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_size(contents.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.extend_from_slice(header.as_bytes());
            tar.extend_from_slice(contents);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar.resize(tar.len() + 1024, 0);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    /// A bundle of regular files.
    fn bundle(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let entries: Vec<_> = entries
            .iter()
            .map(|(name, contents)| (*name, EntryType::Regular, *contents))
            .collect();
        tar_gz(&entries)
    }

    fn read(bytes: &[u8]) -> Result<Vec<PolicyFile>, LoadError> {
        read_within(bytes, &SourceLimits::default())
    }

    fn read_within(bytes: &[u8], limits: &SourceLimits) -> Result<Vec<PolicyFile>, LoadError> {
        read_archive(
            bytes,
            Path::new("bundle.tar.gz"),
            limits,
            BundleTrust::WarnSigned,
        )
        .map(|bundle| bundle.files)
    }

    fn err(bytes: &[u8]) -> String {
        read(bytes).unwrap_err().to_string()
    }

    #[test]
    fn reads_rego_and_data_files_and_skips_what_opa_would_not_load() {
        let files = read(&bundle(&[
            ("/.manifest", br#"{"revision": "v42", "roots": ["authz"]}"#),
            ("/authz/policy.rego", b"package authz\nallow := true\n"),
            ("./authz/data.json", br#"{"limit": 3}"#),
            ("authz/other.json", b"{}"),
            ("authz/policy.wasm", b"\0asm"),
            ("authz/.hidden.rego", b"package hidden"),
        ]))
        .unwrap();
        let found: Vec<_> = files.iter().map(|f| (f.path.as_str(), f.kind)).collect();
        assert_eq!(
            found,
            [
                ("authz/policy.rego", FileKind::Rego),
                ("authz/data.json", FileKind::Json)
            ]
        );
    }

    #[test]
    fn the_manifest_revision_is_read_and_must_be_a_string() {
        let read = |manifest: &[u8]| {
            let bytes = bundle(&[(".manifest", manifest), ("p.rego", b"package p")]);
            read_archive(
                bytes.as_slice(),
                Path::new("b.tar.gz"),
                &SourceLimits::default(),
                BundleTrust::RefuseSigned,
            )
        };
        assert_eq!(&*read(br#"{"revision": "v42"}"#).unwrap().revision, "v42");
        assert_eq!(&*read(b"{}").unwrap().revision, "");
        let e = read(br#"{"revision": 42}"#).unwrap_err().to_string();
        assert!(e.contains("\"revision\" must be a string"), "{e}");
    }

    #[test]
    fn a_signed_bundle_without_a_key_is_refused_from_a_server_and_warned_about_locally() {
        let bytes = bundle(&[
            (".signatures.json", br#"{"signatures": ["x.y.z"]}"#),
            ("p.rego", b"package p"),
        ]);
        let read = |trust| {
            read_archive(
                bytes.as_slice(),
                Path::new("b.tar.gz"),
                &SourceLimits::default(),
                trust,
            )
        };
        let e = read(BundleTrust::RefuseSigned).unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::Signature {
                    source: SignatureError::NoKey,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(read(BundleTrust::WarnSigned).unwrap().files.len(), 1);
    }

    #[test]
    fn is_bundle_goes_by_the_file_name() {
        assert!(is_bundle(Path::new("/x/bundle.tar.gz")));
        assert!(is_bundle(Path::new("b.tgz")));
        assert!(!is_bundle(Path::new("policies")));
        assert!(!is_bundle(Path::new("policy.rego")));
    }

    #[test]
    fn paths_that_leave_the_bundle_are_refused() {
        let e = err(&tar_gz(&[(
            "../evil.rego",
            EntryType::Regular,
            b"package x",
        )]));
        assert!(
            e.contains("entry \"../evil.rego\": path leaves the bundle"),
            "{e}"
        );
    }

    #[test]
    fn links_and_devices_are_refused() {
        for kind in [EntryType::Symlink, EntryType::Link, EntryType::Char] {
            let e = err(&tar_gz(&[("policy.rego", kind, b"")]));
            assert!(
                e.contains("only regular files are accepted"),
                "{kind:?}: {e}"
            );
        }
    }

    #[test]
    fn duplicate_entries_are_refused() {
        let e = err(&bundle(&[
            ("a.rego", b"package a"),
            ("/a.rego", b"package b"),
        ]));
        assert!(e.contains("entry \"a.rego\" appears twice"), "{e}");
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let big = vec![b' '; 2 * 1024 * 1024];
        let e = read(&bundle(&[("big.rego", &big)])).unwrap_err();
        assert!(
            matches!(e, LoadError::TooLarge { ref path, .. } if path == "big.rego"),
            "{e}"
        );
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_bound() {
        // Skipped entries (not Rego or data) count too: every byte is decompressed.
        let limits = SourceLimits {
            max_bundle_bytes: 1024 * 1024,
            ..SourceLimits::default()
        };
        let chunk = vec![0u8; 400 * 1024];
        let bomb = bundle(&[("a.bin", &chunk), ("b.bin", &chunk), ("c.bin", &chunk)]);
        assert!(bomb.len() < 10 * 1024, "{} compressed bytes", bomb.len());
        let e = read_within(&bomb, &limits).unwrap_err().to_string();
        assert!(e.contains("over 1048576 bytes once decompressed"), "{e}");
        let small = bundle(&[("a.bin", &chunk), ("p.rego", b"package p")]);
        assert_eq!(read_within(&small, &limits).unwrap().len(), 1);
    }

    #[test]
    fn corrupt_archives_and_rego_v0_manifests_are_refused() {
        let e = err(b"not a gzip stream");
        assert!(e.contains("bundle.tar.gz"), "{e}");
        let e = err(&bundle(&[
            (".manifest", br#"{"rego_version": 0}"#),
            ("a.rego", b"package a"),
        ]));
        assert!(e.contains("rego_version 0"), "{e}");
        let e = err(&bundle(&[
            (".manifest", br#"{"file_rego_versions": {"/a.rego": 0}}"#),
            ("a.rego", b"package a"),
        ]));
        assert!(e.contains("\"/a.rego\" as Rego v0"), "{e}");
        let e = err(&bundle(&[(".manifest", b"[1]"), ("a.rego", b"package a")]));
        assert!(e.contains(".manifest: must be a JSON object"), "{e}");
    }
}
