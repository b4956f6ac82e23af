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
    let args = [
        "evaluate",
        "--config",
        config,
        "--enforcer",
        enforcer,
        "--json",
    ];
    let out = run_evaluate(&args, token, &[], method, path);
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
    let args = [
        "evaluate", "--config", config, "--host", host, "--route", route, "--json",
    ];
    let out = run_evaluate(&args, token, headers, method, path);
    (out["result"]["status"].as_u64().unwrap() as u16, out)
}

/// `kcpep evaluate` with `args`, the token (through a file), `--header`s, then `method path`; its
/// JSON output (the claims enforcers read their secret from the VM's environment, as envoy.yaml
/// sets it).
#[test]
fn evaluate_says_what_a_grpc_client_gets() {
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/envoy.yaml")).unwrap();
    let full: Value = serde_json::from_str(&plugin_configs(&yaml)[0]).unwrap();
    // envoy.yaml's gRPC enforcer (on-deny-redirect-to set), asking the stack's Keycloak directly
    let mut e = full["enforcers"]["grpc"].clone();
    e["auth-server-url"] = keycloak().into();
    let config = write("grpc.json", &e);
    let grpc = ["content-type:application/grpc"];
    let args = ["evaluate", "--config", &config, "--json"];
    let method = "/bank.v1.Accounts/GetAccount";
    let cases = [
        (Some("owner"), 200, None),
        (Some("teller"), 403, Some(7)),
        (None, 401, Some(16)),
    ];
    for (user, status, grpc_status) in cases {
        let tok = user.map(user_token);
        let out = run_evaluate(&args, tok.as_deref(), &grpc, "POST", method);
        let r = &out["result"];
        assert_eq!(r["status"], status, "{user:?}: {out}");
        assert_eq!(r["grpc_status"].as_u64(), grpc_status, "{user:?}: {out}");
    }
    // the same request from an HTTP client: redirected, no gRPC status
    let out = run_evaluate(&args, None, &[], "POST", method);
    assert_eq!(
        (&out["result"]["status"], &out["result"]["grpc_status"]),
        (&json!(302), &Value::Null)
    );
}

