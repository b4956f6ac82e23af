//! Sender-constrained tokens: a token bound to a key (`cnf.jkt`, DPoP, RFC 9449) is taken only
//! with a proof signed by that key for this very request; one bound to a client certificate
//! (`cnf.x5t#S256`, RFC 8705) only on a connection presenting that certificate. A token copied
//! from a log or a browser then works nowhere else. Keycloak's Java enforcer checks neither.

use crate::config::{DpopSettings, SenderConstraint};
use crate::keycloak::dpop::{self, Proof, ProofError};
use crate::keycloak::token::{HostVerifier, Scheme, Token};
use base64::Engine;
use serde_json::Value;

/// What came with the token besides it.
#[derive(Clone, Copy)]
pub struct Presented<'a> {
    pub scheme: Scheme,
    /// The request's `DPoP` header values.
    pub proofs: &'a [&'a [u8]],
    pub method: &'a str,
    /// The URL and the certificate, asked only when the token's binding needs them.
    pub client: &'a dyn ClientView,
}

/// What a binding may need to know of the request's client, read only when the token's binding
/// needs it: each is a host call or more (connection properties, forwarding headers), and most
/// tokens are not bound.
pub trait ClientView {
    /// The URL as the client used it (see [`request_url`]): a DPoP proof's `htu`.
    fn url(&self) -> String;
    /// SHA-256 of the DER client certificate of the connection, when it presented one.
    fn certificate_sha256(&self) -> Option<[u8; 32]>;
}

/// A client whose URL and certificate are known beforehand (a token checked without its
/// connection: both empty; tests).
pub struct KnownClient {
    pub url: String,
    pub certificate_sha256: Option<[u8; 32]>,
}

impl ClientView for KnownClient {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn certificate_sha256(&self) -> Option<[u8; 32]> {
        self.certificate_sha256
    }
}

/// A refused binding: a 401 with a `DPoP` or a `Bearer` challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Challenge with the DPoP scheme (RFC 9449 §7.1) rather than Bearer (RFC 6750 §3).
    pub dpop_challenge: bool,
    /// `invalid_dpop_proof` or `invalid_token`.
    pub error: &'static str,
    pub reason: &'static str,
    /// The name of the counter this reason increments (`kcpep.binding.<counter>`).
    pub counter: &'static str,
}

impl Refusal {
    fn proof(e: ProofError) -> Refusal {
        Refusal {
            dpop_challenge: true,
            error: "invalid_dpop_proof",
            reason: e.describe(),
            counter: e.counter(),
        }
    }

    fn token(dpop_challenge: bool, reason: &'static str, counter: &'static str) -> Refusal {
        Refusal {
            dpop_challenge,
            error: "invalid_token",
            reason,
            counter,
        }
    }

    /// The replay check found the proof's `jti` used before.
    pub fn replayed() -> Refusal {
        Refusal::proof(ProofError::Replayed)
    }

    /// No slot of the replay table could take the proof (every one holds a live proof).
    pub fn replay_table_full() -> Refusal {
        Refusal {
            dpop_challenge: true,
            error: "invalid_dpop_proof",
            reason: "DPoP replay table full (dpop.replay-slots)",
            counter: "replay_table_full",
        }
    }

    /// The proof's owner (its key, or its token) holds its share of the replay table already.
    pub fn over_share() -> Refusal {
        Refusal {
            dpop_challenge: true,
            error: "invalid_dpop_proof",
            reason: "DPoP proofs of this key over its share of the replay table (dpop.replay-share-percent)",
            counter: "replay_key_share",
        }
    }

    /// Every counter a refusal may increment, once.
    pub fn counters() -> Vec<&'static str> {
        let mut all: Vec<&'static str> = ProofError::COUNTERS.to_vec();
        all.extend(TOKEN_COUNTERS);
        all
    }
}

const TOKEN_COUNTERS: [&str; 7] = [
    "replay_table_full",
    "replay_key_share",
    "dpop_token_as_bearer",
    "unbound_token_as_dpop",
    "unbound",
    "certificate_missing",
    "certificate_mismatch",
];

/// The request URL a DPoP proof names: scheme, authority and path, no query (RFC 9449 §4.2).
/// `secure`: the scheme the client used (the connection's, or a trusted proxy's
/// `X-Forwarded-Proto`/`Forwarded: proto`); `authority`: the request's `:authority`.
pub fn request_url(secure: bool, authority: &str, path: &str) -> String {
    let scheme = if secure { "https" } else { "http" };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{authority}{path}")
}

