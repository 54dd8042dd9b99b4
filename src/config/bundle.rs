//! The bundle-server and bundle-signing settings: `--bundle-url` and how it is polled,
//! and the key bundles are verified with.

use std::{path::PathBuf, time::Duration};

use super::{duration, options::options};
use crate::policy::{BundleServerOptions, SigningAlg};

options! {
    /// Policies from an OPA bundle server, and the key bundles are verified with.
    #[command(next_help_heading = "Bundles")]
    pub struct BundleArgs {
        /// Poll this OPA bundle server URL for policies instead of reading --policies
        /// [default: off].
        #[arg(long, env = "STEPGATE_BUNDLE_URL", value_name = "URL")]
        pub bundle_url: String,
        /// Shortest wait between bundle polls [default: 60s].
        #[arg(long, env = "STEPGATE_BUNDLE_POLL_MIN", value_name = "DURATION")]
        pub bundle_poll_min: String,
        /// Longest wait between bundle polls [default: 120s].
        #[arg(long, env = "STEPGATE_BUNDLE_POLL_MAX", value_name = "DURATION")]
        pub bundle_poll_max: String,
        /// Longest one bundle request may take [default: 30s].
        #[arg(long, env = "STEPGATE_BUNDLE_TIMEOUT", value_name = "DURATION")]
        pub bundle_timeout: String,
        /// File holding the bearer token sent to the bundle server (re-read every poll).
        #[arg(long, env = "STEPGATE_BUNDLE_BEARER_TOKEN_FILE", value_name = "FILE")]
        pub bundle_bearer_token_file: PathBuf,
        /// PEM CA certificates trusted for an https bundle server, beside the system's.
        #[arg(long, env = "STEPGATE_BUNDLE_CA_CERT", value_name = "FILE")]
        pub bundle_ca_cert: PathBuf,
        /// PEM public key bundles must be signed with; unsigned bundles are then refused.
        #[arg(long, env = "STEPGATE_BUNDLE_VERIFICATION_KEY", value_name = "FILE")]
        pub bundle_verification_key: PathBuf,
        /// Signature algorithm of the key [default: RS256 for RSA, ES256/ES384 for EC].
        #[arg(long, env = "STEPGATE_BUNDLE_VERIFICATION_KEY_ALG", value_name = "ALG")]
        pub bundle_verification_key_alg: String,
        /// Refuse signatures naming another key id [default: any key id].
        #[arg(long, env = "STEPGATE_BUNDLE_VERIFICATION_KEY_ID", value_name = "ID")]
        pub bundle_verification_key_id: String,
        /// The scope a bundle signature must claim [default: none].
        #[arg(long, env = "STEPGATE_BUNDLE_SCOPE", value_name = "SCOPE")]
        pub bundle_scope: String,
    }
}

/// The key bundles are verified with, as configured (the file is read at startup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleVerification {
    /// PEM public key (or certificate).
    pub key: PathBuf,
    /// The algorithm; `None`: inferred from the key.
    pub alg: Option<SigningAlg>,
    /// Refuse signatures naming another key id.
    pub key_id: Option<String>,
    /// The scope a signature must claim (`None`: none).
    pub scope: Option<String>,
}

/// Defaults of OPA's bundle polling (`min_delay_seconds`, `max_delay_seconds`).
const POLL_MIN: Duration = Duration::from_secs(60);
const POLL_MAX: Duration = Duration::from_secs(120);
const TIMEOUT: Duration = Duration::from_secs(30);

impl BundleArgs {
    /// The bundle server and verification settings, each problem pushed to `problems`.
    /// `explicit_policies`: `policies` was set (flag, environment or file).
    pub(super) fn resolve(
        self,
        explicit_policies: bool,
        problems: &mut Vec<String>,
    ) -> (Option<BundleServerOptions>, Option<BundleVerification>) {
        let poll_min_text = self.bundle_poll_min;
        let poll_max_text = self.bundle_poll_max;
        let timeout_text = self.bundle_timeout;
        let poll_min = duration(problems, "bundle_poll_min", poll_min_text.clone(), POLL_MIN);
        let poll_max = duration(problems, "bundle_poll_max", poll_max_text.clone(), POLL_MAX);
        let timeout = duration(problems, "bundle_timeout", timeout_text.clone(), TIMEOUT);
        let bearer_token_file = self.bundle_bearer_token_file;
        let ca_cert = self.bundle_ca_cert;
        let url = self.bundle_url.filter(|url| !url.is_empty());

        let bundle = match url {
            None => {
                let stray = [
                    ("bundle_poll_min", poll_min_text.is_some()),
                    ("bundle_poll_max", poll_max_text.is_some()),
                    ("bundle_timeout", timeout_text.is_some()),
                    ("bundle_bearer_token_file", bearer_token_file.is_some()),
                    ("bundle_ca_cert", ca_cert.is_some()),
                ];
                for (name, _) in stray.iter().filter(|(_, set)| *set) {
                    problems.push(format!("{name}: needs bundle_url"));
                }
                None
            }
            Some(url) => {
                if let Some(problem) = url_problem(&url) {
                    problems.push(format!("bundle_url: {url:?} {problem}"));
                }
                if explicit_policies {
                    problems.push(
                    "bundle_url and policies: set one (policies come from the bundle server or from a directory or bundle file, not both)".into(),
                );
                }
                if poll_min > poll_max {
                    problems.push(format!(
                    "bundle_poll_min: {poll_min:?} is longer than bundle_poll_max ({poll_max:?})"
                ));
                }
                Some(BundleServerOptions {
                    url,
                    poll_min,
                    poll_max,
                    timeout,
                    bearer_token_file,
                    ca_cert,
                })
            }
        };

        let alg_text = self.bundle_verification_key_alg;
        let alg = alg_text.as_deref().and_then(|text| {
            let alg = SigningAlg::parse(text);
            if alg.is_none() {
                let known: Vec<_> = SigningAlg::ALL.iter().map(|a| a.name()).collect();
                problems.push(format!(
                    "bundle_verification_key_alg: {text:?} is not one of {}",
                    known.join(", ")
                ));
            }
            alg
        });
        let key_id = self.bundle_verification_key_id;
        let scope = self.bundle_scope;
        let verification = match self.bundle_verification_key {
            Some(key) => Some(BundleVerification {
                key,
                alg,
                key_id,
                scope,
            }),
            None => {
                for (name, set) in [
                    ("bundle_verification_key_alg", alg_text.is_some()),
                    ("bundle_verification_key_id", key_id.is_some()),
                    ("bundle_scope", scope.is_some()),
                ] {
                    if set {
                        problems.push(format!("{name}: needs bundle_verification_key"));
                    }
                }
                None
            }
        };
        (bundle, verification)
    }
}

