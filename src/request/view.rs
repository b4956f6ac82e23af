//! What the shell tells the core about a request beyond method, path and credential: the facts
//! the claim information point reads (headers, peer address, TLS, body). Borrowed, so a request
//! without claims pays nothing for it.

use crate::wire::http::form_decode;

/// The request as Keycloak's `HttpRequest` SPI exposes it (docs/keycloak-enforcer.md §9).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestView<'a> {
    /// Header names as the host gives them (Envoy: lower case), one entry per header line.
    pub headers: &'a [(String, Vec<u8>)],
    /// The downstream peer, `ip:port` or `ip` (Envoy's `source.address`).
    pub peer: Option<&'a str>,
    /// The downstream connection is TLS.
    pub tls: bool,
    /// The buffered request body; `None` when it was not asked for.
    pub body: Option<&'a [u8]>,
}

impl<'a> RequestView<'a> {
    /// Every value of a header, case-insensitively, one per header line (Keycloak's `getHeaders`).
    pub fn header_values(&self, name: &str) -> impl Iterator<Item = String> + '_ {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(&name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.header_values(name).next()
    }

    /// The media type of `content-type`, without parameters, lower case.
    pub fn media_type(&self) -> String {
        self.header("content-type")
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default()
    }

    pub fn is_form(&self) -> bool {
        self.media_type() == "application/x-www-form-urlencoded"
    }

    /// The first cookie of that name across all `cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header_values("cookie").find_map(|line| {
            line.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        })
    }
}

/// The first value of a parameter in a query string or form body, decoded (servlet semantics).
pub fn first_param(encoded: &str, name: &str) -> Option<String> {
    encoded.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name).then(|| form_decode(v))
    })
}

/// The query of a `:path`, without the fragment.
pub fn query(path: &str) -> &str {
    let q = path.split_once('?').map_or("", |(_, q)| q);
    q.split('#').next().unwrap_or_default()
}

/// Whether a client's header `name` stands for the header `own`, which the filter sets itself:
/// case-insensitive, and `_` counts as `-`, because CGI/WSGI upstreams read `x_kcpep_permissions`
/// as the same `HTTP_X_KCPEP_PERMISSIONS` variable as `x-kcpep-permissions`.
pub fn is_spelling_of(own: &str, name: &str) -> bool {
    own.len() == name.len()
        && own.bytes().zip(name.bytes()).all(|(a, b)| {
            let fold = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            fold(a) == fold(b)
        })
}

/// A `:path` without query and fragment (servlet `getRequestURI`: not decoded).
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

#[cfg(test)]
mod spelling_tests {
    #[test]
    fn underscore_and_case_spellings_of_the_filters_own_headers() {
        for n in [
            "x-kcpep-permissions",
            "X-KCPEP-Permissions",
            "x_kcpep_permissions",
            "x-kcpep_permissions",
        ] {
            assert!(super::is_spelling_of("x-kcpep-permissions", n), "{n}");
        }
        for n in [
            "x-kcpep-permission",
            "x-kcpep-permissionss",
            "xkcpep-permissions-",
        ] {
            assert!(!super::is_spelling_of("x-kcpep-permissions", n), "{n}");
        }
    }
}

/// Header lines from text pairs (tests).
#[cfg(test)]
pub(crate) fn lines(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        lines(pairs)
    }

    #[test]
    fn headers_cookies_and_parameters() {
        let headers = h(&[
            ("x-b", "one"),
            ("X-B", "two"),
            ("cookie", "a=1; sess=abc"),
            ("cookie", "sess=later"),
            (
                "content-type",
                "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            ),
        ]);
        let v = RequestView {
            headers: &headers,
            ..Default::default()
        };
        assert_eq!(v.header_values("x-b").collect::<Vec<_>>(), ["one", "two"]);
        assert_eq!(v.cookie("sess").as_deref(), Some("abc"));
        assert_eq!(v.cookie("nope"), None);
        assert!(v.is_form());
        assert_eq!(
            first_param("a=1&b=x+y%21&b=2", "b").as_deref(),
            Some("x y!")
        );
        assert_eq!(first_param("flag&c=", "flag").as_deref(), Some(""));
        assert_eq!(first_param("a=1", "z"), None);
        assert_eq!(query("/p?a=1#f"), "a=1");
        assert_eq!(path_only("/p/q?a=1"), "/p/q");
    }
}

/// A one-line description of request data safe for logs: no quotes, no control bytes, bounded.
pub fn loggable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() || c == '"' { '?' } else { c })
        .take(200)
        .collect()
}
