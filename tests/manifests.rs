//! The deployment files are checked without running them: envoy/envoy.yaml is accepted by the real
//! Envoy (`--mode validate`, which also loads the .wasm and runs its on_configure), its plugin
//! configuration passes the same parser as `kcpep check`, and every file docker-compose mounts exists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keycloak_pep::routes::PluginConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The JSON blocks under `value: |` of a YAML file (the plugin configurations).
fn plugin_configs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim_end().ends_with("value: |") {
            let indent = l.len() - l.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|x| x.trim().is_empty() || x.len() - x.trim_start().len() > indent)
                .copied()
                .collect();
            out.push(block.join("\n"));
        }
    }
    out
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
    assert!(cfg.uses_claims());
    assert!(cfg.enforcers.len() >= 2);
    // the route names the rules select by exist in the route configuration
    for rule in &cfg.rules {
        if let Some(name) = &rule.route_name {
            assert!(
                yaml.contains(&format!("- name: {name}\n")),
                "no Envoy route named {name}"
            );
        }
    }
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
                "docker-compose mounts {host}, which does not exist (run `make wasm` for dist/)"
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
        text.contains("RSA signatures verified by the host (verify_signature)"),
        "{text}"
    );
}

/// The JSON value of `pluginConfig:` in a WasmPlugin (written as JSON, which YAML accepts).
fn istio_plugin_config(yaml: &str) -> String {
    let start = yaml.find("pluginConfig:").expect("pluginConfig") + "pluginConfig:".len();
    yaml[start..].to_string()
}

/// The Envoy route names Istio generates from a VirtualService's http routes: the route's
/// `name`, or `<name>.<match name>` for a match with a name (pilot's route translation).
fn istio_route_names(yaml: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut route: Option<(String, bool)> = None; // (name, has named matches)
    let mut in_http = false;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if t == "---" || (indent == 0 && !t.is_empty()) {
            in_http = false;
        }
        if indent == 2 && t == "http:" {
            in_http = true;
            continue;
        }
        if !in_http {
            continue;
        }
        if indent == 4 && t.starts_with("- ") {
            if let Some((r, false)) = route.take() {
                names.push(r);
            }
            route = t
                .strip_prefix("- name: ")
                .map(|n| (n.trim().to_string(), false));
        } else if indent == 8 && t.starts_with("- name: ") {
            if let Some((r, named)) = route.as_mut() {
                names.push(format!("{r}.{}", t["- name: ".len()..].trim()));
                *named = true;
            }
        }
    }
    if let Some((r, false)) = route {
        names.push(r);
    }
    names
}

