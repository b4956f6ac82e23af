//! Bearer extraction, JWT verification against the realm's JWKS, and claim access.
//!
//! Keycloak's Java enforcer parses tokens without verifying them and trusts its container to have
//! done so; a proxy filter is the container, so every token is verified here: signature by a key of
//! the realm (RS/PS/ES families, never `none` or HMAC), `exp`/`nbf` with a small leeway, `iss`, and
//! `aud` when configured. Time is passed in, so the checks are deterministic and testable.

use crate::keycloak::jose::{self, Alg, HeaderAlg, Jwk, KeyParams};
use crate::keycloak::signature::{self, HostCheck};
use crate::wire::permission::permissions_of;
use crate::wire::permission::Permission;
#[cfg(feature = "rust-crypto")]
use jsonwebtoken::DecodingKey;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Why an `Authorization` header is not one usable bearer credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    Duplicate,
    NotBearer,
    BadSyntax,
    TooLong,
}

impl BearerError {
    pub fn describe(self) -> &'static str {
        match self {
            BearerError::Duplicate => "more than one Authorization header",
            BearerError::NotBearer => "Authorization is not a Bearer credential",
            BearerError::BadSyntax => "malformed Bearer credential",
            BearerError::TooLong => "token too long",
        }
    }
}

/// Extracts the token from every `Authorization` value of the request (read as bytes).
/// No header: `Ok(None)`. Exactly one `Bearer <b64token>`: the token. Anything else is malformed.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn bearer<'a>(values: &[&'a [u8]], max_len: usize) -> Result<Option<&'a str>, BearerError> {
    let value = match values {
        [] => return Ok(None),
        [one] => *one,
        _ => return Err(BearerError::Duplicate),
    };
    // The common case in one pass over the bytes (it runs on every request, cache hits too):
    // `Bearer` in any case, one space, a well-formed b64token. Anything else takes the full
    // reading below, which classifies the error.
    match plain(value, b"bearer", max_len) {
        Some(token) => Ok(Some(token)),
        None => read_bearer(value, max_len),
    }
}

/// How a token was presented: `Bearer` (RFC 6750) or `DPoP` (RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    DPoP,
}

/// As [`bearer`], and when `dpop` also `DPoP <token>` (the scheme in any case): the token and
/// the scheme it came with.
pub fn credential<'a>(
    values: &[&'a [u8]],
    max_len: usize,
    dpop: bool,
) -> Result<Option<(Scheme, &'a str)>, BearerError> {
    if let ([one], true) = (values, dpop) {
        let word = one
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        if word.eq_ignore_ascii_case(b"dpop") {
            // the one-pass reading first, as for `Bearer`
            if let Some(token) = plain(one, b"dpop", max_len) {
                return Ok(Some((Scheme::DPoP, token)));
            }
            return read_credential(one, max_len, "dpop").map(|t| t.map(|t| (Scheme::DPoP, t)));
        }
    }
    bearer(values, max_len).map(|t| t.map(|t| (Scheme::Bearer, t)))
}

/// Any one `Authorization` value, read in full (RFC 6750 section 2.1).
fn read_bearer(value: &[u8], max_len: usize) -> Result<Option<&str>, BearerError> {
    read_credential(value, max_len, "bearer")
}

/// One `Authorization` value of `scheme` (lower case) with a b64token.
fn read_credential<'a>(
    value: &'a [u8],
    max_len: usize,
    scheme_name: &str,
) -> Result<Option<&'a str>, BearerError> {
    let text = std::str::from_utf8(value).map_err(|_| BearerError::BadSyntax)?;
    let mut parts = text.split_ascii_whitespace();
    let (Some(scheme), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
        // `Bearer` with no token, or with more than one word, is a broken bearer credential;
        // anything else (`Basic`, a bare word) offered none.
        let scheme = text.split_ascii_whitespace().next().unwrap_or_default();
        return Err(if scheme.eq_ignore_ascii_case(scheme_name) {
            BearerError::BadSyntax
        } else if text.trim().is_empty() || !text.contains(' ') {
            BearerError::NotBearer
        } else {
            BearerError::BadSyntax
        });
    };
    if !scheme.eq_ignore_ascii_case(scheme_name) {
        return Err(BearerError::NotBearer);
    }
    if token.len() > max_len {
        return Err(BearerError::TooLong);
    }
    // RFC 6750 b64token
    let body = token.trim_end_matches('=');
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    {
        return Err(BearerError::BadSyntax);
    }
    Ok(Some(token))
}

/// RFC 6750 b64token characters, `=` aside (it may only end the token).
const B64TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        i += 1;
    }
    t
};

