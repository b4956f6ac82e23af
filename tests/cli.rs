//! The `kcpep` command line as people use it (no server needed): help and version, errors that
//! name the bad flag with the documented exit code, shell completions, `check` and `explain` on
//! the shipped example, and a refused configuration named by its JSON path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

fn kcpep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kcpep"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const EXAMPLE: &str = "envoy/examples/bank-api.json";

#[test]
fn every_subcommand_has_help_with_the_exit_codes() {
    let top = kcpep(&["--help"]);
    assert_eq!(top.status.code(), Some(0));
    for sub in ["check", "explain", "doctor", "evaluate", "completions"] {
        assert!(text(&top).contains(sub), "{sub} missing from --help");
        let o = kcpep(&[sub, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{sub}: {}", text(&o));
        assert!(text(&o).contains("Usage: kcpep"), "{sub}: {}", text(&o));
    }
    for sub in ["check", "doctor", "evaluate"] {
        assert!(text(&kcpep(&[sub, "--help"])).contains("Exit codes:"));
    }
    let v = kcpep(&["--version"]);
    assert_eq!(v.status.code(), Some(0));
    assert_eq!(
        text(&v).trim(),
        format!("kcpep {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_wrong_command_line_names_the_flag_and_exits_64() {
    let o = kcpep(&["check", "--confg", EXAMPLE]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("--confg"), "{}", text(&o));
    let o = kcpep(&["explain", "--config", EXAMPLE, "GET"]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("<PATH>"), "{}", text(&o));
    let o = kcpep(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(64));
}

#[test]
fn completions_are_scripts_for_the_shell() {
    let o = kcpep(&["completions", "bash"]);
    assert_eq!(o.status.code(), Some(0));
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(
        script.contains("_kcpep()") && script.contains("doctor") && script.contains("--token-file")
    );
    assert_eq!(kcpep(&["completions", "tcsh"]).status.code(), Some(64));
}

#[test]
fn check_and_explain_read_the_shipped_example() {
    let o = kcpep(&["check", "--config", EXAMPLE]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).starts_with("ok: 1 enforcer(s)"), "{}", text(&o));
    let o = kcpep(&["explain", "--config", EXAMPLE, "GET", "/account/7?x=1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["path"], "/account/{id}");
    assert_eq!(v["scopes"], serde_json::json!(["account:view"]));
}

#[test]
fn explain_maps_grpc_method_paths_by_keycloak_patterns() {
    let grpc = "envoy/examples/bank-grpc.json";
    let o = kcpep(&["check", "--config", grpc]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let cases = [
        (
            "/bank.v1.Accounts/GetAccount",
            Some("/bank.v1.Accounts/GetAccount"),
            "ENFORCING",
        ),
        (
            "/bank.v1.Transfers/CreateTransfer",
            Some("/bank.v1.Transfers/{method}"),
            "ENFORCING",
        ),
        (
            "/grpc.health.v1.Health/Check",
            Some("/grpc.health.v1.Health/*"),
            "DISABLED",
        ),
        // a method no path names: denied (PERMISSION_DENIED for a gRPC client)
        ("/bank.v1.Accounts/CloseAccount", None, "ENFORCING"),
    ];
    for (path, pattern, mode) in cases {
        let o = kcpep(&["explain", "--config", grpc, "POST", path]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["path"].as_str(), pattern, "{path}: {v}");
        assert_eq!(v["enforcement_mode"], mode, "{path}: {v}");
    }
}

#[test]
fn a_refused_configuration_exits_1_with_its_json_path() {
    let dir = std::env::temp_dir().join(format!("kcpep-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(EXAMPLE).unwrap()).unwrap();
    v["policy-enforcer"]["paths"][1]["enforcement-mode"] = "SOMETIMES".into();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    let o = kcpep(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("policy-enforcer.paths[1].enforcement-mode"),
        "{}",
        text(&o)
    );
    let o = kcpep(&[
        "doctor",
        "--config",
        dir.join("missing.json").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_explains_the_sender_constraint_and_refuses_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("kcpep-cli-sc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(EXAMPLE).unwrap()).unwrap();
    let file = dir.join("sc.json");
    let check = |v: &serde_json::Value| {
        std::fs::write(&file, v.to_string()).unwrap();
        kcpep(&["check", "--config", file.to_str().unwrap()])
    };
    // bindings are checked by default; turning that off loads, with a warning
    let o = check(&v);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(
            "sender-constraint if-bound (the default): a cnf.jkt token needs the DPoP scheme"
        ),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("warning:"), "{}", text(&o));
    // the table's capacity: 131072 slots / 2 / (10 s + 15 s); one key's share: 10 %
    assert!(
        text(&o).contains("(131072 replay slots: up to about 2621 proofs per second"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("at most 10 % of them, about 524 a second"),
        "{}",
        text(&o)
    );
    v["kcpep"]["sender-constraint"] = "off".into();
    let o = check(&v);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("warning: [") && l.contains("sender-constraint off")),
        "{out}"
    );
    v["kcpep"]["sender-constraint"] = "if-bound".into();
    v["kcpep"]["dpop"] = serde_json::json!({"replay-share-percent": 0});
    let o = check(&v);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("kcpep.dpop.replay-share-percent"),
        "{}",
        text(&o)
    );
    v["kcpep"]["dpop"] = serde_json::json!({"replay-slots": 3});
    let o = check(&v);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("kcpep.dpop.replay-slots"), "{}", text(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}