fn run_evaluate(
    args: &[&str],
    token: Option<&str>,
    headers: &[&str],
    method: &str,
    path: &str,
) -> Value {
    let mut args = args.to_vec();
    let tf = dir().join("evaluate.token");
    if let Some(t) = token {
        std::fs::write(&tf, t).unwrap();
        args.extend(["--token-file", tf.to_str().unwrap()]);
    }
    for h in headers {
        args.extend(["--header", h]);
    }
    args.extend([method, path]);
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
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `--header` arguments (`Name: value`) as a request's header pairs.
fn header_pairs(headers: &[&str]) -> Vec<(String, Vec<u8>)> {
    let pair = |h: &&str| {
        let (k, v) = h.split_once(':').unwrap();
        (k.trim().to_ascii_lowercase(), v.trim().as_bytes().to_vec())
    };
    headers.iter().map(pair).collect()
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
        let owned = header_pairs(headers);
        let extra: Vec<(&str, &[u8])> = owned
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

/// `kcpep evaluate --json --host HOST` on `config`, sending the request `repeat` times through
/// one worker: its output.
fn evaluate_repeated(
    config: &str,
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[&str],
    repeat: u32,
) -> Value {
    let repeat = repeat.to_string();
    let args = [
        "evaluate", "--config", config, "--host", host, "--json", "--repeat", &repeat,
    ];
    run_evaluate(&args, token, headers, method, path)
}

/// The reason of the filter's log line that holds `marker` (`reason="..."`), once Envoy wrote it.
fn logged_reason(envoy: &common::own_envoy::OwnEnvoy, marker: &str) -> String {
    poll_until(
        &format!("the filter's log line with {marker}"),
        std::time::Duration::from_secs(10),
        || {
            let log = envoy.log();
            let line = log.lines().find(|l| l.contains(marker))?;
            let (_, rest) = line.split_once("reason=\"")?;
            Some(rest.split_once('"')?.0.to_string())
        },
    )
}

/// A request (host, method, path, token, headers) and the marker of Envoy's log line about it.
type Agreement<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<String>,
    Vec<&'a str>,
    String,
);

/// The requests the pipeline answers before or beside an enforcer's flow (a host no route
/// selects, the back-channel logout endpoint, a DPoP-bound token without its proof, a repeated
/// request the memo answers, a path whose claims read a body that never comes) and plain
/// decisions, through an Envoy of this test's own and
/// through `kcpep evaluate` on the same configuration: the same status and the same reason (the
/// one Envoy's log line gives), and the memo hit counted where `evaluate` says it answered.
#[test]
fn evaluate_and_envoy_agree_on_status_and_reason() {
    use common::own_envoy::{cluster, keycloak_address, OwnEnvoy, Setup};
    const ADMIN: u16 = 9943;
    const LISTENER: u16 = 10420;
    let (_, kc_port) = keycloak_address();
    let plugin = json!({
        "enforcers": {"bank": {
            "realm": "bank", "auth-server-url": keycloak(), "resource": "bank-api",
            "credentials": {"secret": "bank-api-secret"},
            "policy-enforcer": {"paths": [
                {"name": "View Account Resource", "path": "/account/{id}",
                 "methods": [{"method": "GET", "scopes": ["account:view"]}]},
                {"name": "Branch Transfer", "path": "/branch/transfer",
                 "claim-information-point": {"claims": {"amount": "{request.body['/amount']}"}}}]},
            "kcpep": {"cluster": "keycloak", "sender-constraint": "if-bound",
                      "backchannel-logout": {"path": "/kcpep/backchannel-logout",
                                             "audiences": ["demo-cli"]}}
        }},
        "routes": [{"host": "bank.local", "enforcer": "bank"}]
    });
    let config = write("agree.json", &plugin);
    let envoy = OwnEnvoy::start(
        Setup {
            name: "agree",
            admin: ADMIN,
            listener: LISTENER,
            base_id: 82,
            clusters: vec![
                cluster("keycloak", &[kc_port]),
                cluster("upstream", &[8081]),
            ],
        },
        &plugin,
    );
    let base = envoy.url();
    let (owner, teller) = (user_token("owner"), user_token("teller"));
    let nowhere = format!("nowhere-{}.local", std::process::id());
    let form = "content-type: application/x-www-form-urlencoded";
    // (host, method, path, token, headers, the log line's marker)
    let mut cases: Vec<Agreement> = vec![
        (
            &nowhere,
            "GET",
            "/account/1",
            Some(owner.clone()),
            vec![],
            format!("authority=\"{nowhere}\""),
        ),
        (
            "bank.local",
            "POST",
            "/kcpep/backchannel-logout",
            None,
            vec![form],
            "back-channel logout status=".into(),
        ),
        (
            "bank.local",
            "GET",
            "/account/21",
            None,
            vec![],
            "path=\"/account/21\"".into(),
        ),
        (
            "bank.local",
            "GET",
            "/account/22",
            Some(teller.clone()),
            vec![],
            "path=\"/account/22\"".into(),
        ),
    ];
    // a path whose claims read the body, without one: decided with an empty body
    cases.push((
        "bank.local",
        "GET",
        "/branch/transfer",
        Some(owner.clone()),
        vec![],
        "path=\"/branch/transfer\"".into(),
    ));
    let dpop = std::panic::catch_unwind(|| common::dpop::Client::new().token("owner"));
    if let Ok(bound) = dpop {
        // a DPoP-bound token sent as a bearer token, without its proof
        cases.push((
            "bank.local",
            "GET",
            "/account/23",
            Some(bound),
            vec![],
            "path=\"/account/23\"".into(),
        ));
    } else {
        assert!(
            keycloak_version() < (26, 4),
            "Keycloak >= 26.4 binds DPoP tokens"
        );
    }
    for (host, method, path, token, headers, marker) in &cases {
        let owned = header_pairs(headers);
        let extra: Vec<(&str, &[u8])> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let through_envoy = send_to(&base, method, host, path, token.as_deref(), &extra, b"");
        let out = evaluate_repeated(&config, host, method, path, token.as_deref(), headers, 1);
        let result = &out["result"];
        assert_eq!(
            result["status"].as_u64(),
            Some(u64::from(through_envoy.status)),
            "{host} {method} {path}: {out}"
        );
        assert_ne!(through_envoy.status, 200, "{host} {method} {path}");
        let reason = logged_reason(&envoy, marker);
        assert_eq!(result["reason"].as_str(), Some(reason.as_str()), "{out}");
        if let Some(t) = token {
            assert!(
                !out.to_string().contains(t.as_str()),
                "the token is never printed"
            );
        }
    }
    // a repeated request: the memo answers the second in Envoy and in evaluate
    let hits = stat_at(&envoy.admin(), "kcpep.cache.hit");
    for _ in 0..2 {
        let r = send_to(
            &base,
            "GET",
            "bank.local",
            "/account/24",
            Some(&owner),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        stat_at(&envoy.admin(), "kcpep.cache.hit") - hits,
        1,
        "Envoy's memo answered the second"
    );
    let out = evaluate_repeated(
        &config,
        "bank.local",
        "GET",
        "/account/24",
        Some(&owner),
        &[],
        2,
    );
    let attempts = out["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{out}");
    assert_eq!(attempts[0]["status"], 200, "{out}");
    assert_ne!(attempts[0]["cache"], "Hit", "{out}");
    assert_eq!(attempts[1]["status"], 200, "{out}");
    assert_eq!(attempts[1]["cache"], "Hit", "{out}");
    assert!(
        attempts[1]["reason"].as_str().unwrap().contains("memo"),
        "{out}"
    );
}
