//! The operator's tools against the real stack: `kcpep doctor` finds the demo configuration
//! clean and names each planted mistake (a misspelled resource name, a scope the resource lacks,
//! a wrong secret, a resource without a permission, an unreachable Keycloak) by JSON path with
//! the documented exit code; `kcpep evaluate` gives seed 002's verdicts exactly as Envoy does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Output};

fn kcpep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kcpep"))
        .args(args)
        .output()
        .unwrap()
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kcpep-operator-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The shipped example (envoy/examples/bank-api.json) pointed at the stack's Keycloak.
fn example() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/examples/bank-api.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v["auth-server-url"] = keycloak().into();
    v
}

fn write(name: &str, v: &Value) -> String {
    let p = dir().join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.to_string_lossy().into_owned()
}

/// `doctor --json`: the exit code and the findings as (severity, path, message).
fn doctor(config: &Value, extra: &[&str]) -> (i32, Vec<(String, String, String)>, Value) {
    let file = write("doctor.json", config);
    let mut args = vec!["doctor", "--config", file.as_str(), "--json"];
    args.extend_from_slice(extra);
    let o = kcpep(&args);
    let out: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    let findings = out["enforcers"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (o.status.code().unwrap(), findings, out)
}

fn errors(f: &[(String, String, String)]) -> Vec<(String, String)> {
    f.iter()
        .filter(|(s, ..)| s == "error")
        .map(|(_, p, m)| (p.clone(), m.clone()))
        .collect()
}

#[test]
fn the_demo_configuration_is_clean_and_no_secret_is_printed() {
    let admin = write("admin.token", &Value::String(String::new()));
    std::fs::write(&admin, admin_token()).unwrap();
    let (code, findings, out) = doctor(&example(), &["--admin-token-file", &admin]);
    assert_eq!(code, 0, "{findings:?}");
    assert_eq!(errors(&findings), vec![]);
    assert_eq!(out["keycloak_reachable"], true);
    let calls: Vec<&str> = out["enforcers"][0]["keycloak_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["what"].as_str().unwrap())
        .collect();
    assert!(
        calls.contains(&"PAT") && calls.contains(&"admin: permissions"),
        "{calls:?}"
    );
    let printed = out.to_string();
    assert!(!printed.contains("bank-api-secret"));
    assert!(!printed.contains(&std::fs::read_to_string(&admin).unwrap()));
}

#[test]
fn a_misspelled_name_and_a_missing_scope_are_errors_at_their_json_paths() {
    let mut v = example();
    v["policy-enforcer"]["paths"][0]["name"] = "View Acount Resource".into();
    let (code, findings, _) = doctor(&v, &[]);
    assert_eq!(code, 1);
    let e = errors(&findings);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, "policy-enforcer.paths[0].name");
    assert!(
        e[0].1.contains("did you mean \"View Account Resource\""),
        "{}",
        e[0].1
    );

    let mut v = example();
    v["policy-enforcer"]["paths"][0]["methods"][0]["scopes"] =
        json!(["account:view", "account:close"]);
    let (code, findings, _) = doctor(&v, &[]);
    assert_eq!(code, 1);
    let e = errors(&findings);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, "policy-enforcer.paths[0].methods[0].scopes[1]");
    assert!(
        e[0].1.contains("account:close") && e[0].1.contains("its scopes: account:view"),
        "{}",
        e[0].1
    );
}

#[test]
fn a_wrong_secret_is_an_error_and_an_unreachable_keycloak_exits_2() {
    let mut v = example();
    v["credentials"]["secret"] = "not-the-secret".into();
    let (code, findings, out) = doctor(&v, &[]);
    assert_eq!(code, 1);
    let e = errors(&findings);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, "credentials.secret");
    assert!(!out.to_string().contains("not-the-secret"));

    let mut v = example();
    v["auth-server-url"] = "http://127.0.0.1:9".into();
    let (code, findings, out) = doctor(&v, &["--timeout", "3"]);
    assert_eq!(code, 2, "{findings:?}");
    assert_eq!(out["keycloak_reachable"], false);
    assert_eq!(errors(&findings)[0].0, "auth-server-url");
}