/// The client certificate's SHA-256 from Envoy's `connection.sha256_peer_certificate_digest`
/// (hex); `None` when there is none or it is not 32 bytes of hex.
pub fn certificate_digest(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// The token's key binding (`cnf.jkt`) and certificate binding (`cnf.x5t#S256`).
pub fn bindings(token: &Token) -> (Option<&str>, Option<&str>) {
    let cnf = token.claims.get("cnf");
    let get = |k: &str| cnf.and_then(|c| c.get(k)).and_then(Value::as_str);
    (get("jkt"), get("x5t#S256"))
}

/// Whether a token is sender-constrained: then it must be checked on every request, never
/// answered from a shortcut that skips the proof.
pub fn is_bound(token: &Token) -> bool {
    let (jkt, x5t) = bindings(token);
    jkt.is_some() || x5t.is_some()
}

/// What a proof is checked with: the time in seconds, the host's signature check, and the keys
/// of the proof headers seen before.
pub struct Checking<'a> {
    pub now: i64,
    pub host: Option<HostVerifier<'a>>,
    pub keys: &'a mut dpop::HeaderKeys,
}

/// Checks the binding of a verified token. `Ok(Some(proof))`: a DPoP proof passed every check
/// but replay, which the caller asks the store (across workers).
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn check(
    mode: SenderConstraint,
    settings: &DpopSettings,
    token: &Token,
    presented: &Presented,
    with: Checking<'_>,
) -> Result<Option<Proof>, Refusal> {
    if mode == SenderConstraint::Off {
        return Ok(None);
    }
    let (jkt, x5t) = bindings(token);
    if let Some(x5t) = x5t {
        let Some(digest) = presented.client.certificate_sha256() else {
            return Err(Refusal::token(
                false,
                "certificate-bound token without a client certificate",
                "certificate_missing",
            ));
        };
        let ours = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        if ours != x5t {
            return Err(Refusal::token(
                false,
                "certificate-bound token with another client certificate",
                "certificate_mismatch",
            ));
        }
    }
    let Some(jkt) = jkt else {
        if presented.scheme == Scheme::DPoP && !settings.accept_unbound_tokens {
            return Err(Refusal::token(
                true,
                "DPoP scheme with a token not bound to a key",
                "unbound_token_as_dpop",
            ));
        }
        if mode == SenderConstraint::Required && x5t.is_none() {
            return Err(Refusal::token(
                true,
                "token not sender-constrained",
                "unbound",
            ));
        }
        // An unbound token with the DPoP scheme, where accepted, still needs a valid proof.
        if presented.scheme == Scheme::DPoP {
            return proof_for(settings, &token.digest, None, presented, with).map(Some);
        }
        return Ok(None);
    };
    if presented.scheme != Scheme::DPoP {
        return Err(Refusal::token(
            true,
            "DPoP-bound token sent as Bearer",
            "dpop_token_as_bearer",
        ));
    }
    proof_for(settings, &token.digest, Some(jkt), presented, with).map(Some)
}

#[cfg_attr(kcpep_size, optimize(speed))]
fn proof_for(
    settings: &DpopSettings,
    access_token_sha256: &[u8; 32],
    jkt: Option<&str>,
    presented: &Presented,
    with: Checking<'_>,
) -> Result<Proof, Refusal> {
    let url = presented.client.url();
    let expected = dpop::ProofCheck {
        method: presented.method,
        htu: &url,
        access_token_sha256,
        jkt,
        now: with.now,
        lifetime_s: settings.proof_lifetime_s,
        skew_s: settings.clock_skew_s,
    };
    dpop::check(presented.proofs, &expected, with.host, with.keys).map_err(Refusal::proof)
}

/// The `WWW-Authenticate` value of a refusal (`realm` for the Bearer scheme).
pub fn challenge(r: &Refusal, realm: &str) -> String {
    if r.dpop_challenge {
        format!(
            "DPoP algs=\"{}\", error=\"{}\", error_description=\"{}\"",
            dpop::algorithms().join(" "),
            r.error,
            r.reason
        )
    } else {
        format!(
            "Bearer realm=\"{realm}\", error=\"{}\", error_description=\"{}\"",
            r.error, r.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_the_clients_and_the_challenge_names_the_scheme() {
        assert_eq!(
            request_url(true, "bank.example", "/account/1?x=1#f"),
            "https://bank.example/account/1"
        );
        assert_eq!(request_url(false, "h:8080", "/a"), "http://h:8080/a");
        let proof = Refusal::proof(ProofError::NotActive);
        let c = challenge(&proof, "bank");
        assert!(c.starts_with("DPoP algs=\"ES256 "), "{c}");
        assert!(c.contains("error=\"invalid_dpop_proof\""), "{c}");
        let token = Refusal::token(
            false,
            "certificate-bound token without a client certificate",
            "certificate_missing",
        );
        assert_eq!(
            challenge(&token, "bank"),
            "Bearer realm=\"bank\", error=\"invalid_token\", error_description=\"certificate-bound token without a client certificate\""
        );
        let counters = Refusal::counters();
        let mut unique = counters.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), counters.len(), "one counter a reason");
    }

    #[test]
    fn envoys_certificate_digest_is_read_from_hex() {
        let hex = "00ff".repeat(16);
        let d = certificate_digest(hex.as_bytes()).unwrap();
        assert_eq!(d[0], 0);
        assert_eq!(d[1], 0xff);
        assert_eq!(certificate_digest(b"00ff"), None);
        assert_eq!(certificate_digest("zz".repeat(32).as_bytes()), None);
    }
}
