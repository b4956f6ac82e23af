//! Keycloak is the oracle: which configured pattern wins for a request path, answered by
//! Keycloak's own `PathMatcher` as its Java policy enforcer runs it (`tests/oracle/`, built with
//! Maven from `org.keycloak:keycloak-policy-enforcer`), and by ours, for the same patterns in the
//! same order. Paths are given already normalized (the filter normalizes before matching as
//! Keycloak's newest matcher does; the enforcer library matches what its container hands it).
//! It also covers the patterns Keycloak's enforcer loads although its newest matcher calls them
//! malformed (`/api/{}/foo`, a stray `}`, a `/` inside braces): they load and match the same.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keycloak_pep::request::pattern::{fails_in_keycloak, PathMatcher};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Builds the oracle once (Maven) and returns the java command line to run it.
fn oracle() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oracle");
    let target = dir.join("target"); // ignored by git
    let build = Command::new("mvn")
        .args(["-q", "-B", "-Dstyle.color=never", "package"])
        .current_dir(&dir)
        .status()
        .expect("mvn runs (the stack installs Maven and a JDK)");
    assert!(build.success(), "building the oracle");
    let cp_file = target.join("classpath.txt");
    let cp = Command::new("mvn")
        .args([
            "-q",
            "-B",
            "-Dstyle.color=never",
            "dependency:build-classpath",
        ])
        .arg(format!("-Dmdep.outputFile={}", cp_file.display()))
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(cp.success());
    let deps = std::fs::read_to_string(&cp_file).unwrap();
    let jar = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jar"))
        .expect("the oracle's jar");
    vec![
        "java".into(),
        "-cp".into(),
        format!("{}:{}", jar.display(), deps.trim()),
        "kcpep.oracle.PathOracle".into(),
    ]
}

/// Keycloak's matcher threw (its enforcer fails the request).
const THROWS: i64 = -2;

/// The index of the pattern each path matches, as Keycloak's matcher says (-1: none).
fn keycloak_answers(cmd: &[String], groups: &[(Vec<&str>, Vec<&str>)]) -> Vec<i64> {
    let mut input = String::new();
    for (patterns, paths) in groups {
        for p in patterns {
            input.push_str(p);
            input.push('\n');
        }
        input.push_str("--\n");
        for p in paths {
            input.push_str(p);
            input.push('\n');
        }
        input.push('\n');
    }
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("java runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            // an exception in Keycloak's matcher: its enforcer answers the request with 500
            if l.starts_with("error ") {
                return THROWS;
            }
            l.parse()
                .unwrap_or_else(|_| panic!("the oracle answered {l:?}"))
        })
        .collect()
}

fn corpus() -> Vec<(Vec<&'static str>, Vec<&'static str>)> {
    let paths = vec![
        "/",
        "/api",
        "/api/1",
        "/api/1/foo",
        "/api/1/bar",
        "/api/1/foo/x",
        "/api/1/foo}",
        "/api/1/foo}/anything",
        "/api/a/b/x",
        "/api/v1/resource",
        "/api/v1/resource/1",
        "/api/v2/resource/1/x",
        "/resource/1",
        "/resource/1/test",
        "/index.html",
        "/static/app.css",
        "/static/deep/app.css",
        "/v1/tenants/1",
        "/v1/tenants",
        "/api/{id",
        "/api/{{id}}",
        "/api/1.json",
        "/api/x1",
        "/api/}/1",
        "/api/1}/2",
        "/a/b",
    ];
    let mut groups: Vec<(Vec<&'static str>, Vec<&'static str>)> = [
        // Keycloak loads these; its newest matcher calls them malformed
        "/api/{}/foo",
        "/api/{p1}/foo}/*",
        "/api/{a/b}/*",
        "/api/{p1}}/x",
        "/api/{id",
        "/api/{{id}}",
        "/api/}",
        "/api/}/{id}",
        "/{a}/{b",
        "/api/{id}{x}",
        "/api/{id}.json",
        "/api/x{id}",
        "/api/{id}/{id}",
        "/api/{id}}/{x}",
        // the usual forms
        "/*",
        "/api/*",
        "/api/{version}/resource",
        "/api/{version}/resource/*",
        "/resource/{id}",
        "/resource/{id}/*",
        "/*.html",
        "/static/*.css",
        "/{version}/tenants/{id}",
        "/api/v1/resource",
    ]
    .iter()
    .map(|p| (vec![*p], paths.clone()))
    .collect();
    // precedence among several
    groups.push((
        vec![
            "/*",
            "/api/*",
            "/api/{version}/resource",
            "/api/{version}/resource/*",
            "/api/v1/resource",
            "/resource/{id}",
            "/resource/{id}/*",
            "/*.html",
            "/static/*.css",
        ],
        paths.clone(),
    ));
    groups.push((
        vec!["/api/{}/foo", "/api/{p1}/foo}/*", "/api/{a/b}/*", "/api/*"],
        paths.clone(),
    ));
    groups
}

#[test]
fn every_pattern_matches_what_keycloaks_matcher_matches() {
    let cmd = oracle();
    let groups = corpus();
    let theirs = keycloak_answers(&cmd, &groups);
    let mut i = 0;
    let mut differ = Vec::new();
    let mut refused = 0;
    for (patterns, paths) in &groups {
        let answers = &theirs[i..i + paths.len()];
        i += paths.len();
        if patterns.iter().any(|p| fails_in_keycloak(p).is_some()) {
            // refused at load: only where Keycloak's matcher fails requests with it
            assert!(
                answers.contains(&THROWS),
                "{patterns:?} is refused, yet Keycloak's matcher never failed on it"
            );
            refused += 1;
            continue;
        }
        let ours = PathMatcher::new(patterns.iter().copied());
        for (path, theirs) in paths.iter().zip(answers) {
            let mine = ours.find(path).map_or(-1, |m| m.index as i64);
            if mine != *theirs {
                differ.push(format!(
                    "{patterns:?} {path}: Keycloak {theirs}, ours {mine}"
                ));
            }
        }
    }
    assert_eq!(i, theirs.len(), "one answer per path");
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert_eq!(refused, 4, "the patterns Keycloak's matcher throws on");
}
