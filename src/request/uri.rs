//! Request-path normalization, as Keycloak's newest PathMatcher does it (docs/keycloak-enforcer.md §8.1).
//!
//! Every path is normalized once per request before matching, caching and the on-deny check, so
//! `/account;x=1/1`, `/account//1`, `/a/../account/1`, `/account/%31` and `/account/1/` are all
//! the same resource. A path that Java's `URI` would refuse to parse matches nothing (not even `/*`).

/// Normalizes a request path (the `:path` pseudo-header, query allowed). `None`: matches nothing.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn normalize(raw: &str) -> Option<String> {
    if is_already_normal(raw) {
        return Some(raw.to_string());
    }
    let without_query = strip_query_and_fragment(raw);
    let (prefix, path) = split_scheme_authority(without_query)?;

    let mut s = strip_matrix_params(path);
    collapse_slashes(&mut s);
    // First pass: the raw (still encoded) path must parse as a URI path; dot segments are resolved
    // before decoding, then the path is percent-decoded once.
    if !is_valid_uri_path(&s) {
        return None;
    }
    let s = remove_dot_segments(&s);
    let s = percent_decode(&s)?;

    // Second pass on the decoded text: a decoded `%3B` is a matrix parameter, a decoded `%2F`
    // may create `//`, a decoded `%2E%2E` is a dot segment.
    let mut s = strip_matrix_params(&s);
    collapse_slashes(&mut s);
    if !s.is_empty() && !s.starts_with('/') && first_segment_has_colon(&s) {
        return None;
    }
    let mut s = remove_dot_segments(&s);
    if s.len() > 1 && s.ends_with('/') {
        s.pop();
    }
    Some(format!("{prefix}{s}"))
}

/// Why the upstream might split this path into other segments than the filter judges, if it
/// might: an encoded or literal slash or backslash (`%2F`, `%5C`, `\`), a dot segment (`..`,
/// `%2e%2e`, `..;x`) or an empty segment (`//`). The filter decodes and resolves these to match
/// as Keycloak does, but Envoy forwards `:path` as it is, and an upstream that reads `%2F` as
/// data, does not resolve dots, or takes `//x` for an authority serves another resource than
/// the one that was judged. None: every reading gives the segments the filter judges.
/// (docs/configuration.md, "Paths the filter refuses".)
pub fn segmentation_hazard(raw: &str) -> Option<&'static str> {
    let path = strip_query_and_fragment(raw);
    if is_already_normal(path) {
        // the common case, on every request: plain characters, no `%`, `\`, `//` or dot segment
        return None;
    }
    let path = match split_scheme_authority(path) {
        Some((_, p)) => p,
        None => path,
    };
    let b = path.as_bytes();
    if b.contains(&b'\\') {
        return Some("backslash in the path");
    }
    if b.windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
    }) {
        return Some("encoded slash or backslash in the path");
    }
    let body = path.strip_prefix('/').unwrap_or(path);
    let segs: Vec<&str> = body.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        if seg.is_empty() && i + 1 < segs.len() {
            return Some("empty path segment");
        }
        // What the segment reads as once decoded and without matrix parameters (a malformed
        // escape cannot decode to a dot).
        let decoded = percent_decode(seg).unwrap_or_default();
        let bare = decoded.split(';').next().unwrap_or_default();
        if bare == "." || bare == ".." {
            return Some("dot segment in the path");
        }
    }
    None
}

/// The common case: an absolute path of plain characters with nothing to strip, collapse, resolve
/// or decode. Normalization would return it unchanged.
fn is_already_normal(s: &str) -> bool {
    let b = s.as_bytes();
    if b.first() != Some(&b'/') || (b.len() > 1 && b.ends_with(b"/")) {
        return false;
    }
    let mut prev = 0u8;
    for (i, &c) in b.iter().enumerate() {
        let plain = c.is_ascii_alphanumeric() || b"-_~!$&'()*+,=:@{}".contains(&c);
        let ok = plain
            || (c == b'/' && prev != b'/')
            || (c == b'.' && prev != b'/' && b.get(i + 1) != Some(&b'/'));
        if !ok {
            return false;
        }
        prev = c;
    }
    true
}

fn strip_query_and_fragment(s: &str) -> &str {
    match s.find(['?', '#']) {
        Some(i) => &s[..i],
        None => s,
    }
}

/// Absolute URIs (`https://host/p`) keep `scheme://authority` verbatim; only the path is normalized.
fn split_scheme_authority(s: &str) -> Option<(&str, &str)> {
    if !s.contains("://") || s.starts_with('/') {
        return Some(("", s));
    }
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let valid_scheme = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme || !s[colon..].starts_with("://") {
        // `://` is incidental text in something that is not an absolute URI; Java refuses to parse it.
        return None;
    }
    let rest = &s[colon + 3..];
    let end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || !authority.chars().all(is_authority_char) {
        return None;
    }
    let split = colon + 3 + end;
    Some((&s[..split], &s[split..]))
}