/// `<scheme> <b64token>` exactly (`scheme` lower case, matched in any case; one space): the
/// token; else `None`.
#[cfg_attr(kcpep_size, optimize(speed))]
fn plain<'a>(value: &'a [u8], scheme: &[u8], max_len: usize) -> Option<&'a str> {
    let (name, token) = value.split_at_checked(scheme.len() + 1)?;
    if !name[..scheme.len()].eq_ignore_ascii_case(scheme)
        || name[scheme.len()] != b' '
        || token.len() > max_len
    {
        return None;
    }
    let body_len = token.iter().rposition(|&b| b != b'=')? + 1;
    if !token[..body_len].iter().all(|&b| B64TOKEN[usize::from(b)]) {
        return None;
    }
    // only ASCII by now
    std::str::from_utf8(token).ok()
}

/// SHA-256 of the raw token: the identity of a verified token in caches (never the token itself).
pub fn digest(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

/// One verification key of the realm.
struct Key {
    kid: Option<String>,
    alg: Alg,
    /// For the in-wasm check (the `rust-crypto` build).
    #[cfg(feature = "rust-crypto")]
    key: DecodingKey,
    /// DER SubjectPublicKeyInfo of RSA and EC keys, for the host's `verify_signature`.
    spki: Option<Vec<u8>>,
    /// The EC key's curve (the JOSE signature's `r` and `s` size).
    curve: Option<signature::Curve>,
}

/// The realm's signing keys, parsed once per JWKS document.
#[derive(Default)]
pub struct Jwks {
    keys: Vec<Key>,
    /// Signing keys this build cannot check (RSA-PSS, EdDSA, other curves without the
    /// `rust-crypto` feature), named for the log.
    pub unchecked: Vec<String>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| (&k.kid, k.alg)).collect();
        f.debug_struct("Jwks").field("keys", &kids).finish()
    }
}

/// Why a key set from Keycloak is not used (the last good one stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    NotJwks(String),
    /// No signing key this build can check (those it cannot, named).
    NoSigningKey(Vec<String>),
}

/// The way out for realm keys the host cannot check, said wherever they are reported.
pub const UNCHECKED_KEYS_HINT: &str = "the host's verify_signature checks RS256/384/512 and ES256/384 only; build keycloak_pep_rust_crypto.wasm (make wasm-rust-crypto) to check RSA-PSS and EdDSA keys in wasm, or sign the realm's tokens with an RSA or EC key";

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::NotJwks(e) => write!(f, "not a JWKS: {e}"),
            JwksError::NoSigningKey(unchecked) if unchecked.is_empty() => {
                write!(f, "JWKS has no usable signing key")
            }
            JwksError::NoSigningKey(unchecked) => write!(
                f,
                "JWKS has no signing key this build can check ({}): {UNCHECKED_KEYS_HINT}",
                unchecked.join(", ")
            ),
        }
    }
}

