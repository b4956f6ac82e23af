//! DPoP proofs (RFC 9449): the checks a resource server makes of the `DPoP` header that must come
//! with a DPoP-bound access token (`cnf.jkt`). Pure: the request's method and URL, the time and
//! the signature checker are passed in; replay (a `jti` used twice) is the store's, across
//! workers, keyed by [`Proof::replay_key`].
//!
//! Keycloak's own rules where RFC 9449 leaves a choice (its `DPoPUtil`, which checks the proofs
//! sent to its own endpoints): `iat` within [now - lifetime - skew, now + skew] with a lifetime of
//! 10 s and a skew of 15 s by default; the URL compared without its query; `htm` exactly.

use crate::keycloak::jose::{self, Alg, Jwk};
use crate::keycloak::token::{self, HostVerifier, TokenError};
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::rc::Rc;

pub use crate::config::{
    DPOP_DEFAULT_LIFETIME_S as DEFAULT_LIFETIME_S, DPOP_DEFAULT_SKEW_S as DEFAULT_SKEW_S,
};
/// The largest proof read: a proof carries one public key (an RSA 4096 key is about 700 bytes
/// of base64url); anything much larger is not a proof.
pub const MAX_PROOF_BYTES: usize = 8192;

/// What a proof is checked against.
#[derive(Debug, Clone)]
pub struct ProofCheck<'a> {
    /// The request method, as sent.
    pub method: &'a str,
    /// The request URL as the client used it: scheme, authority and path (no query).
    pub htu: &'a str,
    /// SHA-256 of the access token the proof must name (`ath`): the verified token's digest,
    /// so a proof does not hash the token again.
    pub access_token_sha256: &'a [u8; 32],
    /// `cnf.jkt` of the access token: the thumbprint of the key that must have signed the proof
    /// (`None`: an unbound token with the DPoP scheme, where the configuration accepts it).
    pub jkt: Option<&'a str>,
    pub now: i64,
    pub lifetime_s: u32,
    pub skew_s: u32,
}

/// A proof that passed every check but replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Identifies the proof for the replay check: SHA-256 of `jti` and `htu` (Keycloak keys its
    /// single-use cache by the same pair), never the `jti` itself.
    pub replay_key: [u8; 32],
    /// Until when (s) the proof could be accepted, so until when its `jti` must be remembered.
    pub usable_until: i64,
    /// Whose proof it is, for the replay table's share per owner: SHA-256 of the key's
    /// thumbprint for a bound token, of the access token for an unbound one (whose proofs any
    /// key may sign, so a fresh key per proof must not make a fresh owner).
    pub owner: [u8; 32],
}

/// Why a proof is refused; each is reported as `invalid_dpop_proof` (RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    Missing,
    Multiple,
    TooLarge,
    Malformed,
    WrongType,
    Algorithm,
    NoKey,
    PrivateKey,
    BadSignature,
    MissingClaims,
    WrongMethod,
    WrongUrl,
    NotActive,
    NoAccessTokenHash,
    WrongAccessTokenHash,
    WrongKey,
    Replayed,
    /// Nothing here can check the proof's signature (a host without `verify_signature`, or an
    /// algorithm only the `rust-crypto` build checks).
    NoVerifier,
}

