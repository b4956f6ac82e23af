//! Contract tests: the core's own request builders and parsers against the real Keycloak of
//! `scripts/stack.sh` with the seed-002 `bank` realm. Run by `make test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keycloak_pep::config::EnforcerConfig;
use keycloak_pep::keycloak::token::{self, Expectations, Jwks, TokenError};
use keycloak_pep::keycloak::uma::{
    self, PermissionRequest, ResourceQuery, ResponseMode, UmaGrant, UmaOutcome,
};

fn config(client: &str, secret: &str) -> EnforcerConfig {
    let json = format!(
        r#"{{"realm":"bank","auth-server-url":"{}","resource":"{client}","credentials":{{"secret":"{secret}"}}}}"#,
        keycloak()
    );
    EnforcerConfig::from_json(json.as_bytes()).unwrap()
}

fn pat(cfg: &EnforcerConfig) -> String {
    let r = send(&uma::pat_request(cfg));
    uma::parse_token_response(r.status, &r.body)
        .unwrap()
        .access_token
}

fn grant(cfg: &EnforcerConfig, user_token: &str, mode: ResponseMode, uri_form: bool) -> UmaOutcome {
    let resource = if uri_form {
        "/account/1"
    } else {
        "View Account Resource"
    };
    let g = UmaGrant {
        subject_token: user_token,
        permissions: vec![PermissionRequest {
            resource: Some(resource.into()),
            scopes: vec!["account:view".into()],
        }],
        response_mode: mode,
        uri_form,
        claims: None,
        rpt: None,
    };
    let r = send(&uma::uma_grant_request(cfg, &g));
    uma::parse_uma_response(r.status, &r.body, mode)
}

/// The path part of an absolute URL.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

#[test]
fn discovery_document() {
    let (client, secret, _) = CLIENTS[0];
    let cfg = config(client, secret);
    let r = send(&uma::discovery_request(&cfg));
    let d = uma::parse_discovery(r.status, &r.body).unwrap();
    assert_eq!(
        d.issuer, cfg.proxy.issuer,
        "tokens are expected from the issuer Keycloak announces"
    );
    let e = uma::Endpoints::for_config(&cfg);
    assert_eq!(url_path(&d.token_endpoint), e.token);
    assert_eq!(url_path(&d.jwks_uri), e.jwks);
    assert_eq!(
        url_path(d.permission_endpoint.as_deref().unwrap()),
        e.permission
    );
    assert_eq!(
        url_path(d.resource_registration_endpoint.as_deref().unwrap()),
        e.resource_set
    );
}

#[test]
fn pat_by_client_credentials_and_wrong_secret() {
    for (client, secret, _) in CLIENTS {
        let cfg = config(client, secret);
        assert!(pat(&cfg).len() > 100);
    }
    let bad = config("bank-api", "wrong");
    let r = send(&uma::pat_request(&bad));
    assert!(matches!(
        uma::parse_token_response(r.status, &r.body),
        Err(uma::Failure::Http { status: 401, .. })
    ));
}

#[test]
fn seed_002_outcomes_in_every_response_mode() {
    let tokens: Vec<(&str, String)> = USERS.iter().map(|u| (*u, user_token(u))).collect();
    for (client, secret, strategy) in CLIENTS {
        let cfg = config(client, secret);
        for (user, tok) in &tokens {
            let want = expected_allowed(strategy, user);
            for (mode, uri_form) in [
                (ResponseMode::Decision, false),
                (ResponseMode::Permissions, false),
                (ResponseMode::Rpt, false),
                (ResponseMode::Decision, true),
                (ResponseMode::Permissions, true),
            ] {
                let outcome = grant(&cfg, tok, mode, uri_form);
                let got = match &outcome {
                    UmaOutcome::Granted(_) => true,
                    UmaOutcome::Denied => false,
                    other => {
                        panic!("{client}/{user}/{mode:?}/uri={uri_form}: unexpected {other:?}")
                    }
                };
                assert_eq!(
                    got, want,
                    "{strategy} {client} {user} {mode:?} uri_form={uri_form}"
                );
                if let UmaOutcome::Granted(Some(perms)) = outcome {
                    let p = perms
                        .iter()
                        .find(|p| p.rsname.as_deref() == Some("View Account Resource"))
                        .unwrap_or_else(|| panic!("no permission for the resource: {perms:?}"));
                    assert!(p.scopes.contains(&"account:view".to_string()), "{p:?}");
                }
            }
        }
    }
}

