//! Keycloak over HTTP for `doctor` and `evaluate`: the core's own requests (the ones the filter
//! hands Envoy) sent with ureq to the configured `auth-server-url`.
//! What is recorded of an exchange never holds a header value or a body: those carry secrets.

use anyhow::{anyhow, Result};
use keycloak_pep::config::EnforcerConfig;
use keycloak_pep::wire::http::{Answer, HttpRequest};
use std::time::{Duration, Instant};

/// One request to Keycloak and how it went, for a trace (no header values, no bodies).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exchange {
    pub what: String,
    pub method: &'static str,
    /// The path, with the query's values of secrets left out (there are none in the core's
    /// queries: they name paths, resources and owners).
    pub path: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub ms: u128,
}

/// The answer to one request: the status and body, or why there was none.
pub type Reply = std::result::Result<(u16, Vec<u8>), String>;

pub struct Keycloak {
    agent: ureq::Agent,
    origin: String,
}

impl Keycloak {
    /// Keycloak at the origin of the enforcer's `auth-server-url` (the core's paths carry the
    /// context path, `/auth` on old servers).
    pub fn for_enforcer(cfg: &EnforcerConfig, timeout_s: u64) -> Result<Self> {
        let url = cfg.auth_server_url.as_str();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| anyhow!("auth-server-url {url:?} is not an http(s) URL"))?;
        if scheme != "http" && scheme != "https" {
            return Err(anyhow!("auth-server-url {url:?} is not an http(s) URL"));
        }
        let host = rest.split('/').next().unwrap_or_default();
        Ok(Self::at(&format!("{scheme}://{host}"), timeout_s))
    }

    /// A server at `origin` (`http://host:port`): Keycloak, or an http claim provider's service.
    pub fn at(origin: &str, timeout_s: u64) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(timeout_s.max(1))))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Keycloak {
            agent,
            origin: origin.to_string(),
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Sends one of the core's requests; the `x-envoy-*` headers are Envoy's business.
    pub fn send(&self, req: &HttpRequest) -> Reply {
        let url = format!("{}{}", self.origin, req.path);
        let mut b = ureq::http::Request::builder()
            .method(req.method)
            .uri(url.as_str());
        for (k, v) in &req.headers {
            if !k.starts_with("x-envoy-") && !k.starts_with(':') {
                b = b.header(k.as_str(), v.as_str());
            }
        }
        let request = b.body(req.body.clone()).map_err(|e| e.to_string())?;
        match self.agent.run(request) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(16 * 1024 * 1024)
                    .read_to_vec()
                    .map_err(|e| e.to_string())?;
                Ok((status, body))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sends and records.
    pub fn exchange(&self, what: &str, req: &HttpRequest, log: &mut Vec<Exchange>) -> Reply {
        let start = Instant::now();
        let reply = self.send(req);
        log.push(Exchange {
            what: what.to_string(),
            method: req.method,
            path: req.path.clone(),
            status: reply.as_ref().ok().map(|(s, _)| *s),
            error: reply.as_ref().err().cloned(),
            ms: start.elapsed().as_millis(),
        });
        reply
    }

    /// An [`Answer`] of a reply, as Envoy hands the filter one (no answer: no status).
    pub fn answer(reply: &Reply) -> Answer<'_> {
        match reply {
            Ok((status, body)) => Answer::Http {
                status: *status,
                body,
            },
            Err(_) => Answer::NoAnswer,
        }
    }
}

/// The wall clock in milliseconds since the epoch, as Envoy's.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
