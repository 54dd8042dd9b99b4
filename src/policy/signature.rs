//! Signed OPA bundles, verified as OPA verifies them: `.signatures.json` holds one JWS
//! (compact form) whose payload lists every file of the bundle with its digest; the JWS
//! must verify under the configured public key with the configured algorithm, its
//! `scope` must be the configured one, and then every file in the bundle must be listed
//! with a matching digest and every listed file must be in the bundle.
//!
//! The JWS is three base64url parts; the signature is checked by ring and the key read
//! by x509-parser, the crates the TLS listeners already use.

use std::{collections::HashMap, path::Path};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde::Deserialize;
use x509_parser::{
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    },
    prelude::{FromDer, SubjectPublicKeyInfo, X509Certificate},
};

/// The JWS algorithms a bundle signature may use (OPA's asymmetric ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (OPA's default).
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
}

/// What kind of public key a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
}

impl SigningAlg {
    /// Every algorithm, in the order they are listed to a user.
    pub const ALL: [Self; 8] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
        Self::Es256,
        Self::Es384,
    ];

    /// The JWS name, e.g. `RS256`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        }
    }

    /// The algorithm named `text` (the JWS name).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.name() == text)
    }

    fn key_kind(self) -> KeyKind {
        match self {
            Self::Es256 => KeyKind::EcP256,
            Self::Es384 => KeyKind::EcP384,
            _ => KeyKind::Rsa,
        }
    }

    fn ring(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Self::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            Self::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
        }
    }
}

impl KeyKind {
    /// The algorithm a key of this kind verifies with when none is configured.
    fn default_alg(self) -> SigningAlg {
        match self {
            Self::Rsa => SigningAlg::Rs256,
            Self::EcP256 => SigningAlg::Es256,
            Self::EcP384 => SigningAlg::Es384,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Rsa => "an RSA key",
            Self::EcP256 => "an ECDSA P-256 key",
            Self::EcP384 => "an ECDSA P-384 key",
        }
    }
}

/// Why a verification key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// Why a bundle's signature was refused. The bundle is not activated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A verification key is configured and the bundle has no `.signatures.json`.
    #[error("the bundle is not signed (no .signatures.json) and a verification key is configured")]
    Unsigned,
    /// The bundle is signed and no key is configured to verify it (OPA refuses these too).
    #[error("the bundle is signed (.signatures.json) but no verification key is configured")]
    NoKey,
    /// `.signatures.json` or its JWS is malformed, or the JWS does not verify.
    #[error(".signatures.json: {0}")]
    Invalid(String),
    /// The JWS names another key than the configured key id.
    #[error(".signatures.json: signed with key id {found:?}, expected {expected:?}")]
    KeyId {
        /// The configured key id.
        expected: String,
        /// The key id the JWS names.
        found: String,
    },
    /// The JWS claims another scope than the configured one.
    #[error(".signatures.json: scope {found:?} does not match the configured scope {expected:?}")]
    Scope {
        /// The configured scope.
        expected: String,
        /// The scope the JWS claims.
        found: String,
    },
    /// A file of the bundle is not listed in the signature.
    #[error("{0}: not included in the bundle signature")]
    Unlisted(String),
    /// A file's digest differs from the signed one.
    #[error("{0}: digest mismatch (the file is not the one that was signed)")]
    Digest(String),
    /// Files the signature lists are not in the bundle.
    #[error("{} listed in the bundle signature but not in the bundle", .0.join(", "))]
    Missing(Vec<String>),
}

impl SignatureError {
    /// A short label for counting refusals: `unsigned`, `signature` or `digest`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::NoKey | Self::Invalid(_) | Self::KeyId { .. } | Self::Scope { .. } => "signature",
            Self::Unlisted(_) | Self::Digest(_) | Self::Missing(_) => "digest",
        }
    }
}

/// The key bundles are verified with, and what their signature must claim.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleVerifier {
    alg: SigningAlg,
    /// The public key as ring takes it: PKCS#1 `RSAPublicKey` DER, or the EC point.
    key: Vec<u8>,
    key_id: Option<String>,
    scope: String,
}

