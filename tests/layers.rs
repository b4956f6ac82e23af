//! The crate's shape, kept: every `crate::` path in `src/` points to the same layer or one below
//! it, and no modules import each other in a cycle. The layers, bottom up, are the folders of
//! `src/` (the map is in `src/lib.rs`); `src/bin` sits on top of all of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LAYERS: &[&str] = &[
    "wire", "request", "config", "keycloak", "store", "enforce", "pipeline", "filter", "bin",
];

/// `src/a/b.rs` -> `a::b`, `src/a/mod.rs` -> `a`, `src/bin/kcpep.rs` -> `bin::kcpep`.
fn module_of(rel: &str) -> String {
    let rel = rel.trim_end_matches(".rs");
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    rel.replace('/', "::")
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| *l == top)
}

/// The source without comments, strings and char literals (so a doc example or a message that
/// names a path is not an import).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // raw string r"..." / r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // 'x'
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            let c = src[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every path written after `crate::` (or `keycloak_pep::` in the binary), braces expanded:
/// `crate::a::{b::C, d}` gives `a::b::C` and `a::d`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for root in ["crate::", "keycloak_pep::"] {
        let mut rest = code;
        while let Some(i) = rest.find(root) {
            let before = rest[..i].chars().last();
            rest = &rest[i + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let (paths, _) = parse_tree(rest);
            out.extend(paths);
        }
    }
    out
}

/// Every path written relative to the module `module` of a file: after `self::` and `super::`
/// (resolved against the module the text is in, inline `mod x { .. }` blocks included, so a test
/// module's `use super::*` is its own file), and after a child module's bare name (`use
/// http::Http;` in `filter/mod.rs`), as full paths from the crate root.
fn relative_paths(code: &str, module: &str, modules: &BTreeSet<String>) -> Vec<String> {
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let base: Vec<String> = if module == "lib" {
        Vec::new()
    } else {
        module.split("::").map(str::to_string).collect()
    };
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let (mut depth, mut i) = (0usize, 0usize);
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c == b'{' {
            depth += 1;
            if let Some(m) = pending_mod.take() {
                inline.push((m, depth));
            }
            i += 1;
            continue;
        }
        if c == b'}' {
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
            depth = depth.saturating_sub(1);
            i += 1;
            continue;
        }
        if c == b';' {
            pending_mod = None;
        }
        let starts_word = ident(c) && (i == 0 || !(ident(b[i - 1]) || b[i - 1] == b':'));
        if !starts_word {
            i += 1;
            continue;
        }
        let end = (i..b.len()).find(|&j| !ident(b[j])).unwrap_or(b.len());
        let word = &code[i..end];
        let here: Vec<String> = base
            .iter()
            .cloned()
            .chain(inline.iter().map(|(m, _)| m.clone()))
            .collect();
        if word == "mod" {
            let rest = code[end..].trim_start();
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && rest[name.len()..].trim_start().starts_with('{') {
                pending_mod = Some(name);
            }
            i = end;
            continue;
        }
        if !code[end..].starts_with("::") || matches!(word, "crate" | "keycloak_pep") {
            i = end;
            continue;
        }
        let (mut at, mut up) = (i, 0usize);
        let mut is_self = false;
        while code[at..].starts_with("super::") {
            up += 1;
            at += "super::".len();
        }
        if up == 0 && code[at..].starts_with("self::") {
            is_self = true;
            at += "self::".len();
        }
        let mut prefix: Vec<String> = here.clone();
        if up > 0 {
            prefix.truncate(prefix.len().saturating_sub(up));
        } else if !is_self {
            // a bare name: a child module of this one, or not ours to read
            let child = here
                .iter()
                .cloned()
                .chain([word.to_string()])
                .collect::<Vec<_>>()
                .join("::");
            if !modules.contains(&child) {
                i = end;
                continue;
            }
        }
        let (paths, used) = parse_tree(&code[at..]);
        for p in paths {
            let full: Vec<String> = prefix
                .iter()
                .cloned()
                .chain([p])
                .filter(|s| !s.is_empty())
                .collect();
            out.push(full.join("::"));
        }
        i = at + used.max(1);
    }
    out
}

/// Parses `a::b::{c, d::e}` at the start of `s`: the expanded paths and the bytes consumed.
fn parse_tree(s: &str) -> (Vec<String>, usize) {
    let b = s.as_bytes();
    let mut prefix: Vec<&str> = Vec::new();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'{') {
            i += 1;
            let mut all = Vec::new();
            loop {
                while b
                    .get(i)
                    .is_some_and(|c| c.is_ascii_whitespace() || *c == b',')
                {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return (all, i + 1);
                }
                let (sub, used) = parse_tree(&s[i..]);
                i += used.max(1);
                for p in sub {
                    let mut full = prefix.clone();
                    if !p.is_empty() && p != "self" {
                        full.push(&p);
                    }
                    all.push(full.join("::"));
                }
            }
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        prefix.push(&s[start..i]);
        if !s[i..].starts_with("::") {
            return (vec![prefix.join("::")], i);
        }
        i += 2;
    }
}

