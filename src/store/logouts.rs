//! Sessions that ended (back-channel logout), as every worker must know them within a second:
//! the worker that took the logout token writes a record to a ring in shared data; each VM reads
//! new records on its tick into its own [`Logouts`], which every request consults (a map lookup,
//! no host call). A token issued before its session (or subject) was logged out is refused, so
//! neither a cached decision nor the per-worker memo serves it again.

use crate::keycloak::token::Token;
use crate::wire::hashmap::HashMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Records in the shared ring; a VM that fell this far behind (no tick for that many logouts)
/// misses the oldest ones.
pub const RING: u64 = 1024;
/// The ring's sequence number (the last record written).
pub const SEQ_KEY: &str = "kcpep.logout.seq";

/// A logged-out session (`sid`) or subject (`sub`) of an issuer, hashed.
pub type Ended = [u8; 16];

pub fn identity(issuer: &str, kind: &str, value: &str) -> Ended {
    let mut h = Sha256::new();
    for part in [issuer, kind, value] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

pub fn slot_key(seq: u64) -> String {
    format!("kcpep.logout.{}", seq % RING)
}

/// One record: its sequence number, what ended, when (ms), and until when it is remembered.
pub fn encode(seq: u64, ended: &Ended, at_ms: i64, until_ms: i64) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(ended);
    v.extend_from_slice(&at_ms.to_be_bytes());
    v.extend_from_slice(&until_ms.to_be_bytes());
    v
}

pub fn decode(v: &[u8]) -> Option<(u64, Ended, i64, i64)> {
    if v.len() != 40 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<[u8; 8]> { v.get(r)?.try_into().ok() };
    let mut ended = [0u8; 16];
    ended.copy_from_slice(&v[8..24]);
    Some((
        u64::from_be_bytes(n(0..8)?),
        ended,
        i64::from_be_bytes(n(24..32)?),
        i64::from_be_bytes(n(32..40)?),
    ))
}

/// This VM's view of the ended sessions.
#[derive(Debug, Default)]
pub struct Logouts {
    ended: HashMap<Ended, (i64, i64)>,
    /// The last ring record taken.
    pub seen_seq: u64,
}

impl Logouts {
    pub fn note(&mut self, ended: Ended, at_ms: i64, until_ms: i64, now_ms: i64) {
        if self.ended.len() >= 4096 {
            self.ended.retain(|_, (_, until)| *until >= now_ms);
        }
        let e = self.ended.entry(ended).or_insert((at_ms, until_ms));
        // the latest logout of a subject counts
        if at_ms > e.0 {
            *e = (at_ms, until_ms.max(e.1));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ended.is_empty()
    }

    /// Whether the token's session, or its subject, was logged out after the token was issued.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn ended(&self, issuer: &str, token: &Token) -> bool {
        if self.ended.is_empty() {
            return false;
        }
        let iat_ms = token
            .claims
            .get("iat")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .saturating_mul(1000);
        ["sid", "sub"].iter().any(|kind| {
            token
                .claims
                .get(*kind)
                .and_then(Value::as_str)
                .and_then(|v| self.ended.get(&identity(issuer, kind, v)))
                .is_some_and(|(at_ms, _)| iat_ms <= *at_ms)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(sid: &str, sub: &str, iat: i64) -> Token {
        Token {
            claims: json!({"sid": sid, "sub": sub, "iat": iat}),
            exp: iat + 300,
            digest: [0; 32],
        }
    }

    #[test]
    fn a_session_ends_for_its_tokens_issued_before_the_logout() {
        let mut l = Logouts::default();
        assert!(!l.ended("iss", &token("s1", "u1", 100)));
        l.note(identity("iss", "sid", "s1"), 150_000, 1_000_000, 0);
        assert!(l.ended("iss", &token("s1", "u1", 100)));
        assert!(l.ended("iss", &token("s1", "u1", 150)));
        assert!(!l.ended("iss", &token("s2", "u1", 100)), "another session");
        assert!(
            !l.ended("other-iss", &token("s1", "u1", 100)),
            "another realm"
        );
        // a subject's logout ends every session of it issued before, not after (a new login)
        l.note(identity("iss", "sub", "u2"), 200_000, 1_000_000, 0);
        assert!(l.ended("iss", &token("s9", "u2", 199)));
        assert!(!l.ended("iss", &token("s9", "u2", 201)));
    }

    #[test]
    fn ring_records_round_trip() {
        let e = identity("i", "sid", "s");
        let v = encode(7, &e, 1, 2);
        assert_eq!(decode(&v), Some((7, e, 1, 2)));
        assert_eq!(decode(&v[1..]), None);
        assert_eq!(slot_key(RING + 3), slot_key(3));
    }
}