impl ProofError {
    /// The reason, for the log, the 401's `error_description` and the counter's name.
    pub fn describe(self) -> &'static str {
        match self {
            ProofError::Missing => "no DPoP proof",
            ProofError::Multiple => "more than one DPoP proof",
            ProofError::TooLarge => "DPoP proof too large",
            ProofError::Malformed => "malformed DPoP proof",
            ProofError::WrongType => "DPoP proof typ is not dpop+jwt",
            ProofError::Algorithm => "DPoP proof algorithm not accepted",
            ProofError::NoKey => "no public key in the DPoP proof",
            ProofError::PrivateKey => "private key in the DPoP proof",
            ProofError::BadSignature => "DPoP proof signature invalid",
            ProofError::MissingClaims => "DPoP proof claims missing",
            ProofError::WrongMethod => "DPoP proof htm mismatch",
            ProofError::WrongUrl => "DPoP proof htu mismatch",
            ProofError::NotActive => "DPoP proof iat outside the window",
            ProofError::NoAccessTokenHash => "no ath in the DPoP proof",
            ProofError::WrongAccessTokenHash => "DPoP proof ath mismatch",
            ProofError::WrongKey => "DPoP proof key does not match the token's cnf.jkt",
            ProofError::Replayed => "DPoP proof already used",
            ProofError::NoVerifier => "DPoP proof signature cannot be checked here",
        }
    }

    /// A short name for the per-reason counter.
    pub fn counter(self) -> &'static str {
        match self {
            ProofError::Missing => "missing",
            ProofError::Multiple => "multiple",
            ProofError::TooLarge => "too_large",
            ProofError::Malformed => "malformed",
            ProofError::WrongType => "typ",
            ProofError::Algorithm => "alg",
            ProofError::NoKey => "no_key",
            ProofError::PrivateKey => "private_key",
            ProofError::BadSignature => "signature",
            ProofError::MissingClaims => "claims",
            ProofError::WrongMethod => "htm",
            ProofError::WrongUrl => "htu",
            ProofError::NotActive => "iat",
            ProofError::NoAccessTokenHash | ProofError::WrongAccessTokenHash => "ath",
            ProofError::WrongKey => "jkt",
            ProofError::Replayed => "replay",
            ProofError::NoVerifier => "no_verifier",
        }
    }

    /// Every reason's counter name, once (the shell defines the counters at start).
    pub const COUNTERS: [&'static str; 17] = [
        "missing",
        "multiple",
        "too_large",
        "malformed",
        "typ",
        "alg",
        "no_key",
        "private_key",
        "signature",
        "claims",
        "htm",
        "htu",
        "iat",
        "ath",
        "jkt",
        "replay",
        "no_verifier",
    ];
}

/// Members of a JWK that only a private key has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK SHA-256 thumbprint (RFC 7638): the required members in lexicographic order, no
/// whitespace, hashed and base64url-encoded. `None` for a key type without a thumbprint rule or
/// with a required member missing.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let members: &[&str] = match jwk.get("kty")?.as_str()? {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut canonical = String::from("{");
    for (i, m) in members.iter().enumerate() {
        let v = jwk.get(*m)?.as_str()?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push_str(&serde_json::to_string(m).ok()?);
        canonical.push(':');
        canonical.push_str(&serde_json::to_string(v).ok()?);
    }
    canonical.push('}');
    Some(b64url(&Sha256::digest(canonical.as_bytes())))
}

/// `ath`: base64url of the SHA-256 of the access token (RFC 9449 §4.2).
pub fn access_token_hash(access_token: &str) -> String {
    b64url(&Sha256::digest(access_token.as_bytes()))
}

/// Whether the proof's `htu` names the request's URL: compared without query and fragment,
/// scheme and host without regard to case, a default port the same as none (RFC 9449 §4.3).
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn same_url(htu: &str, request_url: &str) -> bool {
    match (Url::parse(htu), Url::parse(request_url)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A URL's parts as RFC 9449 §4.3 compares them, borrowed from the URL (nothing copied: this runs
/// on every DPoP request).
#[derive(Debug)]
struct Url<'a> {
    scheme: &'a str,
    host: &'a str,
    /// `None` for none or the scheme's default port.
    port: Option<u16>,
    path: &'a str,
}

impl PartialEq for Url<'_> {
    /// Scheme and host without regard to ASCII case, port and path exactly.
    fn eq(&self, other: &Self) -> bool {
        self.scheme.eq_ignore_ascii_case(other.scheme)
            && self.host.eq_ignore_ascii_case(other.host)
            && self.port == other.port
            && self.path == other.path
    }
}

impl<'a> Url<'a> {
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn parse(s: &'a str) -> Option<Url<'a>> {
        let s = s.split(['?', '#']).next().unwrap_or_default();
        let (scheme, rest) = s.split_once("://")?;
        let secure = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return None;
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, rest) = v6.split_once(']')?;
                (h, rest.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            None | Some("") => None,
            Some(p) => Some(p.parse::<u16>().ok()?),
        };
        let default = if secure { 443 } else { 80 };
        Some(Url {
            scheme,
            host,
            port: port.filter(|p| *p != default),
            path,
        })
    }
}

