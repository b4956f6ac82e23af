//! Requests to Keycloak and the parsing of its answers (docs/keycloak-enforcer.md §4 step 7, §6), as plain data.
//!
//! Nothing here performs I/O: a builder returns an [`HttpRequest`] the shell dispatches (or a test
//! sends with any HTTP client), and a parser turns the status and body back into a typed outcome.

use crate::config::EnforcerConfig;
use crate::wire::claims::Claims;
use crate::wire::http::{basic_auth, form, get, post_form, query_encode, HttpRequest};
use crate::wire::json::{self, Obj};
use crate::wire::permission::{permissions_of, read_permissions, Permission};
use crate::wire::resource::Resource;
use base64::Engine;
use serde_json::Value;

pub const UMA_GRANT: &str = "urn:ietf:params:oauth:grant-type:uma-ticket";
pub const CLAIM_TOKEN_FORMAT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The realm's endpoints on the Keycloak cluster. Fixed by Keycloak's URL layout; discovery
/// confirms them (and the issuer) at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub discovery: String,
    pub token: String,
    pub jwks: String,
    pub resource_set: String,
    pub permission: String,
}

impl Endpoints {
    pub fn for_config(cfg: &EnforcerConfig) -> Self {
        let realm = cfg.realm_path();
        Endpoints {
            discovery: format!("{realm}/.well-known/uma2-configuration"),
            token: format!("{realm}/protocol/openid-connect/token"),
            jwks: format!("{realm}/protocol/openid-connect/certs"),
            resource_set: format!("{realm}/authz/protection/resource_set"),
            permission: format!("{realm}/authz/protection/permission"),
        }
    }
}

fn client_auth(cfg: &EnforcerConfig) -> Option<String> {
    cfg.secret.as_deref().map(|s| basic_auth(&cfg.client_id, s))
}

/// Envoy's router sends a call again (to another node of the cluster, when it has one) if it
/// got no answer from Keycloak: the connection was refused or reset, or a proxy in between
/// answered 502, 503 or 504. Only calls that are safe to repeat ask for it: reads, the PAT and the
/// UMA grant, which change nothing in Keycloak. All tries share the call's `timeout-ms`.
pub(crate) fn repeatable(cfg: &EnforcerConfig, mut req: HttpRequest) -> HttpRequest {
    let retries = cfg.proxy.keycloak_retries;
    if retries > 0 {
        req.headers.extend([
            (
                "x-envoy-retry-on".to_string(),
                "connect-failure,refused-stream,reset,retriable-status-codes".to_string(),
            ),
            (
                "x-envoy-retriable-status-codes".to_string(),
                "502,503,504".to_string(),
            ),
            ("x-envoy-max-retries".to_string(), retries.to_string()),
        ]);
    }
    req
}

pub fn discovery_request(cfg: &EnforcerConfig) -> HttpRequest {
    repeatable(cfg, get(Endpoints::for_config(cfg).discovery, None))
}

pub fn jwks_request(cfg: &EnforcerConfig) -> HttpRequest {
    repeatable(cfg, get(Endpoints::for_config(cfg).jwks, None))
}

/// The protection API token (PAT): client_credentials with the client's own credentials.
pub fn pat_request(cfg: &EnforcerConfig) -> HttpRequest {
    let mut pairs = vec![("grant_type", "client_credentials")];
    if cfg.secret.is_none() {
        pairs.push(("client_id", cfg.client_id.as_str()));
    }
    repeatable(
        cfg,
        post_form(
            Endpoints::for_config(cfg).token,
            client_auth(cfg),
            form(&pairs),
        ),
    )
}

/// What `response_mode` to ask the token endpoint for. The filter asks for `Permissions`; the
/// other two are Keycloak's other answers, which tests/contract.rs checks against the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// A full RPT (Keycloak's own enforcer).
    Rpt,
    /// `{"result": true}`.
    Decision,
    /// The granted permissions as a JSON array.
    Permissions,
}

/// One `permission=RESOURCE#SCOPE1,SCOPE2` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRequest {
    /// Resource id or name; with `uri_form`, the request URI. `None`: scope-only.
    pub resource: Option<String>,
    pub scopes: Vec<String>,
}

impl PermissionRequest {
    pub fn param(&self) -> String {
        let mut s = self.resource.clone().unwrap_or_default();
        if !self.scopes.is_empty() {
            s.push('#');
            s.push_str(&self.scopes.join(","));
        }
        s
    }
}

