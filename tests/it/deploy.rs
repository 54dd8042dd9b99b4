//! The files in deploy/ stay valid: they are parsed the way stepgate and systemd would.

use stepgate::config::{ServeArgs, ServeConfig};

#[test]
fn the_example_configuration_file_is_valid_and_matches_the_defaults() {
    let args = ServeArgs {
        config: Some("deploy/stepgate.toml".into()),
        ..Default::default()
    };
    let config =
        ServeConfig::from_args_and_env(args, &|_| None).expect("deploy/stepgate.toml is valid");
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

/// The unit's `[Section]Key=value` settings, in order; checks each line's shape.
fn unit_settings(path: &str) -> Vec<(String, String, String)> {
    let unit = std::fs::read_to_string(path).unwrap();
    let mut section = String::new();
    let mut settings = Vec::new();
    for line in unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if line.starts_with('[') {
            assert!(line.ends_with(']'), "bad section header {line}");
            section = line.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        assert!(!value.is_empty(), "{key} is empty");
        settings.push((section.clone(), key.to_string(), value.to_string()));
    }
    settings
}

/// The value of `[Service]key` (the last one, as systemd takes it).
fn service_setting<'a>(settings: &'a [(String, String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(section, k, _)| section == "[Service]" && k == key)
        .map(|(_, _, value)| value.as_str())
}

/// The value the unit's `Environment=NAME=value` gives `name`.
fn unit_environment<'a>(settings: &'a [(String, String, String)], name: &str) -> &'a str {
    settings
        .iter()
        .filter(|(section, key, _)| section == "[Service]" && key == "Environment")
        .find_map(|(_, _, value)| value.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no Environment={name}"))
}

const UNIT: &str = "deploy/stepgate.service";

#[test]
fn the_systemd_unit_has_its_sections_and_runs_serve() {
    let settings = unit_settings(UNIT);
    let unit = std::fs::read_to_string(UNIT).unwrap();
    // The descriptor limit fits the default connection cap on all three listeners.
    let limit: u64 = service_setting(&settings, "LimitNOFILE")
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
        assert!(
            settings.iter().any(|(s, k, _)| format!("{s}{k}") == key),
            "{key} missing"
        );
    }
    assert!(unit.contains("stepgate serve --config"));
    assert_eq!(
        service_setting(&settings, "RestartPreventExitStatus"),
        Some("64"),
        "config errors exit 64"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert_eq!(service_setting(&settings, key), Some(value), "{key}");
    }

    // The install steps in its header put each file where the unit looks for it.
    let exec = service_setting(&settings, "ExecStart").unwrap();
    let binary = exec.split_whitespace().next().unwrap();
    let config = exec.rsplit(' ').next().unwrap();
    let policies = unit_environment(&settings, "STEPGATE_POLICIES");
    for step in [
        format!("install -D -m 0755 target/release/stepgate {binary}"),
        format!("install -D -m 0644 deploy/stepgate.toml {config}"),
        format!("cp -R policies/. {policies}/"),
        format!("install -D -m 0644 {UNIT} /etc/systemd/system/stepgate.service"),
    ] {
        assert!(unit.contains(&step), "the header lacks `{step}`");
    }
}

