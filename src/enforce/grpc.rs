//! A local reply as a gRPC client reads it. A gRPC client does not read HTTP statuses or bodies:
//! it reads `grpc-status` and `grpc-message` of an HTTP 200 "trailers-only" answer. The filter
//! names the gRPC code of each of its answers here and the proxy writes that form (Envoy does
//! when a local reply carries a gRPC status), so the mapping is the filter's, tested, and the
//! same in `kcpep evaluate` (docs/operations.md, "gRPC").
//!
//! What changes for a gRPC request: `on-deny-redirect-to` is not followed (a gRPC client cannot
//! follow a redirect; the denial is PERMISSION_DENIED), the reason is the `grpc-message`, and the
//! challenges (`www-authenticate`: Bearer, DPoP, the UMA ticket) stay as response metadata.

use crate::enforce::step::Reply;

/// gRPC status codes the filter answers with (grpc/doc/statuscodes.md).
pub mod code {
    pub const UNKNOWN: u8 = 2;
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// A gRPC request: `content-type` `application/grpc` or `application/grpc+<codec>`, as Envoy
/// tells gRPC requests apart. gRPC-Web is gRPC here once Envoy's `grpc_web` filter, placed
/// before this one, has translated it; without that filter it is answered as HTTP, as Envoy
/// itself would.
pub fn is_grpc(content_type: &[u8]) -> bool {
    let media = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let media = media.to_ascii_lowercase();
    media == b"application/grpc" || media.starts_with(b"application/grpc+")
}

/// The gRPC status of one of the filter's HTTP answers.
pub fn status_of(http: u16) -> u8 {
    match http {
        // a malformed request (an ambiguous path, a method override naming another method)
        400 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        // a denial, and the redirect of on-deny-redirect-to (which a gRPC client cannot follow)
        302 | 403 => code::PERMISSION_DENIED,
        404 | 405 => code::UNIMPLEMENTED,
        // a body the claims would read is over kcpep.max-body-bytes
        413 => code::RESOURCE_EXHAUSTED,
        500 => code::INTERNAL,
        // Keycloak or a claim service did not answer: fail closed, and the client may retry
        502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// The same answer for a gRPC client: its gRPC status set, the reason as its message, the
/// redirect of `on-deny-redirect-to` turned into the denial it stands for, and the body's
/// `content-type` gone (the proxy writes gRPC's).
pub fn for_grpc(reply: Reply) -> Reply {
    let grpc = status_of(reply.status);
    let (status, reason, headers) = if reply.status == 302 {
        let headers = reply
            .headers
            .into_iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("location"))
            .collect();
        let reason = format!(
            "{} (on-deny-redirect-to is not followed by gRPC clients)",
            reply.reason
        );
        (403, reason, headers)
    } else {
        (reply.status, reply.reason, reply.headers)
    };
    let headers = headers
        .into_iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
        .collect();
    Reply {
        status,
        headers,
        body: reason.clone(),
        reason,
        grpc_status: Some(grpc),
        ..reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::step::CacheUse;

    fn reply(status: u16, headers: &[(&str, &str)], reason: &str) -> Reply {
        Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: "Forbidden".into(),
            reason: reason.into(),
            cache: CacheUse::Hit,
            matched: None,
            grpc_status: None,
        }
    }

    #[test]
    fn grpc_requests_are_told_by_their_content_type_as_envoy_tells_them() {
        for yes in [
            &b"application/grpc"[..],
            b"application/grpc+proto",
            b"Application/GRPC+json",
            b"application/grpc; charset=utf-8",
            b" application/grpc ",
        ] {
            assert!(is_grpc(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b""[..],
            b"application/json",
            b"application/grpc-web",
            b"application/grpc-web+proto",
            b"application/grpc-web-text",
            b"application/grpcx",
            b"text/plain; x=application/grpc",
            b"\xff\xfe",
        ] {
            assert!(!is_grpc(no), "{}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn each_answer_of_the_filter_has_its_grpc_status() {
        let cases = [
            (400, code::INVALID_ARGUMENT),
            (401, code::UNAUTHENTICATED),
            (403, code::PERMISSION_DENIED),
            (302, code::PERMISSION_DENIED),
            (413, code::RESOURCE_EXHAUSTED),
            (503, code::UNAVAILABLE),
            (504, code::UNAVAILABLE),
            (500, code::INTERNAL),
            (404, code::UNIMPLEMENTED),
            (418, code::UNKNOWN),
        ];
        for (http, grpc) in cases {
            assert_eq!(status_of(http), grpc, "{http}");
            let r = for_grpc(reply(http, &[], "why"));
            assert_eq!(r.grpc_status, Some(grpc), "{http}");
        }
    }

    #[test]
    fn a_denial_carries_its_reason_as_the_message_and_keeps_what_it_was_decided_by() {
        let r = for_grpc(reply(
            403,
            &[("content-type", "text/plain")],
            "not authorized",
        ));
        assert_eq!(r.status, 403);
        assert_eq!(r.body, "not authorized");
        assert_eq!(r.reason, "not authorized");
        assert_eq!(r.cache, CacheUse::Hit);
        assert!(r.headers.is_empty(), "{:?}", r.headers);
        assert!(r.wire_headers().is_empty(), "{:?}", r.wire_headers());
    }

    #[test]
    fn a_redirect_is_not_sent_to_a_grpc_client_it_is_the_denial() {
        let r = for_grpc(reply(302, &[("Location", "/denied")], "access denied"));
        assert_eq!(r.status, 403);
        assert_eq!(r.grpc_status, Some(code::PERMISSION_DENIED));
        assert!(r.headers.is_empty(), "{:?}", r.headers);
        assert!(r.reason.starts_with("access denied"), "{}", r.reason);
        assert!(r.reason.contains("on-deny-redirect-to"), "{}", r.reason);
    }

    #[test]
    fn a_challenge_stays_as_metadata() {
        let uma = "UMA realm=\"bank\",as_uri=\"http://kc/realms/bank\",ticket=\"t\"";
        let r = for_grpc(reply(401, &[("www-authenticate", uma)], "UMA challenge"));
        assert_eq!(r.grpc_status, Some(code::UNAUTHENTICATED));
        assert_eq!(
            r.headers,
            [("www-authenticate".to_string(), uma.to_string())]
        );
        assert_eq!(r.body, "UMA challenge");
    }
}
