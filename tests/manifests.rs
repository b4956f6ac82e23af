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
