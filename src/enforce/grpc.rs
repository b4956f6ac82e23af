//! A local reply as a gRPC client reads it. A gRPC client does not read HTTP statuses or bodies:
//! it reads `grpc-status` and `grpc-message` of an HTTP 200 "trailers-only" answer. The filter
//! names the gRPC code of each of its answers and writes that answer here, so the mapping is the
//! filter's, tested, and the same in `kcpep evaluate` (docs/operations.md, "gRPC clients").
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

/// How a gRPC client speaks, by the request's `content-type`: the answer's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `application/grpc`, `application/grpc+<codec>`: gRPC over HTTP/2.
    Grpc,
    /// `application/grpc-web`, `application/grpc-web+<codec>`: gRPC-Web that no `grpc_web`
    /// filter translated before this one (an upstream that speaks gRPC-Web itself).
    GrpcWeb,
    /// `application/grpc-web-text`, `application/grpc-web-text+<codec>`.
    GrpcWebText,
}

impl Wire {
    /// The client's wire, or `None` for a request that is not gRPC. Behind Envoy's `grpc_web`
    /// filter a gRPC-Web request arrives here as `application/grpc` already, and its answer is
    /// translated back by that filter.
    pub fn of(content_type: &[u8]) -> Option<Wire> {
        let media = content_type
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii()
            .to_ascii_lowercase();
        let codec = |base: &[u8]| {
            media == base || (media.starts_with(base) && media.get(base.len()) == Some(&b'+'))
        };
        if codec(b"application/grpc") {
            Some(Wire::Grpc)
        } else if codec(b"application/grpc-web") {
            Some(Wire::GrpcWeb)
        } else if codec(b"application/grpc-web-text") {
            Some(Wire::GrpcWebText)
        } else {
            None
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Wire::Grpc => "application/grpc",
            Wire::GrpcWeb => "application/grpc-web",
            Wire::GrpcWebText => "application/grpc-web-text",
        }
    }
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

/// The same answer for a gRPC client, as a trailers-only response: HTTP 200 (see
/// [`Reply::wire_status`]) whose headers carry `grpc-status` and the reason as `grpc-message`,
/// the challenge headers kept, no body. Written whole here rather than left to the proxy's own
/// gRPC conversion, which Envoy makes only for requests that were gRPC when they reached it (not
/// gRPC-Web translated by its `grpc_web` filter). The redirect of `on-deny-redirect-to` becomes
/// the denial it stands for.
pub fn for_grpc(reply: Reply, wire: Wire) -> Reply {
    let grpc = status_of(reply.status);
    let redirect = reply.status == 302;
    let status = if redirect { 403 } else { reply.status };
    let reason = if redirect {
        format!(
            "{} (on-deny-redirect-to is not followed by gRPC clients)",
            reply.reason
        )
    } else {
        reply.reason
    };
    let mut headers: Vec<(String, String)> = reply
        .headers
        .into_iter()
        .filter(|(k, _)| {
            !(k.eq_ignore_ascii_case("content-type")
                || k.eq_ignore_ascii_case("location")
                || k.eq_ignore_ascii_case("grpc-status")
                || k.eq_ignore_ascii_case("grpc-message"))
        })
        .collect();
    headers.push(("content-type".into(), wire.content_type().into()));
    headers.push(("grpc-status".into(), grpc.to_string()));
    headers.push(("grpc-message".into(), percent_encoded(&reason)));
    Reply {
        status,
        headers,
        body: String::new(),
        reason,
        grpc_status: Some(grpc),
        ..reply
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself
/// (gRPC over HTTP/2, "Responses").
fn percent_encoded(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        let mut found = r.headers.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} twice: {:?}", r.headers);
        first
    }

    #[test]
    fn grpc_clients_are_told_by_their_content_type() {
        let cases: [(&[u8], Option<Wire>); 14] = [
            (b"application/grpc", Some(Wire::Grpc)),
            (b"application/grpc+proto", Some(Wire::Grpc)),
            (b"Application/GRPC+json", Some(Wire::Grpc)),
            (b"application/grpc; charset=utf-8", Some(Wire::Grpc)),
            (b" application/grpc ", Some(Wire::Grpc)),
            (b"application/grpc-web", Some(Wire::GrpcWeb)),
            (b"application/grpc-web+proto", Some(Wire::GrpcWeb)),
            (b"application/grpc-web-text", Some(Wire::GrpcWebText)),
            (b"application/grpc-web-text+proto", Some(Wire::GrpcWebText)),
            (b"", None),
            (b"application/json", None),
            (b"application/grpcx", None),
            (b"text/plain; x=application/grpc", None),
            (b"\xff\xfe", None),
        ];
        for (content_type, wire) in cases {
            let shown = String::from_utf8_lossy(content_type);
            assert_eq!(Wire::of(content_type), wire, "{shown}");
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
            let r = for_grpc(reply(http, &[], "why"), Wire::Grpc);
            assert_eq!(r.grpc_status, Some(grpc), "{http}");
            assert_eq!(header(&r, "grpc-status"), Some(&*grpc.to_string()));
        }
    }

    #[test]
    fn a_denial_is_a_trailers_only_answer_with_its_reason_as_the_message() {
        let r = for_grpc(
            reply(403, &[("content-type", "text/plain")], "not authorized"),
            Wire::Grpc,
        );
        // the decision stays what it was; the wire says it the gRPC way
        assert_eq!((r.status, r.wire_status()), (403, 200));
        assert_eq!(r.reason, "not authorized");
        assert_eq!(r.cache, CacheUse::Hit);
        assert!(r.body.is_empty());
        assert_eq!(header(&r, "content-type"), Some("application/grpc"));
        assert_eq!(header(&r, "grpc-message"), Some("not authorized"));
        assert_eq!(r.wire_headers().len(), 3, "{:?}", r.wire_headers());
        // gRPC-Web without Envoy's grpc_web filter: the same, in its content type
        let web = for_grpc(reply(403, &[], "no"), Wire::GrpcWebText);
        assert_eq!(
            header(&web, "content-type"),
            Some("application/grpc-web-text")
        );
    }

    #[test]
    fn the_message_is_percent_encoded() {
        let r = for_grpc(reply(403, &[], "100% \"denied\" \u{e9}\n"), Wire::Grpc);
        assert_eq!(
            header(&r, "grpc-message"),
            Some("100%25 \"denied\" %C3%A9%0A")
        );
    }

    #[test]
    fn a_redirect_is_not_sent_to_a_grpc_client_it_is_the_denial() {
        let r = for_grpc(
            reply(302, &[("Location", "/denied")], "access denied"),
            Wire::Grpc,
        );
        assert_eq!(r.status, 403);
        assert_eq!(r.grpc_status, Some(code::PERMISSION_DENIED));
        assert_eq!(header(&r, "Location"), None);
        assert!(r.reason.starts_with("access denied"), "{}", r.reason);
        assert!(r.reason.contains("on-deny-redirect-to"), "{}", r.reason);
    }

    #[test]
    fn a_challenge_stays_as_metadata_and_a_client_copy_of_grpc_status_does_not() {
        let uma = "UMA realm=\"bank\",as_uri=\"http://kc/realms/bank\",ticket=\"t\"";
        let r = for_grpc(
            reply(
                401,
                &[("www-authenticate", uma), ("grpc-status", "0")],
                "UMA challenge",
            ),
            Wire::Grpc,
        );
        assert_eq!(r.grpc_status, Some(code::UNAUTHENTICATED));
        assert_eq!(header(&r, "www-authenticate"), Some(uma));
        assert_eq!(header(&r, "grpc-status"), Some("16"));
        assert_eq!(header(&r, "grpc-message"), Some("UMA challenge"));
    }
}
