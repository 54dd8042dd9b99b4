//! The files in deploy/ stay valid: they are parsed the way stepgate and systemd would.

use stepgate::config::{ServeArgs, ServeConfig};

#[test]
fn the_example_configuration_file_is_valid_and_matches_the_defaults() {
    let args = ServeArgs {
        config: Some("deploy/stepgate.toml".into()),
        ..Default::default()
    };
    let config = ServeConfig::from_args(args).expect("deploy/stepgate.toml is valid");
    let defaults = ServeConfig::default();
    assert_eq!(config.grpc_addr, defaults.grpc_addr);
    assert_eq!(config.http_addr, defaults.http_addr);
    assert_eq!(config.audit.masks, defaults.audit.masks);
    assert_eq!(config.audit.required, defaults.audit.required);
    assert_eq!(config.tracing, defaults.tracing);
    assert_eq!(config.policy.eval_limits, defaults.policy.eval_limits);
    assert_eq!(config.policy.source_limits, defaults.policy.source_limits);
    assert_eq!(
        (config.max_batch, config.max_message_bytes),
        (defaults.max_batch, defaults.max_message_bytes)
    );
}

#[test]
fn the_systemd_unit_has_its_sections_and_runs_serve() {
    let unit = std::fs::read_to_string("deploy/stepgate.service").unwrap();
    let mut section = "";
    let mut keys = Vec::new();
    for line in unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if line.starts_with('[') {
            assert!(line.ends_with(']'), "bad section header {line}");
            section = line;
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        assert!(!value.is_empty(), "{key} is empty");
        keys.push(format!("{section}{key}"));
    }
    for key in [
        "[Unit]Description",
        "[Service]ExecStart",
        "[Service]ExecReload",
        "[Install]WantedBy",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing");
    }
    assert!(unit.contains("stepgate serve --config"));
    assert!(
        unit.contains("RestartPreventExitStatus=64"),
        "config errors exit 64"
    );
}
