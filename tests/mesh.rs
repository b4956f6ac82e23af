//! Istio for real: istiod's discovery server (Istio's own control plane, in-process over Istio's
//! fake Kubernetes client: scripts/istio-mesh.sh) serves the manifests of envoy/istio/, the files
//! users copy, to the PyPI Envoy as an ingress-gateway node, and requests with real tokens from
//! the stack's Keycloak are enforced through the configuration Istio generated: its listener,
//! its route names, its ECDS extension for the WasmPlugin, its `host_env_keys` for
//! `vmConfig.env`. The manifests' overlay (where the module, Keycloak and the upstream are) is
//! `common::mesh::shipped_with_overlay`.
//!
//! Each test starts its own istiod and Envoy (about 3 s) and stops both when it ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::mesh::*;
use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ECDS_NAME: &str =
    "extensions.istio.io/trafficextension/bank.keycloak-pep~istio-translated-wasmplugin";

/// What a failure message may show of an answer: its status, and for the echo upstream's answer
/// the path it got and the filter's permissions header (never the echoed credentials).
fn brief(r: &Response) -> String {
    if r.status == 200 {
        if let Ok(e) = serde_json::from_slice::<Value>(&r.body) {
            return format!(
                "200 upstream path {} x-kcpep-permissions {}",
                e["path"], e["headers"]["x-kcpep-permissions"]
            );
        }
    }
    format!(
        "{} {}",
        r.status,
        r.text().chars().take(200).collect::<String>()
    )
}

/// The echo upstream's view of a forwarded request.
fn echoed(r: &Response) -> Value {
    assert_eq!(r.status, 200, "not forwarded: {}", brief(r));
    r.json()
}

/// The permissions header the upstream got, parsed (`Null` when absent).
fn permissions(r: &Response) -> Value {
    match &echoed(r)["headers"]["x-kcpep-permissions"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

fn grants(perms: &Value, rsname: &str) -> bool {
    perms
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["rsname"] == rsname))
}

/// Seed 002's table on `/account/1` through `get` (a UNANIMOUS enforcer): owner and both let on
/// with View Account Resource granted, teller and plain 403, no token 401 (returned).
fn seed_002_on(users: &[(&str, String)], get: impl Fn(Option<&str>) -> Response) -> Response {
    for (user, tok) in users {
        let r = get(Some(tok));
        let want = if expected_allowed("UNANIMOUS", user) {
            200
        } else {
            403
        };
        assert_eq!(r.status, want, "UNANIMOUS {user}: {}", brief(&r));
        if want == 200 {
            assert_eq!(echoed(&r)["path"], "/account/1");
            let p = permissions(&r);
            assert!(grants(&p, "View Account Resource"), "{user}: {p}");
        }
    }
    let r = get(None);
    assert_eq!(r.status, 401, "no token: {}", brief(&r));
    r
}

fn tokens() -> Vec<(&'static str, String)> {
    USERS.iter().map(|u| (*u, user_token(u))).collect()
}

/// The plugin configuration of the WasmPlugin as the overlay has it.
fn plugin_config(manifests: &mut [Manifest]) -> Value {
    wasm_plugin(manifests)["spec"]["pluginConfig"].clone()
}

fn wasm_plugin_manifest(manifests: &[Manifest]) -> Manifest {
    manifests
        .iter()
        .find(|m| m.file == "wasmplugin.yaml")
        .unwrap()
        .clone()
}