impl std::fmt::Debug for BundleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleVerifier")
            .field("alg", &self.alg)
            .field("key_id", &self.key_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Largest accepted key file: a PEM public key or certificate is a few KiB.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

impl BundleVerifier {
    /// Reads the PEM public key (`PUBLIC KEY`, `RSA PUBLIC KEY` or a `CERTIFICATE`) in
    /// `path`. The algorithm is `alg`, or inferred from the key: RS256 for RSA (OPA's
    /// default), ES256 for P-256, ES384 for P-384.
    pub fn load(
        path: &Path,
        alg: Option<SigningAlg>,
        key_id: Option<String>,
        scope: Option<String>,
    ) -> Result<Self, KeyError> {
        let at = |e: String| KeyError(format!("{}: {e}", path.display()));
        let size = std::fs::metadata(path)
            .map_err(|e| at(e.to_string()))?
            .len();
        if size > MAX_KEY_FILE_BYTES {
            return Err(at(format!(
                "{size} bytes is too large for a public key file"
            )));
        }
        let pem = std::fs::read(path).map_err(|e| at(e.to_string()))?;
        Self::from_pem(&pem, alg, key_id, scope).map_err(|e| at(e.0))
    }

    /// As [`BundleVerifier::load`], from the PEM text itself.
    pub fn from_pem(
        pem: &[u8],
        alg: Option<SigningAlg>,
        key_id: Option<String>,
        scope: Option<String>,
    ) -> Result<Self, KeyError> {
        let (kind, key) = public_key(pem)?;
        let alg = alg.unwrap_or(kind.default_alg());
        if alg.key_kind() != kind {
            return Err(KeyError(format!(
                "{} cannot verify {} signatures",
                kind.describe(),
                alg.name()
            )));
        }
        Ok(Self {
            alg,
            key,
            key_id: key_id.filter(|id| !id.is_empty()),
            scope: scope.unwrap_or_default(),
        })
    }

    /// The algorithm signatures must use.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// Verifies `.signatures.json` and returns the files it signs.
    pub(super) fn verify(&self, signatures_json: &[u8]) -> Result<SignedFiles, SignatureError> {
        let invalid = |e: String| SignatureError::Invalid(e);
        let signatures: SignaturesFile = serde_json::from_slice(signatures_json)
            .map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        if !signatures.plugin.is_empty() {
            return Err(invalid(format!(
                "signing plugin {:?} is not supported",
                signatures.plugin
            )));
        }
        let token = match signatures.signatures.as_slice() {
            [token] => token,
            [] => return Err(invalid("missing JWT (expected exactly one)".into())),
            _ => {
                return Err(invalid(
                    "multiple JWTs not supported (expected exactly one)".into(),
                ));
            }
        };
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("the JWT is not three dot-separated parts".into()));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|e| invalid(format!("JWT {what}: not base64url: {e}")))
        };
        let header: JwsHeader = serde_json::from_slice(&decode(header_b64, "header")?)
            .map_err(|e| invalid(format!("JWT header: {e}")))?;
        if header.alg != self.alg.name() {
            return Err(invalid(format!(
                "signed with {:?}, expected {}",
                header.alg,
                self.alg.name()
            )));
        }
        if header.crit.is_some() {
            return Err(invalid("JWT header \"crit\" is not supported".into()));
        }
        let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        UnparsedPublicKey::new(self.alg.ring(), &self.key)
            .verify(signed, &decode(signature_b64, "signature")?)
            .map_err(|_| invalid("the signature does not verify with the configured key".into()))?;
        // Only a verified payload is read further.
        let payload: JwsPayload = serde_json::from_slice(&decode(payload_b64, "payload")?)
            .map_err(|e| invalid(format!("JWT payload: {e}")))?;
        if let Some(expected) = &self.key_id
            && let Some(found) = header.kid.as_ref().or(payload.keyid.as_ref())
            && found != expected
        {
            return Err(SignatureError::KeyId {
                expected: expected.clone(),
                found: found.clone(),
            });
        }
        let scope = payload.scope.unwrap_or_default();
        if scope != self.scope {
            return Err(SignatureError::Scope {
                expected: self.scope.clone(),
                found: scope,
            });
        }
        let mut files = HashMap::with_capacity(payload.files.len());
        for file in payload.files {
            let name = file.name.trim_start_matches('/').to_string();
            if files.insert(name.clone(), file).is_some() {
                return Err(invalid(format!("{name} is listed twice")));
            }
        }
        Ok(SignedFiles(files))
    }
}