/// The UMA grant of the token endpoint, in the form Keycloak's bearer enforcer sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UmaGrant<'a> {
    pub subject_token: &'a str,
    pub permissions: Vec<PermissionRequest>,
    pub response_mode: ResponseMode,
    /// `permission_resource_format=uri` + `permission_resource_matching_uri=true`.
    pub uri_form: bool,
    /// Pushed claims (claim information point): sent as a base64 JSON `claim_token`.
    pub claims: Option<&'a Claims>,
    /// An RPT the caller already holds (incremental authorization).
    pub rpt: Option<&'a str>,
}

pub fn uma_grant_request(cfg: &EnforcerConfig, g: &UmaGrant) -> HttpRequest {
    let mut pairs: Vec<(&str, String)> = vec![
        ("grant_type", UMA_GRANT.to_string()),
        ("audience", cfg.client_id.clone()),
    ];
    for p in &g.permissions {
        pairs.push(("permission", p.param()));
    }
    if g.uri_form {
        pairs.push(("permission_resource_format", "uri".into()));
        pairs.push(("permission_resource_matching_uri", "true".into()));
    }
    match g.response_mode {
        ResponseMode::Rpt => {}
        ResponseMode::Decision => pairs.push(("response_mode", "decision".into())),
        ResponseMode::Permissions => pairs.push(("response_mode", "permissions".into())),
    }
    if let Some(claims) = g.claims.filter(|c| !c.is_empty()) {
        let json = serde_json::to_string(claims).unwrap_or_default();
        pairs.push((
            "claim_token",
            base64::engine::general_purpose::STANDARD.encode(json),
        ));
        pairs.push(("claim_token_format", CLAIM_TOKEN_FORMAT_JWT.into()));
    }
    if let Some(rpt) = g.rpt {
        pairs.push(("rpt", rpt.to_string()));
    }
    pairs.push(("subject_token", g.subject_token.to_string()));
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    repeatable(
        cfg,
        post_form(
            Endpoints::for_config(cfg).token,
            client_auth(cfg),
            form(&borrowed),
        ),
    )
}

/// A protection-API resource query (`GET resource_set?...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceQuery {
    pub name: Option<String>,
    pub uri: Option<String>,
    pub owner: Option<String>,
    pub exact_name: bool,
    pub matching_uri: bool,
}

pub fn resource_query_request(cfg: &EnforcerConfig, pat: &str, q: &ResourceQuery) -> HttpRequest {
    let mut params: Vec<String> = Vec::new();
    if let Some(n) = &q.name {
        params.push(format!("name={}", query_encode(n)));
    }
    if let Some(u) = &q.uri {
        params.push(format!("uri={}", query_encode(u)));
    }
    if let Some(o) = &q.owner {
        params.push(format!("owner={}", query_encode(o)));
    }
    if q.exact_name {
        params.push("exactName=true".into());
    }
    if q.matching_uri {
        params.push("matchingUri=true".into());
    }
    params.push("deep=true".into());
    params.push("max=-1".into());
    let path = format!(
        "{}?{}",
        Endpoints::for_config(cfg).resource_set,
        params.join("&")
    );
    repeatable(cfg, get(path, Some(pat)))
}

/// `POST permission` (PAT): a permission ticket for the UMA 401 challenge.
pub fn permission_ticket_request(
    cfg: &EnforcerConfig,
    pat: &str,
    resource_id: &str,
    scopes: &[String],
    claims: Option<&Claims>,
) -> HttpRequest {
    let mut entry = serde_json::json!({"resource_id": resource_id, "resource_scopes": scopes});
    if let Some(c) = claims.filter(|c| !c.is_empty()) {
        entry["claims"] = serde_json::to_value(c).unwrap_or(Value::Null);
    }
    let body = serde_json::to_vec(&Value::Array(vec![entry])).unwrap_or_default();
    HttpRequest {
        method: "POST",
        path: Endpoints::for_config(cfg).permission,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), format!("Bearer {pat}")),
            ("accept".into(), "application/json".into()),
        ],
        body,
    }
}

/// Keycloak's OAuth error body: `{"error": "...", "error_description": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OAuthError {
    pub error: String,
    pub error_description: Option<String>,
}