/// The module a path names or lives in: its longest prefix that is a module of the crate.
fn target(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// What is wrong with the shape of these sources (`(path under src/, text)`); nothing if it holds.
fn check(files: &[(String, String)]) -> Vec<String> {
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| module_of(p)).collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files {
        let from = module_of(path);
        if from == "lib" {
            continue;
        }
        let Some(from_layer) = layer_of(&from) else {
            problems.push(format!(
                "src/{path}: not in any layer ({})",
                LAYERS.join(", ")
            ));
            continue;
        };
        let code = code_only(text);
        let paths = crate_paths(&code)
            .into_iter()
            .chain(relative_paths(&code, &from, &modules));
        for p in paths {
            let Some(to) = target(&p, &modules) else {
                continue;
            };
            if to == from || from.starts_with(&format!("{to}::")) && to.contains("::") {
                continue;
            }
            let to_layer = layer_of(&to).unwrap_or(0);
            if to_layer > from_layer {
                problems.push(format!(
                    "src/{path}: `{p}` reaches up from {} to {}",
                    LAYERS[from_layer], LAYERS[to_layer]
                ));
            }
            edges.entry(from.clone()).or_default().insert(to);
        }
    }
    problems.extend(cycles(&edges));
    problems
}

/// Import cycles among modules (each strongly connected set of two or more, once).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let nodes: BTreeSet<&String> = edges
        .keys()
        .chain(edges.values().flat_map(|s| s.iter()))
        .collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) || !reaches[n].contains(*n) {
            continue;
        }
        let group: Vec<String> = nodes
            .iter()
            .filter(|m| reaches[n].contains(**m) && reaches[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        done.extend(group.iter().cloned());
        out.push(format!("import cycle: {}", group.join(" <-> ")));
    }
    out
}

fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

#[test]
fn every_import_points_down_and_none_forms_a_cycle() {
    let problems = check(&sources());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import_and_a_cycle() {
    let f = |p: &str, t: &str| (p.to_string(), t.to_string());
    let files = vec![
        f("wire/mod.rs", "pub mod a;"),
        f(
            "wire/a.rs",
            "use crate::enforce::Step; // crate::store::x in a comment is fine",
        ),
        f("enforce/mod.rs", "pub struct Step;"),
        f("config/mod.rs", "use crate::config::b::X;"),
        f("config/b.rs", "fn f() { crate::config::c::g() }"),
        f(
            "config/c.rs",
            "use crate::{config::b, wire::a};\nconst S: &str = \"crate::store\";",
        ),
    ];
    let problems = check(&files);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("src/wire/a.rs: `enforce::Step` reaches up from wire to enforce"));
    assert_eq!(problems[1], "import cycle: config::b <-> config::c");
}

#[test]
fn relative_paths_are_read_and_a_cycle_through_them_is_seen() {
    let f = |p: &str, t: &str| (p.to_string(), t.to_string());
    let files = vec![
        f("filter/mod.rs", "mod http; mod root; use http::Http;"),
        f(
            "filter/http.rs",
            "use super::root::Plugin;\n#[cfg(test)]\nmod tests { use super::*; fn t() { super::super::root::f() } }",
        ),
        f("filter/root.rs", "pub struct Plugin; fn g() { self::inner::h(); super::http::Http::new() }"),
        f("filter/root/inner.rs", "pub fn h() {}"),
    ];
    let problems = check(&files);
    assert_eq!(
        problems,
        ["import cycle: filter::http <-> filter::root"],
        "{problems:#?}"
    );
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| module_of(p)).collect();
    assert_eq!(
        relative_paths(&files[0].1, "filter", &modules),
        ["filter::http::Http"]
    );
    assert_eq!(
        relative_paths(&files[1].1, "filter::http", &modules),
        ["filter::root::Plugin", "filter::http", "filter::root::f"]
    );
    assert_eq!(
        relative_paths(&files[2].1, "filter::root", &modules),
        ["filter::root::inner::h", "filter::http::Http::new"]
    );
}

#[test]
fn braces_and_roots_are_read() {
    assert_eq!(
        crate_paths("use crate::{a::{b, c::D}, e};\nkeycloak_pep::f::g(); my_crate::h"),
        ["a::b", "a::c::D", "e", "f::g"]
    );
}

/// The first column of docs/architecture.md's "What is where" table: every path it names.
fn architecture_layout_paths(page: &str) -> Vec<String> {
    let start = page
        .find("## What is where")
        .expect("a 'What is where' section");
    let section = &page[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    section[..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or_default();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_architecture_layout_table_matches_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let named = architecture_layout_paths(&page);
    assert!(named.len() > 10, "{named:?}");
    let mut problems = Vec::new();
    for p in &named {
        if !root.join(p.trim_end_matches('/')).exists() {
            problems.push(format!(
                "docs/architecture.md names {p}, which does not exist"
            ));
        }
    }
    // Every folder of src/, every test suite and test folder, every page of docs/ has a row.
    let covered = |rel: &str| {
        named.iter().any(|n| {
            n == rel
                || (n.ends_with('/') && rel.starts_with(n.as_str()))
                || (rel.ends_with('/') && n.starts_with(rel))
        })
    };
    let mut wanted = Vec::new();
    for dir in ["src", "tests", "docs"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let rel = format!("{dir}/{name}");
            let wanted_here = match dir {
                "src" => p.is_dir(),
                "tests" => p.is_dir() || name.ends_with(".rs"),
                _ => name.ends_with(".md"),
            };
            if wanted_here {
                wanted.push(if p.is_dir() { format!("{rel}/") } else { rel });
            }
        }
    }
    for w in wanted {
        if !covered(&w) {
            problems.push(format!(
                "{w} has no row in docs/architecture.md's 'What is where'"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