#[test]
fn istio_generates_the_gateway_with_the_filter_from_the_shipped_manifests() {
    let mut manifests = shipped_with_overlay();
    let mesh = Mesh::start(&manifests, &client_secrets());
    let dump = mesh.config_dump();

    // the WasmPlugin, phase AUTHZ: an ECDS filter first, the router last
    let filters = http_filter_names(&dump);
    assert_eq!(
        filters.first().map(String::as_str),
        Some(ECDS_NAME),
        "{filters:?}"
    );
    assert_eq!(
        filters.last().map(String::as_str),
        Some("envoy.filters.http.router")
    );
    let ecds = ecds_filters(&dump);
    let (_, wasm) = ecds
        .iter()
        .find(|(n, _)| n == ECDS_NAME)
        .unwrap_or_else(|| {
            panic!(
                "no ECDS {ECDS_NAME}: {:?}",
                ecds.iter().map(|e| &e.0).collect::<Vec<_>>()
            )
        });
    let config = &wasm["config"];
    assert_eq!(
        config["failure_policy"], "FAIL_CLOSED",
        "failStrategy FAIL_CLOSE"
    );
    assert_eq!(
        config["vm_config"]["code"]["local"]["filename"],
        json!(format!(
            "{}/dist/keycloak_pep.wasm",
            env!("CARGO_MANIFEST_DIR")
        ))
    );
    // vmConfig.env valueFrom HOST -> Envoy's host_env_keys: names only, no value in xDS
    assert_eq!(
        config["vm_config"]["environment_variables"]["host_env_keys"],
        json!(["KCPEP_CLIENT_SECRET", "KCPEP_REPORTS_CLIENT_SECRET"])
    );
    let delivered: Value =
        serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        delivered,
        plugin_config(&mut manifests),
        "the pluginConfig as JSON"
    );
    let text = dump.to_string();
    for (_, secret) in client_secrets() {
        assert!(
            !text.contains(secret),
            "a client secret in Envoy's xDS configuration"
        );
    }

    // mesh-safety.yaml: the meshConfig's path normalization and the EnvoyFilter's HCM settings
    let hcm = gateway_hcm(&dump);
    assert_eq!(hcm["normalize_path"], true);
    assert_eq!(hcm["merge_slashes"], true);
    assert_eq!(
        hcm["path_with_escaped_slashes_action"],
        "UNESCAPE_AND_FORWARD"
    );
    assert_eq!(
        hcm["common_http_protocol_options"]["headers_with_underscores_action"],
        "REJECT_REQUEST"
    );
    assert_eq!(hcm["strip_trailing_host_dot"], true);

    // the route names Istio generated are the ones README.md and virtualservice.yaml promise,
    // and every route-name rule of the WasmPlugin names one of them
    let routes = generated_route_names(&dump);
    assert_eq!(
        routes,
        ["reports", "accounts.by-id", "accounts.list", "other"]
    );
    let unknown = route_rules_istio_does_not_generate(&plugin_config(&mut manifests), &routes);
    assert!(unknown.is_empty(), "{unknown:?}");
    assert!(
        mesh.envoy_log().contains("kcpep: configured 2 enforcer(s)"),
        "{}",
        tail(&mesh.envoy_log())
    );
}

#[test]
fn seed_002_and_the_manifests_routes_through_the_istio_made_gateway() {
    let manifests = shipped_with_overlay();
    let mesh = Mesh::start(&manifests, &client_secrets());
    let users = tokens();

    // accounts.by-id -> the "accounts" enforcer, bank-api (UNANIMOUS): seed 002's table
    let r = seed_002_on(&users, |tok| mesh.get("/account/1", tok, &[]));
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"bank\""));
    // through the cluster Istio made of the ServiceEntry: owner's and both's requests only
    assert_eq!(mesh.upstream_requests(), Some(2));

    // accounts.list and other -> the "default" enforcer (accounts): paths its policy-enforcer
    // does not name are refused; /public/* is DISABLED there, open to all, token or not
    for path in ["/accounts", "/other"] {
        for (user, tok) in &users {
            let r = mesh.get(path, Some(tok), &[]);
            assert_eq!(r.status, 403, "{path} {user}: {}", brief(&r));
        }
        assert_eq!(mesh.get(path, None, &[]).status, 401, "{path}");
    }
    for (user, tok) in &users {
        let r = mesh.get("/public/rates", Some(tok), &[]);
        assert_eq!(echoed(&r)["path"], "/public/rates", "{user}");
    }
    assert_eq!(
        echoed(&mesh.get("/public/rates", None, &[]))["path"],
        "/public/rates"
    );

    // reports -> the "reports" enforcer, bank-api-affirmative (AFFIRMATIVE, lazy-loaded paths)
    // in dry-run: every request passes, the ones its decision refuses are counted. Lazy Report
    // (/reports/{id}) is granted to tellers and owners, not to plain.
    let counted = || mesh.stat("wasmcustom.kcpep.requests.dry_run_denied");
    for (user, tok) in &users {
        let before = counted();
        let r = mesh.get("/reports/7", Some(tok), &[]);
        assert_eq!(echoed(&r)["path"], "/reports/7", "{user}");
        let refused = counted() - before;
        if *user == "plain" {
            assert_eq!(refused, 1, "plain would be refused on /reports/7");
        } else {
            assert_eq!(refused, 0, "{user} is granted Lazy Report");
            let p = permissions(&r);
            assert!(grants(&p, "Lazy Report"), "{user}: {p}");
        }
    }
    let before = counted();
    assert_eq!(
        echoed(&mesh.get("/reports/7", None, &[]))["path"],
        "/reports/7"
    );
    assert_eq!(counted() - before, 1, "no token: would be 401");
    assert!(
        mesh.envoy_log().contains("kcpep dry-run would deny"),
        "{}",
        tail(&mesh.envoy_log())
    );

    // the route each request took, as the mesh's access log names it (%ROUTE_NAME%)
    poll_until("the access log", Duration::from_secs(10), || {
        let log = mesh.access_log();
        ["accounts.by-id", "accounts.list", "reports", "other"]
            .iter()
            .all(|r| log.contains(&format!(" {r} kcpep_permissions=")))
            .then_some(())
    });
}

