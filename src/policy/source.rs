//! Reading a policy directory: which files belong to the set, the guards every file passes
//! before it reaches regorus, and the revision (content hash) of the set.
//!
//! regorus parses nested literals in exponential time, so size and nesting depth are
//! checked here, on plain bytes, before any parsing. `http.send` is refused here too:
//! regorus registers it but always returns undefined, which would silently take a
//! policy's "undefined" path.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

use sha2::{Digest, Sha256};

use super::{BundleTrust, LoadError, bundle};

/// Limits every policy file must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Largest accepted file, in bytes.
    pub max_file_bytes: u64,
    /// Deepest accepted nesting of `(`, `[` and `{` in a `.rego` file.
    pub max_nesting_depth: usize,
    /// Most files accepted in one set.
    pub max_files: usize,
    /// Most bytes an OPA bundle may hold once decompressed (a decompression bomb stops
    /// here).
    pub max_bundle_bytes: u64,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 1024 * 1024,
            max_nesting_depth: 12,
            max_files: 1000,
            max_bundle_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What a file in the set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A Rego module.
    Rego,
    /// JSON data, merged into `data` at the file's directory path.
    Json,
    /// YAML data, merged into `data` at the file's directory path.
    Yaml,
}

impl FileKind {
    fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "rego" => Some(Self::Rego),
            "json" => Some(Self::Json),
            "yaml" | "yml" => Some(Self::Yaml),
            _ => None,
        }
    }
}

/// One file of a policy set.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// Path relative to the set's root, with `/` separators.
    pub path: String,
    /// What the file holds.
    pub kind: FileKind,
    /// The file's text.
    pub content: String,
}

/// The files of a policy set, read and guarded, with their revision.
#[derive(Debug, Clone)]
pub struct PolicySource {
    /// The directory the set was read from.
    pub root: PathBuf,
    /// The files, sorted by path.
    pub files: Vec<PolicyFile>,
    /// `sha256:<hex>` over every file's path and content.
    pub revision: Arc<str>,
    /// For a set read from an OPA bundle, the revision its `.manifest` names (empty when
    /// it names none); `None` for a directory.
    pub bundle_revision: Option<Arc<str>>,
}

impl PolicySource {
    /// Reads the set at `path`: an OPA bundle (a `.tar.gz` or `.tgz` file) or a directory.
    /// A bundle's signature is not verified (a warning says so when it has one).
    pub fn read(path: &Path, limits: &SourceLimits) -> Result<Self, LoadError> {
        Self::read_trusting(path, limits, BundleTrust::WarnSigned)
    }

    /// As [`PolicySource::read`], treating a bundle's signature as `trust` says.
    pub fn read_trusting(
        path: &Path,
        limits: &SourceLimits,
        trust: BundleTrust<'_>,
    ) -> Result<Self, LoadError> {
        if bundle::is_bundle(path) {
            let bundle = bundle::read_bundle(path, limits, trust)?;
            return Self::from_bundle(path.into(), bundle, limits);
        }
        Self::read_dir(path, limits)
    }

    /// Reads a gzipped OPA bundle from `archive` (a bundle server's response); `origin`
    /// names it in errors.
    pub fn read_archive(
        origin: &Path,
        archive: impl Read,
        limits: &SourceLimits,
        trust: BundleTrust<'_>,
    ) -> Result<Self, LoadError> {
        let bundle = bundle::read_archive(archive, origin, limits, trust)?;
        Self::from_bundle(origin.into(), bundle, limits)
    }

    fn from_bundle(
        root: PathBuf,
        bundle: bundle::Bundle,
        limits: &SourceLimits,
    ) -> Result<Self, LoadError> {
        let mut source = Self::from_files(root, bundle.files, limits)?;
        source.bundle_revision = Some(bundle.revision);
        Ok(source)
    }

