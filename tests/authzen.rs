//! Keycloak's two decision endpoints against each other, and AuthZEN through Envoy
//! (`kcpep.decision-protocol`, docs/configuration.md "Decision protocol").
//!
//! - The differential: for every user, resource and scope of the demo realm's two resource
//!   servers and of the replay realm's (`authz-test`), the UMA grant (the user's token, Keycloak's
//!   own enforcer's question) and AuthZEN (the resource server's PAT, the user by `sub`) decide
//!   the same. Both requests are the filter's own (`keycloak::uma`, `keycloak::authzen`), sent by
//!   the test. A resource without scopes cannot be asked through AuthZEN (an action is a scope);
//!   those are listed, not compared.
//! - Pushed claims: the replay realm's JavaScript "Withdrawal Limit Policy" reads
//!   `withdrawal.amount` the same from the UMA grant's claim token and from AuthZEN's context.
//! - Through Envoy: the stack's `authzen` enforcer (envoy/envoy.yaml, `decision-protocol:
//!   authzen`) gives seed 002's table as the UMA enforcer `unanimous` does, asks for two scopes
//!   in one call, and `authzen-claims` decides the withdrawal as the UMA `replay-claims` does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keycloak_pep::config::EnforcerConfig;
use keycloak_pep::keycloak::authzen::{
    self, AuthzenOutcome, Decision, Evaluation, EvaluationsRequest, Semantic,
};
use keycloak_pep::keycloak::uma::{self, PermissionRequest, ResponseMode, UmaGrant, UmaOutcome};

/// A resource server and the users of its realm (password `password`), who log in with
/// `login_client`.
struct Server {
    realm: &'static str,
    client: &'static str,
    secret: &'static str,
    login_client: &'static str,
    users: &'static [&'static str],
}

const SERVERS: &[Server] = &[
    Server {
        realm: "bank",
        client: "bank-api",
        secret: "bank-api-secret",
        login_client: "demo-cli",
        users: USERS,
    },
    Server {
        realm: "bank",
        client: "bank-api-affirmative",
        secret: "bank-api-affirmative-secret",
        login_client: "demo-cli",
        users: USERS,
    },
    Server {
        realm: "authz-test",
        client: "resource-server-test",
        secret: "secret",
        login_client: "public-client-test",
        users: &["marta", "kolo"],
    },
    Server {
        realm: "authz-test",
        client: "resource-server-uma-test",
        secret: "secret",
        login_client: "public-client-test",
        users: &["marta", "kolo"],
    },
];

/// Whether this Keycloak serves AuthZEN: 26.7 and later, which scripts/stack.sh starts with
/// `--features=authzen`. The older lines of `make e2e-matrix` run without it: there the AuthZEN
/// enforcers must fail closed ([`without_authzen_the_enforcers_fail_closed`]) and the tests that
/// compare decisions end after checking that.
fn authzen_served() -> bool {
    let r = request(
        &keycloak(),
        "GET",
        "/realms/bank/.well-known/authzen-configuration",
        &[],
        b"",
    );
    if keycloak_version() >= (26, 7) {
        assert_eq!(
            r.status,
            200,
            "Keycloak started without --features=authzen: {}",
            r.text()
        );
        true
    } else {
        assert_eq!(r.status, 404, "{}", r.text());
        false
    }
}

fn config(s: &Server) -> EnforcerConfig {
    let json = serde_json::json!({"realm": s.realm, "auth-server-url": keycloak(),
        "resource": s.client, "credentials": {"secret": s.secret},
        "kcpep": {"decision-protocol": "authzen"}});
    EnforcerConfig::from_value(&json, "").unwrap()
}

fn pat(cfg: &EnforcerConfig) -> String {
    let r = send(&uma::pat_request(cfg));
    uma::parse_token_response(r.status, &r.body)
        .unwrap()
        .access_token
}

/// A user's access token and `sub`.
fn login(s: &Server, user: &str) -> (String, String) {
    let t = token_grant(
        s.realm,
        &format!(
            "grant_type=password&client_id={}&username={user}&password=password",
            s.login_client
        ),
    );
    let token = t["access_token"].as_str().unwrap().to_string();
    let claims = jwt_claims(&token);
    (token, claims["sub"].as_str().unwrap().to_string())
}

/// The resource server's resources (protection API), with their types and scopes.
fn resources(cfg: &EnforcerConfig, pat: &str) -> Vec<keycloak_pep::wire::resource::Resource> {
    let q = uma::ResourceQuery::default();
    let r = send(&uma::resource_query_request(cfg, pat, &q));
    uma::parse_resources(r.status, &r.body).unwrap()
}