#[test]
fn the_filters_own_headers_from_clients_are_stripped() {
    let mesh = Mesh::start(&shipped_with_overlay(), &client_secrets());
    let owner = user_token("owner");
    let plain = user_token("plain");
    let forged = br#"[{"rsname":"Forged","scopes":["account:view"]}]"#;
    for name in ["x-kcpep-permissions", "X-Kcpep-Permissions"] {
        // allowed: the upstream gets the filter's permissions, not the client's
        let r = mesh.get("/account/1", Some(&owner), &[(name, forged)]);
        let p = permissions(&r);
        assert!(
            grants(&p, "View Account Resource") && !grants(&p, "Forged"),
            "{name}: {p}"
        );
        // a DISABLED path and a dry-run pass: the client's copy is removed all the same
        let r = mesh.get("/public/rates", None, &[(name, forged)]);
        assert_eq!(permissions(&r), Value::Null, "{name}: {}", brief(&r));
        let r = mesh.get("/reports/7", Some(&plain), &[(name, forged)]);
        assert!(!grants(&permissions(&r), "Forged"), "{name}: {}", brief(&r));
    }
}

#[test]
fn what_mesh_safety_closes_is_closed_in_the_istio_made_listener() {
    let mesh = Mesh::start(&shipped_with_overlay(), &client_secrets());
    let teller = user_token("teller");
    let owner = user_token("owner");

    // %2F decoded, dot segments resolved, slashes merged before routing: /reports/ (dry-run)
    // cannot carry a request to /account/1 past the accounts enforcer
    for path in [
        "/reports/..%2Faccount/1",
        "/reports/..%2faccount/1",
        "/reports/%2E%2E/account/1",
        "//account//1",
        "/public/../account/1",
    ] {
        let r = mesh.get_raw(HOST, path, Some(&teller), &[]);
        assert_eq!(r.status, 403, "teller {path}: {}", brief(&r));
        let r = mesh.get_raw(HOST, path, Some(&owner), &[]);
        assert_eq!(echoed(&r)["path"], "/account/1", "owner {path}");
    }
    // a host port or a trailing dot reaches the same virtual host and route, so the same enforcer
    for host in [
        "bank.example.com:18080",
        "bank.example.com:1",
        "bank.example.com.",
    ] {
        let r = mesh.get_raw(host, "/account/1", Some(&teller), &[]);
        assert_eq!(r.status, 403, "teller via {host}: {}", brief(&r));
        let r = mesh.get_raw(host, "/account/1", Some(&owner), &[]);
        assert_eq!(echoed(&r)["path"], "/account/1", "owner via {host}");
    }
    // header names with underscores are refused before any filter (x_kcpep_permissions would
    // reach a CGI upstream as the filter's own header)
    for name in ["x_kcpep_permissions", "x_other"] {
        let r = mesh.get_raw(HOST, "/account/1", Some(&owner), &[(name, b"[]")]);
        assert_eq!(r.status, 400, "{name}: {}", brief(&r));
    }
    // paths logged without their query (which may carry a token)
    let marker = "kcpep-mesh-query-marker";
    let r = mesh.get(
        &format!("/account/1?access_token={marker}"),
        Some(&owner),
        &[],
    );
    assert_eq!(r.status, 200, "{}", brief(&r));
    let log = poll_until("the access log line", Duration::from_secs(10), || {
        let log = mesh.access_log();
        log.lines()
            .any(|l| l.contains("\"GET /account/1 HTTP/1.1\" 200"))
            .then_some(log)
    });
    assert!(!log.contains(marker), "the query reached the access log");
}

