//! Keycloak's OpenID AuthZEN policy decision point (Keycloak 26.7, experimental: the server runs
//! with `--features=authzen`), as plain data.
//!
//! The filter asks it for the tokens Keycloak's UMA grant refuses (DPoP-bound tokens): the caller
//! is the resource server itself, with its own client-credentials token (the PAT), and the subject
//! is named by its user id, so the user's token is never sent. Keycloak evaluates the same
//! resources, scopes and policies as for the UMA grant, with the differences below.
//!
//! What Keycloak 26.7 does with a request (`authzen/services/.../AuthZenResource.java`):
//! - the resource server is the client the caller's token was issued to; the resource is looked up
//!   by NAME among the resources the resource server owns, its type must equal `resource.type`
//!   (`""` for none), and `action.name` must be a scope of the resource server. Anything not
//!   found is `decision: false`, never an error; so is a caller client without authorization
//!   services.
//! - the identity is the user as stored (roles, attributes), not the token: no session check, no
//!   check that the user is enabled. The filter must have judged the token itself.
//! - `context` becomes evaluation-context attributes, one value each: a string as it is, a number
//!   or boolean as its text, an array or object as its JSON text. A one-value claim is therefore
//!   sent as a plain string, so `getValue('amount').asString(0)` reads what it reads for a claim
//!   pushed with the UMA grant.
//! - a batch item's own subject, resource, action or context replaces the top-level one whole.
//!   This module sends the subject and context once, at the top, and only resource and action per
//!   item.
//! - a short-circuiting semantic answers fewer decisions: up to and including the one that
//!   stopped it.
//!
//! Nothing here performs I/O.

use crate::config::EnforcerConfig;
use crate::keycloak::uma::{check_status, json_body, repeatable, Failure, OAuthError};
use crate::wire::claims::Claims;
use crate::wire::http::{get, HttpRequest};
use crate::wire::json::Obj;
use serde_json::{json, Map, Value};

/// The realm's AuthZEN endpoints on the Keycloak cluster, fixed by Keycloak's URL layout
/// (`{realm}/authzen/access/v1/...`); discovery confirms the feature is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub discovery: String,
    pub evaluation: String,
    pub evaluations: String,
}

impl Endpoints {
    pub fn for_config(cfg: &EnforcerConfig) -> Self {
        let realm = cfg.realm_path();
        Endpoints {
            discovery: format!("{realm}/.well-known/authzen-configuration"),
            evaluation: format!("{realm}/authzen/access/v1/evaluation"),
            evaluations: format!("{realm}/authzen/access/v1/evaluations"),
        }
    }
}

/// `GET {realm}/.well-known/authzen-configuration`: public, and 404 when the feature is off.
pub fn discovery_request(cfg: &EnforcerConfig) -> HttpRequest {
    repeatable(cfg, get(Endpoints::for_config(cfg).discovery, None))
}

/// The PDP metadata Keycloak publishes (AuthZEN 1.0 §9). Absolute URLs, built from the
/// frontend URL, so their paths may differ from the cluster paths of [`Endpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub policy_decision_point: String,
    pub access_evaluation_endpoint: String,
    /// Optional in the specification; Keycloak 26.7 publishes it.
    pub access_evaluations_endpoint: Option<String>,
}

impl Discovery {
    /// The path of the batch endpoint, when published (to compare with [`Endpoints`]).
    pub fn evaluations_path(&self) -> Option<&str> {
        self.access_evaluations_endpoint.as_deref().map(url_path)
    }
}

/// The path part of an absolute URL (`/` when it has none).
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// A 404 means Keycloak runs without `--features=authzen` (or the realm does not exist).
pub fn parse_discovery(status: u16, body: &[u8]) -> Result<Discovery, Failure> {
    check_status(status, body)?;
    json_body(body, |v| {
        let mut o = Obj::new(v, "")?;
        Ok(Discovery {
            policy_decision_point: o.required_string("policy_decision_point")?,
            access_evaluation_endpoint: o.required_string("access_evaluation_endpoint")?,
            access_evaluations_endpoint: o.string("access_evaluations_endpoint")?,
        })
    })
}

