//! Every JSON example of seed 000 (Keycloak's policy enforcer document) loads as it is printed:
//! keycloak-policy-enforcer's flat `PolicyEnforcerConfig`, with the connection keys the document
//! leaves out added. Alone, and as one enforcer of a multi-enforcer plugin configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keycloak_pep::config::routes::PluginConfig;
use serde_json::{json, Value};
use std::path::PathBuf;

fn examples() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed000");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 5, "the five examples of seed 000");
    out
}

/// The example with what it leaves out: where Keycloak is, which realm, which client.
fn completed(example: &Value) -> Value {
    let mut v = example.clone();
    let m = v.as_object_mut().unwrap();
    m.insert("realm".into(), json!("bank"));
    m.insert("auth-server-url".into(), json!("http://127.0.0.1:8180"));
    m.insert("resource".into(), json!("bank-api"));
    m.insert("credentials".into(), json!({"secret": "s"}));
    v
}

#[test]
fn every_seed_000_example_loads_as_printed() {
    for (name, example) in examples() {
        let text = completed(&example).to_string();
        let cfg =
            PluginConfig::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = &cfg.enforcers[0].1;
        // what the example says is what was loaded
        let paths = example["paths"].as_array().map_or(0, Vec::len);
        assert_eq!(e.paths.len(), paths, "{name}");
        if let Some(p) = example["paths"].get(0) {
            assert_eq!(e.paths[0].path, p["path"].as_str().unwrap(), "{name}");
            let cip = p.get("claim-information-point").is_some();
            assert_eq!(e.paths[0].claim_information_point.is_some(), cip, "{name}");
        }
        if example.get("enforcement-mode").is_some() {
            assert_eq!(
                e.enforcement_mode.as_str(),
                example["enforcement-mode"].as_str().unwrap()
            );
        }
        // and as one enforcer of a plugin configuration
        let plugin = json!({"enforcers": {"a": completed(&example)}, "default": "a"});
        PluginConfig::from_json(plugin.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{name} in a plugin configuration: {e}"));
    }
}

#[test]
fn the_flat_and_the_adapter_forms_load_alike() {
    let all = examples();
    let example = &all
        .iter()
        .find(|(n, _)| n == "enforcement-mode-and-paths.json")
        .unwrap()
        .1;
    assert!(example.get("enforcement-mode").is_some());
    let flat = completed(example);
    let mut nested = completed(&json!({}));
    nested["policy-enforcer"] = example.clone();
    let a = PluginConfig::from_json(flat.to_string().as_bytes()).unwrap();
    let b = PluginConfig::from_json(nested.to_string().as_bytes()).unwrap();
    let (a, b) = (&a.enforcers[0].1, &b.enforcers[0].1);
    assert_eq!(a.paths.len(), b.paths.len());
    for (x, y) in a.paths.iter().zip(&b.paths) {
        assert_eq!(x.path, y.path);
        assert_eq!(x.methods.len(), y.methods.len());
    }
    assert_eq!(a.enforcement_mode, b.enforcement_mode);
}
