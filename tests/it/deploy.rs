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
    // The descriptor limit fits the default connection cap on all three listeners.
    let limit: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE is set")
        .parse()
        .unwrap();
    let cap = stepgate::api::TransportLimits::default().max_connections as u64;
    assert!(
        limit >= 3 * cap + stepgate::api::RESERVED_DESCRIPTORS,
        "{limit}"
    );
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

mod manifests {
    //! Every manifest under deploy/ parses, and the parts agree with each other and with
    //! stepgate's own flags and defaults: ports, socket paths, identities, entrypoints.

    use std::path::Path;

    use clap::Parser;
    use serde::Deserialize;
    use serde_json::Value;
    use stepgate::{
        config::{ServeArgs, ServeConfig},
        policy::{PolicyOptions, PolicySet, PolicySource},
    };

    /// Every YAML document of a file, as JSON values.
    fn yaml_docs(path: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap();
        yaml_serde::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
            .filter(|doc| !doc.is_null())
            .collect()
    }

    fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
        pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
        container["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
    }

    fn mount<'a>(container: &'a Value, volume: &str) -> &'a str {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("{} does not mount {volume}", container["name"]))
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// The configuration stepgate builds from a container's `STEPGATE_*` variables
    /// (each turned into its flag, which is what clap reads the variable as).
    fn stepgate_config(container: &Value) -> ServeConfig {
        let mut argv = vec!["stepgate".to_string()];
        for var in container["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            if let Some(flag) = name.strip_prefix("STEPGATE_") {
                argv.push(format!("--{}", flag.to_lowercase().replace('_', "-")));
                argv.push(var["value"].as_str().unwrap().to_string());
            }
        }
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        ServeConfig::from_args(cli.serve).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    const POD: &str = "deploy/kubernetes/books-with-stepgate.yaml";

    #[test]
    fn the_sidecar_pod_is_consistent_with_stepgate_and_envoy() {
        let docs = yaml_docs(POD);
        let deployment = kind(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let stepgate = container(pod, "stepgate");
        let envoy = container(pod, "envoy");
        let app = container(pod, "books");
        let config = stepgate_config(stepgate);

        // Probes hit the gRPC port stepgate listens on (health is on every listener).
        let grpc_port = config
            .grpc_addr
            .expect("TCP listener for the probes")
            .port();
        let declared = stepgate["ports"][0]["containerPort"].as_u64().unwrap();
        assert_eq!(u64::from(grpc_port), declared);
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(
                stepgate[probe]["grpc"]["port"].as_u64(),
                Some(declared),
                "{probe}"
            );
        }
        for (kind, resource) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            assert!(
                stepgate["resources"][kind][resource].is_string(),
                "{kind}.{resource}"
            );
        }
        // The heap limit stops evaluations before the container's memory limit kills the
        // process, with room for code, stacks and allocator slack.
        let limit_mib: u64 = stepgate["resources"]["limits"]["memory"]
            .as_str()
            .and_then(|m| m.strip_suffix("Mi"))
            .and_then(|m| m.parse().ok())
            .expect("limits.memory in Mi");
        let heap = config.policy.heap_limit.expect("a heap limit");
        assert!(
            heap + (48 << 20) <= limit_mib << 20,
            "{heap} bytes of heap in {limit_mib}Mi"
        );

        // One socket, on the volume every container shares, reachable by the group.
        let socket = config.grpc_uds.clone().expect("a Unix socket");
        let socket_dir = socket.parent().unwrap().to_str().unwrap();
        for c in [stepgate, envoy, app] {
            assert_eq!(mount(c, "stepgate-socket"), socket_dir, "{}", c["name"]);
        }
        assert_eq!(env(app, "STEPGATE_SOCKET"), socket.to_str());
        assert_eq!(config.grpc_uds_mode, Some(0o660));
        assert!(pod["securityContext"]["fsGroup"].is_u64());

        // Identities: Envoy's uid may call ext_authz, the app's the stepgate.v1 services.
        let uid = |c: &Value| format!("uds:uid={}", c["securityContext"]["runAsUser"]);
        assert_eq!(config.service_callers.envoy, Some(vec![uid(envoy)]));
        assert_eq!(config.service_callers.decision, Some(vec![uid(app)]));
        assert_eq!(config.service_callers.grant, Some(vec![uid(app)]));
        assert_eq!(config.admin_callers, Some(vec![uid(app)]));

        // Policies and Envoy's configuration come from the ConfigMaps the header creates.
        let volumes = pod["volumes"].as_array().unwrap();
        let config_map = |volume: &str| {
            volumes
                .iter()
                .find(|v| v["name"] == volume)
                .and_then(|v| v["configMap"]["name"].as_str())
                .unwrap_or_else(|| panic!("volume {volume} is not a ConfigMap"))
                .to_string()
        };
        let text = std::fs::read_to_string(POD).unwrap();
        for volume in ["policies", "envoy-config"] {
            let name = config_map(volume);
            assert!(
                text.contains(&format!("kubectl create configmap {name} ")),
                "the header does not create ConfigMap {name}"
            );
        }
        assert_eq!(
            Path::new(mount(stepgate, "policies")),
            config.policies.as_path()
        );
        let envoy_args: Vec<&str> = envoy["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            envoy_args.contains(&format!("{}/envoy.yaml", mount(envoy, "envoy-config")).as_str())
        );
        assert!(text.contains("--from-file=envoy.yaml=deploy/envoy/envoy.yaml"));

        // Envoy's ext_authz cluster is that socket.
        let envoy_config = &yaml_docs("deploy/envoy/envoy.yaml")[0];
        assert_eq!(stepgate_pipe(envoy_config), socket.to_str().unwrap());

        // The collector receives where stepgate exports.
        let endpoint = env(stepgate, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap();
        let collector = &yaml_docs("deploy/otel-collector.yaml")[0];
        let receiver = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
            .as_str()
            .unwrap();
        assert_eq!(
            endpoint.rsplit(':').next(),
            receiver.rsplit(':').next(),
            "OTLP gRPC port"
        );
    }

    /// The socket path of the cluster Envoy's ext_authz filter calls; checks the filter.
    fn stepgate_pipe(envoy: &Value) -> String {
        let listener = &envoy["static_resources"]["listeners"][0];
        let manager = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        let filters = manager["http_filters"].as_array().unwrap();
        let ext_authz = filters
            .iter()
            .find(|f| f["name"] == "envoy.filters.http.ext_authz")
            .expect("an ext_authz filter");
        assert_eq!(
            filters.last().unwrap()["name"],
            "envoy.filters.http.router",
            "the router comes last"
        );
        let authz = &ext_authz["typed_config"];
        assert_eq!(authz["transport_api_version"], "V3");
        assert_eq!(authz["failure_mode_allow"], false, "fail closed");
        assert!(authz["with_request_body"]["max_request_bytes"].is_u64());
        let cluster_name = authz["grpc_service"]["envoy_grpc"]["cluster_name"]
            .as_str()
            .unwrap();
        let cluster = envoy["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == cluster_name)
            .unwrap_or_else(|| panic!("no cluster {cluster_name}"));
        let options = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(
            options["explicit_http_config"]["http2_protocol_options"].is_object(),
            "gRPC needs HTTP/2 to stepgate"
        );
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]
            ["path"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_istio_provider_reaches_stepgates_default_port() {
        let defaults = ServeConfig::default();
        let port = u64::from(defaults.grpc_addr.unwrap().port());
        let docs = yaml_docs("deploy/istio/stepgate-authz.yaml");
        let mesh = &yaml_docs("deploy/istio/mesh-config.yaml")[0];
        let provider = &mesh["spec"]["meshConfig"]["extensionProviders"][0];
        let service_entry = kind(&docs, "ServiceEntry");
        let policy = kind(&docs, "AuthorizationPolicy");
        assert_eq!(policy["spec"]["action"], "CUSTOM");
        assert_eq!(policy["spec"]["provider"]["name"], provider["name"]);
        let grpc = &provider["envoyExtAuthzGrpc"];
        assert_eq!(grpc["port"].as_u64(), Some(port));
        assert_eq!(grpc["failOpen"], false);
        assert_eq!(service_entry["spec"]["hosts"][0], grpc["service"]);
        assert_eq!(
            service_entry["spec"]["ports"][0]["number"].as_u64(),
            Some(port)
        );
        assert_eq!(service_entry["spec"]["ports"][0]["protocol"], "GRPC");
        assert_eq!(
            service_entry["spec"]["endpoints"][0]["address"],
            "127.0.0.1"
        );
    }

    #[test]
    fn the_collector_pipelines_use_what_it_defines() {
        let collector = &yaml_docs("deploy/otel-collector.yaml")[0];
        let pipelines = collector["service"]["pipelines"].as_object().unwrap();
        assert!(pipelines.contains_key("traces"));
        assert!(pipelines.contains_key("logs"), "decision records over OTLP");
        for (name, pipeline) in pipelines {
            for section in ["receivers", "processors", "exporters"] {
                for component in pipeline[section].as_array().into_iter().flatten() {
                    let component = component.as_str().unwrap();
                    assert!(
                        collector[section][component].is_object(),
                        "pipeline {name} uses undefined {section}.{component}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_dockerfile_builds_in_one_stage_and_runs_serve_in_another() {
        let text = std::fs::read_to_string("deploy/Dockerfile").unwrap();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let stages: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(stages.len(), 2, "{stages:?}");
        let build = stages[0].rsplit(' ').next().unwrap();
        assert!(stages[0].contains(" AS "), "the first stage is named");
        let copy_from = lines
            .iter()
            .find(|l| l.starts_with(&format!("COPY --from={build} ")))
            .expect("the runtime copies the binary from the build stage");
        assert!(copy_from.contains("/target/release/stepgate"));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("cargo build --release --locked"))
        );
        // Every path copied from the context exists in the repository.
        for line in lines
            .iter()
            .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        {
            let parts: Vec<&str> = line.split_whitespace().collect();
            for source in &parts[1..parts.len() - 1] {
                assert!(Path::new(source).exists(), "COPY of missing {source}");
            }
        }
        let defaults = ServeConfig::default();
        let expose = lines.iter().find(|l| l.starts_with("EXPOSE ")).unwrap();
        for port in [
            defaults.grpc_addr.unwrap().port(),
            defaults.http_addr.unwrap().port(),
        ] {
            assert!(expose.contains(&port.to_string()), "{expose}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("USER ") && !l.contains(" 0"))
        );
        assert!(lines.contains(&r#"CMD ["serve"]"#));
    }

    /// `X.Y` of a `rust-version` or an image tag, as a comparable pair.
    fn rust_version(text: &str) -> (u32, u32) {
        let mut parts = text.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// The image's build stage uses the toolchain `Cargo.toml` claims, and no locked
    /// dependency needs a newer one (`rust:1.89` could not build `regorus 0.14.1`).
    #[test]
    fn the_image_toolchain_is_what_the_dependencies_need() {
        let dockerfile = std::fs::read_to_string("deploy/Dockerfile").unwrap();
        let image = dockerfile
            .lines()
            .find_map(|l| l.trim().strip_prefix("FROM rust:"))
            .expect("the build stage is a rust image");
        let image = rust_version(image.split(['-', ' ']).next().unwrap());
        let manifest: toml::Table = std::fs::read_to_string("Cargo.toml")
            .unwrap()
            .parse()
            .unwrap();
        let claimed = rust_version(manifest["package"]["rust-version"].as_str().unwrap());
        assert_eq!(
            image, claimed,
            "the Dockerfile's toolchain is Cargo.toml's rust-version"
        );

        let host = String::from_utf8(
            std::process::Command::new("rustc")
                .arg("-vV")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let host = host.lines().find_map(|l| l.strip_prefix("host: ")).unwrap();
        let metadata = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--locked"])
            .args(["--filter-platform", host])
            .output()
            .unwrap();
        assert!(metadata.status.success(), "{metadata:?}");
        let metadata: Value = serde_json::from_slice(&metadata.stdout).unwrap();
        let (needed, by) = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| {
                Some((
                    rust_version(p["rust_version"].as_str()?),
                    p["name"].as_str()?,
                ))
            })
            .max()
            .unwrap();
        assert!(
            needed <= claimed,
            "{by} needs Rust {}.{}, Cargo.toml claims {}.{}",
            needed.0,
            needed.1,
            claimed.0,
            claimed.1
        );
    }

    #[test]
    fn the_policy_configmap_as_kubectl_builds_it_loads_with_both_entrypoints() {
        // `--from-file=policies/ --from-file=policies/envoy/` flattens the two directories.
        let flat = tempfile::tempdir().unwrap();
        for dir in ["policies", "policies/envoy"] {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    let target = flat.path().join(path.file_name().unwrap());
                    assert!(!target.exists(), "two ConfigMap keys named {target:?}");
                    std::fs::copy(&path, target).unwrap();
                }
            }
        }
        let options = super::super::support::unhurried(PolicyOptions::default());
        let source = PolicySource::read_dir(flat.path(), &options.source_limits).unwrap();
        let set = PolicySet::load(source, &options, true).expect("loads and its tests pass");
        let engines: Vec<_> = set
            .entrypoints()
            .into_iter()
            .map(|e| (e.rule, e.engine))
            .collect();
        assert_eq!(
            engines,
            [
                ("data.stepgate.decision".to_string(), "rvm"),
                ("data.envoy.authz.allow".to_string(), "rvm"),
            ]
        );
    }
}
