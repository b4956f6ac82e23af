//! Background documents shared by all VMs of a process (proxy-wasm shared data), so that N+1 VMs
//! and several enforcers of one realm fetch the JWKS, discovery, PATs and resource lookups once,
//! not once each. Sans-IO: keys, value encoding, freshness and the lease rules; the shell does the
//! get/set with CAS.
//!
//! Shared data is process-global per `vm_id` (and Istio leaves `vm_id` empty), so every key starts
//! with `kcpep/v1/`. Values carry their own timestamps: shared data has no expiry of its own. Only
//! good answers (HTTP 200) are stored.

use crate::config::EnforcerConfig;
use crate::keycloak::background::Fetch;
use crate::keycloak::uma;
use crate::wire::http::HttpRequest;

const PREFIX: &str = "kcpep/v1";
/// How long one VM may hold a fetch lease before another may take over.
pub const LEASE_MS: i64 = 5_000;
const JWKS_FRESH_MS: i64 = 10 * 60 * 1000;
const JWKS_UNKNOWN_KID_FRESH_MS: i64 = 10 * 1000;
const LOOKUP_FRESH_MS: i64 = 5 * 60 * 1000;
const PAT_MARGIN_MS: i64 = 30 * 1000;

/// The shared-data key of a fetch's last good answer. Authenticated fetches (PAT, protection API)
/// include the client id: their answers belong to that client.
pub fn doc_key(cfg: &EnforcerConfig, fetch: Fetch, req: &HttpRequest) -> String {
    let owner = match fetch {
        Fetch::Discovery | Fetch::Jwks => "-",
        _ => cfg.client_id.as_str(),
    };
    format!(
        "{PREFIX}/doc/{}/{}/{owner}{}",
        cfg.proxy.cluster, cfg.proxy.authority, req.path
    )
}

pub fn lease_key(doc_key: &str) -> String {
    doc_key.replacen("/doc/", "/lease/", 1)
}

pub fn encode_doc(stored_at_ms: i64, body: &[u8]) -> Vec<u8> {
    let mut v = format!("{stored_at_ms}\n").into_bytes();
    v.extend_from_slice(body);
    v
}

/// `(stored_at_ms, body)`; `None` for anything that is not ours.
pub fn decode_doc(value: &[u8]) -> Option<(i64, &[u8])> {
    let nl = value.iter().position(|b| *b == b'\n')?;
    let at = std::str::from_utf8(&value[..nl]).ok()?.parse().ok()?;
    Some((at, &value[nl + 1..]))
}

/// The shared answer to use instead of calling Keycloak, if the stored value is one of ours and
/// fresh enough: `(stored_at_ms, body)`.
pub fn usable(stored: &[u8], fetch: Fetch, now_ms: i64, unknown_kid: bool) -> Option<(i64, &[u8])> {
    decode_doc(stored).filter(|(at, body)| fresh(fetch, *at, body, now_ms, unknown_kid))
}

/// Is a stored answer good enough to use instead of calling Keycloak?
pub fn fresh(fetch: Fetch, stored_at_ms: i64, body: &[u8], now_ms: i64, unknown_kid: bool) -> bool {
    let age = now_ms - stored_at_ms;
    if age < 0 {
        return false;
    }
    match fetch {
        Fetch::Discovery => true,
        Fetch::Jwks if unknown_kid => age < JWKS_UNKNOWN_KID_FRESH_MS,
        Fetch::Jwks => age < JWKS_FRESH_MS,
        Fetch::Pat => match uma::parse_token_response(200, body) {
            Ok(t) => age < t.expires_in.unwrap_or(0) * 1000 - PAT_MARGIN_MS,
            Err(_) => false,
        },
        Fetch::Bind { .. } | Fetch::LoadAll => age < LOOKUP_FRESH_MS,
    }
}

pub fn encode_lease(owner: u64, until_ms: i64) -> Vec<u8> {
    format!("{owner}:{until_ms}").into_bytes()
}

