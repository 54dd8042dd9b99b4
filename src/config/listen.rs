//! Where stepgate listens and who may call it: the gRPC and HTTP listeners, the Unix
//! socket, TLS, and the per-service allow-lists of caller identities.

use std::{net::SocketAddr, path::PathBuf};

use super::{caller_list, options::options};

options! {
    /// Listeners, TLS and the per-service caller allow-lists.
    #[command(next_help_heading = "Listeners")]
    pub struct ListenArgs {
        /// gRPC TCP listener; '' turns it off [default: 127.0.0.1:9191].
        #[arg(long, env = "STEPGATE_GRPC_ADDR", value_name = "HOST:PORT")]
        pub grpc_addr: String,
        /// gRPC Unix socket path [default: off].
        #[arg(long, env = "STEPGATE_GRPC_UDS", value_name = "PATH")]
        pub grpc_uds: PathBuf,
        /// File mode of the gRPC Unix socket, octal, e.g. 0660 [default: as the umask leaves it].
        #[arg(long, env = "STEPGATE_GRPC_UDS_MODE", value_name = "MODE")]
        pub grpc_uds_mode: String,
        /// HTTP listener (/health, /metrics); '' turns it off [default: 127.0.0.1:8181].
        #[arg(long, env = "STEPGATE_HTTP_ADDR", value_name = "HOST:PORT")]
        pub http_addr: String,
        /// PEM certificate chain of the TLS listeners; with --tls-key turns TLS on.
        #[arg(long, env = "STEPGATE_TLS_CERT", value_name = "FILE")]
        pub tls_cert: PathBuf,
        /// PEM private key of --tls-cert.
        #[arg(long, env = "STEPGATE_TLS_KEY", value_name = "FILE")]
        pub tls_key: PathBuf,
        /// PEM CA bundle client certificates are verified against (mTLS).
        #[arg(long, env = "STEPGATE_TLS_CLIENT_CA", value_name = "FILE")]
        pub tls_client_ca: PathBuf,
        /// Refuse TLS clients without a certificate signed by --tls-client-ca [default: false].
        #[arg(long, env = "STEPGATE_TLS_REQUIRE_CLIENT_CERT", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        pub tls_require_client_cert: bool,
        /// Caller identities allowed to call DecisionService [default: any caller].
        #[arg(
            long,
            env = "STEPGATE_DECISION_CALLERS",
            value_name = "ID[,ID...]",
            value_delimiter = ','
        )]
        pub decision_callers: Vec<String>,
        /// Caller identities allowed to call GrantService at all [default: any caller].
        #[arg(
            long,
            env = "STEPGATE_GRANT_CALLERS",
            value_name = "ID[,ID...]",
            value_delimiter = ','
        )]
        pub grant_callers: Vec<String>,
        /// Caller identities allowed to call Envoy's Authorization/Check [default: any caller].
        #[arg(
            long,
            env = "STEPGATE_ENVOY_CALLERS",
            value_name = "ID[,ID...]",
            value_delimiter = ','
        )]
        pub envoy_callers: Vec<String>,
    }
}

/// The listener addresses when nothing is configured.
const GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9191);
const HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8181);

/// Which caller identities may call each service; `None` = any caller that reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCallers {
    /// `stepgate.v1.DecisionService`.
    pub decision: Option<Vec<String>>,
    /// `stepgate.v1.GrantService` (its admin RPCs also need `admin_callers`).
    pub grant: Option<Vec<String>>,
    /// `envoy.service.auth.v3.Authorization`.
    pub envoy: Option<Vec<String>>,
}

/// TLS of the TCP listeners: the files are re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates; `None` = no client certificates asked for.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a verified certificate.
    pub require_client_cert: bool,
}

/// The validated listeners (the fields of [`ServeConfig`](super::ServeConfig) of the
/// same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listeners {
    pub grpc_addr: Option<SocketAddr>,
    pub grpc_uds: Option<PathBuf>,
    pub grpc_uds_mode: Option<u32>,
    pub http_addr: Option<SocketAddr>,
    pub tls: Option<TlsConfig>,
    pub service_callers: ServiceCallers,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            grpc_addr: Some(GRPC_ADDR),
            grpc_uds: None,
            grpc_uds_mode: None,
            http_addr: Some(HTTP_ADDR),
            tls: None,
            service_callers: ServiceCallers::default(),
        }
    }
}

