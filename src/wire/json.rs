//! A strict reader over `serde_json::Value` that names the JSON path of every error.
//!
//! serde's derive reports "unknown field" without saying where; users paste large keycloak.json
//! files, so every error here carries `policy-enforcer.paths[3].methods[0].scopes` style paths
//! and unknown keys get a "did you mean" when a known key is close.

use serde_json::{Map, Value};
use std::fmt;

/// A configuration error: where (JSON path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

pub type Result<T> = std::result::Result<T, ConfigError>;

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A value that may be one string or a list of strings (Keycloak accepts both in claim
/// configurations): each string with the JSON path it sits at; anything else is refused there.
pub fn one_or_many_strings<'v>(v: &'v Value, at: &str) -> Result<Vec<(String, &'v str)>> {
    let one = |v: &'v Value, at: String| match v {
        Value::String(s) => Ok((at, s.as_str())),
        other => Err(ConfigError::new(
            &at,
            format!("expected a string, found {}", type_name(other)),
        )),
    };
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, s)| one(s, index(at, i)))
            .collect(),
        other => Ok(vec![one(other, at.to_string())?]),
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One JSON object being read. Every key asked for is remembered, so `finish` can reject the
/// keys nobody asked for and suggest the nearest known one.
pub struct Obj<'a> {
    pub path: String,
    map: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    pub fn new(value: &'a Value, path: &str) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Obj {
                path: path.to_string(),
                map,
                known: Vec::new(),
            }),
            other => Err(ConfigError::new(
                path,
                format!("expected an object, found {}", type_name(other)),
            )),
        }
    }

    pub fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of a key (null counts as absent, as Jackson does for optional fields).
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// Every member, for objects whose keys are data (claims by name).
    pub fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.map.iter()
    }

    /// Marks keys as known without reading them (adapter keys that do not apply to a proxy).
    pub fn ignore(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }

    pub fn string(&mut self, key: &'static str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    pub fn required_string(&mut self, key: &'static str) -> Result<String> {
        match self.string(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(ConfigError::new(&self.key_path(key), "must not be empty")),
            None => Err(ConfigError::new(&self.key_path(key), "is required")),
        }
    }

    pub fn bool(&mut self, key: &'static str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong(key, "a boolean", other)),
        }
    }

    pub fn i64(&mut self, key: &'static str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                None => Err(ConfigError::new(
                    &self.key_path(key),
                    "expected a whole number",
                )),
            },
            Some(other) => Err(self.wrong(key, "a whole number", other)),
        }
    }

    /// A non-negative whole number that fits in u32.
    pub fn u32(&mut self, key: &'static str) -> Result<Option<u32>> {
        match self.i64(key)? {
            None => Ok(None),
            Some(i) => u32::try_from(i).map(Some).map_err(|_| {
                ConfigError::new(
                    &self.key_path(key),
                    format!("expected a number from 0 to {}", u32::MAX),
                )
            }),
        }
    }

    pub fn string_list(&mut self, key: &'static str) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            return Err(ConfigError::new(
                                &index(&self.key_path(key), i),
                                format!("expected a string, found {}", type_name(other)),
                            ))
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(other) => Err(self.wrong(key, "an array of strings", other)),
        }
    }

    pub fn array(&mut self, key: &'static str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.wrong(key, "an array", other)),
        }
    }

    pub fn object(&mut self, key: &'static str) -> Result<Option<Obj<'a>>> {
        let path = self.key_path(key);
        match self.get(key) {
            None => Ok(None),
            Some(v) => Obj::new(v, &path).map(Some),
        }
    }

    /// An enum spelled exactly as one of `choices` (Keycloak's Jackson enums are case-sensitive).
    pub fn choice<T: Copy>(
        &mut self,
        key: &'static str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>> {
        let Some(s) = self.string(key)? else {
            return Ok(None);
        };
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == s) {
            return Ok(Some(*t));
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        Err(ConfigError::new(
            &self.key_path(key),
            format!("expected {}, found \"{s}\"", one_of(&names)),
        ))
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> ConfigError {
        ConfigError::new(
            &self.key_path(key),
            format!("expected {expected}, found {}", type_name(found)),
        )
    }

    /// Rejects every key that was neither read nor ignored.
    pub fn finish(self) -> Result<()> {
        for key in self.map.keys() {
            if !self.known.iter().any(|k| k == key) {
                let mut message = "unknown key".to_string();
                if let Some(near) = nearest(key, &self.known) {
                    message.push_str(&format!(" (did you mean \"{near}\"?)"));
                }
                return Err(ConfigError::new(&join(&self.path, key), message));
            }
        }
        Ok(())
    }
}

/// A top-level JSON array whose items `read` takes (each with its path, `[3]`).
pub fn array_of<T>(v: &Value, read: impl Fn(&Value, &str) -> Result<T>) -> Result<Vec<T>> {
    let Value::Array(items) = v else {
        return Err(ConfigError::new(
            "",
            format!("expected an array, found {}", type_name(v)),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| read(item, &index("", i)))
        .collect()
}

/// "A, B or C".
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn nearest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let key_l = key.to_ascii_lowercase().replace('_', "-");
    if let Some(k) = known.iter().find(|k| {
        k.len() > 3 && key_l.len() > 3 && (k.starts_with(&key_l) || key_l.starts_with(**k))
    }) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edit_distance(&key_l, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Keycloak's `${env.NAME}` and `${env.NAME:default}` in keycloak.json string values, so secrets
/// come from the VM environment (Envoy `vm_config.environment_variables`, Istio `vmConfig.env`)
/// instead of the YAML. A variable that is unset and has no default is an error naming the field
/// (Keycloak would keep the text and fail later with a wrong secret). Other `${...}` stay as is.
pub fn substitute_env(
    v: &Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Value> {
    Ok(match v {
        Value::String(s) if s.contains("${env.") => Value::String(expand(s, path, lookup)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| substitute_env(x, &index(path, i), lookup))
                .collect::<Result<_>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, x)| Ok((k.clone(), substitute_env(x, &join(path, k), lookup)?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

fn expand(s: &str, path: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${env.") {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let inner = &rest[start + 6..start + len];
        let (name, default) = match inner.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(ConfigError::new(
                    path,
                    format!(
                    "environment variable {name} is not set (and ${{env.{name}}} has no :default)"
                ),
                ))
            }
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_key_names_path_and_suggests() {
        let v = json!({"enforcment-mode": "ENFORCING"});
        let mut o = Obj::new(&v, "policy-enforcer").unwrap();
        assert_eq!(o.string("enforcement-mode").unwrap(), None);
        let e = o.finish().unwrap_err();
        assert_eq!(e.path, "policy-enforcer.enforcment-mode");
        assert!(
            e.message.contains("did you mean \"enforcement-mode\""),
            "{e}"
        );
    }

    #[test]
    fn far_keys_get_no_suggestion() {
        let v = json!({"zzz": 1});
        let mut o = Obj::new(&v, "").unwrap();
        o.get("enforcement-mode");
        let e = o.finish().unwrap_err();
        assert_eq!(e.to_string(), "zzz: unknown key");
    }

    #[test]
    fn wrong_types_name_the_path() {
        let v = json!({"a": 1, "b": ["x", 2], "c": "s", "d": -1});
        let mut o = Obj::new(&v, "root").unwrap();
        assert_eq!(
            o.string("a").unwrap_err().to_string(),
            "root.a: expected a string, found a number"
        );
        assert_eq!(
            o.string_list("b").unwrap_err().to_string(),
            "root.b[1]: expected a string, found a number"
        );
        assert_eq!(
            o.bool("c").unwrap_err().to_string(),
            "root.c: expected a boolean, found a string"
        );
        assert!(o.u32("d").is_err());
    }

    #[test]
    fn choice_lists_alternatives() {
        let v = json!({"m": "all"});
        let mut o = Obj::new(&v, "x").unwrap();
        let e = o
            .choice("m", &[("ALL", 1), ("ANY", 2), ("DISABLED", 3)])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.m: expected ALL, ANY or DISABLED, found \"all\""
        );
    }

    #[test]
    fn null_is_absent() {
        let v = json!({"a": null});
        let mut o = Obj::new(&v, "").unwrap();
        assert_eq!(o.string("a").unwrap(), None);
        o.finish().unwrap();
    }

    #[test]
    fn env_substitution_in_string_values() {
        let env = |n: &str| (n == "KC_SECRET").then(|| "from-env".to_string());
        let v = json!({"credentials": {"secret": "${env.KC_SECRET}"},
                       "a": ["x-${env.UNSET:dflt}-y", "${sys.keep}"], "n": 1});
        let out = substitute_env(&v, "", &env).unwrap();
        assert_eq!(out["credentials"]["secret"], "from-env");
        assert_eq!(out["a"][0], "x-dflt-y");
        assert_eq!(out["a"][1], "${sys.keep}");
        let e = substitute_env(&json!({"c": {"secret": "${env.NOPE}"}}), "", &env).unwrap_err();
        assert_eq!(e.path, "c.secret");
        assert!(e.message.contains("NOPE is not set"), "{e}");
    }
}