/// How Keycloak goes through a batch (`options.evaluations_semantic`). The short-circuiting ones
/// match the enforcer's scope modes: ALL is [`Semantic::DenyOnFirstDeny`], ANY is
/// [`Semantic::PermitOnFirstPermit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantic {
    /// Every evaluation, every decision (Keycloak's default).
    ExecuteAll,
    /// Stops after the first deny.
    DenyOnFirstDeny,
    /// Stops after the first permit.
    PermitOnFirstPermit,
}

impl Semantic {
    /// Keycloak's name (`AuthZen.EvaluationsSemantic`).
    pub fn as_str(self) -> &'static str {
        match self {
            Semantic::ExecuteAll => "execute_all",
            Semantic::DenyOnFirstDeny => "deny_on_first_deny",
            Semantic::PermitOnFirstPermit => "permit_on_first_permit",
        }
    }
}

/// One question: may the subject do `action` on the resource named `resource_name`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The resource's type in Keycloak, `""` when it has none: Keycloak denies on a mismatch.
    pub resource_type: String,
    /// The resource's NAME (not its id): Keycloak looks it up by name.
    pub resource_name: String,
    /// A scope name. Keycloak has no resource-only question: a missing scope is a deny.
    pub action: String,
}

/// A batch for one user, to the evaluations endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationsRequest<'a> {
    /// The user's id (the token's `sub`), sent as `id:<id>`: a bare id that is not an RFC 4122
    /// UUID would be taken for a username, and federated users' ids (`f:...`) are not UUIDs.
    /// Keycloak answers 400 for an empty one.
    pub user_id: &'a str,
    /// In order; the answer's decisions follow it. An empty batch asks nothing (Keycloak then
    /// answers one `decision: false` for the missing top-level resource).
    pub evaluations: Vec<Evaluation>,
    pub semantic: Semantic,
    /// Pushed claims, as the evaluation context for every item. Names that collide with
    /// Keycloak's own attributes (`kc.realm.name`, `kc.client.network.ip_address`...) replace
    /// them.
    pub context: Option<&'a Claims>,
}

/// `POST {realm}/authzen/access/v1/evaluations` with the PAT. An evaluation changes nothing in
/// Keycloak, so Envoy may send it again.
pub fn evaluations_request(cfg: &EnforcerConfig, pat: &str, r: &EvaluationsRequest) -> HttpRequest {
    repeatable(
        cfg,
        HttpRequest {
            method: "POST",
            path: Endpoints::for_config(cfg).evaluations,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("authorization".into(), format!("Bearer {pat}")),
                ("accept".into(), "application/json".into()),
            ],
            body: serde_json::to_vec(&evaluations_body(r)).unwrap_or_default(),
        },
    )
}

fn evaluations_body(r: &EvaluationsRequest) -> Value {
    let items: Vec<Value> = r
        .evaluations
        .iter()
        .map(|e| {
            json!({
                "resource": {"type": e.resource_type, "id": e.resource_name},
                "action": {"name": e.action},
            })
        })
        .collect();
    let mut body = json!({
        "subject": {"type": "user", "id": format!("id:{}", r.user_id)},
        "evaluations": items,
        "options": {"evaluations_semantic": r.semantic.as_str()},
    });
    if let Some(claims) = r.context.filter(|c| !c.is_empty()) {
        body["context"] = context_of(claims);
    }
    body
}

/// Keycloak keeps one value per context entry and turns an array into its JSON text: a single
/// value goes as a string (read as that string, as from the UMA grant); several (or none) go
/// as an array, which a policy sees as one value, `["a","b"]`.
fn context_of(claims: &Claims) -> Value {
    let mut out = Map::new();
    for (name, values) in claims {
        let v = match values.as_slice() {
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        };
        out.insert(name.clone(), v);
    }
    Value::Object(out)
}

/// One evaluation's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Permit,
    Deny,
    /// Not evaluated: the semantic stopped the batch before it.
    NotEvaluated,
}

/// One [`Decision`] per evaluation asked, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decisions(pub Vec<Decision>);

impl Decisions {
    /// Every evaluation permitted (an unevaluated one is not): the verdict for ALL.
    pub fn all_permit(&self) -> bool {
        self.0.iter().all(|d| *d == Decision::Permit)
    }

    /// Some evaluation permitted: the verdict for ANY.
    pub fn any_permit(&self) -> bool {
        self.0.contains(&Decision::Permit)
    }
}

