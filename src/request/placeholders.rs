//! Keycloak's claim placeholders (`{request.header['x']}`, `{keycloak.access_token['/sub']}`, ...),
//! compiled once at configure and resolved per request with Keycloak's rules (docs/keycloak-enforcer.md §7).
//!
//! Where Keycloak's `PlaceHolders` misbehaves we do not follow it, and say so in the README:
//! a placeholder Keycloak could never resolve (no resolver, unknown source, missing argument) is a
//! configuration error here instead of a literal or a runtime exception; values are substituted
//! literally (Keycloak's `replaceAll` breaks on `$` and `\`); and static text keeps its brackets
//! and braces (Keycloak strips every `[`, `]`, `{`, `}` of a string that has a placeholder).

use crate::request::view::{self, RequestView};
use serde_json::Value;

/// One placeholder, already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    Parameter(String),
    Header(String),
    Cookie(String),
    RemoteAddr,
    Method,
    Uri,
    RelativePath,
    Secure,
    /// `{request.body}` or `{request.body['/json/pointer']}`.
    Body(Option<String>),
    /// `{keycloak.access_token}` (the raw token) or a JSON pointer into its claims.
    AccessToken(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Ph(Placeholder),
}

/// A claim value template: static text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// The facts a template is resolved against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub method: &'a str,
    /// The `:path` as received (query included).
    pub path: &'a str,
    /// The path below the configured prefix (Keycloak's context path), query included.
    pub relative_path: &'a str,
    pub view: &'a RequestView<'a>,
    /// The client address, after the trusted-proxy rules.
    pub remote_addr: &'a str,
    /// The client's scheme was https, after the trusted-proxy rules.
    pub secure: bool,
    /// The raw access token and its claims.
    pub token: Option<(&'a str, &'a Value)>,
}

/// A request whose facts cannot be read as the configuration asks.
/// Why a configured template is refused at load (the caller adds the JSON path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// `{x}` without a resolver: Keycloak fails such a value at request time.
    NotAPlaceholder(String),
    /// `{request.header}` without `['name']`.
    NeedsName {
        inner: String,
        what: &'static str,
    },
    UnknownSource(String),
    NotAccessToken(String),
    UnknownResolver {
        inner: String,
        resolver: String,
    },
    NotAPointer {
        inner: String,
        pointer: String,
    },
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::NotAPlaceholder(inner) => write!(
                f,
                "\"{{{inner}}}\" is not a placeholder: expected {{request.<source>}} or {{keycloak.access_token}} (Keycloak fails such a value at request time)"
            ),
            TemplateError::NeedsName { inner, what } => write!(
                f,
                "{{{inner}}}: needs a {what} name, as in {{request.{what}['name']}}"
            ),
            TemplateError::UnknownSource(inner) => write!(
                f,
                "{{{inner}}}: unknown request source (known: parameter, header, cookie, remoteAddr, method, uri, relativePath, secure, body)"
            ),
            TemplateError::NotAccessToken(inner) => write!(
                f,
                "{{{inner}}}: the keycloak resolver knows access_token only"
            ),
            TemplateError::UnknownResolver { inner, resolver } => write!(
                f,
                "{{{inner}}}: unknown resolver \"{resolver}\" (known: request, keycloak)"
            ),
            TemplateError::NotAPointer { inner, pointer } => write!(
                f,
                "{{{inner}}}: \"{pointer}\" is not a JSON pointer (it starts with /)"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// A JSON body claim, and the body is not JSON.
    BodyNotJson,
}

