//! The claim information point (docs/keycloak-enforcer.md §7): `claim-information-point` objects compiled at
//! configure, and the per-request resolution of their providers into the claims pushed to
//! Keycloak with the UMA grant.
//!
//! Providers run in a fixed order: the global object's, then the path's (so a path claim replaces
//! a global claim of the same name, Keycloak's `putAll`); within one object, by provider name.
//! `http` providers need a callout, so resolution is a small state machine the enforcer drives:
//! [`advance`] runs providers until one needs the network, [`http_answer`] takes its answer.

use crate::config::claim_providers::{self, ClaimProvider};
use crate::request::placeholders::Template;
use crate::wire::http::Url;
use crate::wire::json::{self, ConfigError, Obj, Result};
use serde_json::Value;
use std::fmt;
use std::rc::Rc;

/// One compiled `claim-information-point` object.
#[derive(Debug, Clone, PartialEq)]
pub struct Cip {
    pub providers: Vec<Provider>,
    /// The JSON paths of `claims` entries written with several values: Keycloak's AuthZEN
    /// keeps one value per claim, so an enforcer asking AuthZEN refuses them.
    pub several_values: Vec<String>,
}

#[derive(Clone)]
pub enum Provider {
    /// `claims`: static values and placeholders.
    Claims(Vec<(String, Vec<Template>)>),
    Http(Rc<HttpProvider>),
    /// A provider compiled into the filter (see `claim_providers`).
    Custom(String, Rc<dyn ClaimProvider>),
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provider::Claims(c) => f.debug_tuple("Claims").field(c).finish(),
            Provider::Http(h) => f.debug_tuple("Http").field(h).finish(),
            Provider::Custom(name, _) => f.debug_tuple("Custom").field(name).finish(),
        }
    }
}

impl PartialEq for Provider {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Provider::Claims(a), Provider::Claims(b)) => a == b,
            (Provider::Http(a), Provider::Http(b)) => a == b,
            (Provider::Custom(a, pa), Provider::Custom(b, pb)) => a == b && Rc::ptr_eq(pa, pb),
            _ => false,
        }
    }
}

/// What to do when an `http` provider fails (not in Keycloak, where the request fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Refuse the request (503): the policy cannot be evaluated as written.
    Deny,
    /// Go on without this provider's claims.
    Continue,
}

/// Where an `http` provider's callout goes: an Envoy cluster, since a filter cannot dial URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub cluster: String,
    pub authority: String,
    pub timeout_ms: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpProvider {
    pub service: Service,
    /// Path and query of `url`.
    pub path: String,
    pub get: bool,
    pub headers: Vec<(String, Vec<Template>)>,
    pub parameters: Vec<(String, Vec<Template>)>,
    /// Claim -> JSON pointers; `None`: every top-level field of the answer.
    pub claims: Option<Vec<(String, Vec<String>)>>,
    pub on_error: OnError,
}

impl Cip {
    pub fn parse(value: &Value, path: &str) -> Result<Cip> {
        let Value::Object(map) = value else {
            return Err(ConfigError::new(
                path,
                format!(
                    "expected an object of providers, found {}",
                    json::type_name(value)
                ),
            ));
        };
        let mut providers = Vec::new();
        let mut several_values = Vec::new();
        // serde_json's map iterates in key order: the provider order is the name order.
        for (name, cfg) in map {
            let at = json::join(path, name);
            let p = match name.as_str() {
                "claims" => {
                    let claims = parse_claims(cfg, &at)?;
                    several_values.extend(
                        claims
                            .iter()
                            .filter(|(_, values)| values.len() > 1)
                            .map(|(claim, _)| json::join(&at, claim)),
                    );
                    Provider::Claims(claims)
                }
                "http" => Provider::Http(Rc::new(parse_http(cfg, &at)?)),
                other => match claim_providers::create(other, cfg, &at) {
                    Some(p) => Provider::Custom(other.to_string(), p?),
                    None => {
                        return Err(ConfigError::new(
                            &at,
                            format!(
                                "unknown claim provider \"{other}\" (known: claims, http{})",
                                claim_providers::REGISTRY
                                    .iter()
                                    .map(|(n, _)| format!(", {n}"))
                                    .collect::<String>()
                            ),
                        ))
                    }
                },
            };
            providers.push(p);
        }
        Ok(Cip {
            providers,
            several_values,
        })
    }
}

/// A claim's value in config: a string or an array of strings, each a template.
fn templates(v: &Value, at: &str) -> Result<Vec<Template>> {
    json::one_or_many_strings(v, at)?
        .into_iter()
        .map(|(at, s)| Template::parse(s).map_err(|e| ConfigError::new(&at, e.to_string())))
        .collect()
}

