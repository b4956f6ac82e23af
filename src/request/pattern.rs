//! Keycloak's path patterns and its PathMatcher precedence (docs/keycloak-enforcer.md §8.2-8.3), compiled once.
//!
//! Keycloak scans every configured path in order for every request. A literal path (no `*`, no
//! `{`) can only ever take part when it equals the request path, so literals sit in a hash map and
//! only the patterns are scanned: lookup cost does not grow with the number of literal paths, and
//! the result is exactly the one of Keycloak's sequential scan.
//!
//! Ties that Keycloak resolves by map iteration order are resolved here by configuration order
//! (Keycloak keeps configured paths in a LinkedHashMap, so this is what it does for configured
//! paths; paths loaded from the server are ordered by resource name, then URI, before compiling).

use crate::wire::hashmap::HashMap;

/// A path pattern with everything the matcher needs precomputed.
#[derive(Debug, Clone)]
struct Pattern {
    path: String,
    is_template: bool,
    ends_with_wildcard: bool,
    /// `expectedUri.split("/").length`, Java semantics.
    slash_len: usize,
    /// `expectedUri.split("{").length`, Java semantics.
    brace_len: usize,
    /// The pattern cut at its first `/*`, then at its first `{`; "" becomes "/".
    base: String,
    /// For `…*.ext` patterns that do not end in `*`: `.ext`.
    suffix: Option<String>,
}

impl Pattern {
    fn new(path: &str) -> Self {
        let mut base = path.to_string();
        if let Some(i) = base.find("/*") {
            base.truncate(i);
        }
        if let Some(i) = base.find('{') {
            base.truncate(i);
        }
        if base.is_empty() {
            base.push('/');
        }
        let ends_with_wildcard = path.ends_with('*');
        let suffix = if ends_with_wildcard {
            None
        } else {
            path.find("*.").map(|i| path[i + 1..].to_string())
        };
        Pattern {
            path: path.to_string(),
            is_template: path.contains('{'),
            ends_with_wildcard,
            slash_len: java_split(path, '/').len(),
            brace_len: java_split(path, '{').len(),
            base,
            suffix,
        }
    }
}

/// The winner of a match: which configured entry, and for a template the request-specific URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub index: usize,
    /// Set when a template (`{x}`) won: the template with the request's segments substituted.
    pub template_uri: Option<String>,
}

/// Compiled matcher over an ordered list of path patterns.
#[derive(Debug, Clone, Default)]
pub struct PathMatcher {
    patterns: Vec<Pattern>,
    /// Literal path -> first index (identical paths are merged before compiling).
    literals: HashMap<String, usize>,
    /// Indices of non-literal patterns, in order.
    scanned: Vec<usize>,
}

impl PathMatcher {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut m = PathMatcher::default();
        for (i, p) in paths.into_iter().enumerate() {
            let pat = Pattern::new(p);
            if p.is_empty() {
                // Keycloak skips empty paths; keep the index so entry numbers stay aligned.
            } else if !p.contains('*') && !p.contains('{') {
                m.literals.entry(p.to_string()).or_insert(i);
            } else {
                m.scanned.push(i);
            }
            m.patterns.push(pat);
        }
        m
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Matches an already normalized path (see [`crate::request::uri::normalize`]).
    pub fn find(&self, target: &str) -> Option<Match> {
        let literal = self.literals.get(target).copied();
        let mut scanned = self.scanned.iter().copied().peekable();
        let mut literal_pending = literal;

        let mut state = ScanState::default();
        loop {
            // Visit candidates in configuration order: the literal hit (if any) merged into the scan.
            let next = match (literal_pending, scanned.peek().copied()) {
                (Some(l), Some(s)) if l < s => {
                    literal_pending = None;
                    l
                }
                (Some(l), None) => {
                    literal_pending = None;
                    l
                }
                (_, Some(s)) => {
                    scanned.next();
                    s
                }
                (None, None) => break,
            };
            if let Some(done) = state.visit(next, &self.patterns[next], target) {
                return Some(done);
            }
        }
        state.finish()
    }
}