/// What the evaluations endpoint said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzenOutcome {
    /// Keycloak decided. Unknown resources, scopes or users are denies, not errors.
    Decided(Decisions),
    /// 400: Keycloak refused the request itself (malformed, an empty `id:`, an `email:` subject
    /// in a realm that allows duplicate emails). Nothing was decided.
    Refused(OAuthError),
    /// Keycloak could not be asked, runs without the feature (404), refused our own token
    /// (401/403: the PAT expired or was revoked, or its client was disabled), or answered
    /// something it does not send.
    Unavailable(String),
}

/// The answer to [`evaluations_request`] for `asked` evaluations under `semantic`. A short
/// answer must be the one the semantic allows (stopped on the decision that stops it); anything
/// else is [`AuthzenOutcome::Unavailable`], never a guess.
pub fn parse_evaluations(
    status: u16,
    body: &[u8],
    asked: usize,
    semantic: Semantic,
) -> AuthzenOutcome {
    if status == 404 {
        return AuthzenOutcome::Unavailable(
            "AuthZEN not found: is Keycloak started with --features=authzen?".into(),
        );
    }
    match check_status(status, body) {
        Ok(()) => {}
        Err(Failure::Http { status: 400, error }) => return AuthzenOutcome::Refused(error),
        Err(Failure::Http { status, error }) if status == 401 || status == 403 => {
            return AuthzenOutcome::Unavailable(format!(
                "our client's token was refused (HTTP {status} {})",
                error.error
            ))
        }
        Err(e) => return AuthzenOutcome::Unavailable(e.to_string()),
    }
    match decisions_of(body, asked, semantic) {
        Ok(d) => AuthzenOutcome::Decided(Decisions(d)),
        Err(why) => AuthzenOutcome::Unavailable(format!("bad AuthZEN answer: {why}")),
    }
}