impl Jwks {
    /// Parses a JWKS document; keys for encryption, unknown algorithms and HMAC are skipped.
    /// An error when no usable signing key remains (a 503 page is not a JWKS).
    pub fn parse(body: &[u8]) -> Result<Jwks, JwksError> {
        let doc: Value =
            serde_json::from_slice(body).map_err(|e| JwksError::NotJwks(e.to_string()))?;
        let Some(set) = doc.get("keys").and_then(Value::as_array) else {
            return Err(JwksError::NotJwks("no \"keys\" array".into()));
        };
        let mut keys = Vec::new();
        let mut unchecked = Vec::new();
        // A member that is not an RSA, EC or OKP public key (an `oct` secret, a key of a type
        // RFC 7518 does not define) is no signing key of a realm: skipped like encryption keys.
        for jwk in set
            .iter()
            .filter_map(Value::as_object)
            .filter_map(Jwk::from_object)
        {
            match usable_key(&jwk) {
                Usable::Yes(k) => keys.push(k),
                Usable::NotHere(what) => unchecked.push(what),
                Usable::No => {}
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoSigningKey(unchecked));
        }
        Ok(Jwks { keys, unchecked })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

enum Usable {
    Yes(Key),
    /// A signing key of an algorithm this build does not check (the key's description).
    #[cfg_attr(feature = "rust-crypto", allow(dead_code))]
    NotHere(String),
    /// Not a signing key (encryption, HMAC, unknown algorithm): skipped silently.
    No,
}

fn usable_key(jwk: &Jwk) -> Usable {
    if jwk.key_use.as_deref() == Some("enc") {
        return Usable::No;
    }
    let alg = match jwk.alg.as_deref() {
        None => jwk.family_default(),
        Some(name) => match Alg::from_name(name) {
            Some(alg) => alg,
            // encryption (RSA-OAEP, ECDH-ES), HMAC, unknown
            None => return Usable::No,
        },
    };
    if !jwk.fits(alg) {
        return Usable::No;
    }
    let b64 = |s: &str| jose::unb64url(s.trim_end_matches('='));
    let (spki, curve) = match &jwk.params {
        KeyParams::Rsa { n, e } => match (b64(n), b64(e)) {
            (Some(n), Some(e)) => (Some(signature::rsa_spki(&n, &e)), None),
            _ => (None, None),
        },
        KeyParams::Ec { x, y, .. } => {
            let curve = match alg {
                Alg::ES256 => Some(signature::Curve::P256),
                Alg::ES384 => Some(signature::Curve::P384),
                _ => None,
            };
            let spki = match (curve, b64(x), b64(y)) {
                (Some(c), Some(x), Some(y)) => signature::ec_spki(c, &x, &y),
                _ => None,
            };
            (spki, curve)
        }
        KeyParams::Okp { .. } => (None, None),
    };
    let kid = jwk.kid.clone();
    // The host's verify_signature checks PKCS#1 v1.5 and ECDSA: BoringSSL's EVP_DigestVerify
    // sets no PSS padding and takes no digest for EdDSA.
    #[cfg(not(feature = "rust-crypto"))]
    let host_can = hash_of(alg).is_some() && spki.is_some();
    #[cfg(feature = "rust-crypto")]
    let Some(key) = decoding_key(jwk) else {
        return Usable::No;
    };
    #[cfg(not(feature = "rust-crypto"))]
    if !host_can {
        return Usable::NotHere(format!(
            "{} ({alg:?})",
            kid.as_deref().unwrap_or("a key without kid")
        ));
    }
    Usable::Yes(Key {
        kid,
        alg,
        #[cfg(feature = "rust-crypto")]
        key,
        spki,
        curve,
    })
}

/// The key for jsonwebtoken's in-wasm check (the `rust-crypto` build).
#[cfg(feature = "rust-crypto")]
fn decoding_key(jwk: &Jwk) -> Option<DecodingKey> {
    match &jwk.params {
        KeyParams::Rsa { n, e } => DecodingKey::from_rsa_components(n, e),
        KeyParams::Ec { x, y, .. } => DecodingKey::from_ec_components(x, y),
        KeyParams::Okp { x, .. } => DecodingKey::from_ed_components(x),
    }
    .ok()
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub leeway_seconds: u64,
    /// Whether a DPoP-bound access token (`typ` DPoP) is an access token here: only where the
    /// binding is checked (`sender-constraint` other than `off`).
    pub dpop: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    UnsupportedAlgorithm,
    UnknownKey(Option<String>),
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    WrongType,
    /// Its session ended (back-channel logout) after the token was issued.
    LoggedOut,
    /// Nothing here can check the signature (no host function in a build without `rust-crypto`).
    NoVerifier,
}

impl TokenError {
    /// The `error_description` of the 401 (no token material in it).
    pub fn describe(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed token",
            TokenError::UnsupportedAlgorithm => "unsupported signature algorithm",
            TokenError::UnknownKey(_) => "unknown signing key",
            TokenError::BadSignature => "invalid signature",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::WrongIssuer => "wrong issuer",
            TokenError::WrongAudience => "wrong audience",
            TokenError::WrongType => "not an access token",
            TokenError::LoggedOut => "session logged out",
            TokenError::NoVerifier => "no signature check available",
        }
    }
}

/// A verified token: its claims, expiry and digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub claims: Value,
    pub exp: i64,
    pub digest: [u8; 32],
}

impl Token {
    /// `authorization.permissions` when the token is an RPT.
    pub fn permissions(&self) -> Option<Vec<Permission>> {
        permissions_of(&self.claims)
    }

    /// Whether `aud` (a string or a list) names this client: an RPT is issued for the resource
    /// server it was asked for.
    pub fn is_for_audience(&self, client_id: &str) -> bool {
        match self.claims.get("aud") {
            Some(Value::String(a)) => a == client_id,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(client_id)),
            _ => false,
        }
    }

    /// A claim by JSON pointer (`/realm_access/roles`). For tools and tests (tests/contract.rs
    /// reads real tokens with it); decisions read the typed fields.
    pub fn claim(&self, pointer: &str) -> Option<&Value> {
        self.claims.pointer(pointer)
    }

    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }

    /// The claims decisions read (`aud`, `sub`, `authorization`, `cnf`) and nothing else: a Keycloak
    /// access token's claims take about 5 KB parsed, the rest of them is never read by an
    /// enforcer without a claim information point, and every enforcer of every VM remembers up
    /// to [`crate::enforce::enforcer::VERIFIED_TOKENS`] tokens.
    pub fn keep_decision_claims(mut self) -> Token {
        if let Value::Object(map) = &mut self.claims {
            // A new map, not `retain`: that would keep the whole token's capacity.
            let kept: serde_json::Map<String, Value> = std::mem::take(map)
                .into_iter()
                .filter(|(k, _)| DECISION_CLAIMS.contains(&k.as_str()))
                .collect();
            *map = kept;
        }
        self
    }
}