impl Template {
    /// Parses a template; errors name what is wrong (the caller adds the JSON path).
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        // Keycloak's `\{(.+?)\}`: a `{`, at least one character, the next `}`.
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.get(1..).and_then(|a| a.find('}')).map(|c| c + 1) else {
                break;
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            parts.push(Part::Ph(parse_placeholder(&after[..close])?));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ph(ph) => Some(ph),
            Part::Text(_) => None,
        })
    }

    /// Whether resolving needs the request body (form parameters count when the body is a form).
    pub fn needs_body(&self, form: bool) -> bool {
        self.placeholders().any(|p| match p {
            Placeholder::Body(_) => true,
            Placeholder::Parameter(_) => form,
            _ => false,
        })
    }

    /// Keycloak's `PlaceHolders.resolve`: a lone placeholder gives all its values; with several
    /// placeholders or text around them, the first placeholder with zero or several values gives
    /// its list, else the text with every placeholder replaced by its value, trimmed.
    pub fn resolve(&self, cx: &Context) -> Result<Vec<String>, ResolveError> {
        let mut values: Vec<Vec<String>> = Vec::new();
        for ph in self.placeholders() {
            values.push(resolve_placeholder(ph, cx)?);
        }
        if values.is_empty() {
            return Ok(vec![self.text_only()]);
        }
        if let Some(list) = values.iter().find(|v| v.len() != 1) {
            return Ok(list.clone());
        }
        let mut out = String::new();
        let mut next = values.into_iter();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Ph(_) => {
                    if let Some(v) = next.next().and_then(|v| v.into_iter().next()) {
                        out.push_str(&v);
                    }
                }
            }
        }
        Ok(vec![out.trim().to_string()])
    }

    fn text_only(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Ph(_) => "",
            })
            .collect()
    }
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, TemplateError> {
    let Some((resolver, source)) = inner.split_once('.') else {
        return Err(TemplateError::NotAPlaceholder(inner.to_string()));
    };
    // The argument: the first `[...]`, quotes removed.
    let arg = source.find('[').and_then(|i| {
        let a = &source[i + 1..];
        a.find(']').map(|j| a[..j].replace('\'', ""))
    });
    let need = |what: &'static str| -> Result<String, TemplateError> {
        arg.clone()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| TemplateError::NeedsName {
                inner: inner.to_string(),
                what,
            })
    };
    match resolver {
        "request" => {
            // Keycloak matches sources by prefix, in this order.
            let ph = if source.starts_with("parameter") {
                Placeholder::Parameter(need("parameter")?)
            } else if source.starts_with("header") {
                Placeholder::Header(need("header")?)
            } else if source.starts_with("cookie") {
                Placeholder::Cookie(need("cookie")?)
            } else if source.starts_with("remoteAddr") {
                Placeholder::RemoteAddr
            } else if source.starts_with("method") {
                Placeholder::Method
            } else if source.starts_with("uri") {
                Placeholder::Uri
            } else if source.starts_with("relativePath") {
                Placeholder::RelativePath
            } else if source.starts_with("secure") {
                Placeholder::Secure
            } else if source.starts_with("body") {
                Placeholder::Body(pointer(arg, inner)?)
            } else {
                return Err(TemplateError::UnknownSource(inner.to_string()));
            };
            Ok(ph)
        }
        "keycloak" if source.starts_with("access_token") => {
            Ok(Placeholder::AccessToken(pointer(arg, inner)?))
        }
        "keycloak" => Err(TemplateError::NotAccessToken(inner.to_string())),
        other => Err(TemplateError::UnknownResolver {
            inner: inner.to_string(),
            resolver: other.to_string(),
        }),
    }
}

fn pointer(arg: Option<String>, inner: &str) -> Result<Option<String>, TemplateError> {
    match arg {
        Some(p) if !p.is_empty() && !p.starts_with('/') => Err(TemplateError::NotAPointer {
            inner: inner.to_string(),
            pointer: p,
        }),
        other => Ok(other.filter(|p| !p.is_empty())),
    }
}