impl ListenArgs {
    /// The listeners, each problem pushed to `problems`.
    pub(super) fn resolve(self, problems: &mut Vec<String>) -> Listeners {
        let mut listen_addr = |name: &str, text: Option<&str>, default: SocketAddr| match text {
            None => Some(default),
            Some("") => None,
            Some(addr) => {
                let parsed = listen_address(addr);
                if parsed.is_none() {
                    problems.push(format!(
                        "{name}: {addr:?} is not HOST:PORT (HOST an IP address or localhost)"
                    ));
                }
                parsed
            }
        };
        let grpc_addr = listen_addr("grpc_addr", self.grpc_addr.as_deref(), GRPC_ADDR);
        let http_addr = listen_addr("http_addr", self.http_addr.as_deref(), HTTP_ADDR);
        let grpc_uds = self.grpc_uds.filter(|p| !p.as_os_str().is_empty());
        if self.grpc_addr.as_deref() == Some("") && grpc_uds.is_none() {
            problems.push("no listener: set grpc_addr or grpc_uds".into());
        }
        let service_callers = ServiceCallers {
            decision: caller_list("decision_callers", self.decision_callers, problems),
            grant: caller_list("grant_callers", self.grant_callers, problems),
            envoy: caller_list("envoy_callers", self.envoy_callers, problems),
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert,
                key,
                client_ca: self.tls_client_ca,
                require_client_cert: self.tls_require_client_cert.unwrap_or(false),
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                problems.push("tls_cert and tls_key: set both or neither".into());
                None
            }
        };
        if tls
            .as_ref()
            .is_some_and(|t| t.require_client_cert && t.client_ca.is_none())
        {
            problems.push(
                "tls_require_client_cert: needs tls_client_ca to verify client certificates".into(),
            );
        }
        let grpc_uds_mode = self.grpc_uds_mode.and_then(|text| {
            let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|mode| *mode <= 0o777);
            if mode.is_none() {
                problems.push(format!(
                    "grpc_uds_mode: {text:?} is not an octal file mode such as 0660"
                ));
            }
            mode
        });
        Listeners {
            grpc_addr,
            grpc_uds,
            grpc_uds_mode,
            http_addr,
            tls,
            service_callers,
        }
    }
}

/// The address a listener binds for `HOST:PORT`: an IP literal as written, or
/// `localhost`, which means 127.0.0.1 as the default does. Other host names are refused
/// rather than resolved: validating the configuration does no I/O (a DNS lookup could
/// stall startup, or bind an address that changes between restarts).
fn listen_address(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let port = text.strip_prefix("localhost:")?.parse().ok()?;
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{merge, merge_err};
    use super::*;

    #[test]
    fn listen_addresses_take_host_names() {
        let config = merge(
            &["--grpc-addr", "localhost:9191", "--http-addr", "[::1]:8181"],
            "",
        );
        assert_eq!(config.grpc_addr, Some("127.0.0.1:9191".parse().unwrap()));
        assert_eq!(config.http_addr, Some("[::1]:8181".parse().unwrap()));
        for bad in [
            "localhost",
            "127.0.0.1",
            ":9191",
            "localhost:port",
            "example.com:80",
        ] {
            let err = merge_err(&["--grpc-addr", bad], "");
            assert!(err.to_string().contains("is not HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn empty_address_turns_the_listener_off() {
        let config = merge(&["--grpc-addr", "", "--grpc-uds", "/tmp/s.sock"], "");
        assert_eq!(config.grpc_addr, None);
        let config = merge(&[], "http_addr = \"\"\n");
        assert_eq!(config.http_addr, None);
        let config = merge(&["--http-addr", "127.0.0.1:0"], "http_addr = \"\"\n");
        assert_eq!(config.http_addr, Some("127.0.0.1:0".parse().unwrap()));
        let err = merge_err(&["--http-addr", "localhost"], "");
        assert!(err.to_string().contains("http_addr"), "{err}");
        let err = merge_err(&["--grpc-addr", ""], "");
        assert!(err.to_string().contains("no listener"), "{err}");
    }

    #[test]
    fn tls_socket_mode_and_caller_lists() {
        let config = merge(&[], "");
        assert_eq!(config.tls, None);
        assert_eq!(config.grpc_uds_mode, None);
        assert_eq!(config.service_callers, ServiceCallers::default());

        let file = "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_client_ca = \"ca.pem\"\ntls_require_client_cert = true\ngrpc_uds_mode = \"0660\"\nenvoy_callers = [\"uds:uid=101\"]\n";
        let config = merge(&["--decision-callers", "spiffe://a, spiffe://b "], file);
        assert_eq!(
            config.tls,
            Some(TlsConfig {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                client_ca: Some("ca.pem".into()),
                require_client_cert: true,
            })
        );
        assert_eq!(config.grpc_uds_mode, Some(0o660));
        assert_eq!(
            config.service_callers.decision,
            Some(vec!["spiffe://a".to_string(), "spiffe://b".to_string()])
        );
        assert_eq!(
            config.service_callers.envoy,
            Some(vec!["uds:uid=101".to_string()])
        );
        assert_eq!(config.service_callers.grant, None);

        let err = merge_err(
            &[
                "--tls-cert",
                "c.pem",
                "--tls-require-client-cert",
                "--grpc-uds-mode",
                "0999",
                "--grant-callers",
                " ",
            ],
            "",
        );
        for field in ["tls_cert and tls_key", "grpc_uds_mode", "grant_callers"] {
            assert!(
                err.to_string().contains(field),
                "{field} missing from {err}"
            );
        }
        let err = merge_err(
            &[
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--tls-require-client-cert",
            ],
            "",
        );
        assert!(err.to_string().contains("tls_client_ca"), "{err}");
    }
}