/// What [`Token::keep_decision_claims`] keeps: `cnf` too, the binding checked on every request
/// (a remembered token without it would pass as unbound).
/// `sid` and `iat` for back-channel logout (a session ended before the token was issued).
const DECISION_CLAIMS: [&str; 6] = ["aud", "sub", "authorization", "cnf", "sid", "iat"];

/// The key id of a token, read without verification (to decide whether the JWKS must be refetched).
pub fn key_id(raw: &str) -> Option<String> {
    jose::header(raw)?.kid
}

/// A signature checker offered by the host (Envoy's `verify_signature`); `None`: could not check.
pub type HostVerifier<'a> = &'a dyn Fn(&HostCheck) -> Option<bool>;

/// Verifies signature and claims. `now` is seconds since the epoch.
pub fn verify(
    raw: &str,
    jwks: &Jwks,
    expect: &Expectations,
    now: i64,
) -> Result<Token, TokenError> {
    verify_with(raw, jwks, expect, now, None)
}

/// As [`verify`], letting the host check RSA PKCS#1 signatures when it can.
pub fn verify_with(
    raw: &str,
    jwks: &Jwks,
    expect: &Expectations,
    now: i64,
    host: Option<HostVerifier>,
) -> Result<Token, TokenError> {
    let claims = signed_claims(raw, jwks, host)?;
    check_claims(claims, expect, now, raw)
}

/// The claims of a JWS signed by one of the realm's keys (any JWT the realm issues: access
/// tokens, logout tokens), nothing else checked.
pub fn signed_claims(
    raw: &str,
    jwks: &Jwks,
    host: Option<HostVerifier>,
) -> Result<Value, TokenError> {
    let header = jose::header(raw).ok_or(TokenError::Malformed)?;
    let alg = match header.alg {
        HeaderAlg::Asymmetric(Alg::EdDSA) | HeaderAlg::Hmac => {
            return Err(TokenError::UnsupportedAlgorithm)
        }
        HeaderAlg::Unknown => return Err(TokenError::Malformed),
        HeaderAlg::Asymmetric(alg) => alg,
    };
    let candidates: Vec<&Key> = jwks
        .keys
        .iter()
        .filter(|k| match &header.kid {
            Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
            None => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey(header.kid));
    }
    let mut last = TokenError::UnknownKey(header.kid.clone());
    let mut claims = None;
    for k in candidates {
        if k.alg != alg {
            last = TokenError::UnsupportedAlgorithm;
            continue;
        }
        match signed_by(raw, k, host) {
            Ok(c) => {
                claims = Some(c);
                break;
            }
            Err(e) => last = e,
        }
    }
    claims.ok_or(last)
}

/// The claims of a JWS when `k` signed it: the host checks it where it can, else the module
/// (the `rust-crypto` build).
#[cfg_attr(kcpep_size, optimize(speed))]
fn signed_by(raw: &str, k: &Key, host: Option<HostVerifier>) -> Result<Value, TokenError> {
    if let (Some(host), Some(spki), Some(hash)) = (host, &k.spki, hash_of(k.alg)) {
        // `None`: the host could not tell
        if let Some(result) = host_check(raw, host, spki, hash, k.curve) {
            return result;
        }
    }
    in_wasm_check(raw, k, k.alg)
}

/// The one public key a JWS must be signed by (a DPoP proof carries the key that signed it),
/// made ready for the check once: [`verify_signed_by`] checks each JWS with it.
pub struct SigningKey(Key);