impl OAuthError {
    /// The error of a body, when it is Keycloak's OAuth error object (empty otherwise: a proxy's
    /// HTML page, a body of another shape).
    pub fn of_body(body: &[u8]) -> OAuthError {
        let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
            return OAuthError::default();
        };
        let error = match m.get("error") {
            None => String::new(),
            Some(Value::String(e)) => e.clone(),
            Some(_) => return OAuthError::default(),
        };
        let error_description = match m.get("error_description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return OAuthError::default(),
        };
        OAuthError {
            error,
            error_description,
        }
    }
}

/// How a Keycloak answer went, before interpreting its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer: reset, timeout, or an Envoy-generated 5xx for an unreachable cluster.
    Unavailable(String),
    /// An HTTP error answer with Keycloak's error body when it had one.
    Http { status: u16, error: OAuthError },
    /// 2xx, but the body is not what the endpoint documents.
    BadBody(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable(why) => write!(f, "Keycloak unavailable: {why}"),
            Failure::Http { status, error } => {
                write!(f, "Keycloak answered {status}")?;
                if !error.error.is_empty() {
                    write!(f, " {}", error.error)?;
                }
                if let Some(d) = &error.error_description {
                    write!(f, " ({d})")?;
                }
                Ok(())
            }
            Failure::BadBody(why) => write!(f, "unexpected Keycloak answer: {why}"),
        }
    }
}

/// Judges the status first: Envoy answers an unreachable cluster with a real 503.
pub(crate) fn check_status(status: u16, body: &[u8]) -> Result<(), Failure> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let error = OAuthError::of_body(body);
    if status >= 500 || (error.error.is_empty() && status != 400 && status != 401 && status != 403)
    {
        return Err(Failure::Unavailable(format!("HTTP {status}")));
    }
    Err(Failure::Http { status, error })
}

/// A 2xx answer's JSON read by `read` (hand-written readers, not derived deserializers: each
/// derived one costs the module kilobytes; `crate::keycloak::jose` says more).
pub(crate) fn json_body<T>(
    body: &[u8],
    read: impl FnOnce(&Value) -> json::Result<T>,
) -> Result<T, Failure> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Failure::BadBody(e.to_string()))?;
    read(&v).map_err(|e| Failure::BadBody(e.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: Option<i64>,
    pub upgraded: Option<bool>,
}

impl TokenResponse {
    fn read(v: &Value) -> json::Result<TokenResponse> {
        let mut o = Obj::new(v, "")?;
        Ok(TokenResponse {
            access_token: o.required_string("access_token")?,
            expires_in: o.i64("expires_in")?,
            upgraded: o.bool("upgraded")?,
        })
    }
}

pub fn parse_token_response(status: u16, body: &[u8]) -> Result<TokenResponse, Failure> {
    check_status(status, body)?;
    json_body(body, TokenResponse::read)
}

/// The interesting part of the UMA discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub resource_registration_endpoint: Option<String>,
    pub permission_endpoint: Option<String>,
}

pub fn parse_discovery(status: u16, body: &[u8]) -> Result<Discovery, Failure> {
    check_status(status, body)?;
    json_body(body, |v| {
        let mut o = Obj::new(v, "")?;
        Ok(Discovery {
            issuer: o.required_string("issuer")?,
            token_endpoint: o.required_string("token_endpoint")?,
            jwks_uri: o.required_string("jwks_uri")?,
            resource_registration_endpoint: o.string("resource_registration_endpoint")?,
            permission_endpoint: o.string("permission_endpoint")?,
        })
    })
}

/// The path part of an absolute endpoint URL from discovery (test support: the filter reaches
/// Keycloak through a cluster and builds its paths from the realm, [`Endpoints`]).
#[cfg(test)]
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// What the UMA grant said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UmaOutcome {
    /// Granted; the permissions when the response mode carries them (RPT or permissions).
    Granted(Option<Vec<Permission>>),
    /// 403 `access_denied` (`not_authorized` or `request_submitted`).
    Denied,
    /// 400 `invalid_grant`, or 400 `unauthorized_client` "Invalid identity": the subject token
    /// was refused (logged-out session, expired, revoked...). Answered 401, never cached.
    InvalidSubject,
    /// 400 `invalid_resource` / `invalid_scope` / other request errors: Keycloak's enforcer denies.
    Refused(OAuthError),
    /// Keycloak could not be asked, or our own client credentials were refused.
    Unavailable(String),
}