fn is_authority_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@[]%".contains(c)
}

fn strip_matrix_params(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_matrix = false;
    for c in s.chars() {
        match c {
            ';' => in_matrix = true,
            '/' => {
                in_matrix = false;
                out.push(c);
            }
            _ if !in_matrix => out.push(c),
            _ => {}
        }
    }
    out
}

fn collapse_slashes(s: &mut String) {
    while s.contains("//") {
        *s = s.replace("//", "/");
    }
}

fn first_segment_has_colon(s: &str) -> bool {
    s.split('/').next().is_some_and(|seg| seg.contains(':'))
}

/// What `java.net.URI` accepts in a path (RFC 2396 pchar plus Java's "other" non-ASCII
/// characters); braces are accepted because Keycloak encodes them before parsing.
fn is_valid_uri_path(s: &str) -> bool {
    if !s.starts_with('/') && first_segment_has_colon(s) {
        return false;
    }
    let b = s.as_bytes();
    let mut chars = s.char_indices();
    while let Some((i, ch)) = chars.next() {
        if ch == '%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            // the two hex digits are ASCII: one char each
            chars.next();
            chars.next();
            continue;
        }
        let ok = match u8::try_from(ch) {
            Ok(c) if c.is_ascii() => {
                c.is_ascii_alphanumeric() || b"-_.!~*'()/:@&=+$,;{}".contains(&c)
            }
            // Java's "other" characters: any non-ASCII but ISO controls (U+0080..U+009F) and
            // space separators
            _ => !(ch.is_control() || ch.is_whitespace()),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Java `URI.normalize()` on a path: `.` segments go, `x/..` pairs go, a `..` that has nothing to
/// cancel stays (so `/../admin` stays `/../admin` and never becomes `/admin`).
fn remove_dot_segments(path: &str) -> String {
    if !path.split('/').any(|seg| seg == "." || seg == "..") {
        return path.to_string();
    }
    let absolute = path.starts_with('/');
    let body = if absolute { &path[1..] } else { path };
    let segs: Vec<&str> = body.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segs.len());
    let mut trailing_slash = false;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match *seg {
            "." => {
                if last {
                    trailing_slash = true;
                }
            }
            ".." => {
                if out.last().is_some_and(|p| *p != "..") {
                    out.pop();
                    if last {
                        trailing_slash = true;
                    }
                } else {
                    out.push("..");
                }
            }
            _ => out.push(seg),
        }
    }
    let mut s = String::with_capacity(path.len());
    if absolute {
        s.push('/');
    }
    s.push_str(&out.join("/"));
    if trailing_slash && !out.is_empty() {
        s.push('/');
    }
    s
}