#[test]
fn a_resource_without_permission_is_an_error_with_an_admin_token() {
    let admin = admin_token();
    let auth = format!("Bearer {admin}");
    let h: Vec<(&str, &[u8])> = vec![
        ("authorization", auth.as_bytes()),
        ("content-type", b"application/json"),
    ];
    let kc = keycloak();
    let clients = request(
        &kc,
        "GET",
        "/admin/realms/bank/clients?clientId=bank-api",
        &h,
        b"",
    );
    let client = clients.json()[0]["id"].as_str().unwrap().to_string();
    let base = format!("/admin/realms/bank/clients/{client}/authz/resource-server/resource");
    let name = format!("Doctor Orphan {}", std::process::id());
    let body = json!({"name": name, "uris": ["/orphan/*"]}).to_string();
    let r = request(&kc, "POST", &base, &h, body.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["_id"].as_str().unwrap().to_string();

    let mut v = example();
    v["policy-enforcer"]["paths"] = json!([{"name": name, "path": "/orphan/*"}]);
    let file = write("admin2.token", &Value::Null);
    std::fs::write(&file, &admin).unwrap();
    let with = doctor(&v, &["--admin-token-file", &file]);
    let without = doctor(&v, &[]);
    let gone = request(&kc, "DELETE", &format!("{base}/{id}"), &h, b"");
    assert_eq!(gone.status, 204);

    assert_eq!(with.0, 1, "{:?}", with.1);
    let e = errors(&with.1);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, "policy-enforcer.paths[0]");
    assert!(e[0].1.contains("has no permission"), "{}", e[0].1);
    // without the admin API the gap is only a note
    assert_eq!(without.0, 0, "{:?}", without.1);
    assert!(without
        .1
        .iter()
        .any(|(s, _, m)| s == "note" && m.contains("permissions not checked")));
}

