//! Loading a policy set from disk: a directory of `.rego` / `.json` / `.yaml` files, or
//! an OPA bundle (`.tar.gz`), through the guards, the parser and the compiler, then one
//! evaluation of the decision rule.
//!
//! Input starting with the gzip magic (`1f 8b`) is written as `bundle.tar.gz`; any other
//! input is `name \0 content \0 name \0 content ...`, written as files of a directory
//! (names that would leave it are dropped). `fuzz/seed.sh` builds both from `policies/`.
//! Properties: no panic, no hang, bounded memory; the revision of an accepted set is a
//! function of its files alone (reading them back from memory gives the same one).

#![no_main]

mod common;

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use stepgate::policy::{Entrypoint, PolicyOptions, PolicySet, PolicySource, SourceLimits};

/// Smaller than the server's 64 MiB decompressed-bundle bound, so one input cannot spend
/// a second inflating a bomb; the bound's logic is the same.
const MAX_BUNDLE_BYTES: u64 = 4 << 20;

/// A relative path of a few normal components, or `None`.
fn safe_name(raw: &[u8]) -> Option<&Path> {
    let name = Path::new(std::str::from_utf8(raw).ok()?);
    let normal = name.components().all(|c| matches!(c, Component::Normal(_)));
    (normal && !raw.is_empty() && raw.len() <= 120 && name.components().count() <= 8)
        .then_some(name)
}

/// The example policy set as a directory, each of its files alone, and as an OPA bundle.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let files = common::files_under(&common::example_policies(), &["rego", "json", "yaml"]);
    let entry = |(name, content): &(String, Vec<u8>)| {
        let mut bytes = name.clone().into_bytes();
        bytes.push(0);
        bytes.extend_from_slice(content);
        bytes.push(0);
        bytes
    };
    let mut seeds: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|file| (format!("file-{}", file.0.replace('/', "-")), entry(file)))
        .collect();
    seeds.push((
        "dir-policies".into(),
        files.iter().flat_map(entry).collect(),
    ));
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let manifest = br#"{"revision": "seed", "roots": [""]}"#.to_vec();
    for (name, content) in std::iter::once((".manifest".to_string(), manifest)).chain(files) {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, &name, content.as_slice())
            .expect("appended");
    }
    let bundle = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("a bundle is built");
    seeds.push(("bundle-policies".into(), bundle));
    seeds
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let dir = common::tempdir();
    let root = if data.starts_with(&[0x1f, 0x8b]) {
        let bundle = dir.path().join("bundle.tar.gz");
        std::fs::write(&bundle, data).expect("written");
        bundle
    } else {
        let mut parts = data.split(|&b| b == 0);
        while let (Some(name), Some(content)) = (parts.next(), parts.next()) {
            let Some(name) = safe_name(name) else {
                continue;
            };
            let path = dir.path().join(name);
            if let Some(parent) = path.parent()
                && std::fs::create_dir_all(parent).is_err()
            {
                continue;
            }
            // A name may repeat or clash with a directory: the first write wins.
            let _ = std::fs::write(&path, content);
        }
        dir.path().to_path_buf()
    };

    let limits = SourceLimits {
        max_bundle_bytes: MAX_BUNDLE_BYTES,
        ..SourceLimits::default()
    };
    let Ok(source) = PolicySource::read(&root, &limits) else {
        return;
    };
    let again = PolicySource::from_files(root.clone(), source.files.clone(), &limits)
        .expect("an accepted set is accepted again from memory");
    assert_eq!(again.revision, source.revision);

    let options = PolicyOptions {
        source_limits: limits,
        ..PolicyOptions::default()
    };
    let Ok(set) = PolicySet::compile(&source, &options) else {
        return;
    };
    let input = regorus::Value::from_json_str(r#"{"step": "use", "subject": {"id": "alice"}, "action": "read"}"#)
        .expect("valid JSON");
    let _ = set.evaluate(Entrypoint::Decision, input);
});