    /// Reads every `.rego`, `.json`, `.yaml` and `.yml` file under `root`, recursively,
    /// skipping hidden files and directories (names starting with `.`, which also skips
    /// the `..data` links of a Kubernetes ConfigMap volume).
    pub fn read_dir(root: &Path, limits: &SourceLimits) -> Result<Self, LoadError> {
        let meta = fs::metadata(root).map_err(|source| LoadError::Io {
            path: root.into(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(LoadError::NotADirectory(root.into()));
        }
        let mut files = Vec::new();
        collect(root, root, 0, limits, &mut files)?;
        Self::from_files(root.into(), files, limits)
    }

    /// Builds a set from files already in memory (paths relative, `/`-separated).
    pub fn from_files(
        root: PathBuf,
        mut files: Vec<PolicyFile>,
        limits: &SourceLimits,
    ) -> Result<Self, LoadError> {
        if files.len() > limits.max_files {
            return Err(LoadError::TooManyFiles {
                root,
                limit: limits.max_files,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        if !files.iter().any(|f| f.kind == FileKind::Rego) {
            return Err(LoadError::NoPolicies(root));
        }
        for file in &files {
            if file.content.len() as u64 > limits.max_file_bytes {
                return Err(LoadError::TooLarge {
                    path: file.path.clone(),
                    size: file.content.len() as u64,
                    limit: limits.max_file_bytes,
                });
            }
            if file.kind == FileKind::Rego {
                scan_rego(&file.path, &file.content, limits.max_nesting_depth)?;
            }
        }
        let revision = revision_of(&files);
        Ok(Self {
            root,
            files,
            revision,
            bundle_revision: None,
        })
    }
}

const MAX_DIR_DEPTH: usize = 32;

fn collect(
    root: &Path,
    dir: &Path,
    depth: usize,
    limits: &SourceLimits,
    out: &mut Vec<PolicyFile>,
) -> Result<(), LoadError> {
    if depth > MAX_DIR_DEPTH {
        return Err(LoadError::TooDeepTree(dir.into()));
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    let mut entries = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: ConfigMap volumes are made of them.
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            collect(root, &path, depth + 1, limits, out)?;
            continue;
        }
        let Some(kind) = FileKind::of(&path) else {
            continue;
        };
        let relative = relative_path(root, &path);
        if meta.len() > limits.max_file_bytes {
            return Err(LoadError::TooLarge {
                path: relative,
                size: meta.len(),
                limit: limits.max_file_bytes,
            });
        }
        if out.len() >= limits.max_files {
            return Err(LoadError::TooManyFiles {
                root: root.into(),
                limit: limits.max_files,
            });
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let content = String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8(relative.clone()))?;
        out.push(PolicyFile {
            path: relative,
            kind,
            content,
        });
    }
    Ok(())
}

fn relative_path(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn revision_of(files: &[PolicyFile]) -> Arc<str> {
    let mut hasher = Sha256::new();
    for file in files {
        // Length-prefixed so that no two different sets hash the same bytes.
        hasher.update((file.path.len() as u64).to_le_bytes());
        hasher.update(file.path.as_bytes());
        hasher.update((file.content.len() as u64).to_le_bytes());
        hasher.update(file.content.as_bytes());
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex.into()
}

/// Checks nesting depth and forbidden calls of one Rego file, outside strings and
/// comments, in one linear pass.
fn scan_rego(path: &str, text: &str, max_depth: usize) -> Result<(), LoadError> {
    const FORBIDDEN: &[&str] = &["http.send"];
    let bytes = text.as_bytes();
    let mut line = 1usize;
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => line += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'`' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'`' {
                    line += usize::from(bytes[i] == b'\n');
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(LoadError::TooDeep {
                        path: path.into(),
                        line,
                        limit: max_depth,
                    });
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {
                let starts_word = i == 0 || !is_ident(bytes[i - 1]);
                if starts_word
                    && let Some(call) = FORBIDDEN.iter().find(|f| {
                        bytes[i..].starts_with(f.as_bytes())
                            && bytes.get(i + f.len()).is_none_or(|b| !is_ident(*b))
                    })
                {
                    return Err(LoadError::Forbidden {
                        path: path.into(),
                        line,
                        call,
                    });
                }
            }
        }
        i += 1;
    }
    Ok(())
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rego(path: &str, content: &str) -> PolicyFile {
        PolicyFile {
            path: path.into(),
            kind: FileKind::Rego,
            content: content.into(),
        }
    }

    fn from(files: Vec<PolicyFile>) -> Result<PolicySource, LoadError> {
        PolicySource::from_files("mem".into(), files, &SourceLimits::default())
    }

    #[test]
    fn revision_is_a_content_hash_independent_of_order() {
        let a = from(vec![
            rego("a.rego", "package a"),
            rego("b.rego", "package b"),
        ])
        .unwrap();
        let b = from(vec![
            rego("b.rego", "package b"),
            rego("a.rego", "package a"),
        ])
        .unwrap();
        let c = from(vec![
            rego("a.rego", "package a"),
            rego("b.rego", "package c"),
        ])
        .unwrap();
        assert_eq!(a.revision, b.revision);
        assert_ne!(a.revision, c.revision);
        assert!(a.revision.starts_with("sha256:") && a.revision.len() == 71);
    }

    #[test]
    fn unclosed_brackets_are_refused_before_parsing_with_their_line() {
        let text = format!("package p\n\nx := {}", "[".repeat(43));
        let err = from(vec![rego("deep.rego", &text)]).unwrap_err();
        assert!(
            matches!(err, LoadError::TooDeep { ref path, line: 3, limit: 12 } if path == "deep.rego"),
            "{err}"
        );
        assert!(err.to_string().contains("deep.rego:3"), "{err}");
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let text = format!(
            "package p\n# {}\nx := \"{}\"\ny := `{}`\n",
            "[".repeat(50),
            "{".repeat(50),
            "(".repeat(50)
        );
        from(vec![rego("ok.rego", &text)]).unwrap();
    }

    #[test]
    fn http_send_is_refused_with_its_line_but_not_in_comments_or_names() {
        let err = from(vec![rego(
            "net.rego",
            "package p\n\nr := http.send({\"url\": \"x\"})\n",
        )])
        .unwrap_err();
        assert!(
            err.to_string().contains("net.rego:3") && err.to_string().contains("http.send"),
            "{err}"
        );
        from(vec![rego(
            "ok.rego",
            "package p\n# never http.send here\nmy_http.sender := 1\ns := \"http.send\"\n",
        )])
        .unwrap();
    }

    #[test]
    fn oversized_files_and_sets_without_rego_are_refused() {
        let big = "#".repeat(2 * 1024 * 1024);
        assert!(matches!(
            from(vec![rego("big.rego", &big)]),
            Err(LoadError::TooLarge { .. })
        ));
        let data = PolicyFile {
            path: "data.json".into(),
            kind: FileKind::Json,
            content: "{}".into(),
        };
        assert!(matches!(from(vec![data]), Err(LoadError::NoPolicies(_))));
    }

    #[test]
    fn reads_directories_recursively_skipping_hidden_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        fs::create_dir_all(dir.path().join(".git")).unwrap();
        fs::write(dir.path().join("a.rego"), "package a").unwrap();
        fs::write(dir.path().join("sub/deeper/data.yaml"), "k: 1").unwrap();
        fs::write(dir.path().join(".git/x.rego"), "package hidden").unwrap();
        fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let source = PolicySource::read_dir(dir.path(), &SourceLimits::default()).unwrap();
        let paths: Vec<_> = source.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.rego", "sub/deeper/data.yaml"]);
    }
}