#[test]
fn istio_manifests_fit_together() {
    let dir = root().join("envoy/istio");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (plugin, vs, se) = (
        read("wasmplugin.yaml"),
        read("virtualservice.yaml"),
        read("keycloak-serviceentry.yaml"),
    );
    for (file, text, kinds) in [
        ("wasmplugin.yaml", &plugin, &["WasmPlugin"][..]),
        (
            "virtualservice.yaml",
            &vs,
            &["Gateway", "VirtualService"][..],
        ),
        (
            "keycloak-serviceentry.yaml",
            &se,
            &["ServiceEntry", "DestinationRule"][..],
        ),
    ] {
        for kind in kinds {
            assert!(
                text.contains(&format!("\nkind: {kind}\n")),
                "{file}: no {kind}"
            );
        }
        assert!(
            !text.contains('\t'),
            "{file}: tabs are not YAML indentation"
        );
    }
    assert!(plugin.contains("phase: AUTHZ") && plugin.contains("failStrategy: FAIL_CLOSE"));
    assert!(plugin.contains("valueFrom: HOST"));
    // the plugin configuration passes the parser `kcpep check` uses, with the secret from the env
    let json = istio_plugin_config(&plugin);
    let env = |name: &str| (name == "KCPEP_CLIENT_SECRET").then(|| "s".to_string());
    let cfg = keycloak_pep::routes::PluginConfig::from_json_env(json.as_bytes(), &env)
        .unwrap_or_else(|e| panic!("pluginConfig: {e}"));
    assert!(cfg.enforcers.len() >= 2);
    assert!(cfg
        .enforcers
        .iter()
        .all(|(_, e)| e.secret.as_deref() == Some("s")));
    // without the variable the configuration is refused, naming the field
    let err = keycloak_pep::routes::PluginConfig::from_json_env(json.as_bytes(), &|_| None)
        .expect_err("refused without the secret");
    assert!(err.path.ends_with("credentials.secret"), "{err}");
    // every route-name rule names a route Istio generates from the VirtualService
    let routes = istio_route_names(&vs);
    assert_eq!(routes, ["reports", "accounts.by-id", "accounts.list"]);
    let mut used = 0;
    for rule in &cfg.rules {
        if let Some(name) = &rule.route_name {
            assert!(routes.contains(name), "no route named {name} in {routes:?}");
            used += 1;
        }
    }
    assert!(used >= 2);
    // ...and selects as intended
    let pick = |route: &str| {
        cfg.select(Some(route), "bank.example.com", None)
            .map(|i| cfg.enforcers[i].0.as_str())
    };
    assert_eq!(pick("reports"), Some("reports"));
    assert_eq!(pick("accounts.by-id"), Some("accounts"));
    assert_eq!(pick("accounts.list"), Some("accounts"), "the default");
    // the Keycloak cluster is the one the ServiceEntry makes: outbound|<port>||<host>
    let host = se
        .lines()
        .find_map(|l| l.trim().strip_prefix("hosts: [\"")?.strip_suffix("\"]"))
        .unwrap();
    let port = se
        .lines()
        .find_map(|l| l.trim().strip_prefix("- number: "))
        .unwrap();
    let cluster = format!("outbound|{port}||{host}");
    for (name, e) in &cfg.enforcers {
        assert_eq!(e.proxy.cluster, cluster, "enforcer {name}");
        assert_eq!(e.proxy.authority, host);
    }
}

#[test]
fn the_plain_envoy_example_validates_and_needs_its_secret() {
    let envoy = root().join(".cache/venv/bin/envoy");
    let run = |secret: Option<&str>| {
        let mut c = Command::new(&envoy);
        c.current_dir(root()).args([
            "--mode",
            "validate",
            "-c",
            "envoy/examples/envoy-keycloak-tls.yaml",
            "--disable-hot-restart",
        ]);
        match secret {
            Some(s) => c.env("KCPEP_CLIENT_SECRET", s),
            None => c.env_remove("KCPEP_CLIENT_SECRET"),
        };
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(Some("from-the-environment"));
    assert!(ok && text.contains("configured 2 enforcer(s)"), "{text}");
    assert!(
        !text.contains("from-the-environment"),
        "the secret is never logged"
    );
    let (ok, text) = run(None);
    assert!(!ok);
    assert!(
        text.contains("enforcers.accounts.credentials.secret: environment variable KCPEP_CLIENT_SECRET is not set"),
        "{text}"
    );
}

#[test]
fn oci_layout_holds_the_module_as_istio_reads_it() {
    use sha2::{Digest, Sha256};
    let out = std::env::temp_dir().join(format!("kcpep-oci-{}", std::process::id()));
    let wasm = root().join("dist/keycloak_pep.wasm");
    let status = Command::new(root().join("scripts/oci.sh"))
        .args([wasm.to_str().unwrap(), out.to_str().unwrap(), "test"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(out.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(format!("{:x}", Sha256::digest(&bytes)), hex, "blob {hex}");
        bytes
    };
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "test"
    );
    let manifest_bytes = blob(m["digest"].as_str().unwrap());
    assert_eq!(m["size"], manifest_bytes.len());
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(manifest["config"]["size"], config.len());
    // one layer, tar+gzip, holding plugin.wasm: Istio's "compat" variant
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = blob(layers[0]["digest"].as_str().unwrap());
    assert_eq!(layers[0]["size"], layer.len());
    let layer_path = out.join("layer.tgz");
    std::fs::write(&layer_path, &layer).unwrap();
    let listed = Command::new("tar")
        .args(["-tzf", layer_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "plugin.wasm"
    );
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
    Command::new(root().join("scripts/oci.sh"))
        .args([wasm.to_str().unwrap(), again.to_str().unwrap(), "test"])
        .output()
        .unwrap();
    assert_eq!(
        std::fs::read(out.join("index.json")).unwrap(),
        std::fs::read(again.join("index.json")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&again);
}