/// `kcpep evaluate --json` on the enforcers of envoy/envoy.yaml: the status it predicts.
fn evaluate(
    config: &str,
    enforcer: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut args = vec![
        "evaluate",
        "--config",
        config,
        "--enforcer",
        enforcer,
        "--json",
    ];
    let tf = dir().join(format!("{enforcer}.token"));
    if let Some(t) = token {
        std::fs::write(&tf, t).unwrap();
        args.extend(["--token-file", tf.to_str().unwrap()]);
    }
    args.extend([method, path]);
    let o = kcpep(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    (out["result"]["status"].as_u64().unwrap() as u16, out)
}

#[test]
fn evaluate_gives_seed_002_verdicts_as_envoy_does() {
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/envoy.yaml")).unwrap();
    let full: Value = serde_json::from_str(&plugin_configs(&yaml)[0]).unwrap();
    // the two seed-002 enforcers as envoy.yaml has them (the others take secrets from Envoy's
    // environment), selected by name below
    let mut plugin = json!({"enforcers": {}, "default": "unanimous"});
    for name in ["unanimous", "affirmative"] {
        let mut e = full["enforcers"][name].clone();
        e["auth-server-url"] = keycloak().into();
        plugin["enforcers"][name] = e;
    }
    let config = write("plugin.json", &plugin);
    let requests = [
        ("GET", "/account/1"),
        ("GET", "/transfer/7"),
        ("POST", "/transfer/7"),
        ("GET", "/public/info"),
        ("GET", "/nothing/here"),
    ];
    let mut compared = 0;
    for (enforcer, host, strategy) in [
        ("unanimous", "unanimous.bank.local", "UNANIMOUS"),
        ("affirmative", "affirmative.bank.local", "AFFIRMATIVE"),
    ] {
        for user in USERS.iter().copied().map(Some).chain([None]) {
            let tok = user.map(user_token);
            for (method, path) in requests {
                let (predicted, trace) = evaluate(&config, enforcer, method, path, tok.as_deref());
                let through_envoy =
                    send_to(&envoy(), method, host, path, tok.as_deref(), &[], b"").status;
                assert_eq!(
                    predicted, through_envoy,
                    "{enforcer} {user:?} {method} {path}: {trace}"
                );
                if (method, path) == ("GET", "/account/1") {
                    if let Some(u) = user {
                        let want = if expected_allowed(strategy, u) {
                            200
                        } else {
                            403
                        };
                        assert_eq!(predicted, want, "{strategy} {u}: {trace}");
                        assert_eq!(trace["resource"], "View Account Resource");
                        assert_eq!(trace["token"]["check"], "valid");
                        assert!(
                            !trace.to_string().contains(tok.as_deref().unwrap()),
                            "the token is never printed"
                        );
                    }
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 2 * 5 * 5);
}

/// `kcpep evaluate` on the whole plugin configuration of the stack's Envoy, the enforcer picked
/// by the route rules as Envoy's filter picks it (`--host`, and `--route` for Envoy's route
/// name): its status for `method path` on `host`, and its output.
fn evaluate_routed(
    config: &str,
    host: &str,
    route: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[&str],
) -> (u16, Value) {
    let mut args = vec![
        "evaluate", "--config", config, "--host", host, "--route", route, "--json",
    ];
    let tf = dir().join("routed.token");
    if let Some(t) = token {
        std::fs::write(&tf, t).unwrap();
        args.extend(["--token-file", tf.to_str().unwrap()]);
    }
    for h in headers {
        args.extend(["--header", h]);
    }
    args.extend([method, path]);
    // the claims enforcers read their secret from the VM's environment (envoy.yaml sets it)
    let o = Command::new(env!("CARGO_BIN_EXE_kcpep"))
        .args(&args)
        .env("KCPEP_BANK_API_SECRET", "bank-api-secret")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    (out["result"]["status"].as_u64().unwrap() as u16, out)
}

/// A request: host, Envoy's route name there, method, path, token, extra headers.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Vec<&'a str>,
);

/// The requests Envoy's filter answers before an enforcer's flow (the logout endpoint, a method
/// override, a certificate-bound token off its connection, a copy of the filter's own header, a
/// repeated request the memo answers), and routing by the rules themselves: `kcpep evaluate` on
/// the stack's whole plugin configuration gives what Envoy gives.
#[test]
fn evaluate_answers_what_envoy_answers_before_any_enforcers_flow() {
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/envoy.yaml")).unwrap();
    let mut full: Value = serde_json::from_str(&plugin_configs(&yaml)[0]).unwrap();
    for (_, e) in full["enforcers"].as_object_mut().unwrap() {
        if e["auth-server-url"].as_str() == Some("http://127.0.0.1:8180") {
            e["auth-server-url"] = keycloak().into();
        }
    }
    let config = write("full.json", &full);
    let owner = user_token("owner");
    let teller = user_token("teller");
    let bound = mtls_token("owner", "client-a");
    let cases: Vec<Case> = vec![
        // the back-channel logout endpoint, without a logout token: 400 from the filter itself
        (
            "127.0.0.1:10000",
            "default",
            "POST",
            "/kcpep/backchannel-logout",
            None,
            vec![],
        ),
        // a method override naming another method: 400 before anything is asked
        (
            "unanimous.bank.local",
            "unanimous",
            "GET",
            "/account/1",
            Some(&owner),
            vec!["X-HTTP-Method-Override: DELETE"],
        ),
        // a certificate-bound token over plain HTTP: 401, its binding checked by default
        (
            "unanimous.bank.local",
            "unanimous",
            "GET",
            "/account/1",
            Some(&bound),
            vec![],
        ),
        // a client's copy of the filter's own header changes nothing
        (
            "unanimous.bank.local",
            "unanimous",
            "GET",
            "/account/1",
            Some(&teller),
            vec!["X-Kcpep-Permissions: [{\"rsname\":\"View Account Resource\"}]"],
        ),
        // routed by the rules: the route name, then a host rule
        (
            "affirmative.bank.local",
            "affirmative",
            "GET",
            "/account/1",
            Some(&teller),
            vec![],
        ),
        (
            "unanimous.bank.local",
            "unanimous",
            "GET",
            "/account/1",
            Some(&teller),
            vec![],
        ),
        (
            "unanimous.bank.local:10000",
            "unanimous",
            "GET",
            "/account/1",
            Some(&owner),
            vec![],
        ),
    ];
    for (host, route, method, path, token, headers) in &cases {
        let (predicted, trace) =
            evaluate_routed(&config, host, route, method, path, *token, headers);
        let extra: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|h| {
                let (k, v) = h.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().as_bytes().to_vec())
            })
            .collect();
        let extra: Vec<(&str, &[u8])> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let mut through_envoy = send_to(&envoy(), method, host, path, *token, &extra, b"");
        // a repeated request: the memo answers it in Envoy, with the same status
        if through_envoy.status == 200 {
            through_envoy = send_to(&envoy(), method, host, path, *token, &extra, b"");
        }
        assert_eq!(
            predicted, through_envoy.status,
            "{host} {method} {path} {headers:?}: {trace}"
        );
        if path.contains("backchannel-logout") {
            assert_eq!(predicted, 400);
            let said = through_envoy.json()["error_description"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                trace["result"]["reason"].as_str().unwrap().contains(&said),
                "{said} vs {trace}"
            );
        }
        if let Some(t) = token {
            assert!(!trace.to_string().contains(t), "the token is never printed");
        }
    }
    // what each case is, as Keycloak's policies and the filter's rules say
    let statuses: Vec<u16> = cases
        .iter()
        .map(|(h, r, m, p, t, hs)| evaluate_routed(&config, h, r, m, p, *t, hs).0)
        .collect();
    assert_eq!(statuses, [400, 400, 401, 403, 200, 403, 200]);
}