/// What is wrong with a bundle URL, if anything.
fn url_problem(url: &str) -> Option<&'static str> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Some("is not a URL");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Some("must be an http:// or https:// URL");
    }
    if uri.host().is_none_or(str::is_empty) {
        return Some("has no host");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::tests::{merge, merge_err};
    use super::*;

    #[test]
    fn no_bundle_server_by_default() {
        let config = merge(&[], "");
        assert_eq!(config.bundle, None);
        assert_eq!(config.bundle_verification, None);
    }

    #[test]
    fn a_bundle_url_with_opas_polling_defaults_and_the_file_below_flags() {
        let config = merge(
            &[
                "--bundle-url",
                "https://bundles:8888/bundles/stepgate.tar.gz",
                "--bundle-poll-min",
                "5s",
            ],
            "bundle_url = \"http://ignored/b.tar.gz\"\nbundle_poll_min = \"1s\"\nbundle_bearer_token_file = \"/run/token\"\nbundle_verification_key = \"/etc/stepgate/bundle.pem\"\nbundle_verification_key_alg = \"ES256\"\nbundle_scope = \"write\"\n",
        );
        assert_eq!(
            config.bundle,
            Some(BundleServerOptions {
                url: "https://bundles:8888/bundles/stepgate.tar.gz".into(),
                poll_min: Duration::from_secs(5),
                poll_max: POLL_MAX,
                timeout: TIMEOUT,
                bearer_token_file: Some("/run/token".into()),
                ca_cert: None,
            })
        );
        assert_eq!(
            config.bundle_verification,
            Some(BundleVerification {
                key: "/etc/stepgate/bundle.pem".into(),
                alg: Some(SigningAlg::Es256),
                key_id: None,
                scope: Some("write".into()),
            })
        );
    }

    #[test]
    fn a_verification_key_alone_verifies_bundle_files() {
        let config = merge(
            &[
                "--policies",
                "/srv/bundle.tar.gz",
                "--bundle-verification-key",
                "k.pem",
            ],
            "",
        );
        assert_eq!(config.bundle, None);
        assert!(config.bundle_verification.is_some());
    }

    #[test]
    fn bad_bundle_settings_are_each_reported() {
        let err = merge_err(
            &[
                "--bundle-url",
                "ftp://bundles/b.tar.gz",
                "--policies",
                "policies",
                "--bundle-poll-min",
                "3m",
                "--bundle-timeout",
                "soon",
                "--bundle-verification-key-alg",
                "HS256",
            ],
            "",
        );
        for expected in [
            "bundle_url: \"ftp://bundles/b.tar.gz\" must be an http:// or https:// URL",
            "bundle_url and policies: set one",
            "bundle_poll_min: 180s is longer than bundle_poll_max (120s)",
            "bundle_timeout: \"soon\" is not a positive duration",
            "bundle_verification_key_alg: \"HS256\" is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384",
            "bundle_verification_key_alg: needs bundle_verification_key",
        ] {
            assert!(
                err.0.iter().any(|p| p.starts_with(expected)),
                "{expected} missing from {err}"
            );
        }
        let err = merge_err(&[], "bundle_poll_max = \"1s\"\nbundle_scope = \"s\"\n");
        assert_eq!(
            err.0,
            [
                "bundle_poll_max: needs bundle_url",
                "bundle_scope: needs bundle_verification_key"
            ]
        );
        let err = merge_err(&["--bundle-url", "http:///b.tar.gz"], "");
        assert!(
            err.to_string().contains("has no host") || err.to_string().contains("is not a URL"),
            "{err}"
        );
    }
}
