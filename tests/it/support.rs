//! Starting a real server on port 0 / a temp Unix socket with a policy directory the
//! test writes, and connecting clients to it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper_util::rt::TokioIo;
use prost_types::{Struct, value::Kind};
use stepgate::{
    app::{App, Overrides, RunningApp},
    audit::AuditOptions,
    clock::ManualClock,
    config::{GrantsConfig, ServeConfig},
    grants::StoreOptions,
    policy::{EvalLimits, PolicyOptions},
    proto::v1::{CheckRequest, Subject, decision_service_client::DecisionServiceClient},
};
use tempfile::TempDir;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// A policy that echoes what it saw, so tests can assert on the input document.
pub const ECHO_POLICY: &str = r#"package stepgate

decision := {
	"allow": input.action == "read",
	"reasons": [input.caller.id, input.caller.via, input.context.time, input.step],
	"obligations": {"max_ttl_seconds": 900, "seen_subject": input.subject.id},
}
"#;

/// A running server and what it was started with.
pub struct Server {
    pub app: Option<RunningApp>,
    pub addr: std::net::SocketAddr,
    /// The HTTP listener, when the test left it on.
    pub http: Option<std::net::SocketAddr>,
    pub uds: PathBuf,
    pub policies: TempDir,
    pub clock: ManualClock,
    _sock_dir: TempDir,
}

pub fn write_policy(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

pub fn policy_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        write_policy(dir.path(), name, text);
    }
    dir
}

pub fn config(policies: &Path, uds: &Path) -> ServeConfig {
    let mut config = ServeConfig {
        policies: policies.to_path_buf(),
        grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
        grpc_uds: Some(uds.to_path_buf()),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        watch_policies: false,
        max_batch: 8,
        shutdown_grace: Duration::from_millis(500),
        grants: GrantsConfig {
            store: StoreOptions {
                state_dir: None,
                ..StoreOptions::default()
            },
            ..GrantsConfig::default()
        },
        // In memory, as with --ephemeral: no decision log unless a test asks for one.
        audit: AuditOptions::default(),
        ..ServeConfig::default()
    };
    config.policy = unhurried(config.policy);
    config
}

/// `options` with time bounds for a debug build of regorus on cores every other test
/// shares: the example set's decisions (100 ms by default), its 191 tests (2 s each)
/// and its whole load (10 s) each took longer there. The bounds themselves are tested
/// with their own settings (`policy` unit tests, `eval_bounds`).
pub fn unhurried(options: PolicyOptions) -> PolicyOptions {
    PolicyOptions {
        eval_limits: EvalLimits {
            timeout: Duration::from_secs(5),
            ..options.eval_limits
        },
        test_timeout: Duration::from_secs(30),
        compile_timeout: Duration::from_secs(120),
        ..options
    }
}

impl Server {
    /// Starts a server on `files`, with policies loaded (health SERVING).
    pub async fn start(files: &[(&str, &str)]) -> Self {
        Self::start_with(files, |_| {}).await
    }

    pub async fn start_with(files: &[(&str, &str)], tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start_overridden(files, tweak, Overrides::default()).await
    }

    /// Starts serving without loading policies yet.
    pub async fn bound(files: &[(&str, &str)], tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::bound_with(files, tweak, Overrides::default()).await
    }

    /// Starts with `overrides` (a tracer provider, a decision log) and policies loaded.
    pub async fn start_overridden(
        files: &[(&str, &str)],
        tweak: impl FnOnce(&mut ServeConfig),
        overrides: Overrides,
    ) -> Self {
        let mut server = Self::bound_with(files, tweak, overrides).await;
        server
            .app
            .as_mut()
            .unwrap()
            .load_policies()
            .await
            .expect("policies load");
        server
    }