pub fn parse_uma_response(status: u16, body: &[u8], mode: ResponseMode) -> UmaOutcome {
    match check_status(status, body) {
        Ok(()) => {}
        Err(Failure::Unavailable(why)) => return UmaOutcome::Unavailable(why),
        Err(Failure::BadBody(why)) => return UmaOutcome::Unavailable(why),
        Err(Failure::Http { status: 403, .. }) => return UmaOutcome::Denied,
        Err(Failure::Http { status: 401, error }) => {
            return UmaOutcome::Unavailable(format!(
                "client authentication refused ({})",
                error.error
            ))
        }
        Err(Failure::Http { error, .. }) if error.error == "invalid_grant" => {
            return UmaOutcome::InvalidSubject
        }
        // What Keycloak answers for a subject token of a logged-out session, or one that expired
        // within our clock skew: the user's identity, not our client, is refused.
        Err(Failure::Http { status: 400, error })
            if error.error == "unauthorized_client"
                && error.error_description.as_deref() == Some("Invalid identity") =>
        {
            return UmaOutcome::InvalidSubject
        }
        Err(Failure::Http { error, .. }) => return UmaOutcome::Refused(error),
    }
    match mode {
        ResponseMode::Decision => match serde_json::from_slice::<Value>(body) {
            Ok(v) if v.get("result") == Some(&Value::Bool(true)) => UmaOutcome::Granted(None),
            Ok(_) => UmaOutcome::Denied,
            Err(e) => UmaOutcome::Unavailable(format!("bad decision body: {e}")),
        },
        ResponseMode::Permissions => match json_body(body, read_permissions) {
            Ok(perms) => UmaOutcome::Granted(Some(perms)),
            Err(e) => UmaOutcome::Unavailable(format!("bad permissions body: {}", bad_body(e))),
        },
        ResponseMode::Rpt => match json_body(body, TokenResponse::read) {
            Ok(t) => match rpt_permissions(&t.access_token) {
                Some(p) => UmaOutcome::Granted(Some(p)),
                None => UmaOutcome::Unavailable("RPT without permissions".into()),
            },
            Err(e) => UmaOutcome::Unavailable(format!("bad token body: {}", bad_body(e))),
        },
    }
}

/// The permissions inside an RPT Keycloak just issued over the callout (not re-verified: it comes
/// straight from the token endpoint, as in Keycloak's enforcer).
fn rpt_permissions(rpt: &str) -> Option<Vec<Permission>> {
    let payload = rpt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    permissions_of(&v)
}

/// What [`json_body`] found wrong.
fn bad_body(f: Failure) -> String {
    match f {
        Failure::BadBody(why) => why,
        other => other.to_string(),
    }
}

pub fn parse_resources(status: u16, body: &[u8]) -> Result<Vec<Resource>, Failure> {
    check_status(status, body)?;
    json_body(body, Resource::read_list)
}

