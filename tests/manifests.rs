//! The deployment files are checked without running them: envoy/envoy.yaml and the plain Envoy
//! example are accepted by the real Envoy (`--mode validate`, which also loads the .wasm and runs
//! its on_configure), every plugin configuration passes the same parser as `kcpep check`, every
//! file docker-compose mounts exists, the Istio manifests parse and fit together (route names as
//! Istio generates them, the Keycloak cluster the ServiceEntry creates, the secrets the VM gets),
//! and `make oci`'s image layout holds the built module as Istio's image fetcher reads it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{plugin_configs, yaml};

use keycloak_pep::config::routes::{PluginConfig, Selector};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn envoy_yaml_plugin_configuration_is_valid() {
    let yaml = std::fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap();
    let configs = plugin_configs(&yaml);
    assert_eq!(configs.len(), 1);
    // the environment Envoy gives the VM (vm_config.environment_variables.key_values)
    let env = |name: &str| {
        let needle = format!("{name}: ");
        yaml.lines()
            .find_map(|l| l.trim().strip_prefix(needle.as_str()).map(str::to_string))
    };
    let cfg =
        PluginConfig::from_json_env(configs[0].as_bytes(), &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.routes.uses_claims());
    assert!(cfg.enforcers.len() >= 2);
    // the route and virtual host names the rules select by exist in the route configuration
    for rule in &cfg.routes.rules {
        for name in [&rule.route_name, &rule.virtual_host].into_iter().flatten() {
            assert!(
                yaml.contains(&format!("- name: {name}\n")),
                "no Envoy route or virtual host named {name}"
            );
        }
    }
    assert!(cfg.routes.uses_virtual_hosts());
}

#[test]
fn docker_compose_mounts_exist() {
    let dir = root().join("envoy");
    let compose = std::fs::read_to_string(dir.join("docker-compose.yaml")).unwrap();
    let mut mounts = 0;
    for line in compose.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("- ./").or_else(|| t.strip_prefix("- ../")) {
            let rel = if t.starts_with("- ./") {
                format!("./{v}")
            } else {
                format!("../{v}")
            };
            let host = rel.split(':').next().unwrap();
            let p = dir.join(host);
            assert!(
                Path::new(&p).exists(),
                "docker-compose mounts {host}, which does not exist (`make wasm policies-jar` makes dist/)"
            );
            mounts += 1;
        }
    }
    assert!(mounts >= 4, "found {mounts} mounts");
}

#[test]
fn envoy_validates_envoy_yaml() {
    let envoy = root().join(".cache/venv/bin/envoy");
    assert!(
        envoy.exists(),
        "Envoy is installed by scripts/stack.sh install (make test does it)"
    );
    let out = Command::new(envoy)
        .current_dir(root())
        .args([
            "--mode",
            "validate",
            "-c",
            "envoy/envoy.yaml",
            "--disable-hot-restart",
            "--log-level",
            "info",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("OK"), "{text}");
    // validation runs the plugin's on_configure: the configuration loaded, and Envoy's
    // verify_signature accepted the filter's probe vector (its SPKI and protobuf encoding)
    assert!(
        text.contains("signatures verified by the host (verify_signature)"),
        "{text}"
    );
}

/// The one document of `kind` in a file's documents.
fn doc<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

/// The variables a configuration reads with `${env.NAME}` / `${env.NAME:default}`.
fn env_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${env.") {
        rest = &rest[at + "${env.".len()..];
        let end = rest.find(['}', ':']).unwrap();
        names.push(rest[..end].to_string());
    }
    names.sort();
    names.dedup();
    names
}

const PYYAML_TO_JSON: &str = "import json, sys, yaml\n\
    print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))";

