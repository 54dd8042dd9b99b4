//! Verification against OPA's own test vectors (`bundle/verify_test.go`: a JWS signed by
//! OPA with RS256 and the key pair's public half), and the checks around it.

use sha2::{Digest, Sha256};

use super::*;

/// OPA's `signedTokenRS256`: header `{"alg":"RS256","typ":"JWT","kid":"foo"}`, payload
/// listing two files with `"scope": "write"`.
const OPA_TOKEN_RS256: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImZvbyJ9.eyJmaWxlcyI6W3sibmFtZSI6ImRiL3VhbTIvZW50aXRsZW1lbnRzL2RhdGEuanNvbiIsImhhc2giOiJjMjEzMTU0NGM3MTZhMjVhNWUzMWY1MDQzMDBmNTI0MGU4MjM1Y2FkYjlhNTdmMGJkMWI2ZjRiZDc0YjI2NjEyIiwiYWxnb3JpdGhtIjoic2hhMjU2In0seyJuYW1lIjoiZGIvdWFtMi9wb2xpY3kvb3BhLXBvbGljeS5yZWdvIiwiaGFzaCI6IjQyY2ZlNjc2OGI1N2JiNWY3NTAzYzE2NWMyOGRkMDdhYzViODEzNTU0ZWJjODUwZjJjYzM1ODQzZTcxMzdiMWQifV0sImlhdCI6MTU5MjI1MTQwNiwiaXNzIjoiSldUU2VydmljZSIsInNjb3BlIjoid3JpdGUifQ.UZcX_Qj29o213nwZ5mysiyNcgAp1AOqCkDLkj1KGZ7Cw3l17TbkF8t3FJd654sf762NGcABA0WQ2zxq-labXl_d5TKQmq23lurO3qLHI1cKQPyoxPbddGo78sJpMwWsiMyEYcyyKC9FpNUpa8cT81GPo4q9Zui8TAD0wtHh2YxBL7E8QYLJxcLMJTJxVBgrQGLXFT7vYRc6hJz9Vu-i0SWuLBGxOCmYoHr4DWFfy0IhAbhiUFyLRpukfBPjCJNYY5LgaZdN6LaYivtIEUms5jUuXubBimLJm7KOT5-bgJMXTcUsbrbl2Ma7PwG5IOKjjgyEvH8KVfGFZSzNrpuxKmA";

/// OPA's `publicKeyValid`: the key the token above was signed with.
const OPA_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA9KaakMv1XKKDaSch3PFR
3a27oaHp1GNTTNqvb1ZaHZXp+wuhYDwc/MTE67x9GCifvQBWzEGorgTq7aisiOyl
vKifwz6/wQ+62WHKG/sqKn2Xikp3P63aBIPlZcHbkyyRmL62yeyuzYoGvLEYel+m
z5SiKGBwviSY0Th2L4e5sGJuk2HOut6emxDi+E2Fuuj5zokFJvIT6Urlq8f3h6+l
GeR6HUOXqoYVf7ff126GP7dticTVBgibxkkuJFmpvQSW6xmxruT4k6iwjzbZHY7P
ypZ/TdlnuGC1cOpAVyU7k32IJ9CRbt3nwEf5U54LRXLLQjFixWZHwKdDiMTF4ws0
+wIDAQAB
-----END PUBLIC KEY-----";

/// An RSA public key the token was not signed with (stepgate's test fixture).
const OTHER_PUBLIC_KEY: &[u8] =
    include_bytes!("../../tests/fixtures/bundle-signing/rsa-public.pem");

fn signatures(token: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "signatures": [token] })).unwrap()
}

fn opa_verifier(scope: &str, key_id: Option<&str>) -> BundleVerifier {
    BundleVerifier::from_pem(
        OPA_PUBLIC_KEY.as_bytes(),
        None,
        key_id.map(Into::into),
        Some(scope.into()),
    )
    .unwrap()
}

#[test]
fn a_jws_signed_by_opa_verifies_and_lists_its_files() {
    let verifier = opa_verifier("write", None);
    assert_eq!(
        verifier.alg(),
        SigningAlg::Rs256,
        "inferred from an RSA key"
    );
    let files = verifier.verify(&signatures(OPA_TOKEN_RS256)).unwrap();
    assert_eq!(
        files.names(),
        [
            "db/uam2/entitlements/data.json",
            "db/uam2/policy/opa-policy.rego"
        ]
    );
    // The token's kid ("foo") matches a configured key id.
    opa_verifier("write", Some("foo"))
        .verify(&signatures(OPA_TOKEN_RS256))
        .unwrap();
}

#[test]
fn another_key_a_tampered_token_or_another_algorithm_is_refused() {
    let other =
        BundleVerifier::from_pem(OTHER_PUBLIC_KEY, None, None, Some("write".into())).unwrap();
    let err = other.verify(&signatures(OPA_TOKEN_RS256)).unwrap_err();
    assert_eq!(
        err,
        SignatureError::Invalid("the signature does not verify with the configured key".into())
    );
    assert_eq!(err.reason(), "signature");

    // One character of the payload changed: the signature no longer covers it.
    let [head, payload, signature]: [&str; 3] = OPA_TOKEN_RS256
        .split('.')
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let payload = payload.replace("opa-policy.rego", "opa-policy.regp");
    let tampered = format!("{head}.{}.{signature}", URL_SAFE_NO_PAD.encode(payload));
    let err = opa_verifier("write", None)
        .verify(&signatures(&tampered))
        .unwrap_err();
    assert!(matches!(err, SignatureError::Invalid(_)), "{err}");

    let pss = BundleVerifier::from_pem(
        OPA_PUBLIC_KEY.as_bytes(),
        Some(SigningAlg::Ps256),
        None,
        Some("write".into()),
    )
    .unwrap();
    let err = pss.verify(&signatures(OPA_TOKEN_RS256)).unwrap_err();
    assert!(
        err.to_string()
            .contains("signed with \"RS256\", expected PS256"),
        "{err}"
    );
}

