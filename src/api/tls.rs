//! TLS and mTLS for the TCP listeners (rustls with the ring provider).
//!
//! Certificates are files that rotate (cert-manager, SPIFFE helpers, Kubernetes secrets),
//! so the server configuration is an [`ArcSwap`] rebuilt whenever one of the files
//! changes; every new connection takes the current one, connections already open keep
//! theirs. A rebuild that fails (half-written file, key not matching) is logged and the
//! previous configuration keeps serving.
//!
//! The caller identity of a connection is read once, from the verified peer certificate:
//! its SPIFFE URI SAN, else its subject CN (else the whole subject). Nothing a client
//! sends after the handshake (metadata, headers, bodies) can change it.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::limits::{ConnectionCap, ConnectionSlot};
use crate::{config::TlsConfig, decision::Caller};

/// How long certificate file events must be quiet before the files are re-read.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(100);
/// Handshaken connections waiting for the server to take them.
const ACCEPT_BACKLOG: usize = 64;
/// Pause after an accept error (out of descriptors, ...), so the loop cannot spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Why the TLS files could not be turned into a server configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the material (key not matching the certificate, bad CA, ...).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The application protocols a listener speaks, offered through ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The HTTP API: HTTP/1.1 (what OPA's REST clients speak).
    Http,
}

struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The TLS server configuration of the TCP listeners, rebuilt when its files change.
pub struct ReloadingTls {
    settings: TlsConfig,
    current: ArcSwap<Configs>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Reads the files named by `settings`; fails when they do not make a configuration.
    pub fn load(settings: TlsConfig) -> Result<Arc<Self>, TlsError> {
        let configs = build(&settings)?;
        Ok(Arc::new(Self {
            settings,
            current: ArcSwap::from_pointee(configs),
        }))
    }

    /// Re-reads the files; on error the previous configuration stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = build(&self.settings)?;
        self.current.store(Arc::new(configs));
        Ok(())
    }

    /// Re-reads the files whenever something changes in their directories (Kubernetes
    /// swaps a secret's files through a symlink, so the directory is what is watched).
    /// Dropping the returned watcher stops it. Must be called inside a Tokio runtime.
    pub fn watch(self: &Arc<Self>) -> Result<TlsWatcher, notify::Error> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
                    let _ = tx.send(());
                }
            })?;
        let mut dirs: Vec<&Path> = [
            Some(&self.settings.cert),
            Some(&self.settings.key),
            self.settings.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|file| match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        })
        .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        let tls = self.clone();
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                while let Ok(Some(())) = tokio::time::timeout(RELOAD_DEBOUNCE, rx.recv()).await {}
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificates reloaded"),
                    Err(err) => tracing::error!(
                        error = %err,
                        "TLS certificates not reloaded; the previous ones stay in use"
                    ),
                }
            }
        });
        Ok(TlsWatcher {
            _files: watcher,
            task,
        })
    }

    fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
        let configs = self.current.load();
        TlsAcceptor::from(match alpn {
            Alpn::Grpc => configs.grpc.clone(),
            Alpn::Http => configs.http.clone(),
        })
    }

    /// The TLS connections arriving on `listener`: each is admitted under `cap` before
    /// its handshake (one past the cap is closed at once), and each handshake runs in
    /// its own task, bounded by `handshake_timeout`, so a slow client never holds up the
    /// others. The stream ends when its consumer is dropped.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        alpn: Alpn,
        cap: Arc<ConnectionCap>,
        handshake_timeout: Duration,
    ) -> ReceiverStream<io::Result<TlsConnection>> {
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "accepting a TCP connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                // Past the cap: dropped (closed) here, before any handshake work.
                let Some(slot) = cap.admit() else { continue };
                let _ = tcp.set_nodelay(true);
                let acceptor = tls.acceptor(alpn);
                let tx = tx.clone();
                let metrics = cap.metrics().clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let caller = peer_caller(&stream);
                            let info = TlsConnectInfo {
                                remote_addr: Some(remote),
                                caller,
                            };
                            let connection = TlsConnection {
                                stream,
                                info,
                                _slot: slot,
                            };
                            let _ = tx.send(Ok(connection)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%remote, error = %err, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.handshake_timeouts.inc();
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Keeps the certificate watcher running; dropping it stops it.
#[derive(Debug)]
pub struct TlsWatcher {
    _files: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for TlsWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn build(settings: &TlsConfig) -> Result<Configs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = read_pem(&settings.cert, |path| {
        CertificateDer::pem_file_iter(path).and_then(Iterator::collect)
    })?;
    if chain.is_empty() {
        return Err(file_error(&settings.cert, "no CERTIFICATE in the file"));
    }
    let key = read_pem(&settings.key, |path| PrivateKeyDer::from_pem_file(path))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = read_pem(ca, |path| {
                CertificateDer::pem_file_iter(path).and_then(Iterator::collect)
            })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(file_error(ca, "no usable CA CERTIFICATE in the file"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let base = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", settings.key.display())))?;
    let with_alpn = |protocols: &[&[u8]]| {
        let mut config = base.clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    Ok(Configs {
        grpc: with_alpn(&[b"h2"]),
        http: with_alpn(&[b"http/1.1"]),
    })
}

fn read_pem<T>(
    path: &Path,
    read: impl FnOnce(&Path) -> Result<T, rustls::pki_types::pem::Error>,
) -> Result<T, TlsError> {
    read(path).map_err(|e| file_error(path, &e.to_string()))
}

fn file_error(path: &Path, message: &str) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The caller of a TLS connection: the verified client certificate's identity, or an
/// anonymous TLS caller when the client sent none (only possible when not required).
fn peer_caller(stream: &TlsStream<TcpStream>) -> Caller {
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| certificate_identity(leaf));
    Caller::tls_peer(identity)
}

/// A certificate's identity: its SPIFFE URI SAN, else its subject CN, else its subject.
pub(crate) fn certificate_identity(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let spiffe = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(uri.to_string()),
                _ => None,
            })
        });
    spiffe
        .or_else(|| {
            cert.subject()
                .iter_common_name()
                .find_map(|cn| cn.as_str().ok().map(str::to_string))
        })
        .or_else(|| Some(cert.subject().to_string()).filter(|s| !s.is_empty()))
}

