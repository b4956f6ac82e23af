//! End to end, as an attacker would try it: the ways past a proxy PEP that Keycloak's in-app
//! enforcer never faces, through the real Envoy against the real Keycloak (issue #12).
//! - paths the filter could judge one way and the upstream read another (encoded slashes, dot
//!   and empty segments);
//! - a Host that makes Envoy and the filter pick different virtual hosts;
//! - another resource server's RPT where this one's paths are not bound to resource ids;
//! - credentials in logs.
//!
//! "Never reached the upstream" is counted at Envoy's `upstream` cluster. Each class runs on
//! envoy.yaml's :10000 listener (the shipped, safe settings) and on its tests-only :10001
//! listener (Envoy's protections off), where the filter has to hold on its own. Requests go
//! through the raw client (`common::raw`): they carry bytes a well-behaved client refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

#[test]
fn a_path_is_never_judged_one_way_and_forwarded_another() {
    // Each is judged as the public path, or as the on-deny page, once its %2F, %5C, dot or empty
    // segments are resolved (the second column), while an upstream reading it raw sees a path
    // under /account/. It may reach the upstream only as that resolved path (Envoy resolved it
    // before the filter judged it); the raw form never.
    let hostile = [
        (
            "unanimous.bank.local",
            "/account/1/..%2F..%2Fpublic/x",
            "/public/x",
        ),
        (
            "unanimous.bank.local",
            "/account/1/..%2f..%2fpublic/x",
            "/public/x",
        ),
        (
            "unanimous.bank.local",
            "/account/1/%2e%2e%2f%2e%2e%2fpublic/x",
            "/public/x",
        ),
        (
            "unanimous.bank.local",
            "/account/1%2F..%2F..%2Fpublic%2Fx",
            "/public/x",
        ),
        (
            "unanimous.bank.local",
            "/account/1/..%5C..%5Cpublic/x",
            "/public/x",
        ),
        (
            "unanimous.bank.local",
            "/account/1/../../public/x",
            "/public/x",
        ),
        (
            "unanimous.bank.local",
            "/account/1/%2e%2e/%2e%2e/public/x",
            "/public/x",
        ),
        (
            "unanimous.bank.local",
            "/account/1/..;x/..;y/public/x",
            "/public/x",
        ),
        (
            "unanimous.bank.local",
            "//public/account/1",
            "/public/account/1",
        ),
        (
            "unanimous.bank.local",
            "/public//account/1",
            "/public/account/1",
        ),
        (
            "redirect.bank.local",
            "/account/1/..%2F..%2Fdenied",
            "/denied",
        ),
        ("redirect.bank.local", "/account/1/../../denied", "/denied"),
    ];
    let plain = user_token("plain"); // denied /account/* by every policy
    for base in [envoy(), raw_listener()] {
        for (host, path, resolved) in hostile {
            for token in [None, Some(plain.as_str())] {
                let (r, reached) =
                    reaches_upstream(|| send_raw_to(&base, "GET", host, path, token, &[], b""));
                let what = format!("{base} {host} {path} (token: {})", token.is_some());
                if reached {
                    let forwarded = r.json()["path"].as_str().unwrap_or_default().to_string();
                    assert_eq!(
                        forwarded, resolved,
                        "{what}: judged one path, forwarded another"
                    );
                }
                if base == raw_listener() {
                    // nothing in front of the filter changed the path: the filter refuses it
                    assert_eq!(r.status, 400, "{what}: {}", r.text());
                    assert!(!reached, "{what}");
                }
            }
        }
    }
    // the same resources, spelled so that every reader splits them alike, are served as usual
    let owner = user_token("owner");
    for base in [envoy(), raw_listener()] {
        let (r, reached) = reaches_upstream(|| {
            send_raw_to(
                &base,
                "GET",
                "unanimous.bank.local",
                "/public/x",
                None,
                &[],
                b"",
            )
        });
        assert!(r.status == 200 && reached, "{base}: {}", r.status);
        let r = send_raw_to(
            &base,
            "GET",
            "unanimous.bank.local",
            "/account/1",
            Some(&owner),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{base}");
    }
    // Envoy's own protection on the shipped listener: the client is sent to the decoded path
    let r = send_raw_to(
        &envoy(),
        "GET",
        "unanimous.bank.local",
        "/account/1/..%2F..%2Fpublic/x",
        None,
        &[],
        b"",
    );
    assert_eq!(r.status, 307, "{}", r.text());
    assert_eq!(r.header("location"), Some("/public/x"));
}

fn transfer(base: &str, host: &str, token: &str, branch: &str, amount: u32) -> Response {
    let body = format!(r#"{{"amount": {amount}}}"#);
    send_raw_to(
        base,
        "POST",
        host,
        "/branch/transfer",
        Some(token),
        &[
            ("x-branch", branch.as_bytes()),
            ("x-forwarded-for", b"203.0.113.7"),
            ("content-type", b"application/json"),
        ],
        body.as_bytes(),
    )
}

#[test]
fn a_denied_request_never_reaches_the_upstream_whatever_the_host() {
    // Host spellings that may route to another virtual host than the filter's rule names. The
    // transfer is denied by Keycloak's policy (branch osaka); its claims read the body, so the
    // filter must hold the request while it reads it, whatever Envoy routed it to.
    let tok = user_token("owner");
    let hosts = [
        "claims.bank.local",
        "claims.bank.local:8443",
        "claims.bank.local:10000",
        "untrusted.bank.local:1",
        "CLAIMS.bank.local",
        "claims.bank.local.",
    ];
    for base in [envoy(), raw_listener()] {
        for host in hosts {
            let (r, reached) = reaches_upstream(|| transfer(&base, host, &tok, "osaka", 5000));
            assert!(
                !reached && r.status != 200,
                "{base} Host: {host}: {} {}, upstream reached: {reached}",
                r.status,
                r.text()
            );
        }
    }
    // and what the policy allows goes on, with its body and the permissions header
    for host in ["claims.bank.local:8443", "claims.bank.local"] {
        let (r, reached) = reaches_upstream(|| transfer(&envoy(), host, &tok, "tokyo", 900));
        assert!(
            r.status == 200 && reached,
            "{host}: {} {}",
            r.status,
            r.text()
        );
        let e: Value = r.json();
        assert_eq!(e["body"], r#"{"amount": 900}"#);
        assert!(e["headers"]["x-kcpep-permissions"]
            .as_str()
            .is_some_and(|h| h.contains("Branch Transfer")));
    }
}

/// An RPT of `client` for `user` (UMA grant without permissions: everything the user may have).
fn rpt(user: &str, client: &str) -> String {
    rpt_with("bank", &user_token(user), &format!("audience={client}"))
}

#[test]
fn another_resource_servers_rpt_opens_nothing_here() {
    // bank-api-affirmative's AFFIRMATIVE policy grants the teller "View Account Resource"; on
    // bank-api (UNANIMOUS) the teller is denied. A resource of the same name, another server.
    let foreign = rpt("teller", "bank-api-affirmative");
    // bound paths: Keycloak is asked for bank-api, which denies
    let r = send_raw_to(
        &envoy(),
        "GET",
        "unanimous.bank.local",
        "/account/1",
        Some(&foreign),
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // unbound paths (this enforcer's client secret is refused, so the PAT never comes and the
    // path never gets its resource id): the name alone proves nothing, and Keycloak cannot be
    // asked with refused credentials, so the request fails closed
    for token in [foreign.clone(), user_token("owner")] {
        let (r, reached) = reaches_upstream(|| {
            send_raw_to(
                &envoy(),
                "GET",
                "unbound.bank.local",
                "/account/1",
                Some(&token),
                &[],
                b"",
            )
        });
        // (the echo's text would show the token: only the status and permissions are printed)
        let granted = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|e| e.pointer("/headers/x-kcpep-permissions").cloned());
        assert!(
            !reached && r.status == 503,
            "{}, upstream got {granted:?}",
            r.status
        );
    }
    // this server's own RPT still passes on its own, without asking Keycloak
    let own = rpt("owner", "bank-api");
    // (the template path's instance lookup goes to the protection API; no UMA grant follows)
    let grants = || stat("kcpep.keycloak.grants");
    let before = grants();
    let path = format!("/account/rpt{}", std::process::id());
    let r = send_raw_to(
        &envoy(),
        "GET",
        "unanimous.bank.local",
        &path,
        Some(&own),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(grants(), before, "the RPT's own permission was enough");
}

#[test]
fn no_token_or_secret_reaches_any_log_line() {
    let id = std::process::id();
    let tokens = [
        user_token("owner"),
        user_token("plain"),
        rpt("owner", "bank-api"),
    ];
    let marker = format!("/account/logcheck{id}");
    for base in [envoy(), raw_listener()] {
        for t in &tokens {
            for host in [
                "unanimous.bank.local",
                "claims.bank.local",
                "redirect.bank.local",
            ] {
                // refused: a token in the query is not a credential here, but still a live one
                send_raw_to(
                    &base,
                    "GET",
                    host,
                    &format!("{marker}?access_token={t}"),
                    None,
                    &[],
                    b"",
                );
                // accepted, and broken in the ways that get logged as reasons
                send_raw_to(&base, "GET", host, &marker, Some(t), &[], b"");
                send_raw_to(
                    &base,
                    "GET",
                    host,
                    &marker,
                    Some(&format!("{t}x")),
                    &[],
                    b"",
                );
                let cookie = format!("KEYCLOAK_IDENTITY={t}");
                send_raw_to(
                    &base,
                    "GET",
                    host,
                    &marker,
                    None,
                    &[("cookie", cookie.as_bytes())],
                    b"",
                );
                let doubled = format!("Bearer {t}");
                send_raw_to(
                    &base,
                    "GET",
                    host,
                    &marker,
                    Some(t),
                    &[("authorization", doubled.as_bytes())],
                    b"",
                );
            }
        }
    }
    send_raw_to(
        &envoy(),
        "GET",
        "unanimous.bank.local",
        &format!("{marker}/end"),
        None,
        &[],
        b"",
    );
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".run/envoy.log");
    // Envoy flushes access logs on its own schedule (the filter's own lines come at once): wait
    // for the access log line of the last request, so every earlier one is in
    let last = format!("\"GET {marker}/end\"");
    let text = poll_until("the last access log line", Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(&last).then_some(text)
    });
    assert!(text.contains(&marker), "the requests were logged");
    for t in &tokens {
        // any of the three parts is enough to identify or replay the token
        for part in t.split('.') {
            // (the message shows where, not the token itself)
            assert!(
                !text.contains(part),
                "a token part is in Envoy's log, in the line starting {:?}",
                text.lines()
                    .find(|l| l.contains(part))
                    .map(|l| l.chars().take(60).collect::<String>())
            );
        }
    }
    for secret in [
        "bank-api-secret",
        "bank-api-affirmative-secret",
        "a-rotated-secret",
    ] {
        assert!(
            !text.contains(secret),
            "a client secret is in Envoy's log: {}",
            text.lines()
                .find(|l| l.contains(secret))
                .unwrap_or_default()
        );
    }
}

#[test]
fn the_filters_own_headers_cannot_be_spoofed_in_any_spelling() {
    let spoofs: [(&str, &[u8]); 3] = [
        ("x-kcpep-permissions", br#"[{"rsname":"Everything"}]"#),
        ("x_kcpep_permissions", br#"[{"rsname":"Everything"}]"#),
        ("X_KCPEP-Permissions", br#"[{"rsname":"Everything"}]"#),
    ];
    // the tests-only listener lets underscores through: the filter strips them itself
    for spoof in spoofs {
        let r = send_raw_to(
            &raw_listener(),
            "GET",
            "unanimous.bank.local",
            "/public/x",
            None,
            &[spoof],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let e: Value = r.json();
        let seen: Vec<&String> = e["headers"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| {
                k.replace('_', "-")
                    .eq_ignore_ascii_case("x-kcpep-permissions")
            })
            .collect();
        assert!(
            seen.is_empty(),
            "{} reached the upstream as {seen:?}",
            spoof.0
        );
    }
    // the shipped listener refuses header names with underscores before any filter runs
    let (r, reached) = reaches_upstream(|| {
        send_raw_to(
            &envoy(),
            "GET",
            "unanimous.bank.local",
            "/public/x",
            None,
            &[spoofs[1]],
            b"",
        )
    });
    assert!(r.status == 400 && !reached, "{} {}", r.status, r.text());
}

#[test]
fn tokens_keycloak_refuses_as_an_identity_get_401_and_are_not_cached() {
    // A token the filter verifies (signature, exp, iss) but whose session was logged out. From
    // demo-cli-es256, which has no back-channel logout URL (demo-cli's would tell the filter, and
    // it would refuse the token itself: tests/binding.rs).
    let tokens = token_grant(
        "bank",
        "grant_type=password&client_id=demo-cli-es256&username=owner&password=password",
    );
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let logout = request(
        &keycloak(),
        "POST",
        "/realms/bank/protocol/openid-connect/logout",
        &[("content-type", b"application/x-www-form-urlencoded")],
        format!("client_id=demo-cli-es256&refresh_token={refresh}").as_bytes(),
    );
    assert_eq!(logout.status, 204, "{}", logout.text());
    let id = std::process::id();
    for _ in 0..2 {
        let before = keycloak_requests();
        let path = format!("/account/out{id}");
        let r = send_raw_to(
            &envoy(),
            "GET",
            "unanimous.bank.local",
            &path,
            Some(&access),
            &[],
            b"",
        );
        assert_eq!(r.status, 401, "{}", r.text());
        let challenge = r.header("www-authenticate").unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(
            keycloak_requests() > before,
            "asked Keycloak again: not cached as a denial"
        );
    }
}

#[test]
fn a_credential_of_another_scheme_gets_a_challenge_without_an_error_code() {
    // another scheme: no error code; a broken bearer credential: invalid_token
    for (auth, error_code) in [
        (&b"Basic dXNlcjpwYXNzd29yZA=="[..], false),
        (b"Bearer", true),
    ] {
        let extra: [(&str, &[u8]); 1] = [("authorization", auth)];
        let r = send_raw_to(
            &envoy(),
            "GET",
            "unanimous.bank.local",
            "/account/1",
            None,
            &extra,
            b"",
        );
        assert_eq!(r.status, 401);
        let challenge = r.header("www-authenticate").unwrap();
        assert_eq!(
            challenge.contains("invalid_token"),
            error_code,
            "{challenge}"
        );
        if !error_code {
            assert_eq!(challenge, "Bearer realm=\"bank\"");
        }
    }
}
