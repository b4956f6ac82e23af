//! HTTP as plain data: a request to send, the answer that came back, and the form and query
//! encodings Keycloak's endpoints use. The shell moves these bytes; nothing here does I/O.

use base64::Engine;

/// An HTTP request to Keycloak, relative to the Keycloak cluster (`:authority` comes from config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The trace context headers a callout carries from the request that caused it: W3C Trace
/// Context and B3 (single and multi-header), so a trace shows the Keycloak call inside the request.
pub const TRACE_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// The longest trace header value copied (W3C `tracestate` is at most 512 bytes); a longer or
/// non-ASCII value is not copied.
pub const MAX_TRACE_VALUE: usize = 512;

/// The request's trace context headers (first value of each; names in lower case as HTTP/2 and
/// Envoy give them), to copy onto its callouts.
pub fn trace_context<'a>(
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in headers {
        let Some(name) = TRACE_HEADERS
            .iter()
            .find(|n| n.as_bytes().eq_ignore_ascii_case(k))
        else {
            continue;
        };
        if out.iter().any(|(n, _)| n == name) || v.len() > MAX_TRACE_VALUE {
            continue;
        }
        if let Ok(value) = std::str::from_utf8(v) {
            if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                out.push((name.to_string(), value.to_string()));
            }
        }
    }
    out
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An `http://` or `https://` URL, as far as the filter reads one: the scheme, `host[:port]`, and
/// what follows (path, query, fragment; maybe empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Url<'a> {
    pub https: bool,
    pub authority: &'a str,
    pub rest: &'a str,
}

/// Why a configured URL is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    NotHttp(String),
    NoHost(String),
}

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlError::NotHttp(u) => write!(f, "expected an http:// or https:// URL, found \"{u}\""),
            UrlError::NoHost(u) => write!(f, "no host in \"{u}\""),
        }
    }
}

impl<'a> Url<'a> {
    pub fn parse(url: &'a str) -> Result<Url<'a>, UrlError> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(UrlError::NotHttp(url.to_string()));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if end == 0 {
            return Err(UrlError::NoHost(url.to_string()));
        }
        Ok(Url {
            https,
            authority: &rest[..end],
            rest: &rest[end..],
        })
    }
}

/// `application/x-www-form-urlencoded` encoding of one component.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `application/x-www-form-urlencoded` decoding of one component (`+` is a space); malformed
/// escapes are kept as they are, invalid UTF-8 is replaced.
pub fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encoding for a query parameter value (spaces as %20, braces encoded).
pub fn query_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// RFC 6749 §2.3.1 client authentication: Basic base64(urlenc(id):urlenc(secret)).
pub fn basic_auth(client_id: &str, secret: &str) -> String {
    let raw = format!("{}:{}", form_encode(client_id), form_encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

pub fn post_form(path: String, auth: Option<String>, body: Vec<u8>) -> HttpRequest {
    let mut headers = vec![(
        "content-type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    if let Some(a) = auth {
        headers.push(("authorization".to_string(), a));
    }
    headers.push(("accept".to_string(), "application/json".to_string()));
    HttpRequest {
        method: "POST",
        path,
        headers,
        body,
    }
}

pub fn get(path: String, bearer: Option<&str>) -> HttpRequest {
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    if let Some(t) = bearer {
        headers.push(("authorization".to_string(), format!("Bearer {t}")));
    }
    HttpRequest {
        method: "GET",
        path,
        headers,
        body: Vec::new(),
    }
}

/// Keycloak's answer to a [`Call`]: status and body, or no answer (reset, timeout).
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Http {
        status: u16,
        body: &'a [u8],
    },
    /// Timed out, reset, refused by the proxy, or larger than [`MAX_ANSWER_BYTES`].
    NoAnswer,
}

/// The largest answer read from Keycloak or a claim service. A callout answer is copied into the
/// VM's memory, which never shrinks: a server answering 32 MiB would leave every VM that read it
/// 32 MiB larger. Keycloak's largest real answers (a resource-set page, an RPT with many
/// permissions) stay far below.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

impl Answer<'_> {
    /// Whether an answer arrived, and its status (0 when none did): how stats count it.
    pub fn outcome(&self) -> (bool, u16) {
        match self {
            Answer::Http { status, .. } => (true, *status),
            Answer::NoAnswer => (false, 0),
        }
    }

    /// Whether an answer with this `:status` (0: none could be read) and body size is read at
    /// all; otherwise it is [`Answer::NoAnswer`] and its body is never copied in.
    pub fn readable(status: u16, body_size: usize) -> bool {
        status != 0 && body_size <= MAX_ANSWER_BYTES
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn trace_context_is_copied_and_bounded() {
        let long = "x".repeat(MAX_TRACE_VALUE + 1);
        let headers: Vec<(&[u8], &[u8])> = vec![
            (
                b"traceparent",
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                b"TraceParent",
                b"00-ffffffffffffffffffffffffffffffff-00f067aa0ba902b7-01",
            ),
            (b"x-b3-traceid", b"80f198ee56343ba864fe8b2a57d3eff7"),
            (b"tracestate", long.as_bytes()),
            (b"b3", b"bad\x01value"),
            (b"authorization", b"Bearer secret"),
        ];
        let got = trace_context(headers.into_iter());
        assert_eq!(
            got,
            vec![
                (
                    "traceparent".to_string(),
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string()
                ),
                (
                    "x-b3-traceid".to_string(),
                    "80f198ee56343ba864fe8b2a57d3eff7".to_string()
                ),
            ]
        );
    }

    use super::*;

    #[test]
    fn urls_are_split_once_for_every_use() {
        let u = Url::parse("https://kc.example:8443/auth?x").unwrap();
        assert_eq!(
            (u.https, u.authority, u.rest),
            (true, "kc.example:8443", "/auth?x")
        );
        let u = Url::parse("http://svc?q=1").unwrap();
        assert_eq!((u.https, u.authority, u.rest), (false, "svc", "?q=1"));
        assert_eq!(
            Url::parse("ftp://x"),
            Err(UrlError::NotHttp("ftp://x".into()))
        );
        assert_eq!(
            Url::parse("http:///p"),
            Err(UrlError::NoHost("http:///p".into()))
        );
    }
}
