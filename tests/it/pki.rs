//! A throwaway PKI for the TLS tests: a CA, server certificates for localhost, and
//! client certificates with a SPIFFE URI SAN or only a CN, written where a server reads
//! them and turned into rustls client configurations.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use hyper_util::rt::TokioIo;
use rcgen::{
    CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    string::Ia5String,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use stepgate::config::{ServeConfig, TlsConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tonic::transport::{Channel, Endpoint};

/// A server with TLS from a fresh PKI, and that PKI.
pub struct TlsServer {
    pub pki: Pki,
    pub server: super::support::Server,
    /// The files the server reads its certificate from.
    pub tls: TlsConfig,
    /// Where those files are (deleted when dropped).
    pub dir: tempfile::TempDir,
}

impl TlsServer {
    /// A server on `files` whose TCP listeners use a certificate from a new CA, asking
    /// for (or with `require`, requiring) client certificates from it; `tweak` sets the
    /// rest.
    pub async fn start(
        files: &[(&str, &str)],
        require: bool,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let pki = Pki::new("test-ca");
        let dir = tempfile::tempdir().unwrap();
        let tls = pki.write_server(dir.path(), require);
        let settings = tls.clone();
        let server = super::support::Server::start_with(files, move |config| {
            config.tls = Some(settings);
            tweak(config);
        })
        .await;
        Self {
            pki,
            server,
            tls,
            dir,
        }
    }
}

/// A CA able to sign server and client certificates.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { ca }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for localhost / 127.0.0.1 with `cn` as its CN.
    pub fn server(&self, cn: &str) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with `cn`, and `spiffe` as a URI SAN when given.
    pub fn client(&self, cn: &str, spiffe: Option<&str>) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(id) = spiffe {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(id).unwrap()));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA and a server certificate into `dir` and returns the server's TLS
    /// settings.
    pub fn write_server(&self, dir: &Path, require_client_cert: bool) -> TlsConfig {
        let server = self.server("stepgate");
        let path = |name: &str| dir.join(name);
        std::fs::write(path("ca.pem"), self.ca_pem()).unwrap();
        write_issued(&server, &path("server.pem"), &path("server.key"));
        TlsConfig {
            cert: path("server.pem"),
            key: path("server.key"),
            client_ca: Some(path("ca.pem")),
            require_client_cert,
        }
    }

    /// A client configuration trusting this CA, presenting `identity` if given.
    pub fn client_config(&self, identity: Option<&Issued>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        client_config(self, identity, alpn)
    }
}

/// A client configuration trusting `trust`'s CA, presenting `identity` (which may come
/// from another CA) if given.
pub fn client_config(trust: &Pki, identity: Option<&Issued>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    {
        let mut roots = RootCertStore::empty();
        roots.add(trust.ca.der().clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match identity {
            Some(issued) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                        .collect::<Result<_, _>>()
                        .unwrap();
                let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

pub fn write_issued(issued: &Issued, cert: &PathBuf, key: &PathBuf) {
    std::fs::write(cert, &issued.cert_pem).unwrap();
    std::fs::write(key, &issued.key_pem).unwrap();
}

/// A TLS connection to `addr` (server name localhost).
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// A gRPC channel over TLS to `addr`.
pub async fn tls_channel(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let config = config.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tls_connect(addr, config).await?)) }
        }))
        .await
}
