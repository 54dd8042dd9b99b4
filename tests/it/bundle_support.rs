//! A bundle server the tests run on loopback (ETag, `If-None-Match`, an optional bearer
//! token), and bundles signed as `opa build --signing-key` signs them: one JWS in
//! `.signatures.json` listing every file's SHA-256.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::TokioIo;
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, RsaKeyPair},
};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, task::JoinHandle};

use super::support::bundle_bytes;

/// The path the bundle is served at.
pub const BUNDLE_PATH: &str = "/bundles/stepgate.tar.gz";

/// A private key and the claims its signatures make.
pub struct Signer {
    alg: &'static str,
    key: SigningKey,
    /// The PEM public key stepgate verifies with.
    pub public_pem: String,
    kid: Option<String>,
    scope: Option<String>,
}

enum SigningKey {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl Signer {
    /// An ECDSA P-256 key generated now (ES256).
    pub fn es256() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pair.serialize_der(),
            &SystemRandom::new(),
        )
        .unwrap();
        Self {
            alg: "ES256",
            key: SigningKey::Ec(key),
            public_pem: pair.public_key_pem(),
            kid: None,
            scope: None,
        }
    }

    /// The RSA fixture key (RS256), with the key id and scope OPA's examples use.
    pub fn rs256_fixture() -> Self {
        let fixtures = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bundle-signing/"
        );
        let private = std::fs::read(format!("{fixtures}rsa-private.pem")).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&private).unwrap();
        Self {
            alg: "RS256",
            key: SigningKey::Rsa(RsaKeyPair::from_pkcs8(&pem.contents).unwrap()),
            public_pem: std::fs::read_to_string(format!("{fixtures}rsa-public.pem")).unwrap(),
            kid: Some("global_key".into()),
            scope: Some("write".into()),
        }
    }

    /// A signed bundle of `files`, each listed with the SHA-256 of its content.
    pub fn bundle(&self, files: &[(&str, &str)]) -> Vec<u8> {
        let listed: Vec<_> = files.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
        self.bundle_listing(files, &listed)
    }

    /// A bundle of `files` whose signature lists `listed` (name and the bytes hashed:
    /// for a JSON document, its canonical form).
    pub fn bundle_listing(&self, files: &[(&str, &str)], listed: &[(&str, &[u8])]) -> Vec<u8> {
        let signatures = self.signatures(listed);
        let mut all = files.to_vec();
        all.push((".signatures.json", &signatures));
        bundle_bytes(&all)
    }

    /// `.signatures.json` listing `listed`.
    pub fn signatures(&self, listed: &[(&str, &[u8])]) -> String {
        let files: Vec<_> = listed
            .iter()
            .map(|(name, bytes)| {
                let hash: String = Sha256::digest(bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                serde_json::json!({"name": name, "hash": hash, "algorithm": "SHA-256"})
            })
            .collect();
        let mut header = serde_json::json!({"alg": self.alg});
        let mut payload = serde_json::json!({"files": files});
        if let Some(kid) = &self.kid {
            header["kid"] = kid.as_str().into();
        }
        if let Some(scope) = &self.scope {
            payload["scope"] = scope.as_str().into();
        }
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match &self.key {
            SigningKey::Ec(key) => key.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
            SigningKey::Rsa(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signed.as_bytes(),
                    &mut out,
                )
                .unwrap();
                out
            }
        };
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature));
        serde_json::json!({ "signatures": [token] }).to_string()
    }
}

/// What the bundle server serves and what it has seen.
#[derive(Default)]
struct State {
    bundle: Vec<u8>,
    etag: String,
    /// When set, requests without `Authorization: Bearer <token>` get 401.
    token: Option<String>,
    requests: u64,
    /// Requests that carried `If-None-Match` with the current ETag.
    not_modified: u64,
}

/// A bundle server on loopback.
pub struct BundleServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for BundleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BundleServer {
    /// Serves `bundle` with ETag `etag` on a free loopback port.
    pub async fn start(bundle: Vec<u8>, etag: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), bundle, etag).await
    }

    /// As [`BundleServer::start`], on `addr`.
    pub async fn start_on(addr: SocketAddr, bundle: Vec<u8>, etag: &str) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            bundle,
            etag: etag.into(),
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let reply = answer(&state, &req);
                        async move { Ok::<_, Infallible>(reply) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The bundle's URL.
    pub fn url(&self) -> String {
        format!("http://{}{BUNDLE_PATH}", self.addr)
    }

    /// Serves `bundle` from now on, with ETag `etag`.
    pub fn publish(&self, bundle: Vec<u8>, etag: &str) {
        let mut state = self.state.lock().unwrap();
        state.bundle = bundle;
        state.etag = etag.into();
    }

    /// Requires `Authorization: Bearer <token>` from now on.
    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.into());
    }

    /// Requests served, and of those the ones answered 304.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state.lock().unwrap();
        (state.requests, state.not_modified)
    }
}

fn answer(state: &Mutex<State>, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    state.requests += 1;
    let reply = |status: StatusCode| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    if req.uri().path() != BUNDLE_PATH {
        return reply(StatusCode::NOT_FOUND);
    }
    if let Some(token) = &state.token {
        let expected = format!("Bearer {token}");
        if req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(expected.as_str())
        {
            return reply(StatusCode::UNAUTHORIZED);
        }
    }
    let etag = state.etag.clone();
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(&etag)
    {
        state.not_modified += 1;
        return reply(StatusCode::NOT_MODIFIED);
    }
    Response::builder()
        .header(header::ETAG, etag)
        .header(header::CONTENT_TYPE, "application/gzip")
        .body(Full::new(Bytes::from(state.bundle.clone())))
        .unwrap()
}