fn named_templates(v: &Value, at: &str) -> Result<Vec<(String, Vec<Template>)>> {
    let Value::Object(map) = v else {
        return Err(ConfigError::new(
            at,
            format!("expected an object, found {}", json::type_name(v)),
        ));
    };
    map.iter()
        .map(|(k, v)| Ok((k.clone(), templates(v, &json::join(at, k))?)))
        .collect()
}

fn parse_claims(v: &Value, at: &str) -> Result<Vec<(String, Vec<Template>)>> {
    named_templates(v, at)
}

fn parse_http(v: &Value, at: &str) -> Result<HttpProvider> {
    let mut o = Obj::new(v, at)?;
    let url = o.required_string("url")?;
    let url_at = o.key_path("url");
    let parsed = Url::parse(&url).map_err(|e| ConfigError::new(&url_at, e.to_string()))?;
    let (scheme_https, authority) = (parsed.https, parsed.authority);
    let path = match parsed.rest {
        "" => "/".to_string(),
        rest => rest.to_string(),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    // Keycloak's adapter fails with a NullPointerException without one: say so at load instead.
    let method_at = o.key_path("method");
    let method = o.required_string("method").map_err(|_| {
        ConfigError::new(
            &method_at,
            "required: GET, or POST (any other value means POST)",
        )
    })?;
    let headers = match o.get("headers") {
        Some(h) => named_templates(h, &o.key_path("headers"))?,
        None => Vec::new(),
    };
    let parameters = match o.get("parameters") {
        Some(p) => named_templates(p, &o.key_path("parameters"))?,
        None => Vec::new(),
    };
    let claims = match o.get("claims") {
        None => None,
        Some(Value::Object(map)) => {
            let base = o.key_path("claims");
            let mut out = Vec::new();
            for (name, ptrs) in map {
                let at = json::join(&base, name);
                let mut pointers = Vec::new();
                for (at, p) in json::one_or_many_strings(ptrs, &at)? {
                    if !(p.starts_with('/') || p.is_empty()) {
                        return Err(ConfigError::new(
                            &at,
                            "expected a JSON pointer string such as \"/a/b\"",
                        ));
                    }
                    pointers.push(p.to_string());
                }
                out.push((name.clone(), pointers));
            }
            Some(out)
        }
        Some(other) => {
            return Err(ConfigError::new(
                &o.key_path("claims"),
                format!(
                    "expected an object of claim: JSON pointer, found {}",
                    json::type_name(other)
                ),
            ))
        }
    };
    // Ours: the Envoy cluster (default: named after the URL's host:port), a timeout, on-error.
    let default_port = if scheme_https { 443 } else { 80 };
    let cluster = o.string("cluster")?.unwrap_or_else(|| {
        if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:{default_port}")
        }
    });
    let timeout_ms = o.u32("timeout-ms")?;
    if timeout_ms == Some(0) {
        return Err(ConfigError::new(
            &o.key_path("timeout-ms"),
            "must be at least 1",
        ));
    }
    let on_error = o
        .choice(
            "on-error",
            &[("deny", OnError::Deny), ("continue", OnError::Continue)],
        )?
        .unwrap_or(OnError::Deny);
    o.finish()?;
    Ok(HttpProvider {
        service: Service {
            cluster,
            authority: authority.to_string(),
            timeout_ms,
        },
        path,
        get: method.eq_ignore_ascii_case("GET"),
        headers,
        parameters,
        claims,
        on_error,
    })
}

impl Provider {
    fn needs_body(&self, form: bool) -> bool {
        let any = |list: &[(String, Vec<Template>)]| {
            list.iter()
                .flat_map(|(_, ts)| ts.iter())
                .any(|t| t.needs_body(form))
        };
        match self {
            Provider::Claims(c) => any(c),
            Provider::Http(h) => any(&h.headers) || any(&h.parameters),
            Provider::Custom(_, p) => p.needs_body(),
        }
    }
}

/// The providers that run for a request: the global object's, then the path's.
pub fn chain<'a>(global: Option<&'a Cip>, path: Option<&'a Cip>) -> Vec<&'a Provider> {
    global
        .into_iter()
        .chain(path)
        .flat_map(|c| c.providers.iter())
        .collect()
}

/// Whether this request's claims read its body (decided before anything is resolved, so the
/// body is buffered only for the paths whose claims use it).
pub fn needs_body(chain: &[&Provider], form: bool) -> bool {
    chain.iter().any(|p| p.needs_body(form))
}