/// The proof algorithms this build checks (the `algs` of a DPoP challenge): the host's
/// `verify_signature` checks PKCS#1 RSA and ECDSA; RSA-PSS and EdDSA need the `rust-crypto` build.
pub fn algorithms() -> &'static [&'static str] {
    if cfg!(feature = "rust-crypto") {
        &[
            "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
        ]
    } else {
        &["ES256", "ES384", "RS256", "RS384", "RS512"]
    }
}

/// What a valid proof header comes to: the key that must have signed the proof, ready for the
/// check, and its thumbprint. The same header bytes always come to the same, and a client signs
/// all its proofs with one key under one header, so a VM keeps the last few ([`HeaderKeys`]);
/// each proof's signature, claims, time and replay are checked all the same.
pub struct HeaderKey {
    key: token::SigningKey,
    thumbprint: Option<String>,
}

/// The most recently seen proof headers' keys, the least recently used dropped first.
#[derive(Default)]
pub struct HeaderKeys {
    entries: Vec<(Box<str>, Rc<HeaderKey>)>,
}

/// Proof headers remembered per enforcer and VM: a few hundred bytes each.
pub const HEADER_KEYS: usize = 32;

impl HeaderKeys {
    fn get(&mut self, header: &str) -> Option<Rc<HeaderKey>> {
        let at = self.entries.iter().position(|(h, _)| &**h == header)?;
        let entry = self.entries.remove(at);
        let key = Rc::clone(&entry.1);
        self.entries.push(entry);
        Some(key)
    }

    fn put(&mut self, header: &str, key: Rc<HeaderKey>) {
        if self.entries.len() >= HEADER_KEYS {
            self.entries.remove(0);
        }
        self.entries.push((header.into(), key));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The key a proof header names: `typ` `dpop+jwt`, an asymmetric `alg` this build checks, a
/// public `jwk` that fits it.
fn header_key(h: &str) -> Result<HeaderKey, ProofError> {
    let header = jose::json_object(h).ok_or(ProofError::Malformed)?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(ProofError::WrongType);
    }
    // `none`, HMAC (a shared secret proves nothing) and anything unknown are refused
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::from_name)
        .ok_or(ProofError::Algorithm)?;
    let jwk_value = match header.get("jwk") {
        Some(Value::Object(m)) => m,
        _ => return Err(ProofError::NoKey),
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk_value.contains_key(*m)) {
        return Err(ProofError::PrivateKey);
    }
    let jwk = Jwk::from_object(jwk_value).ok_or(ProofError::NoKey)?;
    let key = token::signing_key(&jwk, alg).map_err(|_| ProofError::Algorithm)?;
    Ok(HeaderKey {
        key,
        thumbprint: thumbprint(jwk_value),
    })
}