fn resolve_placeholder(ph: &Placeholder, cx: &Context) -> Result<Vec<String>, ResolveError> {
    let one = |s: &str| vec![s.to_string()];
    Ok(match ph {
        Placeholder::Parameter(name) => {
            // Query first, then a form body (servlet `getParameter`).
            let from_query = view::first_param(view::query(cx.path), name);
            let from_form = || match (cx.view.body, cx.view.is_form()) {
                (Some(body), true) => view::first_param(&String::from_utf8_lossy(body), name),
                _ => None,
            };
            from_query.or_else(from_form).into_iter().collect()
        }
        Placeholder::Header(name) => cx.view.header_values(name).collect(),
        Placeholder::Cookie(name) => cx.view.cookie(name).into_iter().collect(),
        Placeholder::RemoteAddr => one(cx.remote_addr),
        Placeholder::Method => one(cx.method),
        Placeholder::Uri => one(view::path_only(cx.path)),
        Placeholder::RelativePath => one(view::path_only(cx.relative_path)),
        Placeholder::Secure => one(if cx.secure { "true" } else { "false" }),
        Placeholder::Body(ptr) => {
            let body = cx.view.body.unwrap_or_default();
            if body.is_empty() {
                return Ok(Vec::new());
            }
            if cx.view.media_type() == "application/json" {
                let doc: Value =
                    serde_json::from_slice(body).map_err(|_| ResolveError::BodyNotJson)?;
                json_values(&doc, ptr.as_deref())
            } else {
                one(&String::from_utf8_lossy(body))
            }
        }
        Placeholder::AccessToken(None) => cx.token.map(|(raw, _)| one(raw)).unwrap_or_default(),
        Placeholder::AccessToken(Some(ptr)) => cx
            .token
            .map(|(_, claims)| json_values(claims, Some(ptr)))
            .unwrap_or_default(),
    })
}

