//! What the filter answers before, or instead of, an enforcer's decision: a plugin that is not
//! configured, a route that no rule gives an enforcer, the headers the filter sets itself (never
//! taken from the client), and a repeated request the per-worker memo already knows. The shell
//! only carries these out.

use crate::config::routes::PluginConfig;
use crate::enforce::step::CacheUse;
use crate::enforce::step::Reply;
use crate::request::view::is_spelling_of;

/// No (valid) configuration: fail closed.
pub fn not_configured() -> Reply {
    reply(503, "Authorization filter not configured", "not configured")
}

/// No routing rule names an enforcer for this request and there is no default: fail closed.
pub fn no_enforcer() -> Reply {
    reply(403, "Forbidden", "no enforcer for this route")
}

/// The headers the filter sets itself, once each: whatever the client sent under these names (in
/// any spelling an upstream reads as the same, see [`is_spelling_of`]) is removed.
pub fn own_headers(config: &PluginConfig) -> Vec<String> {
    let mut own: Vec<String> = config
        .enforcers
        .iter()
        .map(|(_, c)| c.proxy.permissions_header.clone())
        .collect();
    own.sort();
    own.dedup();
    own
}

/// The names under which the client sent one of the filter's own headers, each once, in the
/// order received.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn spoofed<'a>(own: &[String], received: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in received {
        if own.iter().any(|o| is_spelling_of(o, name)) && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

/// A request that tells the upstream to act as another method than the one it is judged by
/// (`X-HTTP-Method-Override: DELETE` on a GET): 400, since an upstream that honours the header
/// would run a method Keycloak was never asked about. A copy naming the request's own method is
/// harmless and passes. `names`: the enforcer's `method-override-headers` (lower case).
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn method_override<'a>(
    names: &[String],
    method: &str,
    mut headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Option<Reply> {
    if names.is_empty() {
        return None;
    }
    headers
        .find(|(k, v)| {
            names.iter().any(|n| n.eq_ignore_ascii_case(k))
                && !std::str::from_utf8(v).is_ok_and(|v| v.trim().eq_ignore_ascii_case(method))
        })
        .map(|(k, _)| {
            reply(
                400,
                "Bad Request",
                &format!("{k} names another method than the request's"),
            )
        })
}

fn reply(status: u16, body: &str, reason: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_string(),
        reason: reason.to_string(),
        cache: CacheUse::None,
        matched: None,
        grpc_status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_cannot_send_the_filters_own_headers_in_any_spelling() {
        let own = vec!["x-kcpep-permissions".to_string()];
        let got = spoofed(
            &own,
            [
                "X-Kcpep-Permissions",
                "x_kcpep_permissions",
                "accept",
                "X-Kcpep-Permissions",
            ]
            .into_iter(),
        );
        assert_eq!(got, ["X-Kcpep-Permissions", "x_kcpep_permissions"]);
        assert!(spoofed(&own, ["x-kcpep-permission"].into_iter()).is_empty());
    }

    #[test]
    fn a_method_override_to_another_method_is_refused() {
        let names: Vec<String> = crate::config::DEFAULT_METHOD_OVERRIDE_HEADERS
            .iter()
            .map(|h| h.to_string())
            .collect();
        let check = |method: &str, headers: &[(&str, &[u8])]| {
            method_override(&names, method, headers.iter().copied()).map(|r| r.status)
        };
        assert_eq!(
            check("GET", &[("x-http-method-override", b"DELETE")]),
            Some(400)
        );
        assert_eq!(check("GET", &[("X-HTTP-Method", b"PUT")]), Some(400));
        assert_eq!(check("POST", &[("x-method-override", b"\xff")]), Some(400));
        assert_eq!(check("POST", &[("x-method-override", b"")]), Some(400));
        // the same method, any case: nothing changes upstream
        assert_eq!(check("GET", &[("x-http-method-override", b"get")]), None);
        assert_eq!(check("GET", &[("accept", b"DELETE")]), None);
        // an enforcer whose upstream honours none
        assert_eq!(
            method_override(
                &[],
                "GET",
                [("x-http-method-override", &b"DELETE"[..])].into_iter()
            ),
            None
        );
    }

    #[test]
    fn answers_before_any_enforcer_fail_closed() {
        assert_eq!(not_configured().status, 503);
        assert_eq!(no_enforcer().status, 403);
    }
}