#[test]
fn client_secrets_reach_the_vm_only_through_vm_config_env() {
    let owner = user_token("owner");
    let plain = user_token("plain");
    // a wrong secret in the proxy's environment: Keycloak refuses the client, the accounts
    // enforcer fails closed; the reports enforcer (the other secret) and DISABLED paths serve on
    {
        let mesh = Mesh::start(
            &shipped_with_overlay(),
            &[
                ("KCPEP_CLIENT_SECRET", "not-the-secret"),
                ("KCPEP_REPORTS_CLIENT_SECRET", CLIENTS[1].1),
            ],
        );
        let r = mesh.get("/account/1", Some(&owner), &[]);
        assert_eq!(r.status, 503, "{}", brief(&r));
        assert_eq!(
            echoed(&mesh.get("/public/rates", None, &[]))["path"],
            "/public/rates"
        );
        assert_eq!(
            echoed(&mesh.get("/reports/7", Some(&plain), &[]))["path"],
            "/reports/7"
        );
        assert!(mesh.envoy_log().contains("unauthorized_client"));
        assert!(
            !mesh.envoy_log().contains("not-the-secret"),
            "a secret in the log"
        );
    }
    // absent from the proxy's environment: the configuration is refused, naming the field, and
    // with no configuration the gateway refuses every request (no route is left open)
    {
        let mesh = Mesh::start(
            &shipped_with_overlay(),
            &[("KCPEP_REPORTS_CLIENT_SECRET", CLIENTS[1].1)],
        );
        expect_refused_everywhere(&mesh, &owner);
        let log = mesh.envoy_log();
        assert!(
            log.contains("enforcers.accounts.credentials.secret: environment variable KCPEP_CLIENT_SECRET is not set"),
            "{}",
            tail(&log)
        );
    }
    // in the proxy's environment but not in vmConfig.env: the VM does not see it
    {
        let mut manifests = shipped_with_overlay();
        let wp = wasm_plugin(&mut manifests);
        wp["spec"]["pluginConfig"]["enforcers"]["reports"]["credentials"]["secret"] =
            json!("${env.KCPEP_AUDIT_SECRET}");
        let mut env = client_secrets();
        env.push(("KCPEP_AUDIT_SECRET", CLIENTS[1].1));
        let mesh = Mesh::start(&manifests, &env);
        expect_refused_everywhere(&mesh, &owner);
        let log = mesh.envoy_log();
        assert!(
            log.contains("enforcers.reports.credentials.secret: environment variable KCPEP_AUDIT_SECRET is not set"),
            "{}",
            tail(&log)
        );
    }
}

/// Envoy rejected the WasmPlugin's only configuration: every route answers 500, none reaches the
/// upstream.
fn expect_refused_everywhere(mesh: &Mesh, token: &str) {
    let rejected = format!("extension_config_discovery.http_filter.{ECDS_NAME}.update_rejected");
    poll_until(
        "the ECDS configuration rejected",
        Duration::from_secs(20),
        || (mesh.stat(&rejected) >= 1).then_some(()),
    );
    for path in ["/account/1", "/public/rates", "/reports/7", "/other"] {
        let r = mesh.get(path, Some(token), &[]);
        assert_eq!(r.status, 500, "{path}: {}", brief(&r));
    }
    assert_eq!(
        mesh.upstream_requests(),
        Some(0),
        "a request reached the upstream"
    );
}