/// Checks the request's `DPoP` header values against what the request and its token imply;
/// `keys`: the keys of proof headers seen before.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn check(
    values: &[&[u8]],
    expected: &ProofCheck,
    host: Option<HostVerifier>,
    keys: &mut HeaderKeys,
) -> Result<Proof, ProofError> {
    let raw = match values {
        [] => return Err(ProofError::Missing),
        [one] => *one,
        _ => return Err(ProofError::Multiple),
    };
    if raw.len() > MAX_PROOF_BYTES {
        return Err(ProofError::TooLarge);
    }
    let raw = std::str::from_utf8(raw)
        .map_err(|_| ProofError::Malformed)?
        .trim();
    let mut parts = raw.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let key = match keys.get(h) {
        Some(key) => key,
        None => {
            let key = Rc::new(header_key(h)?);
            keys.put(h, Rc::clone(&key));
            key
        }
    };
    let claims = token::verify_signed_by(raw, &key.key, host).map_err(|e| match e {
        TokenError::BadSignature => ProofError::BadSignature,
        TokenError::Malformed => ProofError::Malformed,
        TokenError::NoVerifier => ProofError::NoVerifier,
        _ => ProofError::Algorithm,
    })?;
    let text = |k: &str| token::text_claim(&claims, k);
    let (Some(jti), Some(htm), Some(htu), Some(iat)) = (
        text("jti"),
        text("htm"),
        text("htu"),
        claims.get("iat").and_then(Value::as_i64),
    ) else {
        return Err(ProofError::MissingClaims);
    };
    if htm != expected.method {
        return Err(ProofError::WrongMethod);
    }
    if !same_url(htu, expected.htu) {
        return Err(ProofError::WrongUrl);
    }
    let (lifetime, skew) = (i64::from(expected.lifetime_s), i64::from(expected.skew_s));
    if iat > expected.now.saturating_add(skew)
        || iat < expected.now.saturating_sub(lifetime).saturating_sub(skew)
    {
        return Err(ProofError::NotActive);
    }
    match text("ath") {
        None => return Err(ProofError::NoAccessTokenHash),
        Some(ath) if ath != b64url(expected.access_token_sha256) => {
            return Err(ProofError::WrongAccessTokenHash)
        }
        Some(_) => {}
    }
    let owner: [u8; 32] = match expected.jkt {
        Some(jkt) => {
            if key.thumbprint.as_deref() != Some(jkt) {
                return Err(ProofError::WrongKey);
            }
            Sha256::digest(jkt.as_bytes()).into()
        }
        None => *expected.access_token_sha256,
    };
    let mut h = Sha256::new();
    h.update(jti.as_bytes());
    h.update(b"\n");
    h.update(htu.as_bytes());
    Ok(Proof {
        replay_key: h.finalize().into(),
        usable_until: iat.saturating_add(lifetime).saturating_add(skew),
        owner,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// One proof checked with no header seen before.
    fn check(
        values: &[&[u8]],
        expected: &ProofCheck,
        host: Option<HostVerifier>,
    ) -> Result<Proof, ProofError> {
        super::check(values, expected, host, &mut HeaderKeys::default())
    }

    /// RFC 7638 §3.1's example key and thumbprint.
    #[test]
    fn the_thumbprint_of_rfc_7638s_example() {
        let jwk = json!({"kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"});
        assert_eq!(
            thumbprint(jwk.as_object().unwrap()).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        assert_eq!(
            thumbprint(json!({"kty": "oct", "k": "x"}).as_object().unwrap()),
            None
        );
        assert_eq!(
            thumbprint(json!({"kty": "EC", "crv": "P-256"}).as_object().unwrap()),
            None
        );
    }

    #[test]
    fn urls_compare_as_rfc_9449_says() {
        let same = [
            ("https://api.example/a/b", "https://api.example/a/b"),
            ("HTTPS://API.example/a/b", "https://api.example/a/b"),
            ("https://api.example:443/a/b", "https://api.example/a/b"),
            ("http://api.example:80/a", "http://api.example/a"),
            ("https://api.example/a?x=1#f", "https://api.example/a"),
            ("https://api.example", "https://api.example/"),
            ("http://[::1]:8080/a", "http://[::1]:8080/a"),
        ];
        for (a, b) in same {
            assert!(same_url(a, b), "{a} {b}");
        }
        let different = [
            ("https://api.example/a/B", "https://api.example/a/b"),
            ("http://api.example/a", "https://api.example/a"),
            ("https://api.example:8443/a", "https://api.example/a"),
            ("https://other.example/a", "https://api.example/a"),
            ("https://api.example/a/", "https://api.example/a"),
            ("ftp://api.example/a", "ftp://api.example/a"),
            ("https://user@api.example/a", "https://api.example/a"),
            ("not a url", "not a url"),
        ];
        for (a, b) in different {
            assert!(!same_url(a, b), "{a} {b}");
        }
    }

    #[test]
    fn ath_is_the_base64url_sha256_of_the_token() {
        // RFC 9449 §7.1's example token and its ath
        assert_eq!(
            access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    /// The test client's key: the P-256 key of tests/fixtures (its public half is `ec-1` there).
    fn client_jwk() -> Map<String, Value> {
        let jwks: Value =
            serde_json::from_slice(include_bytes!("../../tests/fixtures/jwks.json")).unwrap();
        let ec = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == "ec-1")
            .unwrap();
        let mut m = Map::new();
        for k in ["kty", "crv", "x", "y"] {
            m.insert(k.into(), ec[k].clone());
        }
        m
    }

    /// A JWS over any header and claims, signed ES256 by the test client's key.
    pub(crate) fn sign(header: &Value, claims: &Value) -> String {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::DecodePrivateKey;
        let der = base64::engine::general_purpose::STANDARD
            .decode(include_str!("../../tests/fixtures/ec-private.pk8.b64").trim())
            .unwrap();
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(&der).unwrap();
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig.to_bytes()))
    }

    const NOW: i64 = 1_800_000_000;
    const URL: &str = "https://bank.example/account/1";

    /// The thumbprint of the test client's key (a token's `cnf.jkt`).
    pub(crate) fn client_thumbprint() -> String {
        thumbprint(&client_jwk()).unwrap()
    }

    /// A good proof by the test client for a request and a token.
    pub(crate) fn proof_for(token: &str, method: &str, url: &str, jti: &str, iat: i64) -> String {
        sign(
            &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": client_jwk()}),
            &json!({"jti": jti, "htm": method, "htu": url, "iat": iat,
                    "ath": access_token_hash(token)}),
        )
    }
    const TOKEN: &str = "eyJ.access.token";
    static TOKEN_SHA256: std::sync::LazyLock<[u8; 32]> =
        std::sync::LazyLock::new(|| Sha256::digest(TOKEN.as_bytes()).into());

    fn header() -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": client_jwk()})
    }

    fn claims() -> Value {
        json!({"jti": "j-1", "htm": "GET", "htu": URL, "iat": NOW,
               "ath": access_token_hash(TOKEN)})
    }

    fn expected(jkt: &str) -> ProofCheck<'_> {
        ProofCheck {
            method: "GET",
            htu: URL,
            access_token_sha256: &TOKEN_SHA256,
            jkt: Some(jkt),
            now: NOW,
            lifetime_s: DEFAULT_LIFETIME_S,
            skew_s: DEFAULT_SKEW_S,
        }
    }

    fn verdict(header: &Value, claims: &Value) -> Result<Proof, ProofError> {
        let jkt = thumbprint(&client_jwk()).unwrap();
        let proof = sign(header, claims);
        check(&[proof.as_bytes()], &expected(&jkt), None)
    }

    #[test]
    fn a_good_proof_passes_and_names_its_jti_and_url() {
        let p = verdict(&header(), &claims()).unwrap();
        assert_eq!(p.usable_until, NOW + 25);
        let mut other = claims();
        other["jti"] = json!("j-2");
        assert_ne!(verdict(&header(), &other).unwrap().replay_key, p.replay_key);
        // the edges of Keycloak's window: iat from now - 25 s to now + 15 s
        for iat in [NOW - 25, NOW + 15] {
            let mut c = claims();
            c["iat"] = json!(iat);
            assert!(verdict(&header(), &c).is_ok(), "{iat}");
        }
    }

    #[test]
    fn every_broken_proof_is_refused_for_its_own_reason() {
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            verdict(&header(), &c)
        };
        let without = |k: &str| {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(k);
            verdict(&header(), &c)
        };
        let headed = |k: &str, v: Value| {
            let mut h = header();
            h[k] = v;
            verdict(&h, &claims())
        };
        assert_eq!(with("htm", json!("POST")), Err(ProofError::WrongMethod));
        assert_eq!(with("htm", json!("get")), Err(ProofError::WrongMethod));
        assert_eq!(
            with("htu", json!("https://bank.example/account/2")),
            Err(ProofError::WrongUrl)
        );
        assert_eq!(with("iat", json!(NOW - 26)), Err(ProofError::NotActive));
        assert_eq!(with("iat", json!(NOW + 16)), Err(ProofError::NotActive));
        assert_eq!(
            with("ath", json!(access_token_hash("another"))),
            Err(ProofError::WrongAccessTokenHash)
        );
        assert_eq!(without("ath"), Err(ProofError::NoAccessTokenHash));
        for k in ["jti", "htm", "htu", "iat"] {
            assert_eq!(without(k), Err(ProofError::MissingClaims), "{k}");
        }
        assert_eq!(headed("typ", json!("JWT")), Err(ProofError::WrongType));
        assert_eq!(headed("alg", json!("none")), Err(ProofError::Algorithm));
        assert_eq!(headed("alg", json!("HS256")), Err(ProofError::Algorithm));
        // an alg that does not fit the key: the signature is not checked with another one
        assert_eq!(headed("alg", json!("RS256")), Err(ProofError::Algorithm));
        let mut private = client_jwk();
        private.insert("d".into(), json!("c2VjcmV0"));
        assert_eq!(
            headed("jwk", Value::Object(private)),
            Err(ProofError::PrivateKey)
        );
        assert_eq!(headed("jwk", json!("a string")), Err(ProofError::NoKey));
        let mut h = header();
        h.as_object_mut().unwrap().remove("jwk");
        assert_eq!(verdict(&h, &claims()), Err(ProofError::NoKey));
    }

    #[test]
    fn a_proof_is_bound_to_its_key_and_its_signature() {
        let jkt = thumbprint(&client_jwk()).unwrap();
        let good = sign(&header(), &claims());
        // another key's thumbprint in the token
        assert_eq!(
            check(&[good.as_bytes()], &expected("another-thumbprint"), None),
            Err(ProofError::WrongKey)
        );
        // the claims changed after signing
        let (input, sig) = good.rsplit_once('.').unwrap();
        let (h, _) = input.split_once('.').unwrap();
        let mut c = claims();
        c["jti"] = json!("j-9");
        let tampered = format!("{h}.{}.{sig}", b64url(c.to_string().as_bytes()));
        assert_eq!(
            check(&[tampered.as_bytes()], &expected(&jkt), None),
            Err(ProofError::BadSignature)
        );
        // another public key in the header than the one that signed it
        let mut other = client_jwk();
        other.insert("x".into(), json!(b64url(&[7u8; 32])));
        let mut h = header();
        h["jwk"] = Value::Object(other);
        let forged = sign(&h, &claims());
        assert!(check(&[forged.as_bytes()], &expected(&jkt), None).is_err());
        assert_eq!(check(&[], &expected(&jkt), None), Err(ProofError::Missing));
        assert_eq!(
            check(&[good.as_bytes(), good.as_bytes()], &expected(&jkt), None),
            Err(ProofError::Multiple)
        );
        assert_eq!(
            check(&[b"a.b"], &expected(&jkt), None),
            Err(ProofError::Malformed)
        );
        let big = "a".repeat(MAX_PROOF_BYTES + 1);
        assert_eq!(
            check(&[big.as_bytes()], &expected(&jkt), None),
            Err(ProofError::TooLarge)
        );
    }

    #[test]
    fn a_remembered_header_still_has_every_proof_checked() {
        let jkt = thumbprint(&client_jwk()).unwrap();
        let mut keys = HeaderKeys::default();
        let mut seen = |proof: &str, jkt: &str| {
            super::check(&[proof.as_bytes()], &expected(jkt), None, &mut keys)
        };
        let good = sign(&header(), &claims());
        assert!(seen(&good, &jkt).is_ok());
        // the same header again, remembered: a tampered proof, another token's key, a stale
        // or wrong claim are refused as without the memo
        let (input, sig) = good.rsplit_once('.').unwrap();
        let (h, _) = input.split_once('.').unwrap();
        let mut c = claims();
        c["jti"] = json!("j-9");
        let tampered = format!("{h}.{}.{sig}", b64url(c.to_string().as_bytes()));
        assert_eq!(seen(&tampered, &jkt), Err(ProofError::BadSignature));
        assert_eq!(seen(&good, "another-thumbprint"), Err(ProofError::WrongKey));
        c = claims();
        c["iat"] = json!(NOW - 26);
        assert_eq!(seen(&sign(&header(), &c), &jkt), Err(ProofError::NotActive));
        c = claims();
        c["htm"] = json!("POST");
        assert_eq!(
            seen(&sign(&header(), &c), &jkt),
            Err(ProofError::WrongMethod)
        );
        assert!(seen(&good, &jkt).is_ok());
        // a refused header is not remembered; the table keeps the most recent HEADER_KEYS
        let mut bad = header();
        bad["typ"] = json!("JWT");
        assert_eq!(
            seen(&sign(&bad, &claims()), &jkt),
            Err(ProofError::WrongType)
        );
        assert_eq!(keys.len(), 1);
        for i in 0..HEADER_KEYS + 5 {
            let mut h = header();
            h["kid"] = json!(format!("k{i}"));
            assert!(super::check(
                &[sign(&h, &claims()).as_bytes()],
                &expected(&jkt),
                None,
                &mut keys
            )
            .is_ok());
        }
        assert_eq!(keys.len(), HEADER_KEYS);
    }
}
