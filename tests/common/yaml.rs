//! The deployment manifests read into `serde_json::Value`s with yaml-rust2 (a maintained, pure
//! Rust YAML 1.2 parser; Envoy's own yaml-cpp reads anchors and aliases the same way, and
//! envoy.yaml uses them to give its tests-only listener the shipped filters and routes).
//! Scalars follow YAML 1.2's core schema. A key that is not a string or a number, a duplicate
//! key, or a value yaml-rust2 cannot type is an error, never a guess.

use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// Every non-empty document of `text`.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    docs.iter()
        .filter(|d| !d.is_null())
        .map(|d| json(d, ""))
        .collect()
}

fn json(y: &Yaml, at: &str) -> Result<Value, String> {
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => {
            let f: f64 = text
                .parse()
                .map_err(|_| format!("{at}: bad number {text}"))?;
            Value::Number(Number::from_f64(f).ok_or_else(|| format!("{at}: {text} is not finite"))?)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| json(v, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => return Err(format!("{at}: unsupported key {other:?}")),
                };
                let value = json(v, &format!("{at}.{key}"))?;
                if m.insert(key.clone(), value).is_some() {
                    return Err(format!("{at}: duplicate key {key}"));
                }
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err(format!("{at}: unreadable value")),
    })
}

/// The YAML files of a folder of the repository (relative to it), sorted.
pub fn files(dir: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

/// Every document of a YAML file, as JSON values.
pub fn read(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