/// The mutable state of Keycloak's scan (`patternCount`, `bracketsPatternCount`, and the three
/// kinds of winner).
#[derive(Default)]
struct ScanState {
    pattern_count: usize,
    brackets_count: usize,
    matching_path: Option<Match>,
    /// The wildcard winner and its configured path's `split("/").length`, which Keycloak compares
    /// with the next candidate's substituted URI.
    any_path: Option<(Match, usize)>,
    suffix_path: Option<Match>,
}

impl ScanState {
    /// One entry of the scan; `Some` when Keycloak returns immediately.
    fn visit(&mut self, index: usize, p: &Pattern, target: &str) -> Option<Match> {
        let mut matching_uri: Option<String> = None;
        let mut template_uri = None;
        if exact_match(&p.path, target) {
            matching_uri = Some(p.path.clone());
        }
        if p.is_template {
            if let Some(tu) = build_uri_from_template(&p.path, target, false) {
                if exact_match(&tu, target)
                    && (self.pattern_count == 0
                        || p.slash_len > self.pattern_count
                        || p.brace_len < self.brackets_count)
                {
                    matching_uri = Some(tu.clone());
                    template_uri = Some(tu);
                    self.pattern_count = p.slash_len;
                    self.brackets_count = p.brace_len;
                }
            }
        }
        let matching_uri = matching_uri?;
        let m = Match {
            index,
            template_uri,
        };
        if matching_uri == target || p.base == target {
            if self.pattern_count == 0 {
                return Some(m);
            }
            self.matching_path = Some(m.clone());
        }
        if p.ends_with_wildcard {
            let depth = java_split(&matching_uri, '/').len();
            match &self.any_path {
                Some((_, held)) if *held >= depth => {}
                _ => self.any_path = Some((m, p.slash_len)),
            }
        } else if let Some(sfx) = &p.suffix {
            if target.ends_with(sfx.as_str()) {
                self.suffix_path = Some(m);
            }
        }
        None
    }

    fn finish(self) -> Option<Match> {
        self.matching_path
            .or(self.suffix_path)
            .or(self.any_path.map(|(m, _)| m))
    }
}

/// Keycloak's `exactMatch(expected, target)`.
fn exact_match(expected: &str, target: &str) -> bool {
    if target == expected {
        return true;
    }
    if let Some(root) = expected.strip_suffix('*') {
        if target.starts_with(root) {
            return true;
        }
        // `/x/*` also matches `/x`
        return root.strip_suffix(|_: char| true) == Some(target);
    }
    if let Some(i) = expected.find("/*.") {
        return target.ends_with(&expected[i + 2..]);
    }
    false
}

/// Java's `String.split(regex)` for a single literal character: trailing empty strings dropped,
/// a string without the separator is returned whole (so `""` gives one empty element).
pub(crate) fn java_split(s: &str, sep: char) -> Vec<&str> {
    if !s.contains(sep) {
        return vec![s];
    }
    let mut parts: Vec<&str> = s.split(sep).collect();
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}