/// The key of `jwk` for `alg`: only asymmetric algorithms this build checks, and `alg` must fit
/// the key.
pub fn signing_key(jwk: &Jwk, alg: Alg) -> Result<SigningKey, TokenError> {
    if !jwk.fits(alg) {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    let mut jwk = jwk.clone();
    jwk.alg = Some(alg.name().into());
    jwk.key_use = None;
    match usable_key(&jwk) {
        Usable::Yes(k) if k.alg == alg => Ok(SigningKey(k)),
        _ => Err(TokenError::UnsupportedAlgorithm),
    }
}

/// The claims of the JWS `raw` when `key` signed it.
pub fn verify_signed_by(
    raw: &str,
    key: &SigningKey,
    host: Option<HostVerifier>,
) -> Result<Value, TokenError> {
    signed_by(raw, &key.0, host)
}

/// The claims of a JWS signed with `alg` by the one public key `jwk`.
pub fn verify_signed_by_jwk(
    raw: &str,
    jwk: &Jwk,
    alg: Alg,
    host: Option<HostVerifier>,
) -> Result<Value, TokenError> {
    verify_signed_by(raw, &signing_key(jwk, alg)?, host)
}

/// The digest the host's `verify_signature` uses for `alg`; None for what it cannot check.
fn hash_of(alg: Alg) -> Option<&'static str> {
    match alg {
        Alg::RS256 | Alg::ES256 => Some("sha256"),
        Alg::RS384 | Alg::ES384 => Some("sha384"),
        Alg::RS512 => Some("sha512"),
        _ => None,
    }
}

/// The signature checked inside the module (the `rust-crypto` build): jsonwebtoken's RustCrypto
/// verifiers.
#[cfg(feature = "rust-crypto")]
fn in_wasm_check(raw: &str, k: &Key, alg: Alg) -> Result<Value, TokenError> {
    use jsonwebtoken::Algorithm as J;
    let (h, p, sig) = jose::parts(raw).ok_or(TokenError::Malformed)?;
    let signing_input = &raw[..h.len() + 1 + p.len()];
    let alg = match alg {
        Alg::RS256 => J::RS256,
        Alg::RS384 => J::RS384,
        Alg::RS512 => J::RS512,
        Alg::PS256 => J::PS256,
        Alg::PS384 => J::PS384,
        Alg::PS512 => J::PS512,
        Alg::ES256 => J::ES256,
        Alg::ES384 => J::ES384,
        Alg::EdDSA => J::EdDSA,
    };
    match jsonwebtoken::crypto::verify(sig, signing_input.as_bytes(), &k.key, alg) {
        Ok(true) => payload(p),
        Ok(false) => Err(TokenError::BadSignature),
        // the signature's base64 or the key's encoding
        Err(_) => Err(TokenError::Malformed),
    }
}

/// Without `rust-crypto` only the host checks signatures: a host that could not answer leaves
/// the token unverified (503, never an allow).
#[cfg(not(feature = "rust-crypto"))]
fn in_wasm_check(_: &str, _: &Key, _: Alg) -> Result<Value, TokenError> {
    Err(TokenError::NoVerifier)
}

/// A JWS payload's JSON (the claims).
#[cfg_attr(kcpep_size, optimize(speed))]
fn payload(part: &str) -> Result<Value, TokenError> {
    jose::unb64url(part)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)
}

/// Whether tokens can be verified at all: with the `rust-crypto` feature always, else only
/// through the host's `verify_signature`.
pub fn can_verify(host_verify: bool) -> bool {
    host_verify || cfg!(feature = "rust-crypto")
}

/// `Some(Ok(claims))` when the host verified the signature, `Some(Err)` when it refused it or the
/// token is malformed, `None` when the host could not answer.
#[cfg_attr(kcpep_size, optimize(speed))]
fn host_check(
    raw: &str,
    host: HostVerifier,
    spki: &[u8],
    hash: &'static str,
    curve: Option<signature::Curve>,
) -> Option<Result<Value, TokenError>> {
    let Some((h, payload_b64, sig_b64)) = jose::parts(raw) else {
        return Some(Err(TokenError::Malformed));
    };
    let signing_input = &raw[..h.len() + 1 + payload_b64.len()];
    let Some(sig) = jose::unb64url(sig_b64) else {
        return Some(Err(TokenError::Malformed));
    };
    let sig = match curve {
        None => sig,
        Some(c) => match signature::jose_to_der(c, &sig) {
            Some(der) => der,
            None => return Some(Err(TokenError::BadSignature)),
        },
    };
    let check = HostCheck {
        hash,
        public_key: spki,
        signature: &sig,
        text: signing_input.as_bytes(),
    };
    match host(&check)? {
        false => Some(Err(TokenError::BadSignature)),
        true => Some(payload(payload_b64)),
    }
}

/// Whether `aud` (a string or a list) names one of `audiences`.
pub fn names_audience(claims: &Value, audiences: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    }
}