/// The UMA grant's decision (`response_mode=decision`) for one resource and scope.
fn uma_decides(
    cfg: &EnforcerConfig,
    token: &str,
    resource: &str,
    scope: &str,
    claims: &Claims,
) -> bool {
    let g = UmaGrant {
        subject_token: token,
        permissions: vec![PermissionRequest {
            resource: Some(resource.into()),
            scopes: vec![scope.into()],
        }],
        response_mode: ResponseMode::Decision,
        uri_form: false,
        claims: Some(claims),
        rpt: None,
    };
    let r = send(&uma::uma_grant_request(cfg, &g));
    match uma::parse_uma_response(r.status, &r.body, ResponseMode::Decision) {
        UmaOutcome::Granted(_) => true,
        UmaOutcome::Denied => false,
        other => panic!("UMA grant {resource}#{scope}: {other:?} ({})", r.text()),
    }
}

use keycloak_pep::wire::claims::Claims;

/// AuthZEN's decisions for one user, one per evaluation.
fn authzen_decides(
    cfg: &EnforcerConfig,
    pat: &str,
    sub: &str,
    evaluations: Vec<Evaluation>,
    claims: &Claims,
) -> Vec<bool> {
    let n = evaluations.len();
    let q = EvaluationsRequest {
        user_id: sub,
        evaluations,
        semantic: Semantic::ExecuteAll,
        context: Some(claims),
    };
    let r = send(&authzen::evaluations_request(cfg, pat, &q));
    match authzen::parse_evaluations(r.status, &r.body, n, Semantic::ExecuteAll) {
        AuthzenOutcome::Decided(d) => d.0.iter().map(|d| *d == Decision::Permit).collect(),
        other => panic!("AuthZEN: {other:?} ({})", r.text()),
    }
}

#[test]
fn authzen_and_the_uma_grant_decide_alike_for_every_user_resource_and_scope() {
    if !authzen_served() {
        return;
    }
    let mut compared = 0;
    let (mut granted, mut refused) = (0, 0);
    let mut disagreements = Vec::new();
    let mut not_expressible = Vec::new();
    let none = Claims::new();
    for s in SERVERS {
        let cfg = config(s);
        let pat = pat(&cfg);
        let resources = resources(&cfg, &pat);
        assert!(!resources.is_empty(), "{}: no resources", s.client);
        for r in &resources {
            if r.scopes.is_empty() {
                not_expressible.push(format!("{}/{}", s.client, r.name));
            }
        }
        for user in s.users {
            let (token, sub) = login(s, user);
            let asked: Vec<(String, String)> = resources
                .iter()
                .flat_map(|r| r.scopes.iter().map(|sc| (r.name.clone(), sc.name.clone())))
                .collect();
            let evaluations = resources
                .iter()
                .flat_map(|r| {
                    r.scopes.iter().map(|sc| Evaluation {
                        resource_type: r.kind.clone().unwrap_or_default(),
                        resource_name: r.name.clone(),
                        action: sc.name.clone(),
                    })
                })
                .collect();
            // every question of this user in one AuthZEN call
            let by_authzen = authzen_decides(&cfg, &pat, &sub, evaluations, &none);
            for ((resource, scope), authzen) in asked.iter().zip(by_authzen) {
                let uma = uma_decides(&cfg, &token, resource, scope, &none);
                compared += 1;
                if uma {
                    granted += 1;
                } else {
                    refused += 1;
                }
                if uma != authzen {
                    disagreements.push(format!(
                        "{} {user} {resource}#{scope}: UMA grant {uma}, AuthZEN {authzen}",
                        s.client
                    ));
                }
            }
        }
    }
    eprintln!(
        "compared {compared} decisions ({granted} granted, {refused} refused); not expressible \
         in AuthZEN (no scope): {}",
        not_expressible.join(", ")
    );
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    // the comparison is not vacuous: both answers occur
    assert!(
        granted > 0 && refused > 0,
        "{granted} granted, {refused} refused"
    );
    assert!(compared >= 50, "only {compared} decisions compared");
}

#[test]
fn pushed_claims_reach_the_policies_alike() {
    if !authzen_served() {
        return;
    }
    let s = &SERVERS[2];
    let cfg = config(s);
    let pat = pat(&cfg);
    let (token, sub) = login(s, "marta");
    let mut seen = Vec::new();
    for amount in ["50", "100", "101", "1000", "ten", ""] {
        let claims: Claims = [("withdrawal.amount".to_string(), vec![amount.to_string()])].into();
        let uma = uma_decides(&cfg, &token, "Bank Account", "withdrawal", &claims);
        let evaluation = Evaluation {
            resource_type: String::new(),
            resource_name: "Bank Account".into(),
            action: "withdrawal".into(),
        };
        let by_authzen = authzen_decides(&cfg, &pat, &sub, vec![evaluation], &claims)[0];
        assert_eq!(uma, by_authzen, "withdrawal.amount {amount:?}");
        seen.push(uma);
    }
    // the Withdrawal Limit Policy: at most 100
    assert_eq!(seen, [true, true, false, false, false, false]);
}