#[test]
fn a_changed_wasmplugin_reaches_envoy_by_ecds_under_traffic() {
    let mut manifests = shipped_with_overlay();
    let mut mesh = Mesh::start(&manifests, &client_secrets());
    let teller = user_token("teller");
    let owner = user_token("owner");
    assert_eq!(mesh.get("/account/1", Some(&teller), &[]).status, 403);
    let ecds_ok = format!("extension_config_discovery.http_filter.{ECDS_NAME}.update_success");
    let ecds_rejected =
        format!("extension_config_discovery.http_filter.{ECDS_NAME}.update_rejected");
    let modified_before = mesh.stat("listener_manager.listener_modified");

    // traffic: teller and owner on /account/1, a new connection per request
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = [("teller", teller.clone()), ("owner", owner.clone())]
        .into_iter()
        .map(|(user, tok)| {
            let stop = stop.clone();
            let url = mesh.url();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.push(try_get(&url, "/account/1", &tok));
                }
                (user, seen)
            })
        })
        .collect();

    // the accounts enforcer switched to the AFFIRMATIVE resource server (its own secret)
    let wp = wasm_plugin(&mut manifests);
    let accounts = &mut wp["spec"]["pluginConfig"]["enforcers"]["accounts"];
    accounts["resource"] = json!("bank-api-affirmative");
    accounts["credentials"]["secret"] = json!("${env.KCPEP_REPORTS_CLIENT_SECRET}");
    let changed = wasm_plugin_manifest(&manifests);
    let ok_before = mesh.stat(&ecds_ok);
    let applied = Instant::now();
    assert_eq!(
        mesh.apply(&changed).unwrap(),
        "applied WasmPlugin/bank/keycloak-pep"
    );
    poll_until(
        "the changed plugin configuration by ECDS",
        Duration::from_secs(30),
        || (mesh.stat(&ecds_ok) > ok_before).then_some(()),
    );
    // and then the new verdict, teller allowed, 20 times in a row
    poll_until(
        "teller allowed under AFFIRMATIVE",
        Duration::from_secs(30),
        || {
            (0..20)
                .all(|_| mesh.get("/account/1", Some(&teller), &[]).status == 200)
                .then_some(())
        },
    );
    let took = applied.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut report = Vec::new();
    for handle in loops {
        let (user, seen) = handle.join().unwrap();
        let sent = seen.len();
        let dropped: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
        let statuses: Vec<u16> = seen
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
        report.push(format!(
            "{user}: sent {sent}, answered {}, dropped {}, 200 {}, 403 {}",
            statuses.len(),
            dropped.len(),
            count(200),
            count(403)
        ));
        assert!(dropped.is_empty(), "{user}: {dropped:?}");
        let allowed: &[u16] = if user == "teller" {
            &[403, 200]
        } else {
            &[200]
        };
        let other: Vec<&u16> = statuses.iter().filter(|s| !allowed.contains(s)).collect();
        assert!(other.is_empty(), "{user}: unexpected answers {other:?}");
        assert_eq!(statuses.last(), Some(&200), "{user}: the new verdict last");
        if user == "teller" {
            assert!(
                count(403) > 0 && count(200) > 0,
                "teller saw old and new verdicts"
            );
        }
    }
    eprintln!(
        "ECDS update under traffic, new verdicts within {took:?}: {}",
        report.join("; ")
    );
    // by ECDS alone: Istio pushes the listener too, unchanged, and Envoy keeps it
    assert_eq!(
        mesh.stat("listener_manager.listener_modified"),
        modified_before,
        "the listener was replaced"
    );

    // a WasmPlugin Istio's own validation refuses never reaches the store (kubectl apply would
    // fail the same way at the admission webhook)
    let mut invalid = changed.clone();
    invalid.doc_mut("WasmPlugin", "keycloak-pep")["spec"]["url"] = json!("");
    let err = mesh.apply(&invalid).unwrap_err();
    assert!(
        err.contains("WasmPlugin/bank/keycloak-pep") && err.contains("url"),
        "{err}"
    );

    // a plugin configuration the filter refuses: Istio takes it (pluginConfig is opaque to it),
    // Envoy rejects the ECDS update naming the field, and the last good configuration serves on
    let mut refused = changed.clone();
    refused.doc_mut("WasmPlugin", "keycloak-pep")["spec"]["pluginConfig"]["default"] =
        json!("nobody");
    let rejected_before = mesh.stat(&ecds_rejected);
    assert!(mesh.apply(&refused).is_ok());
    poll_until(
        "the refused configuration rejected",
        Duration::from_secs(30),
        || (mesh.stat(&ecds_rejected) > rejected_before).then_some(()),
    );
    assert!(
        mesh.envoy_log()
            .contains("invalid configuration: default: no enforcer named \"nobody\""),
        "{}",
        tail(&mesh.envoy_log())
    );
    assert_eq!(mesh.get("/account/1", Some(&teller), &[]).status, 200);
    assert_eq!(mesh.get("/account/1", None, &[]).status, 401);

    // the shipped configuration again: taken, teller refused again
    let shipped = wasm_plugin_manifest(&shipped_with_overlay());
    assert!(mesh.apply(&shipped).is_ok());
    poll_until(
        "the shipped configuration back",
        Duration::from_secs(30),
        || (mesh.get("/account/1", Some(&teller), &[]).status == 403).then_some(()),
    );

    // the WasmPlugin deleted: Istio removes the filter from the gateway, nothing enforces
    assert_eq!(
        mesh.delete(&shipped).unwrap(),
        "deleted WasmPlugin/bank/keycloak-pep"
    );
    poll_until(
        "the filter gone from the listener",
        Duration::from_secs(30),
        || {
            (!http_filter_names(&mesh.config_dump())
                .iter()
                .any(|f| f == ECDS_NAME))
            .then_some(())
        },
    );
    assert!(
        mesh.stat("listener_manager.listener_modified") > modified_before,
        "the listener without the filter"
    );
    let r = mesh.get("/account/1", Some(&teller), &[]);
    assert_eq!(echoed(&r)["path"], "/account/1");
    assert_eq!(
        permissions(&r),
        Value::Null,
        "no filter: no permissions header"
    );
    assert_eq!(mesh.get("/account/1", None, &[]).status, 200);
}