/// A claim that is a non-empty string.
pub fn text_claim<'v>(claims: &'v Value, name: &str) -> Option<&'v str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn check_claims(
    claims: Value,
    expect: &Expectations,
    now: i64,
    raw: &str,
) -> Result<Token, TokenError> {
    let leeway = i64::try_from(expect.leeway_seconds).unwrap_or(i64::MAX);
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(TokenError::Malformed)?;
    if now > exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64) {
        if now.saturating_add(leeway) < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err(TokenError::WrongIssuer);
    }
    if let Some(typ) = claims.get("typ").and_then(Value::as_str) {
        // Keycloak marks ID and refresh tokens; only access tokens (and RPTs) authorize requests.
        let access = typ.eq_ignore_ascii_case("bearer") || (expect.dpop && typ == "DPoP");
        if !access {
            return Err(TokenError::WrongType);
        }
    }
    if !expect.audiences.is_empty() && !names_audience(&claims, expect.audiences) {
        return Err(TokenError::WrongAudience);
    }
    Ok(Token {
        claims,
        exp,
        digest: digest(raw),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    pub const ISSUER: &str = "http://kc/realms/bank";
    pub const NOW: i64 = 1_800_000_000;

    fn fixture(name: &str) -> Vec<u8> {
        let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(p).unwrap()
    }

    pub fn jwks() -> Jwks {
        Jwks::parse(&fixture("jwks.json")).unwrap()
    }

    /// Signs claims with the test-only RSA key of tests/fixtures (kid `rsa-1`).
    pub fn sign_rs256(claims: &Value) -> String {
        let der = base64::engine::general_purpose::STANDARD
            .decode(fixture("rsa-private.der.b64"))
            .unwrap();
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_der(&der)).unwrap()
    }

    fn sign_es256(claims: &Value) -> String {
        let der = base64::engine::general_purpose::STANDARD
            .decode(fixture("ec-private.pk8.b64"))
            .unwrap();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("ec-1".into());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(&der)).unwrap()
    }

    pub fn claims() -> Value {
        json!({"iss": ISSUER, "exp": NOW + 300, "iat": NOW, "sub": "u1", "typ": "Bearer",
               "aud": "account", "realm_access": {"roles": ["user", "account_owner"]}})
    }

    fn expect() -> Expectations<'static> {
        Expectations {
            issuer: ISSUER,
            audiences: &[],
            leeway_seconds: 30,
            dpop: false,
        }
    }

    proptest::proptest! {
        /// The one-pass reading of the common case is the full reading's answer, wherever it
        /// answers: headers near `Bearer <b64token>` (every byte that matters drawn often).
        #[test]
        fn the_fast_bearer_reading_agrees_with_the_full_one(
            scheme in "(Bearer|bearer|BEARER|Bearer_|Basic|Bear|)( |  |\t|)",
            token in "[A-Za-z0-9._~+/=, \t-]{0,24}",
            max in 0usize..30,
        ) {
            let value = format!("{scheme}{token}");
            if let Some(fast) = plain(value.as_bytes(), b"bearer", max) {
                proptest::prop_assert_eq!(read_bearer(value.as_bytes(), max), Ok(Some(fast)));
            }
            proptest::prop_assert_eq!(bearer(&[value.as_bytes()], max), read_bearer(value.as_bytes(), max));
        }

        /// The same for the `DPoP` scheme, through [`credential`] (sender constraints on).
        #[test]
        fn the_fast_dpop_reading_agrees_with_the_full_one(
            scheme in "(DPoP|dpop|DPOP|DPoP_|Basic|DPo|)( |  |\t|)",
            token in "[A-Za-z0-9._~+/=, \t-]{0,24}",
            max in 0usize..30,
        ) {
            let value = format!("{scheme}{token}");
            if let Some(fast) = plain(value.as_bytes(), b"dpop", max) {
                proptest::prop_assert_eq!(read_credential(value.as_bytes(), max, "dpop"), Ok(Some(fast)));
            }
            let full = match value.split(|c: char| c.is_ascii_whitespace()).next() {
                Some(w) if w.eq_ignore_ascii_case("dpop") => {
                    read_credential(value.as_bytes(), max, "dpop").map(|t| t.map(|t| (Scheme::DPoP, t)))
                }
                _ => bearer(&[value.as_bytes()], max).map(|t| t.map(|t| (Scheme::Bearer, t))),
            };
            proptest::prop_assert_eq!(credential(&[value.as_bytes()], max, true), full);
        }
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer(&[], 100), Ok(None));
        assert_eq!(
            bearer(&[b"Bearer abc.def-_~+/=="], 100),
            Ok(Some("abc.def-_~+/=="))
        );
        assert_eq!(bearer(&[b"bearer  abc"], 100), Ok(Some("abc")));
        assert_eq!(
            bearer(&[b"Bearer a", b"Bearer b"], 100),
            Err(BearerError::Duplicate)
        );
        assert_eq!(
            bearer(&[b"Basic dXNlcjpwdw=="], 100),
            Err(BearerError::NotBearer)
        );
        assert_eq!(bearer(&[b"Bearer"], 100), Err(BearerError::BadSyntax));
        assert_eq!(bearer(&[b"Bearer a b"], 100), Err(BearerError::BadSyntax));
        assert_eq!(bearer(&[b"Bearer a,b"], 100), Err(BearerError::BadSyntax));
        assert_eq!(
            bearer(&[b"Bearer \xff\xfe"], 100),
            Err(BearerError::BadSyntax)
        );
        assert_eq!(bearer(&[b"Bearer ===="], 100), Err(BearerError::BadSyntax));
        assert_eq!(bearer(&[b"Bearer abcdef"], 3), Err(BearerError::TooLong));
    }

    #[test]
    fn a_remembered_token_keeps_only_what_decisions_read() {
        let mut c = claims();
        c["aud"] = json!(["bank-api", "account"]);
        c["authorization"] = json!({"permissions": [{"rsname": "r", "scopes": ["s"]}]});
        let full = verify(&sign_rs256(&c), &jwks(), &expect(), NOW).unwrap();
        let kept = full.clone().keep_decision_claims();
        assert_eq!(kept.subject(), Some("u1"));
        assert!(kept.is_for_audience("bank-api"));
        assert_eq!(kept.permissions(), full.permissions());
        assert!(kept.permissions().is_some_and(|p| !p.is_empty()));
        assert_eq!((kept.exp, kept.digest), (full.exp, full.digest));
        assert_eq!(kept.claim("/realm_access/roles/1"), None);
        // aud, sub, authorization and iat of these (no cnf, no sid)
        assert_eq!(kept.claims.as_object().map(|m| m.len()), Some(4));
        assert_eq!(kept.claim("/iat"), full.claim("/iat"));
    }

    #[test]
    fn jwks_skips_encryption_keys_and_rejects_garbage() {
        assert_eq!(jwks().len(), 2);
        assert!(jwks().has_kid("rsa-1") && !jwks().has_kid("enc-1"));
        assert!(Jwks::parse(b"upstream connect error").is_err());
        assert!(Jwks::parse(br#"{"keys":[]}"#).is_err());
    }

    #[test]
    fn valid_tokens_verify() {
        let t = verify(&sign_rs256(&claims()), &jwks(), &expect(), NOW).unwrap();
        assert_eq!(t.subject(), Some("u1"));
        assert_eq!(
            t.claim("/realm_access/roles/1"),
            Some(&json!("account_owner"))
        );
        assert_eq!(t.exp, NOW + 300);
        let t = verify(&sign_es256(&claims()), &jwks(), &expect(), NOW).unwrap();
        assert_eq!(t.digest, digest(&sign_es256(&claims())).map(|b| b));
    }

    #[test]
    fn one_changed_byte_breaks_the_signature() {
        let tok = sign_rs256(&claims());
        let mut bytes = tok.into_bytes();
        let last = bytes.len() - 5;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        assert_eq!(
            verify(&forged, &jwks(), &expect(), NOW),
            Err(TokenError::BadSignature)
        );
        // a changed payload with the old signature
        let tok = sign_rs256(&claims());
        let parts: Vec<&str> = tok.split('.').collect();
        let mut c = claims();
        c["realm_access"]["roles"] = json!(["admin"]);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string());
        let spliced = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert_eq!(
            verify(&spliced, &jwks(), &expect(), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn claims_are_checked() {
        let mut c = claims();
        c["exp"] = json!(NOW - 31);
        assert_eq!(
            verify(&sign_rs256(&c), &jwks(), &expect(), NOW),
            Err(TokenError::Expired)
        );
        c["exp"] = json!(NOW - 29);
        assert!(
            verify(&sign_rs256(&c), &jwks(), &expect(), NOW).is_ok(),
            "within leeway"
        );
        let mut c = claims();
        c["nbf"] = json!(NOW + 100);
        assert_eq!(
            verify(&sign_rs256(&c), &jwks(), &expect(), NOW),
            Err(TokenError::NotYetValid)
        );
        let mut c = claims();
        c["iss"] = json!("http://evil/realms/bank");
        assert_eq!(
            verify(&sign_rs256(&c), &jwks(), &expect(), NOW),
            Err(TokenError::WrongIssuer)
        );
        let mut c = claims();
        c["typ"] = json!("Refresh");
        assert_eq!(
            verify(&sign_rs256(&c), &jwks(), &expect(), NOW),
            Err(TokenError::WrongType)
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            verify(&sign_rs256(&c), &jwks(), &expect(), NOW),
            Err(TokenError::Malformed)
        );
        let auds = vec!["bank-api".to_string()];
        let e = Expectations {
            audiences: &auds,
            ..expect()
        };
        assert_eq!(
            verify(&sign_rs256(&claims()), &jwks(), &e, NOW),
            Err(TokenError::WrongAudience)
        );
        let mut c = claims();
        c["aud"] = json!(["x", "bank-api"]);
        assert!(verify(&sign_rs256(&c), &jwks(), &e, NOW).is_ok());
    }

    #[test]
    fn none_and_hmac_are_refused() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let body = b64(&claims().to_string());
        let none = format!("{}.{}.", b64(r#"{"alg":"none","kid":"rsa-1"}"#), body);
        assert!(verify(&none, &jwks(), &expect(), NOW).is_err());
        // HS256 "signed" with the public key's bytes must never verify
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some("rsa-1".into()),
                ..Header::new(Algorithm::HS256)
            },
            &claims(),
            &EncodingKey::from_secret(&fixture("jwks.json")),
        )
        .unwrap();
        assert_eq!(
            verify(&hs, &jwks(), &expect(), NOW),
            Err(TokenError::UnsupportedAlgorithm)
        );
        // an RS256 token presented as ES256 under the RSA kid
        let tok = sign_rs256(&claims());
        let parts: Vec<&str> = tok.split('.').collect();
        let relabeled = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"ES256","kid":"rsa-1"}"#),
            parts[1],
            parts[2]
        );
        assert!(verify(&relabeled, &jwks(), &expect(), NOW).is_err());
    }

    /// The host path: a verifier standing in for Envoy's `verify_signature` (here jsonwebtoken on
    /// the PKCS#1 key taken back out of the SPKI the filter built, so the DER is exercised too).
    #[test]
    fn host_verifier_is_used_for_rsa_and_ec_and_its_no_is_final() {
        let calls = std::cell::Cell::new(0);
        let host = |c: &HostCheck| -> Option<bool> {
            calls.set(calls.get() + 1);
            assert_eq!(c.hash, "sha256");
            let pkcs1 = signature::rsa_public_key_of_spki(c.public_key)?;
            let key = DecodingKey::from_rsa_der(pkcs1);
            let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.signature);
            jsonwebtoken::crypto::verify(&sig, c.text, &key, Algorithm::RS256).ok()
        };
        let tok = sign_rs256(&claims());
        let t = verify_with(&tok, &jwks(), &expect(), NOW, Some(&host)).unwrap();
        assert_eq!(t.subject(), Some("u1"));
        assert_eq!(calls.get(), 1);
        let mut bytes = tok.into_bytes();
        let i = bytes.len() - 3;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        assert_eq!(
            verify_with(&forged, &jwks(), &expect(), NOW, Some(&host)),
            Err(TokenError::BadSignature)
        );
        assert_eq!(calls.get(), 2);
        // a host that cannot answer: verified in wasm
        let absent = |_: &HostCheck| -> Option<bool> { None };
        assert!(verify_with(
            &sign_rs256(&claims()),
            &jwks(),
            &expect(),
            NOW,
            Some(&absent)
        )
        .is_ok());
        assert_eq!(
            verify_with(&forged, &jwks(), &expect(), NOW, Some(&absent)),
            Err(TokenError::BadSignature)
        );
        // claims are still checked after a host "yes"
        let mut c = claims();
        c["exp"] = json!(NOW - 100);
        assert_eq!(
            verify_with(&sign_rs256(&c), &jwks(), &expect(), NOW, Some(&host)),
            Err(TokenError::Expired)
        );
        // EC keys go to the host too (with a DER signature); this RSA-only stand-in cannot tell,
        // so the rust-crypto build checks them in wasm
        let before = calls.get();
        assert!(verify_with(&sign_es256(&claims()), &jwks(), &expect(), NOW, Some(&host)).is_ok());
        assert_eq!(calls.get(), before + 1);
    }

    #[test]
    fn unknown_kid_and_garbage() {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rotated".into());
        let der = base64::engine::general_purpose::STANDARD
            .decode(fixture("rsa-private.der.b64"))
            .unwrap();
        let tok = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_rsa_der(&der)).unwrap();
        assert_eq!(key_id(&tok).as_deref(), Some("rotated"));
        assert_eq!(
            verify(&tok, &jwks(), &expect(), NOW),
            Err(TokenError::UnknownKey(Some("rotated".into())))
        );
        assert_eq!(
            verify("not-a-jwt", &jwks(), &expect(), NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify("a.b.c", &jwks(), &expect(), NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn rpt_permissions_are_read() {
        let mut c = claims();
        c["authorization"] =
            json!({"permissions": [{"rsid": "r1", "rsname": "A", "scopes": ["s"]}]});
        let t = verify(&sign_rs256(&c), &jwks(), &expect(), NOW).unwrap();
        assert_eq!(t.permissions().unwrap()[0].rsid.as_deref(), Some("r1"));
    }
}
