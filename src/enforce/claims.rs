//! Claims resolved for one request: the providers of the path's claim information point run in
//! order (static claims and placeholders, http services as callouts, custom providers), and the
//! claims Keycloak granted a permission for are checked against the request's
//! (docs/keycloak-enforcer.md §7). The configuration they run from is `config::claims`.

use crate::config::claim_providers::ProviderError;
use crate::config::claims::{HttpProvider, Provider, Service};
use crate::request::placeholders::{self, Context, ResolveError, Template};
use crate::wire::claims::Claims;
use crate::wire::http::{form_encode, HttpRequest};
use serde_json::Value;

/// Why claims could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimFailure {
    /// The request is not what its claims need (400).
    BadRequest(&'static str),
    /// A provider failed (503 unless it says `on-error: continue`).
    Provider(String),
}

impl From<ResolveError> for ClaimFailure {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::BodyNotJson => {
                ClaimFailure::BadRequest("the request body is not the JSON its claims need")
            }
        }
    }
}

/// The next thing resolution needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// All providers ran: the merged claims.
    Done(Claims),
    /// Provider `chain[index]` needs this callout; pass its answer to [`http_answer`].
    Call {
        index: usize,
        request: HttpRequest,
        service: Service,
    },
    Failed(ClaimFailure),
}

/// Runs providers from `done.len()` on, until one needs the network or all ran.
pub fn advance(chain: &[&Provider], cx: &Context, done: &mut Vec<Claims>) -> Next {
    while done.len() < chain.len() {
        let index = done.len();
        let got = match chain[index] {
            Provider::Claims(list) => resolve_list(list, cx),
            Provider::Custom(_, p) => p.resolve(cx).map_err(|e| ClaimFailure::Provider(e.0)),
            Provider::Http(h) => {
                return match h.request(cx) {
                    Ok(request) => Next::Call {
                        index,
                        request,
                        service: h.service.clone(),
                    },
                    Err(e) => Next::Failed(e.into()),
                }
            }
        };
        match got {
            Ok(c) => done.push(c),
            Err(f) => return Next::Failed(f),
        }
    }
    let mut merged = Claims::new();
    for c in done.iter() {
        merged.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Next::Done(merged)
}

/// Keycloak's `claims` provider: each claim's templates resolved, non-empty lists concatenated;
/// a claim with no value at all is left out.
fn resolve_list(
    list: &[(String, Vec<Template>)],
    cx: &Context,
) -> std::result::Result<Claims, ClaimFailure> {
    let mut out = Claims::new();
    for (name, ts) in list {
        let values = resolve_values(ts, cx)?;
        if !values.is_empty() {
            out.insert(name.clone(), values);
        }
    }
    Ok(out)
}

fn resolve_values(ts: &[Template], cx: &Context) -> std::result::Result<Vec<String>, ResolveError> {
    let mut values = Vec::new();
    for t in ts {
        values.extend(t.resolve(cx)?);
    }
    Ok(values)
}

impl HttpProvider {
    /// The callout as Keycloak's provider sends it: GET with the parameters in the query,
    /// anything else POST with a form body; a multi-valued header or parameter is repeated; the
    /// configured headers and nothing else, but for a form body's `Content-Type` when the
    /// configuration names none (Apache HttpClient adds it only then).
    fn request(&self, cx: &Context) -> std::result::Result<HttpRequest, ResolveError> {
        let mut headers = Vec::new();
        for (name, ts) in &self.headers {
            for v in resolve_values(ts, cx)? {
                headers.push((name.to_ascii_lowercase(), v));
            }
        }
        let mut pairs = Vec::new();
        for (name, ts) in &self.parameters {
            for v in resolve_values(ts, cx)? {
                pairs.push(format!("{}={}", form_encode(name), form_encode(&v)));
            }
        }
        let encoded = pairs.join("&");
        if self.get {
            let path = match (encoded.is_empty(), self.path.contains('?')) {
                (true, _) => self.path.clone(),
                (false, true) => format!("{}&{encoded}", self.path),
                (false, false) => format!("{}?{encoded}", self.path),
            };
            Ok(HttpRequest {
                method: "GET",
                path,
                headers,
                body: Vec::new(),
            })
        } else {
            if !encoded.is_empty() && !headers.iter().any(|(k, _)| k == "content-type") {
                headers.push((
                    "content-type".to_string(),
                    "application/x-www-form-urlencoded".to_string(),
                ));
            }
            Ok(HttpRequest {
                method: "POST",
                path: self.path.clone(),
                headers,
                body: encoded.into_bytes(),
            })
        }
    }
}

/// Claims from an `http` provider's answer: it must be 2xx JSON. `None` status: no answer.
pub fn http_answer(
    h: &HttpProvider,
    status: Option<u16>,
    body: &[u8],
) -> std::result::Result<Claims, ProviderError> {
    let fail = |m: &str| ProviderError(m.to_string());
    let status = status.ok_or_else(|| fail("no answer (timeout or connection failure)"))?;
    if !(200..300).contains(&status) {
        return Err(ProviderError(format!("answered HTTP {status}")));
    }
    let doc: Value =
        serde_json::from_slice(body).map_err(|_| fail("answered something not JSON"))?;
    let mut out = Claims::new();
    match &h.claims {
        None => {
            let Value::Object(map) = &doc else {
                return Err(fail("answered JSON that is not an object"));
            };
            for (k, v) in map {
                out.insert(k.clone(), placeholders::json_values(v, None));
            }
        }
        Some(list) => {
            for (name, ptrs) in list {
                let mut values = Vec::new();
                for p in ptrs {
                    values.extend(placeholders::json_values(&doc, Some(p.as_str())));
                }
                out.insert(name.clone(), values);
            }
        }
    }
    Ok(out)
}

/// Keycloak's `hasValidClaims`: a permission that carries claims holds only when every one of
/// them is among the request's values for that claim.
pub fn permission_claims_hold(granted: Option<&Claims>, request: &Claims) -> bool {
    let Some(granted) = granted else {
        return true;
    };
    if request.is_empty() {
        return false;
    }
    granted
        .iter()
        .all(|(name, allowed)| match request.get(name) {
            Some(values) if !values.is_empty() => values.iter().all(|v| allowed.contains(v)),
            _ => false,
        })
}

#[cfg(test)]
mod tests;
