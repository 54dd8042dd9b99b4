//! The bundle-server and bundle-signing settings: `--bundle-url` and how it is polled,
//! and the key bundles are verified with.

use std::{path::PathBuf, time::Duration};

use super::{FileConfig, ServeArgs, positive_duration};
use crate::policy::{BundleServerOptions, SigningAlg};

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

/// The bundle server and verification settings, each problem pushed to `problems`.
/// `explicit_policies`: `policies` was set (flag, environment or file).
pub(super) fn bundle_options(
    args: &ServeArgs,
    file: &FileConfig,
    explicit_policies: bool,
    problems: &mut Vec<String>,
) -> (Option<BundleServerOptions>, Option<BundleVerification>) {
    let pick = |arg: &Option<String>, key: &Option<String>| arg.clone().or_else(|| key.clone());
    let pick_path =
        |arg: &Option<PathBuf>, key: &Option<PathBuf>| arg.clone().or_else(|| key.clone());
    let mut duration = |name: &str, text: Option<String>, default: Duration| match text {
        None => default,
        Some(text) => positive_duration(name, &text).unwrap_or_else(|problem| {
            problems.push(problem);
            default
        }),
    };
    let poll_min_text = pick(&args.bundle_poll_min, &file.bundle_poll_min);
    let poll_max_text = pick(&args.bundle_poll_max, &file.bundle_poll_max);
    let timeout_text = pick(&args.bundle_timeout, &file.bundle_timeout);
    let poll_min = duration("bundle_poll_min", poll_min_text.clone(), POLL_MIN);
    let poll_max = duration("bundle_poll_max", poll_max_text.clone(), POLL_MAX);
    let timeout = duration("bundle_timeout", timeout_text.clone(), TIMEOUT);
    let bearer_token_file = pick_path(
        &args.bundle_bearer_token_file,
        &file.bundle_bearer_token_file,
    );
    let ca_cert = pick_path(&args.bundle_ca_cert, &file.bundle_ca_cert);
    let url = pick(&args.bundle_url, &file.bundle_url).filter(|url| !url.is_empty());

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

    let alg_text = pick(
        &args.bundle_verification_key_alg,
        &file.bundle_verification_key_alg,
    );
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
    let key_id = pick(
        &args.bundle_verification_key_id,
        &file.bundle_verification_key_id,
    );
    let scope = pick(&args.bundle_scope, &file.bundle_scope);
    let verification = match pick_path(&args.bundle_verification_key, &file.bundle_verification_key)
    {
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
    use super::super::ServeConfig;
    use super::*;

    fn merge(args: ServeArgs, toml: &str) -> Result<ServeConfig, super::super::ConfigError> {
        ServeConfig::merge(args, toml::from_str(toml).unwrap())
    }

    #[test]
    fn no_bundle_server_by_default() {
        let config = merge(ServeArgs::default(), "").unwrap();
        assert_eq!(config.bundle, None);
        assert_eq!(config.bundle_verification, None);
    }

    #[test]
    fn a_bundle_url_with_opas_polling_defaults_and_the_file_below_flags() {
        let args = ServeArgs {
            bundle_url: Some("https://bundles:8888/bundles/stepgate.tar.gz".into()),
            bundle_poll_min: Some("5s".into()),
            ..ServeArgs::default()
        };
        let config = merge(
            args,
            "bundle_url = \"http://ignored/b.tar.gz\"\nbundle_poll_min = \"1s\"\nbundle_bearer_token_file = \"/run/token\"\nbundle_verification_key = \"/etc/stepgate/bundle.pem\"\nbundle_verification_key_alg = \"ES256\"\nbundle_scope = \"write\"\n",
        )
        .unwrap();
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
        let args = ServeArgs {
            policies: Some("/srv/bundle.tar.gz".into()),
            bundle_verification_key: Some("k.pem".into()),
            ..ServeArgs::default()
        };
        let config = merge(args, "").unwrap();
        assert_eq!(config.bundle, None);
        assert!(config.bundle_verification.is_some());
    }

    #[test]
    fn bad_bundle_settings_are_each_reported() {
        let args = ServeArgs {
            bundle_url: Some("ftp://bundles/b.tar.gz".into()),
            policies: Some("policies".into()),
            bundle_poll_min: Some("3m".into()),
            bundle_timeout: Some("soon".into()),
            bundle_verification_key_alg: Some("HS256".into()),
            ..ServeArgs::default()
        };
        let err = merge(args, "").unwrap_err();
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
        let err = merge(
            ServeArgs::default(),
            "bundle_poll_max = \"1s\"\nbundle_scope = \"s\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err.0,
            [
                "bundle_poll_max: needs bundle_url",
                "bundle_scope: needs bundle_verification_key"
            ]
        );
        let args = ServeArgs {
            bundle_url: Some("http:///b.tar.gz".into()),
            ..ServeArgs::default()
        };
        let err = merge(args, "").unwrap_err();
        assert!(
            err.to_string().contains("has no host") || err.to_string().contains("is not a URL"),
            "{err}"
        );
    }
}