#[test]
fn every_deployment_yaml_parses() {
    // PyYAML (Debian's python3-yaml) reads each file too, when python3 has it: the two readers
    // must agree, so this test's YAML reader cannot quietly misread a manifest.
    let pyyaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut files = yaml::files("envoy/istio");
    files.extend(yaml::files("envoy/examples"));
    files.extend(yaml::files("envoy"));
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        let docs = yaml::read(f);
        assert!(
            !docs.is_empty() && docs.iter().all(Value::is_object),
            "{}: expected mappings",
            f.display()
        );
        if f.starts_with(root().join("envoy/istio")) {
            for d in &docs {
                assert!(
                    d["apiVersion"].is_string()
                        && d["kind"].is_string()
                        && d["metadata"]["name"].is_string()
                        && d["spec"].is_object(),
                    "{}: a Kubernetes object needs apiVersion, kind, metadata.name and spec",
                    f.display()
                );
            }
        }
        if pyyaml {
            let out = Command::new("python3")
                .args(["-c", PYYAML_TO_JSON, f.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "PyYAML refuses {}: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let theirs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(docs, theirs, "{}: read differently by PyYAML", f.display());
        } else {
            eprintln!(
                "python3 has no yaml module: {} not cross-checked with PyYAML",
                f.display()
            );
        }
    }
}

/// The names Istio gives the Envoy routes it builds from a VirtualService's http routes
/// (istio/istio pilot/pkg/networking/core/route/route.go): `TranslateRoute` builds one route per
/// match and names it `<http route name>`, or `<http route name>.<match name>` when the match
/// has a name; `BuildHTTPRoutesForVirtualService` builds nothing after a catch-all (an http route
/// without matches, or a match whose path is prefix `/` or regex `.*` and that has no header or
/// query match, `IsCatchAllRoute`; method, authority and scheme matches are header matches).
fn istio_route_names(vs: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for http in vs["spec"]["http"].as_array().unwrap() {
        let name = http["name"].as_str().unwrap_or("");
        let matches = http["match"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if matches.is_empty() {
            names.push(name.to_string());
            return names;
        }
        for m in matches {
            names.push(match m["name"].as_str() {
                Some(n) if !n.is_empty() => format!("{name}.{n}"),
                _ => name.to_string(),
            });
            let headers = [
                "headers",
                "withoutHeaders",
                "queryParams",
                "method",
                "authority",
                "scheme",
            ]
            .iter()
            .any(|k| !m[*k].is_null());
            let uri = &m["uri"];
            if !headers && (uri.is_null() || uri["prefix"] == "/" || uri["regex"] == ".*") {
                return names;
            }
        }
    }
    names
}

#[test]
fn istio_route_naming_follows_pilot() {
    let vs = serde_json::json!({"spec": {"http": [
        {"name": "a", "match": [{"uri": {"prefix": "/a"}}]},
        {"name": "b", "match": [{"name": "x", "uri": {"exact": "/b"}}, {"uri": {"prefix": "/c"}}]},
        {"match": [{"name": "y", "uri": {"prefix": "/d"}}]},
        {"name": "c", "match": [{"name": "all", "method": {"exact": "GET"}}, {"name": "rest"}]},
        {"name": "never"}
    ]}});
    assert_eq!(
        istio_route_names(&vs),
        ["a", "b.x", "b", ".y", "c.all", "c.rest"]
    );
}

#[test]
fn istio_mesh_settings_close_the_ways_past_a_gateway_pep() {
    let docs = yaml::read(&root().join("envoy/istio/mesh-safety.yaml"));
    let mesh = &doc(&docs, "IstioOperator")["spec"]["meshConfig"];
    // istio/api mesh/v1alpha1/config.proto: DECODE_AND_MERGE_SLASHES = normalize_path,
    // merge_slashes, and %2F/%5C decoded before routing
    assert_eq!(
        mesh["pathNormalization"]["normalization"],
        "DECODE_AND_MERGE_SLASHES"
    );
    let format = mesh["accessLogFormat"].as_str().unwrap();
    assert!(format.contains("%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%"));
    assert!(!format.contains("%REQ(:PATH)%") && !format.contains("%REQ(X-ENVOY-ORIGINAL-PATH"));
    let ef = doc(&docs, "EnvoyFilter");
    assert_eq!(ef["metadata"]["namespace"], "bank");
    let patch = &ef["spec"]["configPatches"][0];
    assert_eq!(patch["match"]["context"], "GATEWAY");
    let hcm = &patch["patch"]["value"]["typed_config"];
    assert_eq!(
        hcm["common_http_protocol_options"]["headers_with_underscores_action"],
        "REJECT_REQUEST"
    );
    // the port stays in :authority (Istio matches virtual hosts without it), where a DPoP
    // proof's htu needs it
    assert!(hcm.get("strip_any_host_port").is_none());
    assert_eq!(hcm["strip_trailing_host_dot"], true);
    // it patches the same gateway the WasmPlugin runs in
    let plugin_docs = yaml::read(&root().join("envoy/istio/wasmplugin.yaml"));
    assert_eq!(
        ef["spec"]["workloadSelector"]["labels"],
        doc(&plugin_docs, "WasmPlugin")["spec"]["selector"]["matchLabels"]
    );
}

/// Every shipped Envoy configuration logs paths without their query and carries the settings
/// that keep a path, a host and a header name from meaning one thing to the filter and another
/// to the router or the upstream (the tests-only listener of envoy.yaml aside).
#[test]
fn shipped_envoy_configurations_use_the_safe_settings() {
    for file in ["envoy/envoy.yaml", "envoy/examples/envoy-keycloak-tls.yaml"] {
        let docs = yaml::read(&root().join(file));
        let listeners = docs[0]["static_resources"]["listeners"].as_array().unwrap();
        let mut checked = 0;
        for l in listeners {
            if l["name"] == "raw-test-only" {
                continue;
            }
            for chain in l["filter_chains"].as_array().unwrap() {
                for f in chain["filters"].as_array().unwrap() {
                    let hcm = &f["typed_config"];
                    let what = format!("{file} listener {}", l["name"]);
                    assert_eq!(hcm["normalize_path"], true, "{what}");
                    assert_eq!(hcm["merge_slashes"], true, "{what}");
                    assert!(
                        matches!(
                            hcm["path_with_escaped_slashes_action"].as_str(),
                            Some(
                                "UNESCAPE_AND_REDIRECT" | "UNESCAPE_AND_FORWARD" | "REJECT_REQUEST"
                            )
                        ),
                        "{what}"
                    );
                    // the port stays in :authority for a DPoP proof's htu; virtual hosts are
                    // matched without it, as the filter's host rules are
                    assert!(hcm.get("strip_any_host_port").is_none(), "{what}");
                    let routes = if hcm["route_config"].is_null() {
                        panic!("{what}: no inline route_config")
                    } else {
                        &hcm["route_config"]
                    };
                    assert_eq!(routes["ignore_port_in_host_matching"], true, "{what}");
                    assert_eq!(
                        hcm["common_http_protocol_options"]["headers_with_underscores_action"],
                        "REJECT_REQUEST",
                        "{what}"
                    );
                    for log in hcm["access_log"].as_array().unwrap() {
                        let format = &log["typed_config"]["log_format"];
                        let text = format["text_format_source"]["inline_string"]
                            .as_str()
                            .unwrap();
                        assert!(text.contains("%REQ_WITHOUT_QUERY("), "{what}: {text}");
                        assert!(
                            !text.contains("%REQ(X-ENVOY-ORIGINAL-PATH")
                                && !text.contains("%REQ(:PATH)"),
                            "{what}: {text}"
                        );
                        assert_eq!(
                            format["formatters"][0]["name"], "envoy.formatter.req_without_query",
                            "{what}"
                        );
                    }
                    for hf in hcm["http_filters"].as_array().unwrap() {
                        if hf["name"] == "keycloak-pep" {
                            assert_eq!(
                                hf["typed_config"]["config"]["allow_on_headers_stop_iteration"],
                                true,
                                "{what}"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 1, "{file}");
    }
}

#[test]
fn istio_manifests_fit_together() {
    let dir = root().join("envoy/istio");
    let plugin_docs = yaml::read(&dir.join("wasmplugin.yaml"));
    let vs_docs = yaml::read(&dir.join("virtualservice.yaml"));
    let se_docs = yaml::read(&dir.join("keycloak-serviceentry.yaml"));
    let plugin = doc(&plugin_docs, "WasmPlugin");
    let (gateway, vs) = (doc(&vs_docs, "Gateway"), doc(&vs_docs, "VirtualService"));
    let (se, dr) = (
        doc(&se_docs, "ServiceEntry"),
        doc(&se_docs, "DestinationRule"),
    );

    // the WasmPlugin's values, as istio/api extensions/v1alpha1/wasm.proto defines them
    assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
    let spec = &plugin["spec"];
    assert_eq!(spec["phase"], "AUTHZ");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert_eq!(spec["imagePullPolicy"], "IfNotPresent");
    assert!(spec["url"].as_str().unwrap().starts_with("oci://"));
    let sha = spec["sha256"]
        .as_str()
        .expect("sha256 is a string (digits alone would be read as a number)");
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "sha256 must match ^[a-f0-9]{{64}}$: {sha}"
    );
    // selector or targetRefs, not both; it selects the gateway's pods, all in one namespace
    assert!(spec["targetRefs"].is_null());
    assert_eq!(spec["selector"]["matchLabels"], gateway["spec"]["selector"]);
    for d in [plugin, gateway, vs, se, dr] {
        assert_eq!(d["metadata"]["namespace"], "bank", "{}", d["kind"]);
    }
    assert_eq!(vs["spec"]["gateways"][0], gateway["metadata"]["name"]);
    assert_eq!(vs["spec"]["hosts"], gateway["spec"]["servers"][0]["hosts"]);

    // pluginConfig reaches the filter as JSON (pilot marshals the Struct)
    let config = serde_json::to_string(&spec["pluginConfig"]).unwrap();
    // every ${env.NAME} it reads comes from the proxy's environment, never inline
    let names = env_names(&config);
    assert!(names.len() >= 2, "{names:?}");
    let env = spec["vmConfig"]["env"].as_array().unwrap();
    for name in &names {
        assert!(
            env.iter()
                .any(|e| e["name"] == name.as_str() && e["valueFrom"] == "HOST"),
            "{name} is not in vmConfig.env with valueFrom: HOST"
        );
    }
    assert!(env.iter().all(|e| e["value"].is_null()), "no inline values");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for name in &names {
        assert!(
            readme.contains(name.as_str()),
            "README.md does not say where {name} comes from"
        );
    }

    // the parser `kcpep check` uses, with the secrets in the environment...
    let secret = |n: &str| {
        names
            .iter()
            .any(|x| x == n)
            .then(|| format!("secret-of-{n}"))
    };
    let cfg = PluginConfig::from_json_env(config.as_bytes(), &secret)
        .unwrap_or_else(|e| panic!("pluginConfig: {e}"));
    assert!(cfg.enforcers.len() >= 2);
    for (name, e) in &cfg.enforcers {
        assert!(
            e.secret
                .as_deref()
                .is_some_and(|s| s.starts_with("secret-of-")),
            "enforcer {name} has no secret from the environment"
        );
    }
    // ...and without them it is refused, naming the field
    let err = PluginConfig::from_json_env(config.as_bytes(), &|_| None)
        .expect_err("refused without the secrets");
    assert!(err.path.ends_with("credentials.secret"), "{err}");

    // every route-name rule names a route Istio generates from the VirtualService
    let routes = istio_route_names(vs);
    assert_eq!(
        routes,
        ["reports", "accounts.by-id", "accounts.list", "other"]
    );
    let mut used = 0;
    for rule in &cfg.routes.rules {
        if let Some(name) = &rule.route_name {
            assert!(routes.contains(name), "no route named {name} in {routes:?}");
            used += 1;
        }
    }
    assert!(used >= 2);
    let pick = |route: &str| {
        cfg.routes
            .select(&Selector {
                route_name: Some(route),
                authority: "bank.example.com",
                ..Default::default()
            })
            .map(|i| cfg.enforcers[i].0.as_str())
    };
    assert_eq!(pick("reports"), Some("reports"));
    assert_eq!(pick("accounts.by-id"), Some("accounts"));
    assert_eq!(pick("accounts.list"), Some("accounts"), "the default");
    assert_eq!(pick("other"), Some("accounts"), "the default");

    // Keycloak is the cluster the ServiceEntry creates, outbound|<port>||<host>, plain HTTP from
    // the filter with TLS originated by the proxy and the certificate's name checked
    let host = se["spec"]["hosts"][0].as_str().unwrap();
    let port = &se["spec"]["ports"][0];
    assert_eq!(port["protocol"], "HTTP");
    assert_eq!(port["targetPort"], 443);
    let cluster = format!("outbound|{}||{host}", port["number"]);
    assert_eq!(dr["spec"]["host"], host);
    let policy = &dr["spec"]["trafficPolicy"];
    assert!(policy["connectionPool"].is_object() && policy["outlierDetection"].is_object());
    let tls = &policy["portLevelSettings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["port"]["number"] == port["number"])
        .expect("TLS settings for the ServiceEntry's port")["tls"];
    assert_eq!(tls["mode"], "SIMPLE");
    assert_eq!(tls["sni"], host);
    // with `sni` given, Istio checks only the names listed (no auto SAN validation)
    assert!(tls["subjectAltNames"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == host));
    assert!(tls["insecureSkipVerify"].is_null());
    for (name, e) in &cfg.enforcers {
        assert_eq!(e.proxy.cluster, cluster, "enforcer {name}");
        assert_eq!(e.proxy.authority, host, "enforcer {name}");
        assert_eq!(
            e.auth_server_url,
            format!("https://{host}"),
            "enforcer {name}"
        );
    }
}

#[test]
fn the_plain_envoy_example_fits_together() {
    let docs = yaml::read(&root().join("envoy/examples/envoy-keycloak-tls.yaml"));
    let boot = &docs[0];
    let hcm =
        &boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = hcm["http_filters"].as_array().unwrap();
    assert_eq!(filters.last().unwrap()["name"], "envoy.filters.http.router");
    let wasm = &filters[0]["typed_config"];
    assert_eq!(
        wasm["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    let plugin = &wasm["config"];
    // the template's filter (envoy/envoy.yaml) but for the plugin configuration and where the
    // VM's secrets come from
    let mut template = common::own_envoy::shipped_filter(&json!({}))["typed_config"].clone();
    let mut example = wasm.clone();
    for c in [&mut template["config"], &mut example["config"]] {
        c["configuration"]["value"] = Value::Null;
        c["vm_config"]["environment_variables"] = Value::Null;
        c["vm_config"]["code"]["local"]["filename"] = Value::Null;
    }
    assert_eq!(
        example, template,
        "the example spells the filter as envoy/envoy.yaml does"
    );
    // Envoy's wasm PluginConfig: failure_policy (fail_open is deprecated)
    assert_eq!(plugin["failure_policy"], "FAIL_CLOSED");
    assert!(plugin["fail_open"].is_null());
    let vm = &plugin["vm_config"];
    assert_eq!(vm["code"]["local"]["filename"], "dist/keycloak_pep.wasm");
    let config = plugin["configuration"]["value"].as_str().unwrap();
    let names = env_names(config);
    assert!(names.len() >= 2, "{names:?}");
    let keys = vm["environment_variables"]["host_env_keys"]
        .as_array()
        .unwrap();
    for name in &names {
        assert!(
            keys.iter().any(|k| k == name.as_str()),
            "{name} is not in host_env_keys"
        );
    }
    assert!(
        vm["environment_variables"]["key_values"].is_null(),
        "no inline values"
    );
    let secret = |n: &str| names.iter().any(|x| x == n).then(|| "s".to_string());
    let cfg =
        PluginConfig::from_json_env(config.as_bytes(), &secret).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.enforcers.len(), 2);
    // route-name rules name routes of the route configuration
    let routes = common::mesh::route_names(&hcm["route_config"]);
    assert!(cfg.routes.rules.iter().any(|r| r.route_name.is_some()));
    for rule in &cfg.routes.rules {
        if let Some(name) = &rule.route_name {
            assert!(routes.contains(name), "no route named {name}");
        }
    }
    // each enforcer's cluster exists and reaches Keycloak over verified TLS
    let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
    for (name, e) in &cfg.enforcers {
        let c = clusters
            .iter()
            .find(|c| c["name"] == e.proxy.cluster.as_str())
            .unwrap_or_else(|| panic!("enforcer {name}: no cluster {}", e.proxy.cluster));
        let tls = &c["transport_socket"]["typed_config"];
        assert_eq!(
            tls["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        assert_eq!(tls["sni"], e.proxy.authority.as_str());
        let v = &tls["common_tls_context"]["validation_context"];
        let ca = v["trusted_ca"]["filename"].as_str().unwrap();
        assert!(Path::new(ca).exists(), "{ca} (Debian: ca-certificates)");
        assert_eq!(
            v["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            e.proxy.authority.as_str()
        );
        assert!(c["outlier_detection"].is_object());
    }
}

#[test]
fn the_plain_envoy_example_validates_and_needs_its_secrets() {
    let envoy = root().join(".cache/venv/bin/envoy");
    assert!(
        envoy.exists(),
        "Envoy is installed by scripts/stack.sh install (make test does it)"
    );
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new(&envoy);
        c.current_dir(root()).args([
            "--mode",
            "validate",
            "-c",
            "envoy/examples/envoy-keycloak-tls.yaml",
            "--disable-hot-restart",
        ]);
        c.env_remove("KCPEP_CLIENT_SECRET")
            .env_remove("KCPEP_REPORTS_CLIENT_SECRET");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&[
        ("KCPEP_CLIENT_SECRET", "accounts-from-the-environment"),
        (
            "KCPEP_REPORTS_CLIENT_SECRET",
            "reports-from-the-environment",
        ),
    ]);
    assert!(ok && text.contains("configured 2 enforcer(s)"), "{text}");
    assert!(
        !text.contains("from-the-environment"),
        "a secret is never logged"
    );
    let (ok, text) = run(&[("KCPEP_CLIENT_SECRET", "x")]);
    assert!(!ok);
    assert!(
        text.contains("enforcers.reports.credentials.secret: environment variable KCPEP_REPORTS_CLIENT_SECRET is not set"),
        "{text}"
    );
}

#[test]
fn oci_layout_holds_the_module_as_istio_reads_it() {
    use sha2::{Digest, Sha256};
    let sha = |bytes: &[u8]| format!("{:x}", Sha256::digest(bytes));
    // `make oci` is `scripts/oci.sh` once the module is built; the script is run directly here,
    // into a temporary folder, so the test neither rebuilds the module nor touches dist/oci
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    assert!(makefile.contains("oci: $(WASM)\n\tscripts/oci.sh\n"));
    let wasm = root().join("dist/keycloak_pep.wasm");
    assert!(wasm.exists(), "dist/keycloak_pep.wasm: run `make wasm`");
    let out = std::env::temp_dir().join(format!("kcpep-oci-{}", std::process::id()));
    let made = Command::new(root().join("scripts/oci.sh"))
        .args([wasm.to_str().unwrap(), out.to_str().unwrap(), "test"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&made.stdout).to_string();
    assert!(made.status.success(), "{made:?}");
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(out.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha(&bytes), hex, "blob {hex}");
        bytes
    };
    let layout: Value =
        serde_json::from_slice(&std::fs::read(out.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "test"
    );
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let manifest_digest = m["digest"].as_str().unwrap();
    let manifest_bytes = blob(manifest_digest);
    assert_eq!(m["size"], manifest_bytes.len());
    // the digest to pin (WasmPlugin sha256) is printed
    assert!(
        printed.contains(&format!("manifest {manifest_digest}")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("sha256: \"{}\"", &manifest_digest[7..])),
        "{printed}"
    );
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config_bytes = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(manifest["config"]["size"], config_bytes.len());
    // one layer, tar+gzip, holding plugin.wasm: the "compat" variant Istio's fetcher reads
    // (pkg/wasm/imagefetcher.go, extractOCIStandardImage)
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = blob(layers[0]["digest"].as_str().unwrap());
    assert_eq!(layers[0]["size"], layer.len());
    // no other blobs
    assert_eq!(
        std::fs::read_dir(out.join("blobs/sha256")).unwrap().count(),
        3
    );
    // gzip without a time stamp (bytes 4..8) or file name (flag 0x08)
    assert_eq!(&layer[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(&layer[4..8], &[0, 0, 0, 0]);
    assert_eq!(layer[3] & 0x08, 0);
    let layer_path = out.join("layer.tgz");
    std::fs::write(&layer_path, &layer).unwrap();
    let tar = Command::new("gzip")
        .args(["-dc", layer_path.to_str().unwrap()])
        .output()
        .unwrap()
        .stdout;
    // the config's diff_id is the uncompressed layer's digest
    let config: Value = serde_json::from_slice(&config_bytes).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", sha(&tar))
    );
    let listed = Command::new("tar")
        .env("TZ", "UTC")
        .args(["-tvzf", layer_path.to_str().unwrap()])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listed.stdout).to_string();
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(listing.trim_end().ends_with(" plugin.wasm"), "{listing}");
    assert!(listing.contains("1970-01-01"), "fixed time: {listing}");
    let extracted = Command::new("tar")
        .args(["-xzOf", layer_path.to_str().unwrap(), "plugin.wasm"])
        .output()
        .unwrap();
    assert_eq!(
        extracted.stdout,
        std::fs::read(&wasm).unwrap(),
        "plugin.wasm is the built module"
    );
    // reproducible: the same module gives the same image
    let again = std::env::temp_dir().join(format!("kcpep-oci2-{}", std::process::id()));
    let made = Command::new(root().join("scripts/oci.sh"))
        .args([wasm.to_str().unwrap(), again.to_str().unwrap(), "test"])
        .output()
        .unwrap();
    assert!(made.status.success());
    assert_eq!(
        std::fs::read(out.join("index.json")).unwrap(),
        std::fs::read(again.join("index.json")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&again);
}

/// The tests' YAML reader (tests/common/yaml.rs) reads anchors, flow and block styles as Envoy
/// does, and refuses what it cannot type.
#[test]
fn documents_anchors_and_errors() {
    let text = "# c\na: 1\nb: \"x # not a comment\"  # comment\nc: &list\n  - d: e\n    f: [1, 'g''h', {i: j}]\np: |\n  line 1\n    line 2\nq: {\"r\": \"s\",\n    \"t\": [true, null, 1.5]\n  }\nu: http://x/y:z\nv: 0.0.0.0\nw: *list\n---\nx: ~\n";
    let docs = yaml::documents(text).unwrap();
    assert_eq!(
        docs,
        [
            json!({"a": 1, "b": "x # not a comment",
                   "c": [{"d": "e", "f": [1, "g'h", {"i": "j"}]}],
                   "p": "line 1\n  line 2\n",
                   "q": {"r": "s", "t": [true, null, 1.5]}, "u": "http://x/y:z", "v": "0.0.0.0",
                   "w": [{"d": "e", "f": [1, "g'h", {"i": "j"}]}]}),
            json!({"x": null})
        ]
    );
    for bad in [
        "a: b\n  c: d\n",
        "a: {b: 1\n",
        "a: *nothing\n",
        "a: 1\na: 2\n",
    ] {
        assert!(yaml::documents(bad).is_err(), "{bad:?} should be refused");
    }
}
