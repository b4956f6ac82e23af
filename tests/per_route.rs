//! A keycloak.json per route in Envoy's own terms: Envoy's `filter_chain` filter (Envoy 1.39+)
//! holds the keycloak-pep filter as its default chain, and a route's `typed_per_filter_config`
//! replaces it, by name, with a filter of another keycloak.json. An Envoy of the test's own, in
//! front of the stack's Keycloak and echo upstream. Against the other per-route form (one plugin,
//! several enforcers, `routes` rules): the same verdicts, and the same VMs, shared by the routes
//! (docs/operations.md, "A keycloak.json per route").
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::own_envoy::{cluster, keycloak_address, router, shipped_filter, OwnEnvoy, Setup};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const ADMIN: u16 = 9944;
const LISTENER: u16 = 10430;
const CHAIN: &str = "keycloak-pep-routes";

/// The stack's bank-api client (seed 002, UNANIMOUS) or its AFFIRMATIVE twin, as a keycloak.json.
fn keycloak_json(client: &str, secret: &str) -> Value {
    json!({
        "realm": "bank",
        "auth-server-url": keycloak(),
        "resource": client,
        "credentials": {"secret": secret},
        "policy-enforcer": {"paths": [{
            "name": "View Account Resource", "path": "/account/{id}",
            "methods": [{"method": "GET", "scopes": ["account:view"]}]
        }]},
        "kcpep": {"cluster": "keycloak"}
    })
}

fn unanimous() -> Value {
    keycloak_json("bank-api", "bank-api-secret")
}

fn affirmative() -> Value {
    keycloak_json("bank-api-affirmative", "bank-api-affirmative-secret")
}

fn setup() -> Setup {
    let (_, kc_port) = keycloak_address();
    Setup {
        name: "per-route",
        admin: ADMIN,
        listener: LISTENER,
        base_id: 83,
        clusters: vec![
            cluster("keycloak", &[kc_port]),
            cluster("upstream", &[8081]),
        ],
    }
}

fn hcm(http_filters: Value, virtual_hosts: Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "per-route",
        "route_config": {"name": "per-route", "virtual_hosts": virtual_hosts},
        "http_filters": http_filters
    })
}

/// A virtual host of one route to the echo upstream, named as its host, with `per_filter` as
/// its `typed_per_filter_config`.
fn virtual_host(name: &str, per_filter: Value) -> Value {
    json!({"name": name, "domains": [format!("{name}.bank.local")], "routes": [{
        "name": name, "match": {"prefix": "/"}, "route": {"cluster": "upstream"},
        "typed_per_filter_config": per_filter
    }]})
}

/// The `filter_chain` form: the unanimous keycloak.json as the default chain, the affirmative
/// one on the `affirmative` route (the same filter name, so it replaces the default there).
fn filter_chain_form() -> Value {
    let default_chain = json!({"filters": [shipped_filter(&unanimous())]});
    let per_route = json!({CHAIN: {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.filter_chain.v3.FilterChainConfigPerRoute",
        "filter_chain": {"filters": [shipped_filter(&affirmative())]}
    }});
    hcm(
        json!([{"name": CHAIN, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.filter_chain.v3.FilterChainConfig",
            "default_filter_chain": default_chain
        }}, router()]),
        json!([
            virtual_host("unanimous", json!({})),
            virtual_host("affirmative", per_route)
        ]),
    )
}

/// The rules form: one plugin with both enforcers, the `affirmative` route selecting its own.
fn rules_form() -> Value {
    let plugin = json!({
        "enforcers": {"unanimous": unanimous(), "affirmative": affirmative()},
        "routes": [{"route-name": "affirmative", "enforcer": "affirmative"}],
        "default": "unanimous"
    });
    hcm(
        json!([shipped_filter(&plugin), router()]),
        json!([
            virtual_host("unanimous", json!({})),
            virtual_host("affirmative", json!({}))
        ]),
    )
}

/// Seed 002's table on both routes, each user asked on both in alternation (so a decision cached
/// for one route would show on the other), and what Envoy counts of its Wasm VMs.
fn verdicts(envoy: &OwnEnvoy) -> (Vec<String>, i64) {
    // each route's enforcer has its realm keys (a request before that is 503, fail closed)
    let owner = user_token("owner");
    for host in ["unanimous.bank.local", "affirmative.bank.local"] {
        poll_until(
            &format!("{host} enforcing"),
            Duration::from_secs(30),
            || {
                let r = send_to(
                    &envoy.url(),
                    "GET",
                    host,
                    "/account/1",
                    Some(&owner),
                    &[],
                    b"",
                );
                (r.status == 200).then_some(())
            },
        );
    }
    let mut out = Vec::new();
    for user in USERS {
        let t = user_token(user);
        for _ in 0..2 {
            for (host, strategy) in [("affirmative", "AFFIRMATIVE"), ("unanimous", "UNANIMOUS")] {
                let host = format!("{host}.bank.local");
                let r = send_to(&envoy.url(), "GET", &host, "/account/1", Some(&t), &[], b"");
                let want = if expected_allowed(strategy, user) {
                    200
                } else {
                    403
                };
                assert_eq!(r.status, want, "{user} on {host}: {}", r.text());
                out.push(format!("{user}@{host}={}", r.status));
            }
        }
    }
    let none = send_to(
        &envoy.url(),
        "GET",
        "affirmative.bank.local",
        "/account/1",
        None,
        &[],
        b"",
    );
    assert_eq!(none.status, 401);
    (out, envoy.stat("wasm.wasm_vm_count"))
}

#[test]
fn envoys_filter_chain_holds_a_keycloak_json_per_route_in_the_same_vms() {
    let chain = OwnEnvoy::start_hcm(setup(), filter_chain_form());
    let (by_chain, chain_vms) = verdicts(&chain);
    drop(chain);
    let rules = OwnEnvoy::start_hcm(setup(), rules_form());
    let (by_rules, rules_vms) = verdicts(&rules);
    assert_eq!(by_chain, by_rules);
    // Envoy keeps one VM per worker (and its main thread's) for every plugin of one vm_config:
    // the second route's keycloak.json costs a plugin in those VMs, not VMs of its own
    assert_eq!(
        chain_vms, rules_vms,
        "Wasm VMs: filter_chain vs routes rules"
    );
    println!("per-route: {chain_vms} Wasm VMs either way (2 workers)");
}
