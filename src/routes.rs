//! The plugin configuration: one keycloak.json, or several enforcers selected per request by
//! Envoy route name, host and path prefix.
//!
//! Envoy's Wasm filter has no per-route configuration and Istio's WasmPlugin cannot select by
//! route, so selection lives in the plugin config:
//! `{"enforcers": {"name": <keycloak.json>, ...}, "routes": [{"route-name"|"host"|"path-prefix", "enforcer"}], "default": "name"}`.
//! Rules are tried in order; the first whose every given condition holds wins. No rule and no
//! default: the request is refused (fail closed).

use crate::config::EnforcerConfig;
use crate::json::{self, ConfigError, Obj, Result};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Rule {
    pub route_name: Option<String>,
    /// Lower-case; `*.example.com` matches any subdomain. Without a port, any port matches.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub enforcer: usize,
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub enforcers: Vec<(String, EnforcerConfig)>,
    pub rules: Vec<Rule>,
    pub default: Option<usize>,
    /// What requests must be asked for, decided once here rather than per request.
    uses: Uses,
}

#[derive(Debug, Clone, Copy)]
struct Uses {
    route_names: bool,
    path_prefixes: bool,
    claims: bool,
}

impl PluginConfig {
    /// Parses the plugin configuration; `${env.NAME}` reads the VM's environment.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        Self::from_json_env(text, &|name| std::env::var(name).ok())
    }

    /// Same, with the environment given (tests, `kcpep check --env`).
    pub fn from_json_env(text: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let value: Value = serde_json::from_slice(text)
            .map_err(|e| ConfigError::new("", format!("invalid JSON: {e}")))?;
        if value.get("enforcers").is_none() {
            let single = EnforcerConfig::from_value_env(&value, "", env)?;
            return Ok(Self::new(
                vec![("default".into(), single)],
                Vec::new(),
                Some(0),
            ));
        }
        let mut o = Obj::new(&value, "")?;
        let mut enforcers = Vec::new();
        if let Some(e) = o.object("enforcers")? {
            if let Some(Value::Object(map)) = value.get("enforcers") {
                for (name, v) in map {
                    let path = json::join(&e.path, name);
                    enforcers.push((name.clone(), EnforcerConfig::from_value_env(v, &path, env)?));
                }
            }
        }
        if enforcers.is_empty() {
            return Err(ConfigError::new(
                "enforcers",
                "must name at least one enforcer",
            ));
        }
        let lookup = |name: &str, path: &str| -> Result<usize> {
            enforcers
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = enforcers.iter().map(|(n, _)| n.as_str()).collect();
                    ConfigError::new(
                        path,
                        format!(
                            "no enforcer named \"{name}\" (have {})",
                            json::one_of(&names)
                        ),
                    )
                })
        };
        let mut rules = Vec::new();
        if let Some(items) = o.array("routes")? {
            for (i, item) in items.iter().enumerate() {
                let path = json::index("routes", i);
                let mut r = Obj::new(item, &path)?;
                let route_name = r.string("route-name")?;
                let host = r.string("host")?.map(|h| h.to_ascii_lowercase());
                let path_prefix = r.string("path-prefix")?;
                let enforcer_path = r.key_path("enforcer");
                let enforcer = lookup(&r.required_string("enforcer")?, &enforcer_path)?;
                r.finish()?;
                if route_name.is_none() && host.is_none() && path_prefix.is_none() {
                    return Err(ConfigError::new(
                        &path,
                        "needs route-name, host or path-prefix",
                    ));
                }
                rules.push(Rule {
                    route_name,
                    host,
                    path_prefix,
                    enforcer,
                });
            }
        }
        let default = match o.string("default")? {
            None => None,
            Some(name) => Some(lookup(&name, "default")?),
        };
        o.finish()?;
        Ok(Self::new(enforcers, rules, default))
    }

    fn new(
        enforcers: Vec<(String, EnforcerConfig)>,
        rules: Vec<Rule>,
        default: Option<usize>,
    ) -> Self {
        let uses = Uses {
            route_names: rules.iter().any(|r| r.route_name.is_some()),
            path_prefixes: rules.iter().any(|r| r.path_prefix.is_some()),
            claims: enforcers.iter().any(|(_, e)| {
                e.claim_information_point.is_some()
                    || e.paths.iter().any(|p| p.claim_information_point.is_some())
            }),
        };
        PluginConfig {
            enforcers,
            rules,
            default,
            uses,
        }
    }

    /// Whether selection needs Envoy's route name (read only then: it is a host call per request).
    pub fn uses_route_names(&self) -> bool {
        self.uses.route_names
    }

    /// Whether any enforcer has a claim information point (then headers, peer, TLS and perhaps
    /// the body are kept for the core; otherwise nothing of that is read).
    pub fn uses_claims(&self) -> bool {
        self.uses.claims
    }

    /// Whether selection looks at the path (normalized once more per request only then).
    pub fn uses_path_prefixes(&self) -> bool {
        self.uses.path_prefixes
    }

    /// The enforcer for a request. `path` is the normalized path (None if it did not parse).
    pub fn select(
        &self,
        route_name: Option<&str>,
        authority: &str,
        path: Option<&str>,
    ) -> Option<usize> {
        let authority = authority.to_ascii_lowercase();
        self.rules
            .iter()
            .find(|r| {
                r.route_name
                    .as_deref()
                    .is_none_or(|n| route_name == Some(n))
                    && r.host
                        .as_deref()
                        .is_none_or(|h| host_matches(h, &authority))
                    && r.path_prefix
                        .as_deref()
                        .is_none_or(|p| path.is_some_and(|x| prefix_matches(p, x)))
            })
            .map(|r| r.enforcer)
            .or(self.default)
    }
}