fn decisions_of(body: &[u8], asked: usize, semantic: Semantic) -> Result<Vec<Decision>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(obj) = v.as_object() else {
        return Err("not a JSON object".into());
    };
    let Some(items) = obj.get("evaluations") else {
        // An empty batch is answered as a single evaluation of the (absent) top-level resource.
        return match obj.get("decision") {
            Some(Value::Bool(_)) if asked == 0 => Ok(Vec::new()),
            _ => Err("no \"evaluations\"".into()),
        };
    };
    let Some(items) = items.as_array() else {
        return Err("\"evaluations\" is not an array".into());
    };
    let mut got = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.get("decision") {
            Some(Value::Bool(true)) => got.push(Decision::Permit),
            Some(Value::Bool(false)) => got.push(Decision::Deny),
            _ => return Err(format!("evaluations[{i}] has no boolean \"decision\"")),
        }
    }
    if got.len() > asked {
        return Err(format!("{} decisions for {asked} evaluations", got.len()));
    }
    // Where Keycloak stops: only on the decision the semantic stops on, and only there.
    let stops_on = match semantic {
        Semantic::ExecuteAll => None,
        Semantic::DenyOnFirstDeny => Some(Decision::Deny),
        Semantic::PermitOnFirstPermit => Some(Decision::Permit),
    };
    if let Some(stop) = stops_on {
        if let Some(i) = got.iter().position(|d| *d == stop) {
            if i + 1 != got.len() {
                return Err(format!(
                    "{} went on after evaluations[{i}]",
                    semantic.as_str()
                ));
            }
        }
    }
    if got.len() < asked && (stops_on.is_none() || got.last().copied() != stops_on) {
        return Err(format!(
            "{} decisions for {asked} evaluations under {}",
            got.len(),
            semantic.as_str()
        ));
    }
    got.resize(asked, Decision::NotEvaluated);
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnforcerConfig;
    use AuthzenOutcome::*;
    use Decision::*;

    fn cfg(url: &str) -> EnforcerConfig {
        EnforcerConfig::from_json(
            format!(
                r#"{{"realm":"bank","auth-server-url":"{url}","resource":"bank api","credentials":{{"secret":"s"}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn eval(ty: &str, name: &str, action: &str) -> Evaluation {
        Evaluation {
            resource_type: ty.into(),
            resource_name: name.into(),
            action: action.into(),
        }
    }

    fn request(semantic: Semantic, context: Option<&Claims>) -> EvaluationsRequest<'_> {
        EvaluationsRequest {
            user_id: "5f1a6f0e-93a2-4a55-9d0e-0b7c3c0c1d2e",
            evaluations: vec![
                eval("urn:bank:account", "View Account Resource", "account:view"),
                eval("", "Transfer", "transfer:create"),
            ],
            semantic,
            context,
        }
    }

    fn json_of(r: &HttpRequest) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    fn parse(body: &str, asked: usize, semantic: Semantic) -> AuthzenOutcome {
        parse_evaluations(200, body.as_bytes(), asked, semantic)
    }

    fn decided(d: &[Decision]) -> AuthzenOutcome {
        Decided(Decisions(d.to_vec()))
    }

    #[test]
    fn endpoints_follow_both_url_layouts() {
        let e = Endpoints::for_config(&cfg("http://kc"));
        assert_eq!(
            e.discovery,
            "/realms/bank/.well-known/authzen-configuration"
        );
        assert_eq!(e.evaluation, "/realms/bank/authzen/access/v1/evaluation");
        assert_eq!(e.evaluations, "/realms/bank/authzen/access/v1/evaluations");
        let e = Endpoints::for_config(&cfg("http://kc/auth"));
        assert_eq!(
            e.evaluations,
            "/auth/realms/bank/authzen/access/v1/evaluations"
        );
    }

    #[test]
    fn evaluations_request_is_json_with_the_pat_and_may_be_repeated() {
        let c = cfg("http://kc");
        let r = evaluations_request(&c, "pat", &request(Semantic::ExecuteAll, None));
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/realms/bank/authzen/access/v1/evaluations");
        assert_eq!(r.header("authorization"), Some("Bearer pat"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("accept"), Some("application/json"));
        assert_eq!(r.header("x-envoy-max-retries"), Some("2"));
        assert_eq!(
            r.header("x-envoy-retry-on"),
            Some("connect-failure,refused-stream,reset,retriable-status-codes")
        );
        let mut off = c.clone();
        off.proxy.keycloak_retries = 0;
        let r = evaluations_request(&off, "pat", &request(Semantic::ExecuteAll, None));
        assert_eq!(r.header("x-envoy-retry-on"), None);
        let d = discovery_request(&c);
        assert_eq!(d.method, "GET");
        assert_eq!(d.path, "/realms/bank/.well-known/authzen-configuration");
        assert_eq!(d.header("authorization"), None);
        assert_eq!(d.header("x-envoy-max-retries"), Some("2"));
    }

    #[test]
    fn request_json_shape() {
        let r = evaluations_request(&cfg("http://kc"), "p", &request(Semantic::ExecuteAll, None));
        // exact bytes: the order is fixed (serde_json preserve_order), so decision caches may
        // key on it
        assert_eq!(
            String::from_utf8(r.body.clone()).unwrap(),
            concat!(
                r#"{"subject":{"type":"user","id":"id:5f1a6f0e-93a2-4a55-9d0e-0b7c3c0c1d2e"},"#,
                r#""evaluations":[{"resource":{"type":"urn:bank:account","id":"View Account Resource"},"action":{"name":"account:view"}},"#,
                r#"{"resource":{"type":"","id":"Transfer"},"action":{"name":"transfer:create"}}],"#,
                r#""options":{"evaluations_semantic":"execute_all"}}"#
            )
        );
        // no subject properties (they would replace the user's own attributes), no per-item
        // subject or context
        let v = json_of(&r);
        assert!(v["subject"].get("properties").is_none());
        for item in v["evaluations"].as_array().unwrap() {
            assert!(item.get("subject").is_none() && item.get("context").is_none());
        }
    }

    #[test]
    fn each_semantic_has_keycloaks_name() {
        for (s, name) in [
            (Semantic::ExecuteAll, "execute_all"),
            (Semantic::DenyOnFirstDeny, "deny_on_first_deny"),
            (Semantic::PermitOnFirstPermit, "permit_on_first_permit"),
        ] {
            let r = evaluations_request(&cfg("http://kc"), "p", &request(s, None));
            assert_eq!(json_of(&r)["options"]["evaluations_semantic"], name);
        }
    }

    #[test]
    fn context_one_value_is_a_string_several_an_array() {
        let claims = Claims::from([
            ("amount".to_string(), vec!["100".to_string()]),
            (
                "branch".to_string(),
                vec!["tokyo".to_string(), "osaka".to_string()],
            ),
            ("none".to_string(), vec![]),
        ]);
        let r = evaluations_request(
            &cfg("http://kc"),
            "p",
            &request(Semantic::ExecuteAll, Some(&claims)),
        );
        assert_eq!(
            json_of(&r)["context"],
            json!({"amount": "100", "branch": ["tokyo", "osaka"], "none": []})
        );
        // empty claims: no context at all
        let empty = Claims::new();
        let r = evaluations_request(
            &cfg("http://kc"),
            "p",
            &request(Semantic::ExecuteAll, Some(&empty)),
        );
        assert!(json_of(&r).get("context").is_none());
    }

    #[test]
    fn execute_all_answers() {
        let s = Semantic::ExecuteAll;
        let out = parse(
            r#"{"evaluations":[{"decision":true},{"decision":false,"context":null}]}"#,
            2,
            s,
        );
        assert_eq!(out, decided(&[Permit, Deny]));
        let Decided(d) = out else { unreachable!() };
        assert!(!d.all_permit() && d.any_permit());
        // execute_all never stops early
        assert!(matches!(
            parse(r#"{"evaluations":[{"decision":false}]}"#, 2, s),
            Unavailable(_)
        ));
        assert!(matches!(
            parse(r#"{"evaluations":[]}"#, 1, s),
            Unavailable(_)
        ));
    }

    #[test]
    fn deny_on_first_deny_answers() {
        let s = Semantic::DenyOnFirstDeny;
        // Keycloak's short answer: the deny carries a reason, the rest is left out
        let out = parse(
            r#"{"evaluations":[{"decision":true},{"decision":false,"context":{"reason":"deny_on_first_deny"}}]}"#,
            3,
            s,
        );
        assert_eq!(out, decided(&[Permit, Deny, NotEvaluated]));
        let Decided(d) = out else { unreachable!() };
        assert!(!d.all_permit());
        let out = parse(
            r#"{"evaluations":[{"decision":true},{"decision":true}]}"#,
            2,
            s,
        );
        assert_eq!(out, decided(&[Permit, Permit]));
        let Decided(d) = out else { unreachable!() };
        assert!(d.all_permit());
        // the last one may be the deny without stopping anything
        assert_eq!(
            parse(
                r#"{"evaluations":[{"decision":true},{"decision":false}]}"#,
                2,
                s
            ),
            decided(&[Permit, Deny])
        );
        // stopping on a permit, or going on after a deny, is not this semantic
        assert!(matches!(
            parse(r#"{"evaluations":[{"decision":true}]}"#, 2, s),
            Unavailable(_)
        ));
        assert!(matches!(
            parse(
                r#"{"evaluations":[{"decision":false},{"decision":true}]}"#,
                2,
                s
            ),
            Unavailable(_)
        ));
    }

    #[test]
    fn permit_on_first_permit_answers() {
        let s = Semantic::PermitOnFirstPermit;
        let out = parse(r#"{"evaluations":[{"decision":true}]}"#, 2, s);
        assert_eq!(out, decided(&[Permit, NotEvaluated]));
        let Decided(d) = out else { unreachable!() };
        assert!(d.any_permit() && !d.all_permit());
        let out = parse(
            r#"{"evaluations":[{"decision":false},{"decision":false}]}"#,
            2,
            s,
        );
        assert_eq!(out, decided(&[Deny, Deny]));
        let Decided(d) = out else { unreachable!() };
        assert!(!d.any_permit());
        assert_eq!(
            parse(
                r#"{"evaluations":[{"decision":false},{"decision":true}]}"#,
                3,
                s
            ),
            decided(&[Deny, Permit, NotEvaluated])
        );
        assert!(matches!(
            parse(r#"{"evaluations":[{"decision":false}]}"#, 2, s),
            Unavailable(_)
        ));
        assert!(matches!(
            parse(
                r#"{"evaluations":[{"decision":true},{"decision":false}]}"#,
                2,
                s
            ),
            Unavailable(_)
        ));
    }

    #[test]
    fn empty_batch_gets_a_single_decision() {
        // Keycloak answers an empty batch as one evaluation of the top-level fields
        assert_eq!(
            parse(r#"{"decision":false}"#, 0, Semantic::ExecuteAll),
            decided(&[])
        );
        assert_eq!(
            parse(r#"{"evaluations":[]}"#, 0, Semantic::DenyOnFirstDeny),
            decided(&[])
        );
        // but a single decision is no answer to a batch
        assert!(matches!(
            parse(r#"{"decision":true}"#, 1, Semantic::ExecuteAll),
            Unavailable(_)
        ));
    }

    #[test]
    fn malformed_answers_are_errors() {
        let s = Semantic::ExecuteAll;
        for body in [
            "",
            "<html>",
            "[]",
            "null",
            r#"{"evaluations":{}}"#,
            r#"{"evaluations":[{"decision":"true"}]}"#,
            r#"{"evaluations":[{}]}"#,
            r#"{"evaluations":[true]}"#,
            r#"{"evaluations":[{"decision":true},{"decision":true}]}"#, // more than asked
            r#"{"decision":"yes"}"#,
        ] {
            assert!(matches!(parse(body, 1, s), Unavailable(_)), "{body}");
        }
        // invalid UTF-8 and deep nesting are refused, never a panic
        assert!(matches!(
            parse_evaluations(200, b"\xff\xfe", 1, s),
            Unavailable(_)
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse(&deep, 1, s), Unavailable(_)));
    }

    #[test]
    fn error_statuses() {
        let s = Semantic::ExecuteAll;
        // Keycloak's answer to a bad request (malformed JSON, empty `id:`, `email:` with
        // duplicate emails)
        assert_eq!(
            parse_evaluations(
                400,
                br#"{"error":"invalid_request","error_description":"Cannot parse the JSON"}"#,
                1,
                s
            ),
            Refused(OAuthError {
                error: "invalid_request".into(),
                error_description: Some("Cannot parse the JSON".into()),
            })
        );
        assert!(matches!(parse_evaluations(400, b"", 1, s), Refused(_)));
        // our own token refused: expired PAT, disabled client (NotAuthorizedException("Bearer"))
        for (status, body) in [
            (401, &br#"{"error":"HTTP 401 Unauthorized"}"#[..]),
            (401, b""),
            (403, br#"{"error":"access_denied"}"#),
        ] {
            assert!(
                matches!(parse_evaluations(status, body, 1, s), Unavailable(ref w) if w.contains("our client's token")),
                "{status}"
            );
        }
        // the feature is off
        assert!(
            matches!(parse_evaluations(404, br#"{"error":"HTTP 404 Not Found"}"#, 1, s), Unavailable(ref w) if w.contains("--features=authzen"))
        );
        // Envoy's 503 for an unreachable cluster, Keycloak's 500, a body too large (413)
        for status in [503, 500, 413, 415] {
            assert!(
                matches!(parse_evaluations(status, b"x", 1, s), Unavailable(_)),
                "{status}"
            );
        }
    }

    #[test]
    fn discovery() {
        let d = parse_discovery(
            200,
            br#"{"policy_decision_point":"https://kc.example/realms/bank","access_evaluation_endpoint":"https://kc.example/realms/bank/authzen/access/v1/evaluation","access_evaluations_endpoint":"https://kc.example/realms/bank/authzen/access/v1/evaluations"}"#,
        )
        .unwrap();
        assert_eq!(d.policy_decision_point, "https://kc.example/realms/bank");
        assert_eq!(
            d.evaluations_path(),
            Some(
                Endpoints::for_config(&cfg("http://kc"))
                    .evaluations
                    .as_str()
            )
        );
        // the batch endpoint is optional in the specification
        let d = parse_discovery(
            200,
            br#"{"policy_decision_point":"p","access_evaluation_endpoint":"http://kc"}"#,
        )
        .unwrap();
        assert_eq!(d.evaluations_path(), None);
        assert_eq!(url_path("http://kc"), "/");
        assert!(matches!(
            parse_discovery(404, br#"{"error":"HTTP 404 Not Found"}"#),
            Err(Failure::Http { status: 404, .. })
        ));
        assert!(matches!(
            parse_discovery(503, b"x"),
            Err(Failure::Unavailable(_))
        ));
        assert!(matches!(
            parse_discovery(200, br#"{"policy_decision_point":"p"}"#),
            Err(Failure::BadBody(_))
        ));
        assert!(matches!(
            parse_discovery(200, b"<html>"),
            Err(Failure::BadBody(_))
        ));
    }
}