fn get(host: &str, path: &str, token: Option<&str>) -> Response {
    send_to(&envoy(), "GET", host, path, token, &[], b"")
}

#[test]
fn seed_002_through_the_authzen_enforcer_equals_the_uma_enforcer() {
    if !authzen_served() {
        return;
    }
    for user in USERS {
        let token = user_token(user);
        let before = stat("kcpep.keycloak.calls.authzen");
        let by_authzen = get("authzen.bank.local", "/account/1", Some(&token));
        assert_eq!(
            stat("kcpep.keycloak.calls.authzen") - before,
            1,
            "{user}: one AuthZEN call"
        );
        let by_uma = get("unanimous.bank.local", "/account/1", Some(&token));
        assert_eq!(
            by_authzen.status,
            by_uma.status,
            "{user}: {}",
            by_authzen.text()
        );
        let want = if expected_allowed("UNANIMOUS", user) {
            200
        } else {
            403
        };
        assert_eq!(by_authzen.status, want, "{user}");
        // the decision table keeps AuthZEN's answer like the UMA grant's
        let before = stat("kcpep.keycloak.calls.authzen");
        assert_eq!(
            get("authzen.bank.local", "/account/1", Some(&token)).status,
            want
        );
        assert_eq!(
            stat("kcpep.keycloak.calls.authzen"),
            before,
            "{user}: cached"
        );
    }
    assert_eq!(get("authzen.bank.local", "/account/1", None).status, 401);
}

#[test]
fn two_scopes_are_asked_in_one_call_under_the_methods_semantic() {
    if !authzen_served() {
        return;
    }
    // POST /transfer/*: transfer:create and transfer:view, ALL; PUT: the same, ANY.
    // Keycloak's oracle: the UMA grant's permissions for the user's bearer token.
    let (client, secret, _) = CLIENTS[0];
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{client}:{secret}")
        )
    );
    for user in USERS {
        let token = user_token(user);
        let form = format!(
            "audience=bank-api&permission=Transfer+Resource%23transfer%3Acreate%2Ctransfer%3Aview\
             &response_mode=permissions&subject_token={token}"
        );
        let r = uma_grant("bank", &auth, &form);
        let granted: Vec<String> = match r.status {
            200 => r.json()[0]["scopes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect(),
            403 => vec![],
            other => panic!("{user}: UMA grant {other} {}", r.text()),
        };
        let all = granted.len() == 2;
        let any = !granted.is_empty();
        for (method, want) in [("POST", all), ("PUT", any)] {
            let before = stat("kcpep.keycloak.calls.authzen");
            let r = send_to(
                &envoy(),
                method,
                "authzen.bank.local",
                "/transfer/1",
                Some(&token),
                &[],
                b"",
            );
            assert_eq!(
                stat("kcpep.keycloak.calls.authzen") - before,
                1,
                "{user} {method}: both scopes in one call"
            );
            assert_eq!(
                r.status,
                if want { 200 } else { 403 },
                "{user} {method} (Keycloak grants {granted:?}): {}",
                r.text()
            );
        }
    }
}

#[test]
fn a_pushed_claim_decides_through_the_authzen_enforcer_as_through_the_uma_one() {
    if !authzen_served() {
        return;
    }
    let s = &SERVERS[2];
    let (token, _) = login(s, "marta");
    for amount in ["50", "100", "101", "ten"] {
        let path = format!("/api/bank/account/1/withdrawal?withdrawal.amount={amount}");
        let post = |host: &str| send_to(&envoy(), "POST", host, &path, Some(&token), &[], b"");
        let by_authzen = post("authzen-claims.authz-test.local");
        let by_uma = post("claims.authz-test.local");
        assert_eq!(
            by_authzen.status,
            by_uma.status,
            "amount {amount}: {}",
            by_authzen.text()
        );
        let allowed = amount.parse::<u32>().is_ok_and(|a| a <= 100);
        assert_eq!(
            by_authzen.status,
            if allowed { 200 } else { 403 },
            "amount {amount}"
        );
    }
}

#[test]
fn without_authzen_the_enforcers_fail_closed() {
    if authzen_served() {
        return;
    }
    let token = user_token("owner");
    let before = stat("kcpep.requests.denied.503");
    let r = get("authzen.bank.local", "/account/1", Some(&token));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(stat("kcpep.requests.denied.503") - before, 1);
    poll_until("the deny line", std::time::Duration::from_secs(5), || {
        let log = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".run/envoy.log"),
        )
        .unwrap_or_default();
        log.contains("--features=authzen").then_some(())
    });
}