/// Decodes `%HH` once; bytes that do not form UTF-8 become U+FFFD as Java's decoder does.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::{normalize, segmentation_hazard};

    #[test]
    fn non_ascii_paths_normalize_without_a_panic() {
        // found by the differential corpus (tests/oracle.rs): a multi-byte character used to be
        // sliced in the middle, a panic that kills the worker's VM
        assert_eq!(normalize("/res/日本/").as_deref(), Some("/res/日本"));
        assert_eq!(normalize("/é;x=1/%41").as_deref(), Some("/é/A"));
        assert_eq!(normalize("/a/\u{85}"), None, "Java refuses an ISO control");
        assert_eq!(normalize("/a/\u{3000}"), None, "and a space separator");
    }

    #[test]
    fn paths_whose_segments_could_be_read_otherwise_are_hazards() {
        for p in [
            "/account/1/..%2F..%2Fpublic/x",
            "/account/1/..%2f..%2fpublic/x",
            "/account/1%2F..%2F..%2Fpublic%2Fx",
            "/account/1/%2e%2e%2f%2e%2e%2fpublic/x",
            "/account/1/..%5C..%5Cpublic",
            "/account/1\\..\\public",
            "/account/1/../../public/x",
            "/account/1/%2e%2e/%2E%2E/public/x",
            "/account/1/.%2e/public",
            "/account/1/..;x/public",
            "/account/1/%2e%2e%3bx/public",
            "/public/./x",
            "/public/x/.",
            "//public/account/1",
            "/public//account",
            "https://h/a/../b",
            "/a/..?q=1",
        ] {
            assert!(segmentation_hazard(p).is_some(), "{p}");
        }
        for p in [
            "/account/1",
            "/account/1/",
            "/account;x=1/1",
            "/account/%31",
            "/a/b.c/..d/...",
            "/a/%252F",
            "/a?next=/b/../c//d%2F",
            "/caf%C3%A9",
            "/",
            "https://h/a/b",
        ] {
            assert_eq!(segmentation_hazard(p), None, "{p}");
        }
    }

    fn n(s: &str) -> Option<String> {
        normalize(s)
    }

    #[test]
    fn plain_paths_are_unchanged() {
        assert_eq!(n("/").as_deref(), Some("/"));
        assert_eq!(n("/account/1").as_deref(), Some("/account/1"));
        assert_eq!(n("").as_deref(), Some(""));
    }

    #[test]
    fn query_and_fragment_are_dropped() {
        assert_eq!(n("/api/x?y=1").as_deref(), Some("/api/x"));
        assert_eq!(n("/api/x#frag").as_deref(), Some("/api/x"));
        assert_eq!(n("/api/x;a=b?c=/d").as_deref(), Some("/api/x"));
    }

    #[test]
    fn matrix_parameters_are_stripped() {
        assert_eq!(n("/api/admin;x=1").as_deref(), Some("/api/admin"));
        assert_eq!(n("/api;v=2/admin").as_deref(), Some("/api/admin"));
        // encoded ';' is caught on the second pass (CVE-2026-74909)
        assert_eq!(n("/api/admin%3Bx=1").as_deref(), Some("/api/admin"));
        assert_eq!(n("/api/admin%3bx").as_deref(), Some("/api/admin"));
    }

    #[test]
    fn double_slashes_collapse() {
        assert_eq!(n("//api///admin").as_deref(), Some("/api/admin"));
        assert_eq!(n("/api/%2Fadmin").as_deref(), Some("/api/admin"));
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(n("/api/foo/../admin").as_deref(), Some("/api/admin"));
        assert_eq!(n("/api/./admin").as_deref(), Some("/api/admin"));
        assert_eq!(n("/api/admin/.").as_deref(), Some("/api/admin"));
        assert_eq!(n("/api/admin/x/..").as_deref(), Some("/api/admin"));
        // encoded dots are resolved on the second pass
        assert_eq!(n("/api/foo/%2E%2E/admin").as_deref(), Some("/api/admin"));
        assert_eq!(n("/api/foo/%2e%2e/admin").as_deref(), Some("/api/admin"));
        // nothing to cancel: stays, and so never turns into /admin
        assert_eq!(n("/../admin").as_deref(), Some("/../admin"));
    }

    #[test]
    fn percent_decoding_happens_once() {
        assert_eq!(n("/api/%61dmin").as_deref(), Some("/api/admin"));
        assert_eq!(n("/api/%252F").as_deref(), Some("/api/%2F"));
        assert_eq!(n("/caf%C3%A9").as_deref(), Some("/café"));
    }

    #[test]
    fn trailing_slash_is_stripped_once() {
        assert_eq!(n("/api/admin/").as_deref(), Some("/api/admin"));
        assert_eq!(n("/api/admin//").as_deref(), Some("/api/admin"));
    }

    #[test]
    fn fast_path_agrees_with_the_full_path() {
        for p in ["/a/b.c", "/a.b/c", "/x/{id}", "/a/b.", "/-_~!$&'()*+,=:@"] {
            assert!(super::is_already_normal(p), "{p}");
            // what the full normalization would have produced
            let slow = super::remove_dot_segments(&super::percent_decode(p).unwrap());
            assert_eq!(slow, p);
        }
        for p in [
            "/a/./b", "/a/../b", "/a//b", "/a/", "/a;b", "/a%20", "a/b", "/a?b", "/.", "/a/.",
            "/..", "/a b", "/a/.b",
        ] {
            assert!(!super::is_already_normal(p), "{p}");
        }
    }

    #[test]
    fn malformed_paths_match_nothing() {
        assert_eq!(n("/api/a b"), None);
        assert_eq!(n("/api/%zz"), None);
        assert_eq!(n("/api/%4"), None);
        assert_eq!(n("/api/<x>"), None);
        assert_eq!(n("/api/a|b"), None);
        assert_eq!(n("/api/\\x"), None);
    }

    #[test]
    fn braces_in_requests_are_allowed() {
        assert_eq!(
            n("/rest/v2/carts/{cartId}/entries").as_deref(),
            Some("/rest/v2/carts/{cartId}/entries")
        );
    }

    #[test]
    fn absolute_uris_keep_scheme_and_authority() {
        assert_eq!(
            n("https://my.domain/example//x/../y/").as_deref(),
            Some("https://my.domain/example/y")
        );
        assert_eq!(n("https:///api/admin"), None);
        assert_eq!(
            n("/api/redirect-to-https://example.com").as_deref(),
            Some("/api/redirect-to-https:/example.com")
        );
    }
}