/// Keycloak's `JsonUtils.getValues`: the node at a JSON pointer (RFC 6901) as strings. Arrays give
/// one value per element (objects as compact JSON), scalars their text, objects and a missing
/// node the empty string.
pub fn json_values(doc: &Value, ptr: Option<&str>) -> Vec<String> {
    let node = match ptr {
        None => Some(doc),
        Some(p) => doc.pointer(p),
    };
    match node {
        None => vec![String::new()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(v) => vec![text(v)],
    }
}

/// Jackson's `asText`: strings as they are, numbers and booleans printed, null as "null",
/// containers as "".
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(_) | Value::Object(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers() -> Vec<(String, Vec<u8>)> {
        crate::request::view::lines(&[
            ("x-branch", "tokyo"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("cookie", "sess=s1; theme=dark"),
            ("content-type", "application/json; charset=utf-8"),
        ])
    }

    fn resolve(t: &str, body: Option<&[u8]>) -> Result<Vec<String>, ResolveError> {
        let h = headers();
        let view = RequestView {
            headers: &h,
            peer: Some("10.0.0.1:5555"),
            tls: false,
            body,
        };
        let claims = json!({"sub": "u1", "realm_access": {"roles": ["teller", "owner"]},
                            "custom_claim": ["param-other-claims-value1"]});
        let cx = Context {
            method: "POST",
            path: "/api/transfer/1?a=parameter-a&a=second&e=%24x",
            relative_path: "/transfer/1?a=parameter-a",
            view: &view,
            remote_addr: "203.0.113.9",
            secure: true,
            token: Some(("raw.tok.en", &claims)),
        };
        Template::parse(t).unwrap().resolve(&cx)
    }

    fn ok(t: &str) -> Vec<String> {
        resolve(t, None).unwrap()
    }

    #[test]
    fn every_request_source() {
        assert_eq!(ok("{request.parameter['a']}"), ["parameter-a"]);
        assert_eq!(ok("{request.parameter['missing']}"), Vec::<String>::new());
        assert_eq!(ok("{request.header['X-Branch']}"), ["tokyo"]);
        assert_eq!(ok("{request.header['x-multi']}"), ["a", "b"]);
        assert_eq!(ok("{request.cookie['theme']}"), ["dark"]);
        assert_eq!(ok("{request.remoteAddr}"), ["203.0.113.9"]);
        assert_eq!(ok("{request.method}"), ["POST"]);
        assert_eq!(ok("{request.uri}"), ["/api/transfer/1"]);
        assert_eq!(ok("{request.relativePath}"), ["/transfer/1"]);
        assert_eq!(ok("{request.secure}"), ["true"]);
    }

    #[test]
    fn token_claims_by_pointer() {
        assert_eq!(ok("{keycloak.access_token}"), ["raw.tok.en"]);
        assert_eq!(ok("{keycloak.access_token['/sub']}"), ["u1"]);
        assert_eq!(
            ok("{keycloak.access_token['/realm_access/roles']}"),
            ["teller", "owner"]
        );
        assert_eq!(ok("{keycloak.access_token['/nope']}"), [""]);
    }

    #[test]
    fn json_body_by_pointer_and_whole() {
        let body = br#"{"amount": 1000, "to": {"iban": "X"}, "tags": ["a", {"k": 1}], "ok": true}"#;
        let r = |t: &str| resolve(t, Some(body)).unwrap();
        assert_eq!(r("{request.body['/amount']}"), ["1000"]);
        assert_eq!(r("{request.body['/to/iban']}"), ["X"]);
        assert_eq!(r("{request.body['/tags']}"), ["a", r#"{"k":1}"#]);
        assert_eq!(r("{request.body['/ok']}"), ["true"]);
        // objects keep the client's key order, as Jackson's tree does in Keycloak
        let roles = br#"{"roles": [{"roleSpec": 2342, "roleId": 4234}]}"#;
        assert_eq!(
            resolve("{request.body['/roles']}", Some(roles)).unwrap(),
            [r#"{"roleSpec":2342,"roleId":4234}"#]
        );
        assert_eq!(r("{request.body['/missing']}"), [""]);
        assert_eq!(r("{request.body['/to']}"), [""]);
        assert_eq!(r("{request.body}"), [""]);
        assert_eq!(
            resolve("{request.body['/a']}", Some(b"{not json")),
            Err(ResolveError::BodyNotJson)
        );
        assert_eq!(
            resolve("{request.body}", Some(b"")).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn keycloak_rules_for_mixed_templates() {
        // ClaimInformationPointProviderTest's own example
        assert_eq!(
            ok("Test {keycloak.access_token['/custom_claim/0']} and {request.parameter['a']} "),
            ["Test param-other-claims-value1 and parameter-a"]
        );
        // a placeholder with several values wins over the text
        assert_eq!(ok("h={request.header['x-multi']}!"), ["a", "b"]);
        // and one with none gives none (the claim is dropped)
        assert_eq!(ok("p={request.parameter['zz']}"), Vec::<String>::new());
        // static text stays as written, `$` in values is literal
        assert_eq!(ok("static [x] {request.method}"), ["static [x] POST"]);
        assert_eq!(ok("plain text"), ["plain text"]);
        assert_eq!(ok("{}"), ["{}"]);
        assert_eq!(ok("e={request.parameter['e']}"), ["e=$x"]);
    }

    #[test]
    fn bad_placeholders_are_configuration_errors() {
        for (t, want) in [
            ("{oops}", "not a placeholder"),
            ("{request.nothing}", "unknown request source"),
            ("{request.header}", "needs a header name"),
            ("{vault.secret}", "unknown resolver \"vault\""),
            ("{keycloak.id_token}", "access_token only"),
            ("{request.body['amount']}", "not a JSON pointer"),
        ] {
            let e = Template::parse(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn body_need_is_known_at_configure() {
        let t = Template::parse("{request.parameter['a']}").unwrap();
        assert!(!t.needs_body(false) && t.needs_body(true));
        assert!(Template::parse("{request.body}").unwrap().needs_body(false));
        assert!(!Template::parse("{request.method}")
            .unwrap()
            .needs_body(true));
    }
}