/// `(owner, until_ms)` of a lease value.
pub fn decode_lease(value: &[u8]) -> Option<(u64, i64)> {
    let s = std::str::from_utf8(value).ok()?;
    let (o, u) = s.split_once(':')?;
    Some((o.parse().ok()?, u.parse().ok()?))
}

/// May `owner` take the lease now?
pub fn lease_takeable(current: Option<&[u8]>, owner: u64, now_ms: i64) -> bool {
    match current.and_then(decode_lease) {
        None => true,
        Some((o, until)) => o == owner || now_ms >= until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_fresh_documents_are_used() {
        let doc = encode_doc(1_000, b"{}");
        assert_eq!(
            usable(&doc, Fetch::Discovery, 2_000, false),
            Some((1_000, &b"{}"[..]))
        );
        assert_eq!(
            usable(&doc, Fetch::Discovery, 500, false),
            None,
            "from the future"
        );
        assert_eq!(usable(b"not ours", Fetch::Discovery, 2_000, false), None);
    }
    use crate::keycloak::background::BindStep;

    fn cfg(client: &str) -> EnforcerConfig {
        EnforcerConfig::from_json(
            format!(r#"{{"realm":"bank","auth-server-url":"http://kc:8080","resource":"{client}","credentials":{{"secret":"s"}}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn keys_are_shared_by_realm_and_split_by_client_when_authenticated() {
        let (a, b) = (cfg("a"), cfg("b"));
        let jwks = |c: &EnforcerConfig| doc_key(c, Fetch::Jwks, &uma::jwks_request(c));
        let pat = |c: &EnforcerConfig| doc_key(c, Fetch::Pat, &uma::pat_request(c));
        assert_eq!(jwks(&a), jwks(&b));
        assert_eq!(
            jwks(&a),
            "kcpep/v1/doc/keycloak/kc:8080/-/realms/bank/protocol/openid-connect/certs"
        );
        assert_ne!(pat(&a), pat(&b));
        assert_eq!(
            lease_key(&pat(&a)),
            "kcpep/v1/lease/keycloak/kc:8080/a/realms/bank/protocol/openid-connect/token"
        );
    }

    #[test]
    fn docs_round_trip_and_reject_foreign_values() {
        let v = encode_doc(42, b"{\"a\":1}\nx");
        assert_eq!(decode_doc(&v), Some((42, &b"{\"a\":1}\nx"[..])));
        assert_eq!(decode_doc(b"garbage"), None);
        assert_eq!(decode_doc(b"x\nbody"), None);
    }

    #[test]
    fn freshness_rules() {
        assert!(fresh(Fetch::Jwks, 0, b"", JWKS_FRESH_MS - 1, false));
        assert!(!fresh(Fetch::Jwks, 0, b"", JWKS_FRESH_MS, false));
        assert!(!fresh(Fetch::Jwks, 0, b"", 10_000, true));
        assert!(fresh(Fetch::Jwks, 0, b"", 9_999, true));
        let pat = br#"{"access_token":"x","expires_in":60}"#;
        assert!(fresh(Fetch::Pat, 0, pat, 29_999, false));
        assert!(!fresh(Fetch::Pat, 0, pat, 30_000, false));
        assert!(fresh(
            Fetch::Bind {
                index: 0,
                step: BindStep::ByName
            },
            0,
            b"[]",
            1,
            false
        ));
        assert!(
            !fresh(Fetch::Discovery, 10, b"", 5, false),
            "from the future"
        );
    }

    #[test]
    fn leases() {
        assert!(lease_takeable(None, 1, 0));
        let l = encode_lease(7, 100);
        assert!(!lease_takeable(Some(&l), 1, 99));
        assert!(lease_takeable(Some(&l), 7, 99));
        assert!(lease_takeable(Some(&l), 1, 100));
        assert!(lease_takeable(Some(b"junk"), 1, 0));
    }
}