/// Keycloak's `buildUriFromTemplate`: substitutes the target's segments into the template's
/// `{…}` placeholders. `None` when the shapes differ. With `only_first_param`, returns the
/// substituted prefix up to the last placeholder (the parent instance of `/r/{id}/*`).
pub fn build_uri_from_template(
    template: &str,
    target: &str,
    only_first_param: bool,
) -> Option<String> {
    let tchars: Vec<char> = template.chars().collect();
    let target_chars: Vec<char> = target.chars().collect();
    let pattern_start = tchars.iter().position(|c| *c == '{')?;
    let expected: &[char] = if template.ends_with("/*") {
        &tchars[..tchars.len() - 2]
    } else {
        &tchars
    };
    if pattern_start >= target_chars.len() {
        return None;
    }
    let expected_str: String = expected.iter().collect();
    if java_split(&expected_str, '/').len() > java_split(target, '/').len() {
        return None;
    }
    if tchars[..pattern_start] != target_chars[..pattern_start] {
        return None;
    }

    let mut uri: Vec<char> = tchars.clone();
    let mut matching: Vec<char> = target_chars[..pattern_start].to_vec();
    matching.resize(target_chars.len(), '\0');
    let mut mli = pattern_start;
    let params_str: String = target_chars[pattern_start..].iter().collect();
    let params: Vec<&str> = java_split(&params_str, '/');
    let last_close = expected.iter().rposition(|c| *c == '}');
    let mut param_index = 0usize;
    let mut last_pattern = 0usize;
    let mut i = pattern_start;
    while i < expected.len() {
        if mli >= matching.len() {
            break;
        }
        let c = expected[i];
        if c == '{' || c == '*' {
            let upper = if c == '*' { params.len() } else { param_index };
            let mut k = param_index;
            while k <= upper {
                if k == params.len() {
                    break;
                }
                let value: Vec<char> = params[k].chars().collect();
                if mli + value.len() > matching.len() {
                    return None;
                }
                matching[mli..mli + value.len()].copy_from_slice(&value);
                mli += value.len();
                if c == '{' {
                    let open = find_from(&uri, &['{'], last_pattern)?;
                    let close = find_from(&uri, &['}'], last_pattern)?;
                    if close < open {
                        return None;
                    }
                    uri.splice(open..=close, value.iter().copied());
                }
                if value.last() == Some(&'}') {
                    last_pattern = find_from(&uri, &value, 0).map_or(0, |p| p + value.len());
                }
                if c == '*' && mli < matching.len() {
                    matching[mli] = '/';
                    mli += 1;
                }
                k += 1;
            }
            if c == '{' {
                // A template without a closing brace is refused at configuration time.
                i = find_from(expected, &['}'], i)?;
            }
            if Some(i) == last_close && only_first_param {
                return Some(matching[..mli].iter().collect());
            }
        } else {
            if c == '/' {
                param_index += 1;
            }
            matching[mli] = c;
            mli += 1;
        }
        i += 1;
    }
    Some(uri.into_iter().collect())
}

fn find_from(hay: &[char], needle: &[char], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    (from..=hay.len().saturating_sub(needle.len())).find(|&i| hay[i..].starts_with(needle))
}

/// Why Keycloak's enforcer would fail requests this pattern is tried on, if it would: its
/// `buildUriFromTemplate` throws (StringIndexOutOfBoundsException, a 500 for the request) on a `{`
/// with no `}` after it, and on a stray `}` before a later `{`. Keycloak loads such patterns; the
/// filter refuses them at load (tests/oracle.rs finds the throws with Keycloak's own matcher).
/// Every other pattern loads and matches as Keycloak matches it, malformed or not.
pub fn fails_in_keycloak(path: &str) -> Option<&'static str> {
    let (mut open, mut stray) = (false, false);
    for c in path.chars() {
        match c {
            '{' if stray => {
                return Some("a '}' that closes nothing comes before a '{': Keycloak's enforcer fails the requests this pattern is tried on")
            }
            '{' => open = true,
            '}' if open => open = false,
            '}' => stray = true,
            _ => {}
        }
    }
    open.then_some(
        "missing closing '}': Keycloak's enforcer fails the requests this pattern is tried on",
    )
}