#[test]
fn a_route_rule_naming_a_route_istio_does_not_generate_is_named() {
    // as if the VirtualService's "reports" route had been renamed: the rule names nothing
    let mut manifests = shipped_with_overlay();
    wasm_plugin(&mut manifests)["spec"]["pluginConfig"]["routes"][0]["route-name"] =
        json!("report");
    let mesh = Mesh::start(&manifests, &client_secrets());
    let dump = mesh.config_dump();
    let unknown = route_rules_istio_does_not_generate(
        &plugin_config(&mut manifests),
        &generated_route_names(&dump),
    );
    assert_eq!(
        unknown,
        [
            "routes[0].route-name \"report\" names no route Istio generated for the gateway \
          (it generated: reports, accounts.by-id, accounts.list, other)"
        ]
    );
    // what it does: /reports/ falls to the default enforcer, which refuses what the dry-run
    // enforcer would have let through
    let plain = user_token("plain");
    let r = mesh.get("/reports/7", Some(&plain), &[]);
    assert_eq!(r.status, 403, "{}", brief(&r));
}

/// The gateway's first HTTP filter (the WasmPlugin's or TrafficExtension's, phase AUTHZ) and its
/// configuration as Envoy holds it, without the name Istio derives from the object.
fn first_filter(mesh: &Mesh) -> (String, Value) {
    let dump = mesh.config_dump();
    let name = http_filter_names(&dump).into_iter().next().unwrap();
    let (_, mut wasm) = ecds_filters(&dump)
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("the first filter {name} is no ECDS filter"));
    wasm["config"]["name"] = Value::Null;
    (name, wasm)
}