/// Callers share the socket by joining the service's group, so the unit runs as a real
/// user and group (a `DynamicUser`'s group takes no members), which the sysusers.d
/// snippet creates, and the socket and its directory let that group in, nobody else.
#[test]
fn the_systemd_units_socket_is_shared_with_its_group() {
    let settings = unit_settings(UNIT);
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert_eq!(service_setting(&settings, "DynamicUser"), None);
    let user = service_setting(&settings, "User").expect("User=");
    let group = service_setting(&settings, "Group").expect("Group=");

    // sysusers.d: `u NAME ID GECOS HOME SHELL` makes the user and its group.
    let sysusers = std::fs::read_to_string("deploy/stepgate.sysusers").unwrap();
    let entries: Vec<Vec<&str>> = sysusers
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        entries.iter().any(|e| e[0] == "u" && e[1] == user),
        "sysusers.d does not create {user}: {entries:?}"
    );
    assert!(
        group == user || entries.iter().any(|e| e[0] == "g" && e[1] == group),
        "sysusers.d does not create group {group}"
    );
    assert!(unit.contains("install -D -m 0644 deploy/stepgate.sysusers /usr/lib/sysusers.d/"));
    assert!(unit.contains(&format!("usermod -aG {group} ")));

    // The socket: in the runtime directory, read-write for the group, nothing for others.
    let unit_env = |name: &str| {
        settings
            .iter()
            .filter(|(section, key, _)| section == "[Service]" && key == "Environment")
            .find_map(|(_, _, value)| value.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let args =
        ServeArgs::from_flags_and_env(["--config", "deploy/stepgate.toml"], &unit_env).unwrap();
    let config = ServeConfig::from_args_and_env(args, &unit_env).unwrap();
    let mode = config.grpc_uds_mode.expect("a socket mode");
    assert_eq!(mode & 0o060, 0o060, "group read-write: {mode:o}");
    assert_eq!(mode & 0o007, 0, "nothing for others: {mode:o}");
    let runtime = service_setting(&settings, "RuntimeDirectory").expect("RuntimeDirectory=");
    let socket = config.grpc_uds.unwrap();
    assert_eq!(
        socket.parent().unwrap(),
        std::path::Path::new("/run").join(runtime)
    );
    let dir_mode = u32::from_str_radix(
        service_setting(&settings, "RuntimeDirectoryMode").unwrap_or("0755"),
        8,
    )
    .unwrap();
    assert_eq!(dir_mode & 0o010, 0o010, "the group may enter: {dir_mode:o}");
    assert_eq!(dir_mode & 0o007, 0, "others may not: {dir_mode:o}");
}

pub(crate) mod manifests {
    //! Every manifest under deploy/ parses, and the parts agree with each other and with
    //! stepgate's own flags and defaults: ports, socket paths, identities, entrypoints.

    use std::path::Path;

    use serde::Deserialize;
    use serde_json::Value;
    use stepgate::{
        api::CallerAllowList,
        config::{ServeArgs, ServeConfig},
        decision::Caller,
        policy::{PolicyOptions, PolicySet, PolicySource},
        telemetry::OtlpProtocol,
    };

    /// Every YAML document of a file, as JSON values.
    pub(crate) fn yaml_docs(path: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap();
        yaml_serde::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
            .filter(|doc| !doc.is_null())
            .collect()
    }

    pub(crate) fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    pub(crate) fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
        pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    pub(crate) fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
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

    /// The configuration stepgate builds from a container's environment: its
    /// `STEPGATE_*` and `OTEL_*` variables (and no others: not the test's own).
    pub(crate) fn stepgate_config(container: &Value) -> ServeConfig {
        let vars = |name: &str| env(container, name).map(str::to_string);
        let args = ServeArgs::from_flags_and_env(Vec::<String>::new(), &vars)
            .unwrap_or_else(|e| panic!("{}: {e}", container["name"]));
        ServeConfig::from_args_and_env(args, &vars)
            .unwrap_or_else(|e| panic!("{}: {e}", container["name"]))
    }

    /// The number of a container's port, given as a number or by its name.
    fn port_number(container: &Value, port: &Value) -> u64 {
        if let Some(number) = port.as_u64() {
            return number;
        }
        let name = port.as_str().expect("a port number or name");
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{} has no port named {name}", container["name"]))
    }

    /// The stepgate container's `/health` probes and Prometheus annotations reach the
    /// HTTP listener it configures, on an address the kubelet and Prometheus can reach
    /// (the pod IP, not loopback); returns the listener's port.
    fn check_probes_and_scraping(template: &Value, stepgate: &Value) -> u16 {
        let config = stepgate_config(stepgate);
        let http = config.http_addr.expect("an HTTP listener");
        assert!(
            http.ip().is_unspecified(),
            "{http}: loopback is out of the kubelet's and Prometheus's reach"
        );
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let get = &stepgate[probe]["httpGet"];
            assert_eq!(get["path"], "/health", "{probe}");
            assert_eq!(
                port_number(stepgate, &get["port"]),
                u64::from(http.port()),
                "{probe}"
            );
        }
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
        assert_eq!(
            annotations["prometheus.io/port"],
            http.port().to_string(),
            "the scrape port"
        );
        assert_eq!(
            port_number(stepgate, &"metrics".into()),
            u64::from(http.port()),
            "the port named for scraping"
        );
        http.port()
    }

    pub(crate) const POD: &str = "deploy/kubernetes/books-with-stepgate.yaml";
    pub(crate) const ISTIO_POD: &str = "deploy/istio/books-with-stepgate.yaml";

    #[test]
    fn the_sidecar_pod_is_consistent_with_stepgate_and_envoy() {
        let docs = yaml_docs(POD);
        let deployment = kind(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let stepgate = container(pod, "stepgate");
        let envoy = container(pod, "envoy");
        let app = container(pod, "books");
        let config = stepgate_config(stepgate);

        // Probes and scraping on the HTTP listener; no gRPC on TCP (the socket only).
        check_probes_and_scraping(&deployment["spec"]["template"], stepgate);
        assert_eq!(config.grpc_addr, None, "gRPC is on the Unix socket only");
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
    }

    /// Only Envoy's port is open to everyone; stepgate's HTTP listener (its probes and
    /// metrics, and decision APIs that refuse anonymous callers) only to Prometheus's
    /// namespace, and nothing else of the pod.
    #[test]
    fn the_network_policy_opens_envoys_port_and_the_scrape_port_to_prometheus_only() {
        let docs = yaml_docs(POD);
        let deployment = kind(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let policy = &kind(&docs, "NetworkPolicy")["spec"];
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (key, value) in policy["podSelector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[key], value, "the policy selects the pod");
        }
        assert_eq!(policy["policyTypes"], serde_json::json!(["Ingress"]));
        let envoy_port = port_number(container(pod, "envoy"), &"http".into());
        let stepgate = container(pod, "stepgate");
        let metrics_port = port_number(stepgate, &"metrics".into());
        let pod_port = |port: &Value| {
            pod["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|c| {
                    let ports = c["ports"].as_array()?;
                    let found = ports
                        .iter()
                        .find(|p| p["name"] == *port || p["containerPort"] == *port)?;
                    found["containerPort"].as_u64()
                })
                .unwrap_or_else(|| panic!("no container port {port}"))
        };
        let mut opened = Vec::new();
        for rule in policy["ingress"].as_array().unwrap() {
            for port in rule["ports"].as_array().expect("rules name their ports") {
                opened.push((pod_port(&port["port"]), rule["from"].clone()));
            }
        }
        let from_anywhere: Vec<u64> = opened
            .iter()
            .filter(|(_, from)| from.is_null())
            .map(|(port, _)| *port)
            .collect();
        assert_eq!(from_anywhere, [envoy_port]);
        let scrape: Vec<&Value> = opened
            .iter()
            .filter(|(port, _)| *port == metrics_port)
            .map(|(_, from)| from)
            .collect();
        assert_eq!(scrape.len(), 1, "{opened:?}");
        let selector = &scrape[0][0]["namespaceSelector"]["matchLabels"];
        assert_eq!(selector["kubernetes.io/metadata.name"], "monitoring");
        assert_eq!(opened.len(), 2, "{opened:?}");
    }

    /// Every stepgate container that exports spans speaks the protocol of the collector
    /// port it names: 4317 takes OTLP/gRPC, 4318 OTLP/HTTP, and stepgate's default is
    /// http/protobuf, so a bare `:4317` endpoint loses every span.
    #[test]
    fn every_otlp_exporter_speaks_the_protocol_of_the_collector_port_it_names() {
        let collector = &yaml_docs("deploy/otel-collector.yaml")[0];
        let receiver_port = |protocol: &str| {
            let endpoint = collector["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
                .as_str()
                .unwrap_or_else(|| panic!("no OTLP {protocol} receiver"));
            endpoint.rsplit(':').next().unwrap().parse::<u16>().unwrap()
        };
        let (grpc_port, http_port) = (receiver_port("grpc"), receiver_port("http"));
        let port_of = |url: &str| -> u16 {
            let authority = url.strip_prefix("http://").expect("http:// URL");
            let authority = authority.split('/').next().unwrap();
            authority.rsplit(':').next().unwrap().parse().unwrap()
        };
        let mut exporters = 0;
        for manifest in [POD, ISTIO_POD] {
            for doc in yaml_docs(manifest) {
                let Some(containers) = doc["spec"]["template"]["spec"]["containers"].as_array()
                else {
                    continue;
                };
                for c in containers.iter().filter(|c| {
                    c["args"]
                        .as_array()
                        .is_some_and(|a| a.first().is_some_and(|a| a == "serve"))
                }) {
                    let config = stepgate_config(c);
                    let Some(exporter) = config.tracing.exporter else {
                        continue;
                    };
                    exporters += 1;
                    let url = exporter
                        .endpoint
                        .as_deref()
                        .or(env(c, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
                        .or(env(c, "OTEL_EXPORTER_OTLP_ENDPOINT"))
                        .unwrap();
                    let expected = match exporter.protocol {
                        OtlpProtocol::Grpc => grpc_port,
                        OtlpProtocol::HttpProtobuf => http_port,
                    };
                    assert_eq!(
                        port_of(url),
                        expected,
                        "{manifest}: {url} with {:?}",
                        exporter.protocol
                    );
                }
            }
        }
        assert_eq!(exporters, 2, "both pods export spans");

        // What the check guards against: the endpoint alone (stepgate's default protocol).
        let mut bare = container(
            &kind(&yaml_docs(POD), "Deployment")["spec"]["template"]["spec"],
            "stepgate",
        )
        .clone();
        let vars = bare["env"].as_array_mut().unwrap();
        vars.retain(|v| v["name"] != "OTEL_EXPORTER_OTLP_PROTOCOL");
        let protocol = stepgate_config(&bare).tracing.exporter.unwrap().protocol;
        assert_eq!(protocol, OtlpProtocol::HttpProtobuf);
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

    /// The mesh's provider, the ServiceEntry and the stepgate container agree: the
    /// istio-proxy calls stepgate.local:9191 = 127.0.0.1:9191 over plain TCP, so
    /// stepgate binds that address (loopback: nothing outside the pod reaches it) and
    /// admits the caller such a call has, `anonymous`, to ext_authz and nothing more.
    #[test]
    fn the_istio_files_agree_on_stepgates_listener_and_its_caller() {
        let docs = yaml_docs("deploy/istio/stepgate-authz.yaml");
        let mesh = &yaml_docs("deploy/istio/mesh-config.yaml")[0];
        let provider = &mesh["spec"]["meshConfig"]["extensionProviders"][0];
        let service_entry = kind(&docs, "ServiceEntry");
        let policy = kind(&docs, "AuthorizationPolicy");
        assert_eq!(policy["spec"]["action"], "CUSTOM");
        assert_eq!(policy["spec"]["provider"]["name"], provider["name"]);
        let grpc = &provider["envoyExtAuthzGrpc"];
        assert_eq!(grpc["failOpen"], false);
        assert_eq!(service_entry["spec"]["hosts"][0], grpc["service"]);
        assert_eq!(service_entry["spec"]["ports"][0]["number"], grpc["port"]);
        assert_eq!(service_entry["spec"]["ports"][0]["protocol"], "GRPC");
        assert_eq!(service_entry["spec"]["resolution"], "STATIC");

        let pods = yaml_docs(ISTIO_POD);
        let deployment = kind(&pods, "Deployment");
        let template = &deployment["spec"]["template"];
        let labels = &template["metadata"]["labels"];
        for (key, value) in policy["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(&labels[key], value, "the policy selects the workload");
        }
        let stepgate = container(&template["spec"], "stepgate");
        let config = stepgate_config(stepgate);
        let listener = config
            .grpc_addr
            .expect("a TCP listener for the istio-proxy");
        assert!(listener.ip().is_loopback(), "{listener}");
        assert_eq!(
            service_entry["spec"]["endpoints"][0]["address"],
            listener.ip().to_string()
        );
        assert_eq!(grpc["port"].as_u64(), Some(u64::from(listener.port())));

        // The istio-proxy's call: TCP, no client certificate.
        let mesh_caller = Caller::anonymous();
        let admits =
            |list: Option<&[String]>| CallerAllowList::from_config(list).allows(&mesh_caller);
        assert!(admits(config.service_callers.envoy.as_deref()), "ext_authz");
        assert!(!admits(config.service_callers.decision.as_deref()));
        assert!(!admits(config.service_callers.grant.as_deref()));
        assert!(!admits(config.admin_callers.as_deref()));

        check_probes_and_scraping(template, stepgate);
        let app = container(&template["spec"], "books");
        let socket = config.grpc_uds.expect("a Unix socket for the app");
        assert_eq!(env(app, "STEPGATE_SOCKET"), socket.to_str());
        let uid = format!("uds:uid={}", app["securityContext"]["runAsUser"]);
        assert_eq!(config.service_callers.decision, Some(vec![uid]));
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

    /// The policy ConfigMap as `kubectl create configmap stepgate-policies
    /// --from-file=policies/ --from-file=policies/envoy/` builds it: the two directories
    /// flattened into one, `policies` under `parent`.
    pub(crate) fn policy_configmap(parent: &Path) -> std::path::PathBuf {
        let flat = parent.join("policies");
        std::fs::create_dir(&flat).unwrap();
        for dir in ["policies", "policies/envoy"] {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    let target = flat.join(path.file_name().unwrap());
                    assert!(!target.exists(), "two ConfigMap keys named {target:?}");
                    std::fs::copy(&path, target).unwrap();
                }
            }
        }
        flat
    }

    #[test]
    fn the_policy_configmap_as_kubectl_builds_it_loads_with_both_entrypoints() {
        let dir = tempfile::tempdir().unwrap();
        let flat = policy_configmap(dir.path());
        let options = super::super::support::unhurried(PolicyOptions::default());
        let source = PolicySource::read_dir(&flat, &options.source_limits).unwrap();
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