/// Keycloak's newest matcher's `validateTemplate` brace rules, for `kcpep check`'s warnings:
/// such a pattern loads in Keycloak's enforcer and here, and matches oddly in both (the `*`
/// rules are not checked: legacy patterns such as `/api*` still match by prefix).
pub fn validate_template(path: &str) -> Result<(), &'static str> {
    let mut in_brace = false;
    let mut empty = true;
    for c in path.chars() {
        match c {
            '{' if in_brace => return Err("nested '{'"),
            '{' => {
                in_brace = true;
                empty = true;
            }
            '}' if !in_brace || empty => return Err("unexpected '}' or empty parameter name"),
            '}' => in_brace = false,
            '/' if in_brace => return Err("parameter name contains '/'"),
            _ if in_brace => empty = false,
            _ => {}
        }
    }
    if in_brace {
        return Err("missing closing '}'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn winner(paths: &[&str], target: &str) -> Option<String> {
        let m = PathMatcher::new(paths.iter().copied());
        m.find(target).map(|w| paths[w.index].to_string())
    }

    #[test]
    fn java_split_semantics() {
        assert_eq!(java_split("/a/b", '/'), vec!["", "a", "b"]);
        assert_eq!(java_split("/a/b/", '/'), vec!["", "a", "b"]);
        assert_eq!(java_split("/", '/').len(), 0);
        assert_eq!(java_split("", '/'), vec![""]);
        assert_eq!(java_split("/a/{x}", '{').len(), 2);
    }

    #[test]
    fn pattern_kinds() {
        assert_eq!(winner(&["/*"], "/anything/at/all").as_deref(), Some("/*"));
        assert_eq!(winner(&["/*"], "/").as_deref(), Some("/*"));
        assert_eq!(
            winner(&["/*.html"], "/a/b.html").as_deref(),
            Some("/*.html")
        );
        assert_eq!(winner(&["/*.html"], "/a/b.htm"), None);
        assert_eq!(winner(&["/p/*"], "/p/x/y").as_deref(), Some("/p/*"));
        assert_eq!(winner(&["/p/*"], "/p").as_deref(), Some("/p/*"));
        assert_eq!(winner(&["/p/*"], "/px"), None);
        assert_eq!(winner(&["/r/{id}"], "/r/7").as_deref(), Some("/r/{id}"));
        assert_eq!(winner(&["/r/{id}"], "/r/7/x"), None);
        assert_eq!(winner(&["/r/{id}"], "/r"), None);
        assert_eq!(winner(&["/exact"], "/exact").as_deref(), Some("/exact"));
        assert_eq!(winner(&["/exact"], "/exact/x"), None);
        assert_eq!(winner(&["/{v}/r"], "/v1/r").as_deref(), Some("/{v}/r"));
        assert_eq!(winner(&["/{v}/r"], "/v1/s"), None);
        assert_eq!(
            winner(&["/api/{v}/r/*"], "/api/v1/r/x/y").as_deref(),
            Some("/api/{v}/r/*")
        );
        assert_eq!(winner(&["/api/{v}/r/*"], "/api/v1/s/x"), None);
        assert_eq!(winner(&["/api*"], "/apiary").as_deref(), Some("/api*"));
        assert_eq!(
            winner(&["/x/{id}/*.json"], "/x/1.json").as_deref(),
            Some("/x/{id}/*.json")
        );
    }

    /// The computed precedence of docs/keycloak-enforcer.md §8.3.
    #[test]
    fn precedence_table() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["/api/*", "/api"], "/api", "/api/*"),
            (&["/api", "/api/*"], "/api", "/api"),
            (&["/static/*.html", "/*"], "/other/x.html", "/static/*.html"),
            (
                &["/static/*", "/static/*.html"],
                "/static/x.html",
                "/static/*.html",
            ),
            (&["/a/*", "/a/b/*"], "/a/b/c", "/a/b/*"),
            (&["/a/b/*", "/a/*"], "/a/b/c", "/a/b/*"),
            (&["/a/{x}", "/a/{y}"], "/a/b", "/a/{x}"),
            (&["/{p}/b/c", "/a/{q}/c"], "/a/b/c", "/{p}/b/c"),
            (&["/a/{x}/{y}", "/a/{x}/c"], "/a/b/c", "/a/{x}/c"),
            (&["/a/{x}/c", "/a/{x}/{y}"], "/a/b/c", "/a/{x}/c"),
            (&["/a/{x}/c", "/a/b/c/*"], "/a/b/c", "/a/b/c/*"),
            (&["/a/b/c/*", "/a/{x}/c"], "/a/b/c", "/a/b/c/*"),
            (&["/a/{x}/*", "/a/b/*"], "/a/b/c/d", "/a/{x}/*"),
            (&["/a/{x}/*", "/a/{y}"], "/a/b", "/a/{x}/*"),
            (&["/a/{y}", "/a/{x}/*"], "/a/b", "/a/{y}"),
            (&["/a/{x}/c/*", "/a/{x}/{y}"], "/a/b/c", "/a/{x}/c/*"),
            (&["/{x}/b/c", "/a/b/c"], "/a/b/c", "/a/b/c"),
            (&["/a/b/c", "/{x}/b/c"], "/a/b/c", "/a/b/c"),
            (
                &["/api/*", "/api/{version}/resource"],
                "/api/v1/resource",
                "/api/{version}/resource",
            ),
            (
                &["/api/v1/*", "/api/{version}/resource/*"],
                "/api/v1/resource/x",
                "/api/{version}/resource/*",
            ),
            (&["/a/{x}/*"], "/a/b", "/a/{x}/*"),
            (&["/api/admin", "/*"], "/api/admin", "/api/admin"),
            (&["/api/x", "/api/{id}"], "/api/x", "/api/x"),
        ];
        for (paths, target, want) in cases {
            assert_eq!(
                winner(paths, target).as_deref(),
                Some(*want),
                "patterns {paths:?} target {target}"
            );
        }
        assert_eq!(winner(&["/a/{x}/*"], "/a"), None);
    }

    #[test]
    fn literal_index_equals_sequential_scan() {
        // A literal after a winning template replaces it; before it, it returns at once.
        let m = PathMatcher::new(["/{x}/b/c", "/zzz", "/a/b/c"]);
        assert_eq!(m.find("/a/b/c").unwrap().index, 2);
        let m = PathMatcher::new(["/a/b/c", "/{x}/b/c"]);
        let w = m.find("/a/b/c").unwrap();
        assert_eq!(w.index, 0);
        assert_eq!(w.template_uri, None);
    }

    #[test]
    fn template_uri_is_substituted() {
        let m = PathMatcher::new(["/account/{id}"]);
        assert_eq!(
            m.find("/account/42").unwrap().template_uri.as_deref(),
            Some("/account/42")
        );
    }

    #[test]
    fn parent_instance_of_template() {
        assert_eq!(
            build_uri_from_template("/resource/{id}/*", "/resource/1/test", true).as_deref(),
            Some("/resource/1")
        );
    }

    #[test]
    fn many_literals_do_not_change_results() {
        let mut paths: Vec<String> = (0..2000).map(|i| format!("/lit/{i}")).collect();
        paths.push("/lit/*".into());
        let m = PathMatcher::new(paths.iter().map(String::as_str));
        assert_eq!(m.find("/lit/1999").unwrap().index, 1999);
        assert_eq!(m.find("/lit/x").unwrap().index, 2000);
    }

    #[test]
    fn patterns_keycloak_fails_on_are_known() {
        for p in ["/api/{id", "/{a}/{b", "/api/}/{id}", "/api/{id}}/{x}"] {
            assert!(fails_in_keycloak(p).is_some(), "{p}");
        }
        for p in [
            "/api/{id}",
            "/api/{}/foo",
            "/api/{p1}/foo}/*",
            "/api/{a/b}/*",
            "/api/{{id}}",
            "/api/}",
            "/api/{id}{x}",
        ] {
            assert_eq!(fails_in_keycloak(p), None, "{p}");
        }
    }

    #[test]
    fn template_validation() {
        assert!(validate_template("/a/{id}/b").is_ok());
        assert_eq!(validate_template("/a/{id"), Err("missing closing '}'"));
        assert_eq!(
            validate_template("/a/{}"),
            Err("unexpected '}' or empty parameter name")
        );
        assert_eq!(validate_template("/a/{{x}}"), Err("nested '{'"));
        assert_eq!(
            validate_template("/a/{x/y}"),
            Err("parameter name contains '/'")
        );
    }
}