pub fn parse_ticket(status: u16, body: &[u8]) -> Result<String, Failure> {
    check_status(status, body)?;
    json_body(body, |v| Obj::new(v, "")?.required_string("ticket"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnforcerConfig;

    fn cfg(url: &str) -> EnforcerConfig {
        EnforcerConfig::from_json(
            format!(
                r#"{{"realm":"bank","auth-server-url":"{url}","resource":"bank api","credentials":{{"secret":"s:&/"}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn body(r: &HttpRequest) -> String {
        String::from_utf8(r.body.clone()).unwrap()
    }

    #[test]
    fn endpoints_follow_both_url_layouts() {
        let e = Endpoints::for_config(&cfg("http://kc"));
        assert_eq!(e.token, "/realms/bank/protocol/openid-connect/token");
        assert_eq!(e.discovery, "/realms/bank/.well-known/uma2-configuration");
        let e = Endpoints::for_config(&cfg("http://kc/auth"));
        assert_eq!(e.jwks, "/auth/realms/bank/protocol/openid-connect/certs");
        assert_eq!(
            e.resource_set,
            "/auth/realms/bank/authz/protection/resource_set"
        );
        assert_eq!(
            e.permission,
            "/auth/realms/bank/authz/protection/permission"
        );
    }

    #[test]
    fn only_calls_safe_to_repeat_ask_envoy_to_retry() {
        let c = cfg("http://kc");
        let grant = UmaGrant {
            subject_token: "t",
            permissions: Vec::new(),
            response_mode: ResponseMode::Permissions,
            uri_form: false,
            claims: None,
            rpt: None,
        };
        let repeated = [
            discovery_request(&c),
            jwks_request(&c),
            pat_request(&c),
            uma_grant_request(&c, &grant),
            resource_query_request(&c, "pat", &ResourceQuery::default()),
        ];
        for r in &repeated {
            assert_eq!(r.header("x-envoy-max-retries"), Some("2"), "{}", r.path);
            assert_eq!(
                r.header("x-envoy-retry-on"),
                Some("connect-failure,refused-stream,reset,retriable-status-codes")
            );
            assert_eq!(
                r.header("x-envoy-retriable-status-codes"),
                Some("502,503,504")
            );
        }
        // A permission ticket is a new ticket each time: not repeated behind the client's back.
        let ticket = permission_ticket_request(&c, "pat", "id", &[], None);
        assert_eq!(ticket.header("x-envoy-retry-on"), None);
        let mut off = c.clone();
        off.proxy.keycloak_retries = 0;
        assert_eq!(jwks_request(&off).header("x-envoy-retry-on"), None);
    }

    #[test]
    fn basic_auth_url_encodes_before_base64() {
        // "bank+api:s%3A%26%2F"
        assert_eq!(
            basic_auth("bank api", "s:&/"),
            "Basic YmFuaythcGk6cyUzQSUyNiUyRg=="
        );
    }

    #[test]
    fn pat_is_client_credentials() {
        let r = pat_request(&cfg("http://kc"));
        assert_eq!(r.method, "POST");
        assert_eq!(body(&r), "grant_type=client_credentials");
        assert!(r.header("authorization").unwrap().starts_with("Basic "));
        assert_eq!(
            r.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
    }

    #[test]
    fn uma_grant_carries_everything_keycloak_expects() {
        let claims: Claims = [("x-branch".to_string(), vec!["tokyo".to_string()])].into();
        let g = UmaGrant {
            subject_token: "tok",
            permissions: vec![PermissionRequest {
                resource: Some("View Account Resource".into()),
                scopes: vec!["account:view".into(), "b".into()],
            }],
            response_mode: ResponseMode::Permissions,
            uri_form: false,
            claims: Some(&claims),
            rpt: Some("old"),
        };
        let r = uma_grant_request(&cfg("http://kc"), &g);
        let b = body(&r);
        assert!(b.starts_with("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Auma-ticket&audience=bank+api&permission=View+Account+Resource%23account%3Aview%2Cb&response_mode=permissions&claim_token="), "{b}");
        assert!(b.contains("&claim_token_format=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&rpt=old&subject_token=tok"));
        let ct = b
            .split("claim_token=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let ct = ct
            .replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(ct)
            .unwrap();
        assert_eq!(decoded, br#"{"x-branch":["tokyo"]}"#);
    }

    #[test]
    fn uma_grant_uri_form_and_decision() {
        let g = UmaGrant {
            subject_token: "t",
            permissions: vec![PermissionRequest {
                resource: Some("/account/1".into()),
                scopes: vec![],
            }],
            response_mode: ResponseMode::Decision,
            uri_form: true,
            claims: None,
            rpt: None,
        };
        let b = body(&uma_grant_request(&cfg("http://kc"), &g));
        assert!(b.contains("&permission=%2Faccount%2F1&permission_resource_format=uri&permission_resource_matching_uri=true&response_mode=decision&subject_token=t"), "{b}");
        assert!(!b.contains("claim_token"));
    }

    #[test]
    fn scope_only_permission() {
        let p = PermissionRequest {
            resource: None,
            scopes: vec!["a".into()],
        };
        assert_eq!(p.param(), "#a");
    }

    #[test]
    fn resource_queries() {
        let c = cfg("http://kc");
        let r = resource_query_request(
            &c,
            "pat",
            &ResourceQuery {
                uri: Some("/account/{id}".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            r.path,
            "/realms/bank/authz/protection/resource_set?uri=/account/%7Bid%7D&deep=true&max=-1"
        );
        assert_eq!(r.header("authorization"), Some("Bearer pat"));
        let r = resource_query_request(
            &c,
            "pat",
            &ResourceQuery {
                name: Some("View Account".into()),
                owner: Some("bank-api".into()),
                exact_name: true,
                ..Default::default()
            },
        );
        assert_eq!(r.path, "/realms/bank/authz/protection/resource_set?name=View%20Account&owner=bank-api&exactName=true&deep=true&max=-1");
        let r = resource_query_request(
            &c,
            "pat",
            &ResourceQuery {
                uri: Some("/a/b".into()),
                matching_uri: true,
                ..Default::default()
            },
        );
        assert!(r
            .path
            .ends_with("?uri=/a/b&matchingUri=true&deep=true&max=-1"));
    }

    #[test]
    fn permission_ticket_body() {
        let r = permission_ticket_request(&cfg("http://kc"), "pat", "rid", &["s".into()], None);
        assert_eq!(
            body(&r),
            r#"[{"resource_id":"rid","resource_scopes":["s"]}]"#
        );
        assert_eq!(parse_ticket(201, br#"{"ticket":"T"}"#).unwrap(), "T");
        assert!(parse_ticket(400, br#"{"error":"invalid_resource_id"}"#).is_err());
    }

    #[test]
    fn uma_outcomes() {
        use UmaOutcome::*;
        assert_eq!(
            parse_uma_response(200, br#"{"result":true}"#, ResponseMode::Decision),
            Granted(None)
        );
        let perms = parse_uma_response(
            200,
            br#"[{"rsid":"1","rsname":"A","scopes":["s"]}]"#,
            ResponseMode::Permissions,
        );
        assert_eq!(
            perms,
            Granted(Some(vec![Permission {
                rsid: Some("1".into()),
                rsname: Some("A".into()),
                scopes: vec!["s".into()],
                claims: None
            }]))
        );
        assert_eq!(
            parse_uma_response(
                403,
                br#"{"error":"access_denied","error_description":"not_authorized"}"#,
                ResponseMode::Decision
            ),
            Denied
        );
        assert_eq!(
            parse_uma_response(
                400,
                br#"{"error":"invalid_grant","error_description":"Invalid bearer token"}"#,
                ResponseMode::Decision
            ),
            InvalidSubject
        );
        // Keycloak 26's answer for the token of a logged-out session
        assert_eq!(
            parse_uma_response(
                400,
                br#"{"error":"unauthorized_client","error_description":"Invalid identity"}"#,
                ResponseMode::Permissions
            ),
            InvalidSubject
        );
        assert!(matches!(
            parse_uma_response(
                400,
                br#"{"error":"unauthorized_client"}"#,
                ResponseMode::Decision
            ),
            Refused(_)
        ));
        assert!(
            matches!(parse_uma_response(400, br#"{"error":"invalid_resource"}"#, ResponseMode::Decision), Refused(e) if e.error == "invalid_resource")
        );
        assert!(matches!(
            parse_uma_response(
                401,
                br#"{"error":"unauthorized_client"}"#,
                ResponseMode::Decision
            ),
            Unavailable(_)
        ));
        // Envoy's own 503 for an unreachable cluster is not Keycloak's verdict
        assert!(matches!(
            parse_uma_response(503, b"upstream connect error", ResponseMode::Decision),
            Unavailable(_)
        ));
        assert!(matches!(
            parse_uma_response(200, b"<html>", ResponseMode::Permissions),
            Unavailable(_)
        ));
        // an RPT in the token response
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"authorization":{"permissions":[{"rsid":"9","scopes":["v"]}]}}"#);
        let body = format!(r#"{{"access_token":"h.{payload}.s","upgraded":false}}"#);
        assert!(
            matches!(parse_uma_response(200, body.as_bytes(), ResponseMode::Rpt), Granted(Some(p)) if p[0].rsid.as_deref() == Some("9"))
        );
    }

    #[test]
    fn resources_and_discovery() {
        let rs = parse_resources(200, br#"[{"_id":"r1","name":"View Account Resource","uris":["/account/{id}"],"resource_scopes":[{"id":"s","name":"account:view"}],"owner":{"id":"o"}}]"#).unwrap();
        assert_eq!(rs[0].id, "r1");
        assert_eq!(rs[0].scope_names(), vec!["account:view"]);
        let d = parse_discovery(200, br#"{"issuer":"http://kc/realms/bank","token_endpoint":"http://kc/realms/bank/protocol/openid-connect/token","jwks_uri":"http://kc/realms/bank/protocol/openid-connect/certs","permission_endpoint":"http://kc/realms/bank/authz/protection/permission"}"#).unwrap();
        assert_eq!(
            url_path(&d.token_endpoint),
            "/realms/bank/protocol/openid-connect/token"
        );
        assert!(matches!(
            parse_discovery(503, b"x"),
            Err(Failure::Unavailable(_))
        ));
    }
}
