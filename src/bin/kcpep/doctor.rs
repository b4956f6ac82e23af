//! `kcpep doctor`: does the configuration match the realm? A path whose `name` has a typo, a
//! scope the resource lacks, a changed secret, a resource without a permission all show up in
//! production as silent 403s; here each is a finding with the JSON path of the setting, found by
//! asking Keycloak what the filter asks it (the core's own requests) plus a few reads.
//!
//! Gathering talks to Keycloak ([`gather`]); judging is pure ([`judge`], unit-tested here).

use crate::keycloak::{Exchange, Keycloak};
use anyhow::{anyhow, Context, Result};
use keycloak_pep::config::{DecisionProtocol, EnforcementMode, EnforcerConfig};
use keycloak_pep::keycloak::authzen;
use keycloak_pep::keycloak::uma::{self, ResourceQuery};
use keycloak_pep::wire::resource::Resource;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

pub struct Options {
    pub config: PathBuf,
    pub enforcer: Option<String>,
    pub json: bool,
    pub admin_token_file: Option<PathBuf>,
    pub timeout_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

impl Severity {
    fn word(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

/// One thing the operator should know, at the JSON path of the setting it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

fn finding(severity: Severity, path: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding {
        severity,
        path: path.into(),
        message: message.into(),
    }
}

/// What Keycloak told us about the realm, as far as it could be asked.
#[derive(Debug, Default)]
pub struct Realm {
    pub issuer: Option<String>,
    /// `(kid, alg)` of the realm's signing keys.
    pub signing_keys: Vec<(String, String)>,
    /// Why no PAT was had (the token endpoint's refusal).
    pub pat_refused: Option<String>,
    /// The resource server's resources (None: not read, for want of a PAT).
    pub resources: Option<Vec<Resource>>,
    /// Resource id -> how many permissions name it (None: no admin token given).
    pub permissions: Option<Vec<(String, usize)>>,
    /// Why Keycloak's AuthZEN discovery was not had (None: found, or not asked: the enforcer
    /// keeps the UMA grant).
    pub authzen_missing: Option<String>,
}

/// The prefix of an enforcer's settings in the file: `enforcers.NAME.` in a plugin
/// configuration, and whether its policy-enforcer settings are nested or flat.
pub struct Prefix {
    pub top: String,
    pub pe: String,
}

impl Prefix {
    fn of(raw: &Value, name: &str) -> Prefix {
        let (obj, top) = match raw.get("enforcers").and_then(|e| e.get(name)) {
            Some(e) => (e, format!("enforcers.{name}.")),
            None => (raw, String::new()),
        };
        let pe = if obj.get("policy-enforcer").is_some() {
            format!("{top}policy-enforcer.")
        } else {
            top.clone()
        };
        Prefix { top, pe }
    }
}

/// Keycloak could not be asked at all (exit code 2).
#[derive(Debug)]
struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for Unreachable {}

pub fn run(o: &Options) -> Result<ExitCode> {
    let cfg = crate::load(&o.config)?;
    let raw: Value = serde_json::from_slice(&std::fs::read(&o.config)?)
        .with_context(|| format!("reading {}", o.config.display()))?;
    let admin_token = o
        .admin_token_file
        .as_deref()
        .map(crate::read_token_file)
        .transpose()?;
    let chosen: Vec<&(String, EnforcerConfig)> = cfg
        .enforcers
        .iter()
        .filter(|(n, _)| o.enforcer.as_ref().is_none_or(|want| want == n))
        .collect();
    if chosen.is_empty() {
        return Err(anyhow!(
            "no enforcer named {}",
            o.enforcer.as_deref().unwrap_or_default()
        ));
    }
    let mut report = Vec::new();
    let mut unreachable = false;
    for (name, ec) in chosen {
        let prefix = Prefix::of(&raw, name);
        let mut log = Vec::new();
        let kc = Keycloak::for_enforcer(ec, o.timeout_s)?;
        let findings = match gather(&kc, ec, admin_token.as_deref(), &mut log) {
            Ok(realm) => judge(ec, &prefix, &realm),
            Err(e) => {
                unreachable = true;
                vec![finding(
                    Severity::Error,
                    format!("{}auth-server-url", prefix.top),
                    format!("cannot reach Keycloak at {}: {e}", kc.origin()),
                )]
            }
        };
        report.push((name.clone(), findings, log));
    }
    let count = |s: Severity| {
        report
            .iter()
            .flat_map(|(_, f, _)| f)
            .filter(|f| f.severity == s)
            .count()
    };
    let (errors, warnings, notes) = (
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Note),
    );
    if o.json {
        let out = json!({
            "enforcers": report.iter().map(|(n, f, log)| json!({
                "name": n, "findings": f, "keycloak_calls": log,
            })).collect::<Vec<_>>(),
            "errors": errors, "warnings": warnings, "notes": notes,
            "keycloak_reachable": !unreachable,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (name, findings, log) in &report {
            let calls: Vec<String> = log.iter().map(summary).collect();
            println!("[{name}] asked Keycloak: {}", calls.join(", "));
            for f in findings {
                println!("{:<8}{}: {}", f.severity.word(), f.path, f.message);
            }
        }
        println!(
            "doctor: {} enforcer(s), {errors} error(s), {warnings} warning(s), {notes} note(s)",
            report.len()
        );
    }
    Ok(ExitCode::from(if unreachable {
        2
    } else if errors > 0 {
        1
    } else {
        0
    }))
}

fn summary(e: &Exchange) -> String {
    match (e.status, &e.error) {
        (Some(s), _) => format!("{} {s}", e.what),
        (None, Some(err)) => format!("{} failed ({err})", e.what),
        (None, None) => format!("{} ?", e.what),
    }
}

/// Asks Keycloak what the filter would ask at start, plus the resource list and (with an admin
/// token) each resource's permissions. Err: Keycloak did not answer at all.
fn gather(
    kc: &Keycloak,
    cfg: &EnforcerConfig,
    admin_token: Option<&str>,
    log: &mut Vec<Exchange>,
) -> Result<Realm> {
    let mut realm = Realm::default();
    let (status, body) = kc
        .exchange("discovery", &uma::discovery_request(cfg), log)
        .map_err(Unreachable)?;
    match uma::parse_discovery(status, &body) {
        Ok(d) => realm.issuer = Some(d.issuer),
        Err(e) => {
            return Err(Unreachable(format!(
                "no UMA discovery document for realm {:?} ({e})",
                cfg.realm
            ))
            .into())
        }
    }
    if cfg.proxy.decision_protocol != DecisionProtocol::UmaGrant {
        realm.authzen_missing = match kc.exchange("AuthZEN", &authzen::discovery_request(cfg), log)
        {
            Ok((status, body)) => authzen::parse_discovery(status, &body)
                .err()
                .map(|e| format!("{status}: {e}")),
            Err(e) => Some(e),
        };
    }
    if let Ok((200, body)) = kc.exchange("keys", &uma::jwks_request(cfg), log) {
        let keys: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        for k in keys["keys"].as_array().into_iter().flatten() {
            if k["use"].as_str().unwrap_or("sig") == "sig" {
                realm.signing_keys.push((
                    k["kid"].as_str().unwrap_or("?").to_string(),
                    k["alg"].as_str().unwrap_or("?").to_string(),
                ));
            }
        }
    }
    let pat = match kc.exchange("PAT", &uma::pat_request(cfg), log) {
        Ok((status, body)) => match uma::parse_token_response(status, &body) {
            Ok(t) => Some(t.access_token),
            Err(e) => {
                realm.pat_refused = Some(format!("{status}: {e}"));
                None
            }
        },
        Err(e) => {
            realm.pat_refused = Some(e);
            None
        }
    };
    if let Some(pat) = &pat {
        let req = uma::resource_query_request(cfg, pat, &ResourceQuery::default());
        if let Ok((status, body)) = kc.exchange("resources", &req, log) {
            realm.resources = uma::parse_resources(status, &body).ok();
        }
    }
    if let (Some(admin), Some(resources)) = (admin_token, &realm.resources) {
        realm.permissions = permissions(kc, cfg, admin, resources, log);
    }
    Ok(realm)
}

/// Each resource's permission count, from the admin API (the protection API cannot list them).
fn permissions(
    kc: &Keycloak,
    cfg: &EnforcerConfig,
    admin: &str,
    resources: &[Resource],
    log: &mut Vec<Exchange>,
) -> Option<Vec<(String, usize)>> {
    let base = cfg.auth_server_url.split_once("://").map_or("", |(_, r)| r);
    let context = base.find('/').map_or("", |i| &base[i..]);
    let get = |path: String| keycloak_pep::wire::http::HttpRequest {
        method: "GET",
        path,
        headers: vec![("authorization".into(), format!("Bearer {admin}"))],
        body: Vec::new(),
    };
    let admin_realm = format!("{context}/admin/realms/{}", cfg.realm);
    let clients = get(format!("{admin_realm}/clients?clientId={}", cfg.client_id));
    let (status, body) = kc.exchange("admin: client", &clients, log).ok()?;
    let list: Value = serde_json::from_slice(&body)
        .ok()
        .filter(|_| status == 200)?;
    let id = list.get(0)?.get("id")?.as_str()?.to_string();
    let mut out = Vec::new();
    for r in resources {
        let req = get(format!(
            "{admin_realm}/clients/{id}/authz/resource-server/resource/{}/permissions",
            r.id
        ));
        let (status, body) = kc.exchange("admin: permissions", &req, log).ok()?;
        let perms: Value = serde_json::from_slice(&body)
            .ok()
            .filter(|_| status == 200)?;
        out.push((r.id.clone(), perms.as_array().map_or(0, Vec::len)));
    }
    Some(out)
}

/// The algorithms the default module verifies through Envoy's `verify_signature`.
const HOST_ALGS: [&str; 5] = ["RS256", "RS384", "RS512", "ES256", "ES384"];

/// The findings for one enforcer, from what Keycloak said.
pub fn judge(cfg: &EnforcerConfig, p: &Prefix, realm: &Realm) -> Vec<Finding> {
    let mut out = Vec::new();
    let pe = &p.pe;
    if let Some(issuer) = &realm.issuer {
        if *issuer != cfg.proxy.issuer {
            out.push(finding(
                Severity::Error,
                format!("{}kcpep.issuer", p.top),
                format!("Keycloak's issuer is {issuer:?}, the filter expects {:?}: every token would be refused (401). Set kcpep.issuer, or Keycloak's hostname", cfg.proxy.issuer),
            ));
        }
    }
    let checkable: Vec<&(String, String)> = realm
        .signing_keys
        .iter()
        .filter(|(_, alg)| HOST_ALGS.contains(&alg.as_str()))
        .collect();
    if realm.signing_keys.is_empty() {
        out.push(finding(
            Severity::Error,
            format!("{}realm", p.top),
            "the realm published no signing key: no token can be verified",
        ));
    } else if checkable.is_empty() {
        out.push(finding(Severity::Error, format!("{}realm", p.top), format!("no signing key of the realm is one the default module can verify ({}); use the rust-crypto build (make wasm-rust-crypto)", algs(&realm.signing_keys))));
    } else if checkable.len() < realm.signing_keys.len() {
        let others: Vec<(String, String)> = realm
            .signing_keys
            .iter()
            .filter(|(_, a)| !HOST_ALGS.contains(&a.as_str()))
            .cloned()
            .collect();
        out.push(finding(Severity::Warning, format!("{}realm", p.top), format!("tokens signed with {} are verified only by the rust-crypto build; the default module answers them 401", algs(&others))));
    }
    if let Some(why) = &realm.authzen_missing {
        out.push(finding(
            Severity::Error,
            format!("{}kcpep.decision-protocol", p.top),
            format!("Keycloak has no AuthZEN endpoint for realm {:?} ({why}): start Keycloak 26.7 or later with --features=authzen, or keep decision-protocol uma-grant. Until then the decisions it would ask for answer 503", cfg.realm),
        ));
    }
    if let Some(why) = &realm.pat_refused {
        out.push(finding(
            Severity::Error,
            format!("{}credentials.secret", p.top),
            format!("client {:?} could not get a protection API token ({why}): the filter answers 503 on every enforced path. Check the secret, and that the client is confidential with service accounts and authorization enabled", cfg.client_id),
        ));
        return out;
    }
    let Some(resources) = &realm.resources else {
        out.push(finding(
            Severity::Error,
            format!("{}resource", p.top),
            "Keycloak would not list the client's resources (is authorization enabled on it?)",
        ));
        return out;
    };
    let mut reached = vec![false; resources.len()];
    for (i, path) in cfg.paths.iter().enumerate() {
        let at = format!("{pe}paths[{i}]");
        if path.enforcement_mode == EnforcementMode::Disabled {
            continue;
        }
        let bound = match &path.name {
            Some(name) => match resources.iter().position(|r| r.name == *name) {
                Some(k) => Some(k),
                None => {
                    out.push(finding(Severity::Error, format!("{at}.name"), format!("no resource named {name:?} on client {:?}{}: requests to {} are denied (403)", cfg.client_id, did_you_mean(name, resources), path.path)));
                    continue;
                }
            },
            None => resources.iter().position(|r| r.uris.contains(&path.path)),
        };
        let Some(k) = bound else {
            let how = if cfg.lazy_load_paths {
                "it is looked up per request (lazy-load-paths)"
            } else {
                "requests to it are denied (403)"
            };
            out.push(finding(
                Severity::Warning,
                format!("{at}.path"),
                format!(
                    "no resource of client {:?} has the URI {:?} and the path names none: {how}",
                    cfg.client_id, path.path
                ),
            ));
            continue;
        };
        reached[k] = true;
        let r = &resources[k];
        let have = r.scope_names();
        let mut wanted: Vec<(String, &String)> = path
            .scopes
            .iter()
            .enumerate()
            .map(|(j, s)| (format!("{at}.scopes[{j}]"), s))
            .collect();
        for (m, method) in path.methods.iter().enumerate() {
            for (j, s) in method.scopes.iter().enumerate() {
                wanted.push((format!("{at}.methods[{m}].scopes[{j}]"), s));
            }
        }
        for (where_, s) in wanted {
            if !have.contains(s) {
                out.push(finding(Severity::Error, where_, format!("resource {:?} has no scope {s:?} (its scopes: {}): requests that need it are denied (403)", r.name, list(&have))));
            }
        }
        if cfg.http_method_as_scope && path.methods.is_empty() {
            let methods: Vec<&str> = ["GET", "POST", "PUT", "PATCH", "DELETE"]
                .into_iter()
                .filter(|m| !have.iter().any(|s| s == m))
                .collect();
            if methods.len() == 5 {
                out.push(finding(Severity::Error, format!("{pe}http-method-as-scope"), format!("resource {:?} has no scope named after an HTTP method (its scopes: {}): with http-method-as-scope every request to {} is denied (403)", r.name, list(&have), path.path)));
            }
        }
    }
    if !cfg.paths.is_empty() && !cfg.lazy_load_paths {
        for (k, r) in resources.iter().enumerate() {
            if !reached[k] && !r.uris.is_empty() && r.name != "Default Resource" {
                out.push(finding(Severity::Note, format!("{pe}paths"), format!("resource {:?} ({}) is reached by no configured path: requests to its URIs are denied (403) unless lazy-load-paths is on", r.name, list(&r.uris))));
            }
        }
    }
    if cfg.paths.is_empty() && !cfg.lazy_load_paths {
        out.push(finding(Severity::Note, format!("{pe}paths"), format!("no paths configured: the filter enforces the client's {} resource(s) by their URIs, loaded at start", resources.len())));
    }
    if cfg.lazy_load_paths && resources.iter().all(|r| r.uris.is_empty()) {
        out.push(finding(Severity::Warning, format!("{pe}lazy-load-paths"), "no resource of the client has a URI: lazily loaded paths find nothing, and unconfigured paths are denied"));
    }
    if cfg.lazy_load_paths && !cfg.path_cache.enabled() {
        out.push(finding(
            Severity::Note,
            format!("{pe}path-cache"),
            "lazy-load-paths without a path cache asks Keycloak for the resource on every request",
        ));
    }
    match &realm.permissions {
        None => out.push(finding(Severity::Note, format!("{pe}paths"), "permissions not checked (give --admin-token-file: the protection API cannot list them)")),
        Some(counts) => {
            for (i, path) in cfg.paths.iter().enumerate() {
                if path.enforcement_mode == EnforcementMode::Disabled {
                    continue;
                }
                let r = path
                    .name
                    .as_ref()
                    .and_then(|n| resources.iter().find(|r| r.name == *n))
                    .or_else(|| resources.iter().find(|r| r.uris.contains(&path.path)));
                if let Some(r) = r {
                    if counts.iter().any(|(id, n)| *id == r.id && *n == 0) {
                        out.push(finding(Severity::Error, format!("{pe}paths[{i}]"), format!("resource {:?} has no permission: Keycloak denies every request for it (403)", r.name)));
                    }
                }
            }
        }
    }
    out
}

fn algs(keys: &[(String, String)]) -> String {
    let v: Vec<String> = keys
        .iter()
        .map(|(kid, alg)| format!("{alg} (kid {kid})"))
        .collect();
    v.join(", ")
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// ` (did you mean "X"?)` when a resource name is a small edit away.
fn did_you_mean(name: &str, resources: &[Resource]) -> String {
    resources
        .iter()
        .map(|r| {
            (
                distance(&name.to_lowercase(), &r.name.to_lowercase()),
                &r.name,
            )
        })
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| format!(" (did you mean {n:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, for suggestions only.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pe: Value) -> EnforcerConfig {
        let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
                       "credentials": {"secret": "s"}, "policy-enforcer": pe});
        EnforcerConfig::from_value(&v, "").unwrap()
    }

    fn resource(id: &str, name: &str, uris: &[&str], scopes: &[&str]) -> Resource {
        Resource::read(
            &json!({"_id": id, "name": name, "uris": uris,
                "resource_scopes": scopes.iter().map(|s| json!({"name": s})).collect::<Vec<_>>()}),
            "",
        )
        .unwrap()
    }

    fn realm() -> Realm {
        Realm {
            issuer: Some("http://kc/realms/bank".into()),
            signing_keys: vec![("k1".into(), "RS256".into())],
            pat_refused: None,
            resources: Some(vec![
                resource(
                    "r1",
                    "View Account Resource",
                    &["/account/{id}"],
                    &["account:view"],
                ),
                resource(
                    "r2",
                    "Transfer Resource",
                    &["/transfer/*"],
                    &["transfer:create"],
                ),
            ]),
            permissions: Some(vec![("r1".into(), 1), ("r2".into(), 2)]),
            authzen_missing: None,
        }
    }

    fn prefix() -> Prefix {
        Prefix {
            top: String::new(),
            pe: "policy-enforcer.".into(),
        }
    }

    fn paths(pe: Value, realm: &Realm) -> Vec<(Severity, String)> {
        judge(&cfg(pe), &prefix(), realm)
            .into_iter()
            .map(|f| (f.severity, f.path))
            .collect()
    }

    #[test]
    fn a_matching_configuration_is_clean() {
        let pe = json!({"paths": [
            {"name": "View Account Resource", "path": "/account/{id}", "methods": [{"method": "GET", "scopes": ["account:view"]}]},
            {"path": "/transfer/*", "scopes": ["transfer:create"]}]});
        assert_eq!(paths(pe, &realm()), vec![]);
    }

    #[test]
    fn a_misspelled_name_a_missing_scope_and_an_unreached_resource_are_named_by_path() {
        let pe = json!({"paths": [
            {"name": "View Acount Resource", "path": "/account/{id}"},
            {"path": "/transfer/*", "methods": [{"method": "POST", "scopes": ["transfer:send"]}]}]});
        let f = judge(&cfg(pe), &prefix(), &realm());
        assert!(
            f[0].message
                .contains("did you mean \"View Account Resource\""),
            "{f:?}"
        );
        let got: Vec<(Severity, String)> = f.into_iter().map(|f| (f.severity, f.path)).collect();
        assert_eq!(
            got,
            vec![
                (Severity::Error, "policy-enforcer.paths[0].name".into()),
                (
                    Severity::Error,
                    "policy-enforcer.paths[1].methods[0].scopes[0]".into()
                ),
                (Severity::Note, "policy-enforcer.paths".into()),
            ]
        );
    }

    #[test]
    fn refused_credentials_a_wrong_issuer_and_unverifiable_keys() {
        let mut r = realm();
        r.issuer = Some("https://login.example/realms/bank".into());
        r.signing_keys = vec![("k2".into(), "PS256".into())];
        r.pat_refused = Some("401: invalid_client".into());
        assert_eq!(
            paths(json!({}), &r),
            vec![
                (Severity::Error, "kcpep.issuer".into()),
                (Severity::Error, "realm".into()),
                (Severity::Error, "credentials.secret".into()),
            ]
        );
    }

    #[test]
    fn keycloak_without_authzen_is_an_error_naming_the_flag() {
        let mut r = realm();
        r.authzen_missing = Some("404: HTTP 404".into());
        let f = judge(&cfg(json!({})), &prefix(), &r);
        let e = f
            .iter()
            .find(|f| f.path.ends_with("kcpep.decision-protocol"))
            .expect("a finding at kcpep.decision-protocol");
        assert_eq!(e.severity, Severity::Error);
        assert!(e.message.contains("--features=authzen"), "{}", e.message);
    }

    #[test]
    fn a_resource_without_permission_always_denies() {
        let mut r = realm();
        r.permissions = Some(vec![("r1".into(), 0), ("r2".into(), 1)]);
        let pe = json!({"paths": [{"path": "/account/{id}"}, {"path": "/transfer/*"}]});
        assert_eq!(
            paths(pe, &r),
            vec![(Severity::Error, "policy-enforcer.paths[0]".into())]
        );
    }

    #[test]
    fn suggestions_are_small_edits_only() {
        assert_eq!(distance("kitten", "sitting"), 3);
        let r = realm().resources.unwrap();
        assert_eq!(did_you_mean("Nothing Alike At All", &r), "");
    }
}
