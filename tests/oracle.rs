//! Keycloak is the oracle: which configured pattern wins for a request path, answered by
//! Keycloak's own `PathMatcher` as its Java policy enforcer runs it (`tests/oracle/`, built with
//! Maven from `org.keycloak:keycloak-policy-enforcer`), and by ours, for the same patterns in the
//! same order. Paths are given already normalized (the filter normalizes before matching as
//! Keycloak's newest matcher does; the enforcer library matches what its container hands it).
//! It also covers the patterns Keycloak's enforcer loads although its newest matcher calls them
//! malformed (`/api/{}/foo`, a stray `}`, a `/` inside braces): they load and match the same.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keycloak_pep::request::pattern::{fails_in_keycloak, validate_template, PathMatcher};
use keycloak_pep::request::uri;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Which of Keycloak's matchers answers.
#[derive(Clone, Copy)]
enum Keycloak {
    /// The Java policy enforcer's (keycloak-policy-enforcer, the newest Maven serves): it matches
    /// the path its container hands it, without normalizing.
    Enforcer,
    /// The newest: keycloak-common 26.7.3's matcher, which normalizes the request path first,
    /// with the second normalization pass of Keycloak's main branch (keycloak#52843: a decoded
    /// `%3B` or `%2E%2E` counts), which the filter follows (docs/keycloak-enforcer.md §8.1).
    Newest,
}

/// Builds the oracle (Maven) and returns the java command line that runs it on `which` matcher.
fn oracle(which: Keycloak) -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oracle");
    let target = dir.join("target"); // ignored by git
    let build = Command::new("mvn")
        .args(["-q", "-B", "-Dstyle.color=never", "package"])
        .current_dir(&dir)
        .status()
        .expect("mvn runs (the stack installs Maven and a JDK)");
    assert!(build.success(), "building the oracle");
    let (props, name): (&[&str], &str) = match which {
        Keycloak::Enforcer => (&[], "classpath.txt"),
        Keycloak::Newest => (
            &["-Dkc.artifact=keycloak-common", "-Dkc.version=26.7.3"],
            "classpath-newest.txt",
        ),
    };
    let cp_file = target.join(name);
    let cp = Command::new("mvn")
        .args(["-q", "-B", "-Dstyle.color=never"])
        .args(props)
        .arg("dependency:build-classpath")
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
    let mut cmd = vec![
        "java".to_string(),
        "-cp".into(),
        format!("{}:{}", jar.display(), deps.trim()),
        "kcpep.oracle.PathOracle".into(),
    ];
    if let Keycloak::Newest = which {
        cmd.push("gen2".into());
    }
    cmd
}

/// Keycloak's matcher threw (its enforcer fails the request).
const THROWS: i64 = -2;

/// What Keycloak's matcher made of a path: the normalized path, when it normalizes.
#[derive(Debug, Clone, PartialEq)]
enum Normalized {
    /// This matcher does not normalize.
    NotDone,
    /// It refused the path (Java's `URI` cannot parse it): it matches nothing.
    Refused,
    Path(String),
}