fn host_matches(rule: &str, authority: &str) -> bool {
    let host = if rule.contains(':') {
        authority
    } else {
        strip_port(authority)
    };
    match rule.strip_prefix("*.") {
        Some(domain) => {
            host.len() > domain.len() + 1
                && host.ends_with(domain)
                && host[..host.len() - domain.len()].ends_with('.')
        }
        None => host == rule,
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.rsplit_once(':').map_or(authority, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    })
}

/// Segment-aware: `/api` matches `/api` and `/api/x`, not `/apiary`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kc(client: &str) -> String {
        format!(r#"{{"realm":"bank","auth-server-url":"http://kc","resource":"{client}"}}"#)
    }

    #[test]
    fn single_keycloak_json_is_the_default() {
        let p = PluginConfig::from_json(kc("a").as_bytes()).unwrap();
        assert_eq!(p.select(None, "x", Some("/")), Some(0));
    }

    #[test]
    fn selection_by_route_host_and_prefix() {
        let text = format!(
            r#"{{"enforcers": {{"u": {}, "a": {}, "p": {}}},
                "routes": [{{"route-name": "accounts-affirmative", "enforcer": "a"}},
                           {{"host": "unanimous.bank.local", "enforcer": "u"}},
                           {{"host": "*.bank.local", "path-prefix": "/api", "enforcer": "p"}},
                           {{"host": "affirmative.bank.local:10000", "enforcer": "a"}}],
                "default": "u"}}"#,
            kc("bank-api"),
            kc("bank-api-affirmative"),
            kc("x")
        );
        let p = PluginConfig::from_json(text.as_bytes()).unwrap();
        let name = |i: Option<usize>| i.map(|i| p.enforcers[i].0.as_str());
        assert_eq!(
            name(p.select(
                Some("accounts-affirmative"),
                "unanimous.bank.local",
                Some("/")
            )),
            Some("a")
        );
        assert_eq!(
            name(p.select(None, "Unanimous.Bank.Local:10000", Some("/"))),
            Some("u")
        );
        assert_eq!(
            name(p.select(None, "other.bank.local", Some("/api/x"))),
            Some("p")
        );
        assert_eq!(
            name(p.select(None, "other.bank.local", Some("/apiary"))),
            Some("u")
        );
        assert_eq!(
            name(p.select(None, "affirmative.bank.local:10000", Some("/"))),
            Some("a")
        );
        assert_eq!(
            name(p.select(None, "affirmative.bank.local:9999", Some("/"))),
            Some("u")
        );
        assert_eq!(name(p.select(None, "bank.local", None)), Some("u"));
    }

    #[test]
    fn no_default_means_none() {
        let text = format!(
            r#"{{"enforcers": {{"u": {}}}, "routes": [{{"host": "h", "enforcer": "u"}}]}}"#,
            kc("c")
        );
        let p = PluginConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(p.select(None, "other", Some("/")), None);
    }

    #[test]
    fn errors_name_the_path() {
        let bad = format!(
            r#"{{"enforcers": {{"u": {}}}, "routes": [{{"host": "h", "enforcer": "v"}}]}}"#,
            kc("c")
        );
        assert_eq!(
            PluginConfig::from_json(bad.as_bytes())
                .unwrap_err()
                .to_string(),
            "routes[0].enforcer: no enforcer named \"v\" (have u)"
        );
        let bad = r#"{"enforcers": {"u": {"realm": "r", "auth-server-url": "http://k", "resource": "c", "policy-enforcer": {"paths": [{"path": 1}]}}}}"#;
        assert_eq!(
            PluginConfig::from_json(bad.as_bytes())
                .unwrap_err()
                .to_string(),
            "enforcers.u.policy-enforcer.paths[0].path: expected a string, found a number"
        );
        let bad = format!(r#"{{"enforcers": {{"u": {}}}, "route": []}}"#, kc("c"));
        assert_eq!(
            PluginConfig::from_json(bad.as_bytes())
                .unwrap_err()
                .to_string(),
            "route: unknown key (did you mean \"routes\"?)"
        );
        let bad = format!(
            r#"{{"enforcers": {{"u": {}}}, "routes": [{{"enforcer": "u"}}]}}"#,
            kc("c")
        );
        assert!(PluginConfig::from_json(bad.as_bytes())
            .unwrap_err()
            .to_string()
            .starts_with("routes[0]: needs"));
    }
}