/// What a TLS connection tells each call on it.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The caller the handshake proved.
    pub caller: Caller,
}

/// An accepted, handshaken TLS connection (holding its place under the listener's cap).
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: TlsConnectInfo,
    _slot: ConnectionSlot,
}

impl TlsConnection {
    /// The caller the handshake proved.
    pub fn connect_info(&self) -> &TlsConnectInfo {
        &self.info
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType, string::Ia5String};

    use super::*;

    fn certificate(cn: &str, uris: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(*uri).unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn the_identity_is_the_spiffe_uri_else_the_cn() {
        let (with_spiffe, _) = certificate(
            "issuer",
            &["https://example.com/x", "spiffe://prod/ns/vault/sa/issuer"],
        );
        assert_eq!(
            certificate_identity(&der(&with_spiffe)).as_deref(),
            Some("spiffe://prod/ns/vault/sa/issuer")
        );
        let (cn_only, _) = certificate("billing-batch", &["https://example.com/x"]);
        assert_eq!(
            certificate_identity(&der(&cn_only)).as_deref(),
            Some("billing-batch")
        );
        assert_eq!(certificate_identity(b"not a certificate"), None);
    }

    #[test]
    fn a_failed_reload_keeps_the_previous_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate("stepgate", &[]);
        let settings = TlsConfig {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
            require_client_cert: false,
        };
        std::fs::write(&settings.cert, &cert).unwrap();
        std::fs::write(&settings.key, &key).unwrap();
        let tls = ReloadingTls::load(settings.clone()).unwrap();
        let before = tls.current.load_full();

        // A half-written certificate, then a key that does not match the certificate.
        std::fs::write(&settings.cert, &cert[..cert.len() / 2]).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(err.to_string().contains("tls.crt"), "{err}");
        let (_, other_key) = certificate("other", &[]);
        std::fs::write(&settings.cert, &cert).unwrap();
        std::fs::write(&settings.key, &other_key).unwrap();
        assert!(tls.reload().is_err());
        assert!(
            Arc::ptr_eq(&before, &tls.current.load_full()),
            "swapped on error"
        );

        std::fs::write(&settings.key, &key).unwrap();
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.current.load_full()));
    }

    #[test]
    fn requiring_client_certificates_needs_a_usable_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate("stepgate", &[]);
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("tls.crt"), &cert).unwrap();
        std::fs::write(path("tls.key"), &key).unwrap();
        std::fs::write(path("ca.crt"), "no pem here").unwrap();
        let err = ReloadingTls::load(TlsConfig {
            cert: path("tls.crt"),
            key: path("tls.key"),
            client_ca: Some(path("ca.crt")),
            require_client_cert: true,
        })
        .unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}