/// The index of the pattern each path matches, as Keycloak's matcher says (-1: none), and the
/// path it normalized the request to.
fn keycloak_answers<S: AsRef<str>>(
    cmd: &[String],
    groups: &[(Vec<S>, Vec<S>)],
) -> Vec<(i64, Normalized)> {
    let mut input = String::new();
    for (patterns, paths) in groups {
        for p in patterns {
            input.push_str(p.as_ref());
            input.push('\n');
        }
        input.push_str("--\n");
        for p in paths {
            input.push_str(p.as_ref());
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
                return (THROWS, Normalized::NotDone);
            }
            let (index, normalized) = l.split_once('\t').unwrap_or((l, "-"));
            let index = index
                .parse()
                .unwrap_or_else(|_| panic!("the oracle answered {l:?}"));
            let normalized = match normalized {
                "-" => Normalized::NotDone,
                "null" => Normalized::Refused,
                p => Normalized::Path(p.to_string()),
            };
            (index, normalized)
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
    // gRPC method paths (`/package.Service/Method`): dots in the first segment, each pattern alone
    // and all of them together
    let grpc_paths = vec![
        "/bank.v1.Accounts/GetAccount",
        "/bank.v1.Accounts/ListAccounts",
        "/bank.v1.Accounts",
        "/bank.v1.Accounts/",
        "/bank.v1.Accounts/GetAccount/x",
        "/bank.v2.Accounts/GetAccount",
        "/grpc.health.v1.Health/Check",
    ];
    let grpc_patterns = [
        "/bank.v1.Accounts/GetAccount",
        "/bank.v1.Accounts/{method}",
        "/bank.v1.Accounts/*",
        "/{service}/GetAccount",
        "/*.Accounts/*",
        "/bank.v1.*",
        "/*",
    ];
    for p in grpc_patterns {
        groups.push((vec![p], grpc_paths.clone()));
    }
    groups.push((grpc_patterns.to_vec(), grpc_paths));
    groups
}

#[test]
fn every_pattern_matches_what_keycloaks_matcher_matches() {
    let cmd = oracle(Keycloak::Enforcer);
    let groups = corpus();
    let theirs: Vec<i64> = keycloak_answers(&cmd, &groups)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
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

/// A pattern of a kind Keycloak's enforcer loads: exact, `/*`, a prefix wildcard, a suffix,
/// parameters at any position, a wildcard after parameters, and the odd ones it loads although
/// they look malformed.
fn pattern(rng: &mut StdRng) -> String {
    const SEGS: &[&str] = &["api", "a", "b", "v1", "res", "1", "x.json"];
    const PARAMS: &[&str] = &[
        "{id}",
        "{v}",
        "{x}",
        "{}",
        "{id}}",
        "{a/b}",
        "{{id}}",
        "x{id}",
        "{id}.json",
    ];
    let n = rng.gen_range(0..4);
    let mut p = String::new();
    for _ in 0..n {
        p.push('/');
        if rng.gen_bool(0.3) {
            p.push_str(PARAMS[rng.gen_range(0..PARAMS.len())]);
        } else {
            p.push_str(SEGS[rng.gen_range(0..SEGS.len())]);
        }
    }
    match rng.gen_range(0..6) {
        0 => p.push_str("/*"),
        1 => p.push_str("/*.html"),
        2 if !p.is_empty() => {}
        _ if p.is_empty() => p.push('/'),
        _ => {}
    }
    p
}

/// A request path meant to hit `pattern`, then mutated with the tricks that got past enforcers.
fn request_path(rng: &mut StdRng, pattern: &str) -> String {
    const VALUES: &[&str] = &[
        "1", "v1", "abc", "x.json", "api", "a", "b", "é", "%41", "1.html",
    ];
    let mut p = String::new();
    let mut rest = pattern;
    while let Some(i) = rest.find(['{', '*']) {
        p.push_str(&rest[..i]);
        if rest[i..].starts_with('{') {
            p.push_str(VALUES[rng.gen_range(0..VALUES.len())]);
            rest = rest[i..].find('}').map_or("", |j| &rest[i + j + 1..]);
        } else {
            let tail = ["", "x", "x/y", "app.css", "index.html"];
            p.push_str(tail[rng.gen_range(0..tail.len())]);
            rest = &rest[i + 1..];
        }
    }
    p.push_str(rest);
    if p.is_empty() || rng.gen_bool(0.1) {
        p = format!("/{}", VALUES[rng.gen_range(0..VALUES.len())]);
    }
    for _ in 0..rng.gen_range(0..3) {
        p = mutate(rng, &p);
    }
    p
}

fn mutate(rng: &mut StdRng, p: &str) -> String {
    let at = |rng: &mut StdRng| {
        // after the leading `/`: Envoy hands on no path that does not start with one
        let cuts: Vec<usize> = p
            .match_indices('/')
            .map(|(i, _)| i)
            .filter(|i| *i > 0)
            .chain([p.len()])
            .collect();
        *cuts.choose(rng).unwrap()
    };
    match rng.gen_range(0..16) {
        0 => {
            // percent-encode one character (hex in either case)
            let chars: Vec<(usize, char)> = p.char_indices().skip(1).collect();
            let Some(&(i, c)) = chars.choose(rng) else {
                return p.to_string();
            };
            let mut buf = [0u8; 4];
            let enc: String = c
                .encode_utf8(&mut buf)
                .bytes()
                .map(|b| {
                    if rng.gen_bool(0.5) {
                        format!("%{b:02X}")
                    } else {
                        format!("%{b:02x}")
                    }
                })
                .collect();
            format!("{}{enc}{}", &p[..i], &p[i + c.len_utf8()..])
        }
        1 => {
            let i = at(rng);
            format!("{};x=1{}", &p[..i], &p[i..])
        }
        2 => {
            let i = at(rng);
            format!("{}/{}", &p[..i], &p[i..])
        }
        3 => format!("{p}/"),
        4 => {
            let i = at(rng);
            let dots = ["/.", "/..", "/x/..", "/%2e", "/%2E%2e", "/.%2e", "/..;x"];
            format!(
                "{}{}{}",
                &p[..i],
                dots[rng.gen_range(0..dots.len())],
                &p[i..]
            )
        }
        5 => {
            let i = at(rng);
            let s = ["%2F", "%2f", "%5C", "\\", "%25", "%252F", "%3B", "%3b"];
            format!("{}{}{}", &p[..i], s[rng.gen_range(0..s.len())], &p[i..])
        }
        6 => {
            let i = at(rng);
            let bad = ["%zz", "%4", "%", "%C3", "%FF"];
            format!("{}{}{}", &p[..i], bad[rng.gen_range(0..bad.len())], &p[i..])
        }
        7 => format!("{p}?q=/a/../b&x=%2F"),
        8 => format!("/{}", p.trim_start_matches('/')),
        9 => p.replacen('/', "//", 1),
        10 => format!("{p}/日本"),
        11 => format!("{p}{{id}}"),
        12 => format!("{p}%20x"),
        13 => p.to_uppercase(),
        14 => format!("{p}/{}", "a".repeat(rng.gen_range(1..300))),
        _ => p.to_string(),
    }
}

/// At least `min` cases were compared and none differed (the first ones are shown).
fn agree(cases: usize, min: usize, differ: &[String]) {
    assert!(cases >= min, "{cases} cases");
    assert!(
        differ.is_empty(),
        "{} of {cases} differ, first ones:\n{}",
        differ.len(),
        differ[..differ.len().min(40)].join("\n")
    );
}

/// The corpus's seed: fixed in `make test`, so a failure is the same on every machine;
/// `make fuzz-diff` sets `KCPEP_ORACLE_SEED` to new ones.
fn seed(default: u64) -> u64 {
    std::env::var("KCPEP_ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(default, |s| s.wrapping_add(default))
}

/// The generated corpus for `seed`.
fn generated(seed: u64, groups: usize, paths_per_group: usize) -> Vec<(Vec<String>, Vec<String>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..groups)
        .map(|_| {
            let mut patterns: Vec<String> = Vec::new();
            for _ in 0..rng.gen_range(1..6) {
                // identical paths are one path (both Keycloak's configuration and ours merge
                // them), so a matcher never sees the same pattern twice
                let p = pattern(&mut rng);
                if !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
            let paths = (0..paths_per_group)
                .map(|_| {
                    let target = patterns.choose(&mut rng).unwrap().clone();
                    request_path(&mut rng, &target)
                })
                .collect();
            (patterns, paths)
        })
        .collect()
}

#[test]
fn generated_paths_normalize_and_match_as_the_newest_keycloak_does() {
    let seed = seed(15);
    let groups: Vec<_> = generated(seed, 800, 50)
        .into_iter()
        // Templates the newest matcher calls malformed (`{}`, `{a/b}`, nested or stray braces):
        // the filter matches them as the enforcer on Maven Central does, which the test below
        // checks; the newest matcher skips them.
        .filter(|(patterns, _)| patterns.iter().all(|p| validate_template(p).is_ok()))
        .collect();
    // Keycloak's enforcer hands its matcher the path without the query (the servlet's
    // relative path); the filter strips it itself.
    let asked: Vec<(Vec<String>, Vec<String>)> = groups
        .iter()
        .map(|(pats, paths)| {
            let bare = paths
                .iter()
                .map(|p| p.split('?').next().unwrap_or_default().to_string())
                .collect();
            (pats.clone(), bare)
        })
        .collect();
    let theirs = keycloak_answers(&oracle(Keycloak::Newest), &asked);
    let (mut cases, mut refused_by_us, mut differ) = (0, 0, Vec::new());
    let mut answers = theirs.iter();
    for (patterns, paths) in &groups {
        let ours = PathMatcher::new(patterns.iter().map(String::as_str));
        for raw in paths {
            let (index, normalized) = answers.next().expect("one answer per path");
            cases += 1;
            let mine = uri::normalize(raw);
            let agree_norm = match (normalized, &mine) {
                (Normalized::Refused, None) => true,
                (Normalized::Path(k), Some(m)) => k == m,
                _ => false,
            };
            let my_index = mine
                .as_deref()
                .and_then(|m| ours.find(m))
                .map_or(-1, |m| m.index as i64);
            if uri::segmentation_hazard(raw).is_some() {
                // the filter answers 400 before matching (a deliberate difference)
                refused_by_us += 1;
            }
            if !agree_norm || my_index != *index {
                differ.push(format!(
                    "{patterns:?} {raw:?}: Keycloak {index} {normalized:?}, ours {my_index} {mine:?}"
                ));
            }
        }
    }
    println!(
        "oracle: seed {seed}, {cases} generated cases, {refused_by_us} of them refused by the filter (400), {} disagreements",
        differ.len()
    );
    agree(cases, 15_000, &differ);
}

#[test]
fn generated_paths_match_as_keycloaks_enforcer_matches() {
    // The same corpus through keycloak-policy-enforcer's matcher (the newest on Maven Central),
    // malformed templates included, given the path the filter normalized (that enforcer matches
    // what its container hands it, and the filter refuses hazardous paths before matching).
    // (patterns, the paths as the filter normalized them), and the raw paths beside them
    let mut raw: Vec<Vec<String>> = Vec::new();
    let groups: Vec<(Vec<String>, Vec<String>)> = generated(seed(16), 400, 50)
        .into_iter()
        .filter(|(patterns, _)| patterns.iter().all(|p| fails_in_keycloak(p).is_none()))
        .map(|(patterns, paths)| {
            let (sent, judged): (Vec<String>, Vec<String>) = paths
                .into_iter()
                .filter(|p| uri::segmentation_hazard(p).is_none())
                .filter_map(|p| uri::normalize(&p).map(|n| (p, n)))
                .filter(|(_, n)| !n.contains(['\n', '\r']))
                .unzip();
            raw.push(
                sent.iter()
                    .map(|p| p.split('?').next().unwrap_or_default().to_string())
                    .collect(),
            );
            (patterns, judged)
        })
        .collect();
    let theirs = keycloak_answers(&oracle(Keycloak::Enforcer), &groups);
    let mut answers = theirs.iter();
    let (mut cases, mut differ) = (0, Vec::new());
    // Where this enforcer's matcher throws (its requests fail with 500), the newest does not (the
    // brace checks of keycloak-common 26.7): those cases are asked of the newest instead.
    let mut threw: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for ((patterns, paths), sent) in groups.iter().zip(&raw) {
        let ours = PathMatcher::new(patterns.iter().map(String::as_str));
        let mut thrown = Vec::new();
        for (path, sent) in paths.iter().zip(sent) {
            let (index, _) = answers.next().expect("one answer per path");
            cases += 1;
            if *index == THROWS {
                // the newest normalizes itself: it gets the path as sent
                thrown.push(sent.clone());
                continue;
            }
            let mine = ours.find(path).map_or(-1, |m| m.index as i64);
            if mine != *index {
                differ.push(format!(
                    "{patterns:?} {path:?}: Keycloak {index}, ours {mine}"
                ));
            }
        }
        if !thrown.is_empty() {
            threw.push((patterns.clone(), thrown));
        }
    }
    let newest = keycloak_answers(&oracle(Keycloak::Newest), &threw);
    let mut answers = newest.iter();
    let mut thrown_cases = 0;
    for (patterns, paths) in &threw {
        let ours = PathMatcher::new(patterns.iter().map(String::as_str));
        for path in paths {
            let (index, _) = answers.next().expect("one answer per path");
            thrown_cases += 1;
            let mine = uri::normalize(path)
                .and_then(|n| ours.find(&n))
                .map_or(-1, |m| m.index as i64);
            if mine != *index {
                differ.push(format!(
                    "{patterns:?} {path:?}: the enforcer throws, the newest {index}, ours {mine}"
                ));
            }
        }
    }
    println!(
        "oracle (enforcer): {cases} generated cases, {thrown_cases} where its matcher throws (answered as the newest does), {} disagreements",
        differ.len()
    );
    agree(cases, 10_000, &differ);
}