#[test]
fn scope_and_key_id_must_match_what_is_configured() {
    for configured in ["", "read"] {
        let err = opa_verifier(configured, None)
            .verify(&signatures(OPA_TOKEN_RS256))
            .unwrap_err();
        assert_eq!(
            err,
            SignatureError::Scope {
                expected: configured.into(),
                found: "write".into()
            }
        );
    }
    let err = opa_verifier("write", Some("bar"))
        .verify(&signatures(OPA_TOKEN_RS256))
        .unwrap_err();
    assert_eq!(
        err,
        SignatureError::KeyId {
            expected: "bar".into(),
            found: "foo".into()
        }
    );
}

#[test]
fn malformed_signature_files_are_refused_with_what_is_wrong() {
    let verifier = opa_verifier("write", None);
    let cases: [(&[u8], &str); 6] = [
        (b"{\"signatures\": []}", "missing JWT"),
        (b"{}", "missing JWT"),
        (b"not json", "not valid JSON"),
        (b"{\"signatures\": [\"a.b\"]}", "three dot-separated parts"),
        (b"{\"signatures\": [\"a.b\", \"c.d\"]}", "multiple JWTs"),
        (
            b"{\"signatures\": [\"x\"], \"plugin\": \"custom\"}",
            "plugin \"custom\"",
        ),
    ];
    for (file, expected) in cases {
        let err = verifier.verify(file).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected}: {err}");
    }
    let err = verifier
        .verify(&signatures("eyJhbGciOiJSUzI1NiJ9.e30.!!"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not base64url"), "{err}");
}

fn signed(files: &[(&str, &str, &str)]) -> SignedFiles {
    SignedFiles(
        files
            .iter()
            .map(|(name, hash, algorithm)| {
                (
                    (*name).into(),
                    SignedFile {
                        name: (*name).into(),
                        hash: (*hash).into(),
                        algorithm: (*algorithm).into(),
                    },
                )
            })
            .collect(),
    )
}

#[test]
fn every_file_must_be_listed_with_its_digest_and_nothing_listed_may_be_missing() {
    let digest: [u8; 32] = Sha256::digest(b"package p").into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let upper = hex.to_uppercase();
    let ok = signed(&[("p.rego", &upper, "SHA-256")]);
    ok.check([("p.rego", &digest)]).unwrap();

    let other: [u8; 32] = Sha256::digest(b"package q").into();
    let err = signed(&[("p.rego", &hex, "SHA-256")])
        .check([("p.rego", &other)])
        .unwrap_err();
    assert_eq!(err, SignatureError::Digest("p.rego".into()));
    assert_eq!(err.reason(), "digest");

    let err = signed(&[("p.rego", &hex, "SHA-256")])
        .check([("p.rego", &digest), ("extra.rego", &digest)])
        .unwrap_err();
    assert_eq!(err, SignatureError::Unlisted("extra.rego".into()));

    let err = signed(&[
        ("p.rego", &hex, "SHA-256"),
        ("b.json", &hex, "SHA-256"),
        ("a.rego", &hex, "SHA-256"),
    ])
    .check([("p.rego", &digest)])
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "a.rego, b.json listed in the bundle signature but not in the bundle"
    );

    let err = signed(&[("p.rego", &hex, "MD5")])
        .check([("p.rego", &digest)])
        .unwrap_err();
    assert!(
        err.to_string().contains("\"MD5\" is not supported"),
        "{err}"
    );
}

#[test]
fn keys_are_read_from_pem_and_their_algorithm_inferred() {
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let verifier =
        BundleVerifier::from_pem(p256.public_key_pem().as_bytes(), None, None, None).unwrap();
    assert_eq!(verifier.alg(), SigningAlg::Es256);
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let verifier =
        BundleVerifier::from_pem(p384.public_key_pem().as_bytes(), None, None, None).unwrap();
    assert_eq!(verifier.alg(), SigningAlg::Es384);

    // A certificate carries the key too.
    let cert = rcgen::CertificateParams::new(vec!["bundles.example".into()])
        .unwrap()
        .self_signed(&p256)
        .unwrap();
    let verifier = BundleVerifier::from_pem(cert.pem().as_bytes(), None, None, None).unwrap();
    assert_eq!(verifier.alg(), SigningAlg::Es256);

    let err = BundleVerifier::from_pem(
        p256.public_key_pem().as_bytes(),
        Some(SigningAlg::Rs256),
        None,
        None,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "an ECDSA P-256 key cannot verify RS256 signatures"
    );
    let err = BundleVerifier::from_pem(
        OPA_PUBLIC_KEY.as_bytes(),
        Some(SigningAlg::Es256),
        None,
        None,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "an RSA key cannot verify ES256 signatures");
    let err =
        BundleVerifier::from_pem(p256.serialize_pem().as_bytes(), None, None, None).unwrap_err();
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    let err = BundleVerifier::from_pem(b"hello", None, None, None).unwrap_err();
    assert_eq!(err.to_string(), "not a PEM file");

    assert_eq!(SigningAlg::parse("PS384"), Some(SigningAlg::Ps384));
    assert_eq!(SigningAlg::parse("HS256"), None);
}