#[test]
fn a_traffic_extension_in_place_of_the_wasmplugin_gives_the_same_filter_and_verdicts() {
    let mut manifests = shipped_with_overlay();
    let from_wasm_plugin = {
        let mesh = Mesh::start(&manifests, &client_secrets());
        first_filter(&mesh)
    };
    assert_eq!(from_wasm_plugin.0, ECDS_NAME);
    let te = traffic_extension(wasm_plugin(&mut manifests));
    for m in manifests.iter_mut() {
        if m.file == "wasmplugin.yaml" {
            m.file = "trafficextension.yaml".into();
            m.docs = vec![te.clone()];
        }
    }
    let mesh = Mesh::start(&manifests, &client_secrets());
    let (name, wasm) = first_filter(&mesh);
    assert!(
        name.starts_with("extensions.istio.io/trafficextension/bank.keycloak-pep"),
        "{name}"
    );
    assert_eq!(
        wasm, from_wasm_plugin.1,
        "the TrafficExtension gives Envoy the WasmPlugin's filter"
    );
    seed_002_on(&tokens(), |tok| mesh.get("/account/1", tok, &[]));
}

/// A server-side sidecar: the shipped WasmPlugin with `selector: app=bank-api` on a `bank-api`
/// pod's sidecar (`common::mesh::sidecar_manifests`). Istio names its one inbound route
/// `default`, so the `route-name` rules meant for the gateway select nothing there and the
/// `default` enforcer decides every request; a `path-prefix` rule does select.
#[test]
fn an_inbound_sidecar_enforces_the_default_enforcer() {
    let mut manifests = sidecar_manifests();
    let mut mesh = Mesh::start_as(Node::sidecar(), &manifests, &client_secrets());
    let sidecar_filter =
        "extensions.istio.io/trafficextension/bank.keycloak-pep-sidecar~istio-translated-wasmplugin";
    let hcm = inbound_hcm(&mesh.config_dump()).expect("the inbound listener");
    let filters: Vec<&str> = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(filters.contains(&sidecar_filter), "{filters:?}");
    assert!(
        !filters.contains(&ECDS_NAME),
        "the gateway's WasmPlugin selects no sidecar: {filters:?}"
    );
    assert_eq!(
        route_names(&hcm["route_config"]),
        ["default"],
        "Istio's inbound route names"
    );

    // the default enforcer (accounts, bank-api, UNANIMOUS): seed 002's table on the workload
    let users = tokens();
    seed_002_on(&users, |tok| mesh.get_inbound("/account/1", tok));
    assert_eq!(
        echoed(&mesh.get_inbound("/public/rates", None))["path"],
        "/public/rates"
    );
    // the rule `route-name: reports` selects nothing here: the default enforcer, which names no
    // /reports path, refuses what the gateway's dry-run enforcer lets through
    for (user, tok) in &users {
        let r = mesh.get_inbound("/reports/7", Some(tok));
        assert_eq!(r.status, 403, "{user} on the sidecar: {}", brief(&r));
    }
    poll_until("the access log", Duration::from_secs(10), || {
        mesh.access_log()
            .contains(" inbound|18090||; default kcpep_permissions=")
            .then_some(())
    });

    // selecting by path on the sidecar: the same rule as a path-prefix rule, by ECDS
    let plugin = manifests
        .iter_mut()
        .find(|m| m.file == "wasmplugin-sidecar.yaml")
        .unwrap();
    plugin.doc_mut("WasmPlugin", "keycloak-pep-sidecar")["spec"]["pluginConfig"]["routes"] =
        json!([{"path-prefix": "/reports", "enforcer": "reports"}]);
    let plugin = plugin.clone();
    mesh.apply(&plugin).unwrap();
    let (_, tok) = &users[0];
    poll_until(
        "the path-prefix rule by ECDS",
        Duration::from_secs(20),
        || (mesh.get_inbound("/reports/7", Some(tok)).status == 200).then_some(()),
    );
    for (user, tok) in &users {
        let r = mesh.get_inbound("/reports/7", Some(tok));
        assert_eq!(echoed(&r)["path"], "/reports/7", "{user}: dry-run");
    }
    assert_eq!(mesh.get_inbound("/account/1", None).status, 401);
}
