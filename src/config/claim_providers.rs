//! Custom claim providers, Keycloak's `ClaimInformationPointProviderFactory` SPI done the Rust way:
//! a provider implements [`ClaimProvider`] and is registered by name in [`REGISTRY`] at compile
//! time. Its config is the value under its name in a `claim-information-point` object.
//!
//! To add one: write a type implementing `ClaimProvider`, a factory
//! `fn(&Value, &str) -> Result<Rc<dyn ClaimProvider>>` that validates the config once (errors carry
//! the JSON path it gets), and one line in `REGISTRY`. `network` below is the worked example.

use crate::request::forwarded::{parse_addr, Cidr};
use crate::request::placeholders::Context;
use crate::wire::claims::Claims;
use crate::wire::json::{self, ConfigError, Result};
use serde_json::Value;
use std::rc::Rc;

/// A provider could not resolve its claims for this request (503 unless `on-error: continue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError(pub String);

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Resolves claims for one request. Runs synchronously inside the filter, per request: keep it
/// cheap and never block (a provider that needs the network is an `http` provider).
pub trait ClaimProvider {
    fn resolve(&self, cx: &Context) -> std::result::Result<Claims, ProviderError>;

    /// Whether it reads the request body (then the body is buffered before it runs).
    fn needs_body(&self) -> bool {
        false
    }
}

pub type Factory = fn(&Value, &str) -> Result<Rc<dyn ClaimProvider>>;

/// Every compiled-in provider.
pub const REGISTRY: &[(&str, Factory)] = &[("network", Network::create)];

/// The provider registered as `name`, built from its config; `None` when there is none.
pub fn create(name: &str, config: &Value, path: &str) -> Option<Result<Rc<dyn ClaimProvider>>> {
    REGISTRY
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f(config, path))
}

/// `"network": {"claim": "network", "networks": {"office": ["10.0.0.0/8"], "vpn": "100.64.0.0/10"}}`
/// pushes the names of the networks the client address (after the trusted-proxy rules) is in,
/// so a Keycloak policy can say "from the office" without knowing addresses.
pub struct Network {
    claim: String,
    networks: Vec<(String, Vec<Cidr>)>,
}

impl Network {
    fn create(config: &Value, path: &str) -> Result<Rc<dyn ClaimProvider>> {
        let mut o = json::Obj::new(config, path)?;
        let claim = o.string("claim")?.unwrap_or_else(|| "network".into());
        let at = o.key_path("networks");
        let mut networks = Vec::new();
        match o.get("networks") {
            Some(Value::Object(map)) if !map.is_empty() => {
                for (name, v) in map {
                    let nat = json::join(&at, name);
                    let mut cidrs = Vec::new();
                    for (at, s) in json::one_or_many_strings(v, &nat)? {
                        cidrs.push(
                            Cidr::parse(s).map_err(|e| ConfigError::new(&at, e.to_string()))?,
                        );
                    }
                    networks.push((name.clone(), cidrs));
                }
            }
            _ => {
                return Err(ConfigError::new(
                    &at,
                    "required: an object of network name -> CIDR block(s)",
                ))
            }
        }
        o.finish()?;
        Ok(Rc::new(Network { claim, networks }))
    }
}

impl ClaimProvider for Network {
    fn resolve(&self, cx: &Context) -> std::result::Result<Claims, ProviderError> {
        let mut out = Claims::new();
        let Some(ip) = parse_addr(cx.remote_addr) else {
            return Ok(out);
        };
        let names: Vec<String> = self
            .networks
            .iter()
            .filter(|(_, cidrs)| cidrs.iter().any(|c| c.contains(&ip)))
            .map(|(n, _)| n.clone())
            .collect();
        if !names.is_empty() {
            out.insert(self.claim.clone(), names);
        }
        Ok(out)
    }
}
