//! The plugin configuration: one keycloak.json, or several enforcers selected per request by
//! Envoy route name or virtual host name, host and path prefix.
//!
//! Envoy's Wasm filter has no per-route configuration and Istio's WasmPlugin cannot select by
//! route, so selection lives in the plugin config:
//! `{"enforcers": {"name": <keycloak.json>, ...}, "routes": [{"route-name"|"virtual-host"|"host"|"path-prefix", "enforcer"}], "default": "name"}`.
//! Rules are tried in order; the first whose every given condition holds wins. No rule and no
//! default: the request is refused (fail closed).
//!
//! `route-name` and `virtual-host` are what Envoy itself decided for the request, so the enforcer
//! always belongs to the route the request takes. `host` re-reads the `:authority` with Envoy's
//! domain syntax and semantics (exact, `*.suffix`, `prefix*`, `*`; the port is part of the
//! authority, as in Envoy unless it strips ports), so it agrees with Envoy's virtual host choice
//! only where the rules list the same domains.

use crate::config::EnforcerConfig;
use crate::wire::json::{self, ConfigError, Obj, Result};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Rule {
    pub route_name: Option<String>,
    /// Envoy's virtual host name (`xds.virtual_host_name`).
    pub virtual_host: Option<String>,
    /// Lower-case Envoy domain: exact, `*.example.com` / `*-x.example.com` (suffix), `example.*`
    /// (prefix), or `*`; matched against the whole authority, port included.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub enforcer: usize,
}

/// The whole plugin configuration: the enforcers and the rules that pick one per request.
/// The shell keeps `routes` and turns each enforcer into an `Enforcer` object.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub enforcers: Vec<(String, EnforcerConfig)>,
    pub routes: Routes,
}

/// Which enforcer a request gets (indexes into `PluginConfig::enforcers`).
#[derive(Debug, Clone)]
pub struct Routes {
    pub rules: Vec<Rule>,
    pub default: Option<usize>,
    /// `host` rules compare the authority without its port, as Envoy's
    /// `ignore_port_in_host_matching` (which Istio sets on every route configuration) does.
    pub ignore_port: bool,
    /// What requests must be asked for, decided once here rather than per request.
    uses: Uses,
}

#[derive(Debug, Clone, Copy)]
struct Uses {
    route_names: bool,
    virtual_hosts: bool,
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
                false,
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
                let virtual_host = r.string("virtual-host")?;
                let host_path = r.key_path("host");
                let host = r.string("host")?.map(|h| h.to_ascii_lowercase());
                if let Some(h) = &host {
                    check_domain(h, &host_path)?;
                }
                let path_prefix = r.string("path-prefix")?;
                let enforcer_path = r.key_path("enforcer");
                let enforcer = lookup(&r.required_string("enforcer")?, &enforcer_path)?;
                r.finish()?;
                if route_name.is_none()
                    && virtual_host.is_none()
                    && host.is_none()
                    && path_prefix.is_none()
                {
                    return Err(ConfigError::new(
                        &path,
                        "needs route-name, virtual-host, host or path-prefix",
                    ));
                }
                rules.push(Rule {
                    route_name,
                    virtual_host,
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
        let ignore_port = o.bool("ignore-port-in-host-matching")?.unwrap_or(false);
        o.finish()?;
        Ok(Self::new(enforcers, rules, default, ignore_port))
    }

    fn new(
        enforcers: Vec<(String, EnforcerConfig)>,
        rules: Vec<Rule>,
        default: Option<usize>,
        ignore_port: bool,
    ) -> Self {
        let uses = Uses {
            route_names: rules.iter().any(|r| r.route_name.is_some()),
            virtual_hosts: rules.iter().any(|r| r.virtual_host.is_some()),
            path_prefixes: rules.iter().any(|r| r.path_prefix.is_some()),
            claims: enforcers.iter().any(|(_, e)| e.has_claim_providers()),
        };
        PluginConfig {
            enforcers,
            routes: Routes {
                rules,
                default,
                ignore_port,
                uses,
            },
        }
    }
}

impl Routes {
    /// Whether selection needs Envoy's route name (read only then: it is a host call per request).
    pub fn uses_route_names(&self) -> bool {
        self.uses.route_names
    }