#[test]
fn unknown_resource_and_scope_are_refused_not_denied() {
    let (client, secret, _) = CLIENTS[1];
    let cfg = config(client, secret);
    let tok = user_token("owner");
    let g = UmaGrant {
        subject_token: &tok,
        permissions: vec![PermissionRequest {
            resource: Some("No Such Resource".into()),
            scopes: vec![],
        }],
        response_mode: ResponseMode::Decision,
        uri_form: false,
        claims: None,
        rpt: None,
    };
    let r = send(&uma::uma_grant_request(&cfg, &g));
    assert!(
        matches!(uma::parse_uma_response(r.status, &r.body, ResponseMode::Decision), UmaOutcome::Refused(e) if e.error == "invalid_resource")
    );
}

#[test]
fn protection_api_lookups_by_uri_and_name() {
    let (client, secret, _) = CLIENTS[0];
    let cfg = config(client, secret);
    let pat = pat(&cfg);
    let by_uri = send(&uma::resource_query_request(
        &cfg,
        &pat,
        &ResourceQuery {
            uri: Some("/account/{id}".into()),
            ..Default::default()
        },
    ));
    let found = uma::parse_resources(by_uri.status, &by_uri.body).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].name, "View Account Resource");
    assert_eq!(found[0].scope_names(), vec!["account:view"]);
    let by_name = send(&uma::resource_query_request(
        &cfg,
        &pat,
        &ResourceQuery {
            name: Some("View Account Resource".into()),
            owner: Some(client.to_string()),
            exact_name: true,
            ..Default::default()
        },
    ));
    let named = uma::parse_resources(by_name.status, &by_name.body).unwrap();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].id, found[0].id);
    // matchingUri resolves a concrete path to the template resource (lazy-load-paths)
    let matching = send(&uma::resource_query_request(
        &cfg,
        &pat,
        &ResourceQuery {
            uri: Some("/reports/42".into()),
            matching_uri: true,
            ..Default::default()
        },
    ));
    let lazy = uma::parse_resources(matching.status, &matching.body).unwrap();
    assert_eq!(lazy.len(), 1, "{lazy:?}");
    assert_eq!(lazy[0].name, "Lazy Report");
    // an exact lookup of a concrete path finds nothing
    let exact = send(&uma::resource_query_request(
        &cfg,
        &pat,
        &ResourceQuery {
            uri: Some("/reports/42".into()),
            ..Default::default()
        },
    ));
    assert!(uma::parse_resources(exact.status, &exact.body)
        .unwrap()
        .is_empty());
    // a permission ticket for the UMA challenge
    let t = send(&uma::permission_ticket_request(
        &cfg,
        &pat,
        &found[0].id,
        &["account:view".into()],
        None,
    ));
    assert!(
        uma::parse_ticket(t.status, &t.body)
            .unwrap()
            .split('.')
            .count()
            == 3
    );
}

#[test]
fn real_tokens_verify_and_one_changed_byte_does_not() {
    let (client, secret, _) = CLIENTS[0];
    let cfg = config(client, secret);
    let r = send(&uma::jwks_request(&cfg));
    assert_eq!(r.status, 200);
    let jwks = Jwks::parse(&r.body).unwrap();
    let tok = user_token("owner");
    let expect = Expectations {
        issuer: &cfg.proxy.issuer,
        audiences: &[],
        leeway_seconds: 30,
        dpop: false,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = token::verify(&tok, &jwks, &expect, now).unwrap();
    assert_eq!(
        t.claim("/preferred_username").and_then(|v| v.as_str()),
        Some("owner")
    );
    let roles = t.claim("/realm_access/roles").unwrap().as_array().unwrap();
    assert!(roles.iter().any(|r| r == "account_owner"));
    // the same token is expired for the verifier one leeway after its exp
    assert_eq!(
        token::verify(&tok, &jwks, &expect, t.exp + 31),
        Err(TokenError::Expired)
    );
    // flip one byte of the signature
    let mut bytes = tok.clone().into_bytes();
    let i = bytes.len() - 10;
    bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(bytes).unwrap();
    assert_eq!(
        token::verify(&forged, &jwks, &expect, now),
        Err(TokenError::BadSignature)
    );
    // and one byte of the payload
    let mut bytes = tok.into_bytes();
    let dot = bytes.iter().position(|b| *b == b'.').unwrap();
    bytes[dot + 5] = if bytes[dot + 5] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(bytes).unwrap();
    assert!(token::verify(&forged, &jwks, &expect, now).is_err());
}