/// The files a verified signature lists, by path.
#[derive(Debug)]
pub(super) struct SignedFiles(HashMap<String, SignedFile>);

impl SignedFiles {
    /// The paths listed, sorted.
    #[cfg(test)]
    fn names(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Checks the bundle's files (path, SHA-256 digest as OPA computes it) against the
    /// list: each must be listed with its digest, and nothing listed may be missing.
    pub(super) fn check<'a>(
        mut self,
        files: impl IntoIterator<Item = (&'a str, &'a [u8; 32])>,
    ) -> Result<(), SignatureError> {
        for (name, digest) in files {
            let Some(signed) = self.0.remove(name) else {
                return Err(SignatureError::Unlisted(name.into()));
            };
            if signed.algorithm != "SHA-256" {
                return Err(SignatureError::Invalid(format!(
                    "{name}: hashing algorithm {:?} is not supported (SHA-256 is, as opa build and opa sign write it)",
                    signed.algorithm
                )));
            }
            if decode_hex(&signed.hash) != Some(*digest) {
                return Err(SignatureError::Digest(name.into()));
            }
        }
        if self.0.is_empty() {
            return Ok(());
        }
        let mut missing: Vec<_> = self.0.into_keys().collect();
        missing.sort();
        Err(SignatureError::Missing(missing))
    }
}

#[derive(Deserialize)]
struct SignaturesFile {
    #[serde(default)]
    signatures: Vec<String>,
    #[serde(default)]
    plugin: String,
}

#[derive(Deserialize)]
struct JwsHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct JwsPayload {
    files: Vec<SignedFile>,
    /// The key id claim OPA wrote before it used the header's `kid` (deprecated).
    #[serde(default)]
    keyid: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SignedFile {
    name: String,
    hash: String,
    #[serde(default)]
    algorithm: String,
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// The kind of key in `pem` and the key as ring takes it.
fn public_key(pem: &[u8]) -> Result<(KeyKind, Vec<u8>), KeyError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|_| KeyError("not a PEM file".into()))?;
    match pem.label.as_str() {
        "PUBLIC KEY" => spki_key(&pem.contents),
        "RSA PUBLIC KEY" => {
            x509_parser::public_key::RSAPublicKey::from_der(&pem.contents)
                .map_err(|_| KeyError("RSA PUBLIC KEY: not a PKCS#1 RSA public key".into()))?;
            Ok((KeyKind::Rsa, pem.contents))
        }
        "CERTIFICATE" => {
            let (_, cert) = X509Certificate::from_der(&pem.contents)
                .map_err(|e| KeyError(format!("CERTIFICATE: {e}")))?;
            spki_key(cert.public_key().raw)
        }
        label if label.contains("PRIVATE") => Err(KeyError(format!(
            "holds a {label}: give the public key bundles are verified with"
        ))),
        label => Err(KeyError(format!(
            "a PEM {label} is not a public key (PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)"
        ))),
    }
}

fn spki_key(der: &[u8]) -> Result<(KeyKind, Vec<u8>), KeyError> {
    let (_, spki) =
        SubjectPublicKeyInfo::from_der(der).map_err(|e| KeyError(format!("PUBLIC KEY: {e}")))?;
    let key = spki.subject_public_key.data.to_vec();
    let algorithm = &spki.algorithm;
    if algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        return Ok((KeyKind::Rsa, key));
    }
    if algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = algorithm
            .parameters
            .as_ref()
            .and_then(|p| x509_parser::der_parser::oid::Oid::try_from(p).ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok((KeyKind::EcP256, key)),
            Some(c) if c == OID_NIST_EC_P384 => Ok((KeyKind::EcP384, key)),
            _ => Err(KeyError(
                "an ECDSA key on a curve other than P-256 or P-384".into(),
            )),
        };
    }
    Err(KeyError(format!(
        "a {} key is not supported (RSA, ECDSA P-256 or P-384 are)",
        algorithm.algorithm
    )))
}

#[cfg(test)]
#[path = "signature_tests.rs"]
mod tests;