    /// Whether selection needs Envoy's virtual host name (`xds.virtual_host_name`, Envoy >= 1.33).
    pub fn uses_virtual_hosts(&self) -> bool {
        self.uses.virtual_hosts
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

    /// The enforcer for a request.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn select(&self, r: &Selector) -> Option<usize> {
        let authority = if self.ignore_port {
            without_port(r.authority)
        } else {
            r.authority
        };
        let authority = authority.to_ascii_lowercase();
        self.rules
            .iter()
            .find(|rule| {
                rule.route_name
                    .as_deref()
                    .is_none_or(|n| r.route_name == Some(n))
                    && rule
                        .virtual_host
                        .as_deref()
                        .is_none_or(|n| r.virtual_host == Some(n))
                    && rule
                        .host
                        .as_deref()
                        .is_none_or(|h| host_matches(h, &authority))
                    && rule
                        .path_prefix
                        .as_deref()
                        .is_none_or(|p| r.path.is_some_and(|x| prefix_matches(p, x)))
            })
            .map(|rule| rule.enforcer)
            .or(self.default)
    }
}

/// What a request offers for enforcer selection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selector<'a> {
    /// Envoy's route name, when some rule uses it.
    pub route_name: Option<&'a str>,
    /// Envoy's virtual host name, when some rule uses it.
    pub virtual_host: Option<&'a str>,
    /// The `:authority` as the filter sees it (after Envoy's own port stripping, if any).
    pub authority: &'a str,
    /// The normalized path (None if it did not parse), when some rule uses a prefix.
    pub path: Option<&'a str>,
}

/// Envoy's domain forms: one `*`, at the start or the end, or `*` alone.
fn check_domain(domain: &str, path: &str) -> Result<()> {
    let stars = domain.matches('*').count();
    let ok = domain == "*"
        || stars == 0
        || (stars == 1 && domain.len() > 1 && (domain.starts_with('*') || domain.ends_with('*')));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "\"{domain}\" is not an Envoy domain (one * at the start or the end, or * alone)"
            ),
        ))
    }
}

/// The authority without its port (`[v6]:443` -> `[v6]`), as Envoy cuts it for
/// `ignore_port_in_host_matching`: a port is digits after the last `:` outside brackets.
pub fn without_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i)
            if !authority[i..].contains(']')
                && authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && (authority.starts_with('[') || !authority[..i].contains(':')) =>
        {
            &authority[..i]
        }
        _ => authority,
    }
}

