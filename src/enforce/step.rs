//! What one decision step produces, and what it reads: the request's facts, the verdicts (allow,
//! a local reply), the callouts to make and what they were for.

use crate::config::claims;
use crate::config::MethodConfig;
use crate::keycloak::resources::Entry;
use crate::keycloak::token::{BearerError, Token, TokenError};
use crate::request::view::RequestView;
use crate::store::decisions;
use crate::wire::claims::Claims;
use crate::wire::http::HttpRequest;
use std::rc::Rc;

/// What was learnt of a request's credential (its `Authorization` header, checked).
#[derive(Debug, Clone)]
pub enum Credential {
    /// No `Authorization` header.
    Anonymous,
    /// An `Authorization` header that is not exactly one Bearer credential.
    Malformed(BearerError),
    /// A bearer token that failed verification.
    Invalid(TokenError),
    /// A token that cannot be checked yet: the realm's keys are not loaded.
    Unverifiable,
    /// A valid token whose sender constraint failed (no or a bad DPoP proof, another client
    /// certificate): 401 with the refusal's challenge.
    Refused(crate::enforce::binding::Refusal),
    /// A verified token, with its raw form (sent to Keycloak as `subject_token`).
    Valid(String, Rc<Token>),
}

/// One request as the enforcer sees it.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// The `:path` pseudo-header (query included; it is dropped by normalization).
    pub path: &'a str,
    pub credential: &'a Credential,
    /// Headers, peer, TLS and body, for the claim information point (empty without claims).
    pub view: RequestView<'a>,
    /// A gRPC client, which cannot follow `on-deny-redirect-to` ([`crate::enforce::grpc`]).
    pub grpc: bool,
}

/// Let the request through.
#[derive(Debug, Clone, PartialEq)]
pub struct Allow {
    /// The permissions header value for the upstream (none for DISABLED/PERMISSIVE passes).
    pub permissions: Option<String>,
    pub reason: &'static str,
    pub cache: CacheUse,
    /// Dry-run: the answer the enforcer would have given instead.
    pub would_deny: Option<Box<Reply>>,
    /// Until when this exact request (token, method, path) would get this same answer from the
    /// decision cache; the shell may memoize it (see `memo`). None: do not memoize.
    pub memo_until_ms: Option<i64>,
    /// The configured path the request matched (none: no path, or no decision needed one).
    pub matched: Option<Matched>,
}

/// Whether a verdict came from the decision cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Not looked up (no Keycloak decision involved, or cache off).
    None,
    Hit,
    /// An expired ALLOW served while Keycloak is failing (stale-on-error).
    Stale,
    /// Keycloak was asked and the answer stored.
    Stored,
}

/// Answer locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// For logs and stats; never contains token material.
    pub reason: String,
    pub cache: CacheUse,
    /// The configured path the request matched, for the denial line and the decision record.
    pub matched: Option<Matched>,
    /// Set for a gRPC client ([`crate::enforce::grpc::for_grpc`]): the gRPC status its
    /// headers carry; `status` stays the HTTP status the decision stands for.
    pub grpc_status: Option<u8>,
}

/// The configured path a request matched: what a denial line and a decision record name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Matched {
    /// The path pattern (`/account/{id}`).
    pub path: String,
    /// The resource's name, else its id.
    pub resource: Option<String>,
    /// The scopes the request's method asks for.
    pub scopes: Vec<String>,
}

impl Reply {
    /// The HTTP status as sent: a gRPC answer is HTTP 200 with its status in `grpc-status`.
    pub fn wire_status(&self) -> u16 {
        if self.grpc_status.is_some() {
            200
        } else {
            self.status
        }
    }

    /// The headers as sent: the reply's own, and `content-type: text/plain` for a body that
    /// names no type of its own, so a reply carries exactly one `Content-Type`, its body's.
    pub fn wire_headers(&self) -> Vec<(&str, &str)> {
        let mut headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let typed = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !self.body.is_empty() && !typed {
            headers.push(("content-type", "text/plain"));
        }
        headers
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Allow(Allow),
    Reply(Reply),
    Call(Box<Call>),
    /// Another request is asking Keycloak the same question: decide again when its answer is in
    /// the decision cache (or after `until_ms`, when the claim lapses and this request asks itself).
    Wait {
        key: decisions::Key,
        until_ms: i64,
    },
    /// The claims of this path read the request body: decide again once it is buffered (up to
    /// `kcpep.max-body-bytes`; past it, [`body_too_large`]).
    ReadBody,
}

/// A request to Keycloak and what to do with its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub request: HttpRequest,
    /// `None`: Keycloak. Otherwise an `http` claim provider's service.
    pub service: Option<claims::Service>,
    pub pending: Pending,
}

/// The state a request waits in while Keycloak answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// Lazy path resolution: `resource_set?uri=<path>&matchingUri=true`; for a template path,
    /// the instance: `resource_set?uri=<path>`, then the parent URI (Keycloak's
    /// `resolvePathConfig`).
    LazyLoad {
        key: String,
        configured: Option<Rc<Entry>>,
        lookup: ResourceSearch,
    },
    /// The UMA grant for this path and method.
    Grant {
        entry: Rc<Entry>,
        method: MethodConfig,
        /// The decision-cache key this request claimed, and what to serve if Keycloak fails.
        cached: Option<Claim>,
        /// The claims pushed with the grant (Keycloak checks granted claims against them).
        claims: Claims,
        /// Which endpoint was asked, and what.
        asked: Asked,
    },
    /// An `http` claim provider's answer; `done` holds the claims of the providers before it.
    Claims {
        entry: Rc<Entry>,
        method: MethodConfig,
        done: Vec<Claims>,
    },
    /// A permission ticket for the UMA 401 challenge.
    Ticket,
}

/// Which endpoint a [`Pending::Grant`] asked about its path's resource and its method's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// The UMA grant.
    UmaGrant,
    /// AuthZEN evaluations, one per scope of the method, in its order.
    Authzen,
}

/// Which server lookup a [`Pending::LazyLoad`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceSearch {
    /// A resource whose URI pattern matches the path (lazy-load-paths, a wildcard's refinement).
    Matching,
    /// A resource of this template path's instance: exactly the path; if none, `parent` next.
    Instance { parent: Option<String> },
    /// The instance's last lookup: the resource whose URI pattern the server matches to the path
    /// (Keycloak's `resolvePathConfig` falls back to `findByMatchingUri`, so a server resource
    /// that is a template itself, `/{ver}/tenants/1`, is found for `/v1/tenants/1`).
    InstanceMatching,
}

/// A claimed decision-cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: decisions::Key,
    pub token_exp: i64,
    /// An expired ALLOW of the same key, for stale-on-error.
    pub stale: Option<(String, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(headers: &[(&str, &str)], body: &str) -> Reply {
        Reply {
            status: 400,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
            reason: String::new(),
            cache: CacheUse::None,
            matched: None,
            grpc_status: None,
        }
    }

    fn content_types(r: &Reply) -> Vec<String> {
        r.wire_headers()
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.to_string())
            .collect()
    }

    #[test]
    fn a_reply_has_exactly_the_content_type_of_its_body() {
        let json = reply(&[("Content-Type", "application/json")], "{}");
        assert_eq!(content_types(&json), ["application/json"]);
        assert_eq!(content_types(&reply(&[], "Forbidden")), ["text/plain"]);
        assert!(content_types(&reply(&[], "")).is_empty());
    }
}