    /// Starts serving with `overrides` (its clock is replaced by the test's manual
    /// clock), without loading policies yet.
    pub async fn bound_with(
        files: &[(&str, &str)],
        tweak: impl FnOnce(&mut ServeConfig),
        overrides: Overrides,
    ) -> Self {
        let policies = policy_dir(files);
        let sock_dir = tempfile::tempdir().unwrap();
        let uds = sock_dir.path().join("stepgate.sock");
        let mut config = config(policies.path(), &uds);
        tweak(&mut config);
        let clock = ManualClock::at("2026-11-23T10:00:00Z".parse().unwrap());
        let overrides = Overrides {
            clock: Some(Arc::new(clock.clone())),
            ..overrides
        };
        let app = App::bind_with(config, overrides).await.expect("bind");
        let addr = app.grpc_addr().expect("tcp listener");
        let http = app.http_addr();
        let app = app.start().await.expect("start");
        assert_eq!(app.http_addr(), http);
        Self {
            app: Some(app),
            addr,
            http,
            uds,
            policies,
            clock,
            _sock_dir: sock_dir,
        }
    }

    pub async fn tcp_channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn uds_channel(&self) -> Channel {
        connect_uds(&self.uds).await.unwrap()
    }

    pub async fn client(&self) -> DecisionServiceClient<Channel> {
        DecisionServiceClient::new(self.tcp_channel().await)
    }

    /// `GET path` on the HTTP listener.
    pub async fn http_get(&self, path: &str) -> HttpReply {
        let addr = self.http.expect("the HTTP listener is on");
        http_request(addr, "GET", path, &[], "").await
    }

    /// The running app.
    pub fn app(&self) -> &RunningApp {
        self.app.as_ref().expect("running")
    }

    pub fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use stepgate::clock::Clock;
        self.clock.now()
    }

    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.unwrap();
        }
    }
}

/// A valid request: step `use`, subject `svc-a`, the given action.
pub fn request(action: &str) -> CheckRequest {
    CheckRequest {
        step: "use".into(),
        subject: Some(Subject {
            id: "svc-a".into(),
            kind: "service_account".into(),
            ..Default::default()
        }),
        action: action.into(),
        ..Default::default()
    }
}

/// A protobuf Struct from JSON.
pub fn strukt(json: serde_json::Value) -> Struct {
    fn conv(v: serde_json::Value) -> prost_types::Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.into_iter().map(conv).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(Struct {
                fields: o
                    .into_iter()
                    .map(|(k, v)| (k, conv(v)))
                    .collect::<BTreeMap<_, _>>(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match conv(json).kind {
        Some(Kind::StructValue(s)) => s,
        _ => panic!("not an object"),
    }
}

/// Polls `probe` until it returns true, for at most `limit` (file events are async).
pub async fn eventually(limit: Duration, mut probe: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A channel over the Unix socket at `path` once the server there reports SERVING (its
/// policies loaded), waiting at most `limit`; `None` if it never does.
pub async fn serving_channel(path: &Path, limit: Duration) -> Option<Channel> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut channel = None;
    let serving = eventually(limit, async || {
        let Some(connected) = connect_uds(path).await else {
            return false;
        };
        let status = HealthClient::new(connected.clone())
            .check(HealthCheckRequest::default())
            .await;
        channel = Some(connected);
        status.is_ok_and(|s| s.into_inner().status == 1)
    })
    .await;
    channel.filter(|_| serving)
}

/// A gRPC channel over the Unix socket at `path`, or `None` while nothing listens there.
pub async fn connect_uds(path: &Path) -> Option<Channel> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .ok()
}

/// This process's uid, as the Unix socket peer credentials will report it.
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::metadata(dir.path()).unwrap().uid()
}

/// Writes an OPA bundle (gzipped tar) of `files` to `path`, through a temporary file
/// renamed into place, as a deploy would replace it.
pub fn write_bundle(path: &Path, files: &[(&str, &str)]) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, bundle_bytes(files)).unwrap();
    std::fs::rename(staging, path).unwrap();
}

/// An OPA bundle (gzipped tar) of `files`, in that order.
pub fn bundle_bytes(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, text.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// An HTTP response as a test sees it.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl HttpReply {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection to `addr`.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpReply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    http_request_over(stream, addr, method, path, headers, body).await
}

/// One HTTP/1.1 request over `stream` (plain TCP or TLS) to `addr`.
pub async fn http_request_over(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpReply {
    use http_body_util::{BodyExt, Full};
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(hyper::body::Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    driver.abort();
    HttpReply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// A `Check` of `action` (see [`request`]) that must succeed as an RPC; its decision.
pub async fn decide(
    client: &mut DecisionServiceClient<Channel>,
    action: &str,
) -> stepgate::proto::v1::Decision {
    client
        .check(request(action))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap()
}