/// Envoy's virtual host domain match on the whole authority: a wildcard never matches empty.
fn host_matches(rule: &str, authority: &str) -> bool {
    if rule == "*" {
        return true;
    }
    if let Some(suffix) = rule.strip_prefix('*') {
        return authority.len() > suffix.len() && authority.ends_with(suffix);
    }
    if let Some(prefix) = rule.strip_suffix('*') {
        return authority.len() > prefix.len() && authority.starts_with(prefix);
    }
    authority == rule
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

    fn at<'a>(authority: &'a str, path: Option<&'a str>) -> Selector<'a> {
        Selector {
            authority,
            path,
            ..Default::default()
        }
    }

    #[test]
    fn single_keycloak_json_is_the_default() {
        let p = PluginConfig::from_json(kc("a").as_bytes()).unwrap();
        assert_eq!(p.routes.select(&at("x", Some("/"))), Some(0));
    }

    #[test]
    fn selection_by_route_virtual_host_host_and_prefix() {
        let text = format!(
            r#"{{"enforcers": {{"u": {}, "a": {}, "p": {}, "v": {}}},
                "routes": [{{"route-name": "accounts-affirmative", "enforcer": "a"}},
                           {{"virtual-host": "claims", "enforcer": "v"}},
                           {{"host": "unanimous.bank.local", "enforcer": "u"}},
                           {{"host": "*.bank.local", "path-prefix": "/api", "enforcer": "p"}},
                           {{"host": "affirmative.bank.local:10000", "enforcer": "a"}},
                           {{"host": "ops.bank.local:*", "enforcer": "p"}}],
                "default": "u"}}"#,
            kc("bank-api"),
            kc("bank-api-affirmative"),
            kc("x"),
            kc("y")
        );
        let p = PluginConfig::from_json(text.as_bytes()).unwrap();
        let name = |r: Selector| p.routes.select(&r).map(|i| p.enforcers[i].0.as_str());
        let route = Selector {
            route_name: Some("accounts-affirmative"),
            ..at("unanimous.bank.local", Some("/"))
        };
        assert_eq!(name(route), Some("a"));
        // what Envoy decided wins over what the Host header says
        let vhost = Selector {
            virtual_host: Some("claims"),
            ..at("unanimous.bank.local:8443", Some("/"))
        };
        assert_eq!(name(vhost), Some("v"));
        assert_eq!(name(at("Unanimous.Bank.Local", Some("/"))), Some("u"));
        assert_eq!(name(at("other.bank.local", Some("/api/x"))), Some("p"));
        assert_eq!(name(at("other.bank.local", Some("/apiary"))), Some("u"));
        assert_eq!(
            name(at("affirmative.bank.local:10000", Some("/"))),
            Some("a")
        );
        // Envoy's semantics: the port is part of the authority unless a rule says otherwise
        assert_eq!(
            name(at("affirmative.bank.local:9999", Some("/"))),
            Some("u")
        );
        assert_eq!(name(at("affirmative.bank.local", Some("/"))), Some("u"));
        assert_eq!(name(at("ops.bank.local:1", Some("/"))), Some("p"));
        assert_eq!(
            name(at("ops.bank.local", Some("/"))),
            Some("u"),
            "* is never empty"
        );
        // a trailing dot is another name to Envoy too (unless strip_trailing_host_dot)
        assert_eq!(name(at("unanimous.bank.local.", Some("/"))), Some("u"));
        assert_eq!(name(at("bank.local", None)), Some("u"));
    }

    #[test]
    fn host_rules_follow_envoys_domain_matching() {
        for (rule, authority, want) in [
            ("a.com", "a.com", true),
            ("a.com", "A.COM", false), // select lower-cases; host_matches sees lower case only
            ("a.com", "a.com:80", false),
            ("a.com:80", "a.com:80", true),
            ("*.a.com", "x.a.com", true),
            ("*.a.com", "x.y.a.com", true),
            ("*.a.com", ".a.com", false),
            ("*.a.com", "a.com", false),
            ("*.a.com", "x.a.com:80", false),
            ("*-api.a.com", "v1-api.a.com", true),
            ("a.*", "a.com", true),
            ("a.com:*", "a.com:8443", true),
            ("a.com:*", "a.com", false),
            ("*", "anything:1", true),
        ] {
            assert_eq!(host_matches(rule, authority), want, "{rule} vs {authority}");
        }
    }

    #[test]
    fn ignoring_the_port_matches_as_envoys_ignore_port_in_host_matching() {
        for (authority, want) in [
            ("a.com:8443", "a.com"),
            ("a.com", "a.com"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("a.com:x", "a.com:x"),
            ("::1", "::1"),
        ] {
            assert_eq!(without_port(authority), want, "{authority}");
        }
        let text = format!(
            r#"{{"enforcers": {{"u": {0}, "a": {0}}}, "ignore-port-in-host-matching": true,
                "routes": [{{"host": "affirmative.bank.local", "enforcer": "a"}}], "default": "u"}}"#,
            kc("c")
        );
        let p = PluginConfig::from_json(text.as_bytes()).unwrap();
        let name = |s| p.routes.select(&s).map(|i| p.enforcers[i].0.as_str());
        assert_eq!(name(at("affirmative.bank.local:10000", None)), Some("a"));
        assert_eq!(name(at("Affirmative.Bank.Local", None)), Some("a"));
        assert_eq!(name(at("other.bank.local:10000", None)), Some("u"));
        let bad = text.replace(": true", ": 1");
        let e = PluginConfig::from_json(bad.as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("ignore-port-in-host-matching"),
            "{e}"
        );
    }

    #[test]
    fn no_default_means_none() {
        let text = format!(
            r#"{{"enforcers": {{"u": {}}}, "routes": [{{"host": "h", "enforcer": "u"}}]}}"#,
            kc("c")
        );
        let p = PluginConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(p.routes.select(&at("other", Some("/"))), None);
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
            r#"{{"enforcers": {{"u": {}}}, "routes": [{{"host": "a.*.com", "enforcer": "u"}}]}}"#,
            kc("c")
        );
        assert_eq!(
            PluginConfig::from_json(bad.as_bytes())
                .unwrap_err()
                .to_string(),
            "routes[0].host: \"a.*.com\" is not an Envoy domain (one * at the start or the end, or * alone)"
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
