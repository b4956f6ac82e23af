//! The JOSE pieces the filter reads: a compact JWS's parts and protected header, the asymmetric
//! algorithms tokens and DPoP proofs are signed with, and public JWKs (the realm's keys, a proof's
//! key). Read from `serde_json::Value` rather than through typed deserializers: a derived
//! deserializer costs the module kilobytes per type, and these few members are all a
//! resource server needs (docs/benchmark.md, "Module size").

use base64::Engine;
use serde_json::{Map, Value};

/// The signature algorithms a token or proof may use here: RSA PKCS#1 v1.5 and PSS, ECDSA on
/// P-256 and P-384, Ed25519. Never `none` or HMAC (a shared secret proves nothing to a proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// What a JWS header's `alg` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderAlg {
    Asymmetric(Alg),
    /// HS256/384/512: a known algorithm that is never accepted.
    Hmac,
    /// Anything else (`none` included): the header is not one of a signed JWT.
    Unknown,
}

impl Alg {
    const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The algorithm's JOSE name (RFC 7518, RFC 8037).
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// The algorithm a JOSE name names, exactly (names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// How a header's `alg` reads.
    pub fn of_header(name: &str) -> HeaderAlg {
        match name {
            "HS256" | "HS384" | "HS512" => HeaderAlg::Hmac,
            _ => Alg::from_name(name).map_or(HeaderAlg::Unknown, HeaderAlg::Asymmetric),
        }
    }
}

/// base64url without padding (RFC 7515 §2), strictly: what a JWS's parts are written in.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn unb64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// The three parts of a compact JWS (`header.payload.signature`); `None` for any other count.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn parts(raw: &str) -> Option<(&str, &str, &str)> {
    let mut it = raw.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => Some((h, p, s)),
        _ => None,
    }
}

/// A base64url part holding a JSON object (a protected header).
pub fn json_object(part: &str) -> Option<Map<String, Value>> {
    match serde_json::from_slice(&unb64url(part)?).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A JWS protected header's members a verifier reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: HeaderAlg,
    pub kid: Option<String>,
}

/// The protected header of a compact JWS, read without verifying anything; `None` when `raw` is
/// not three parts with a JSON object first whose `alg` is a string (and `kid`, when present,
/// too).
pub fn header(raw: &str) -> Option<Header> {
    let (h, _, _) = parts(raw)?;
    let m = json_object(h)?;
    let alg = Alg::of_header(m.get("alg")?.as_str()?);
    let kid = match m.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return None,
    };
    Some(Header { alg, kid })
}

/// A public key's parameters (RFC 7518 §6), as base64url text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyParams {
    Rsa { n: String, e: String },
    Ec { crv: String, x: String, y: String },
    Okp { crv: String, x: String },
}

/// One public JWK: its parameters and the members that say how it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// `alg`, when the key names one (any name: an encryption key's too).
    pub alg: Option<String>,
    /// `use`: `sig`, `enc` or absent.
    pub key_use: Option<String>,
    pub params: KeyParams,
}

impl Jwk {
    /// An RSA, EC or OKP key whose members are strings; `None` for other key types (`oct`) and
    /// for keys missing a parameter.
    pub fn from_object(m: &Map<String, Value>) -> Option<Jwk> {
        let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        let optional = |k: &str| match m.get(k) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        let params = match m.get("kty")?.as_str()? {
            "RSA" => KeyParams::Rsa {
                n: text("n")?,
                e: text("e")?,
            },
            "EC" => KeyParams::Ec {
                crv: text("crv")?,
                x: text("x")?,
                y: text("y")?,
            },
            "OKP" => KeyParams::Okp {
                crv: text("crv")?,
                x: text("x")?,
            },
            _ => return None,
        };
        Some(Jwk {
            kid: optional("kid")?,
            alg: optional("alg")?,
            key_use: optional("use")?,
            params,
        })
    }

    /// Whether `alg` is one this key can verify: the key type and curve fit.
    pub fn fits(&self, alg: Alg) -> bool {
        match (&self.params, alg) {
            (
                KeyParams::Rsa { .. },
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
            ) => true,
            (KeyParams::Ec { crv, .. }, Alg::ES256) => crv == "P-256",
            (KeyParams::Ec { crv, .. }, Alg::ES384) => crv == "P-384",
            (KeyParams::Okp { crv, .. }, Alg::EdDSA) => crv == "Ed25519",
            _ => false,
        }
    }

    /// The algorithm a key without `alg` is taken for: RS256 for RSA, the curve's ECDSA, EdDSA.
    pub fn family_default(&self) -> Alg {
        match &self.params {
            KeyParams::Rsa { .. } => Alg::RS256,
            KeyParams::Ec { crv, .. } if crv == "P-384" => Alg::ES384,
            KeyParams::Ec { .. } => Alg::ES256,
            KeyParams::Okp { .. } => Alg::EdDSA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn algorithm_names_round_trip_and_hmac_none_are_told_apart() {
        for a in Alg::ALL {
            assert_eq!(Alg::from_name(a.name()), Some(a));
            assert_eq!(Alg::of_header(a.name()), HeaderAlg::Asymmetric(a));
        }
        assert_eq!(Alg::of_header("HS256"), HeaderAlg::Hmac);
        assert_eq!(Alg::of_header("none"), HeaderAlg::Unknown);
        assert_eq!(Alg::of_header("rs256"), HeaderAlg::Unknown);
    }

    #[test]
    fn a_header_is_read_from_exactly_three_parts() {
        let h = b64(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
        assert_eq!(
            header(&format!("{h}.e30.c2ln")),
            Some(Header {
                alg: HeaderAlg::Asymmetric(Alg::ES256),
                kid: Some("k1".into())
            })
        );
        assert_eq!(header(&format!("{h}.e30")), None);
        assert_eq!(header(&format!("{h}.e30.c2ln.x")), None);
        assert_eq!(header(&format!("{h}=.e30.c2ln")), None, "padding");
        let kid_number = b64(r#"{"alg":"RS256","kid":7}"#);
        assert_eq!(header(&format!("{kid_number}.e30.c2ln")), None);
        let no_alg = b64(r#"{"kid":"k1"}"#);
        assert_eq!(header(&format!("{no_alg}.e30.c2ln")), None);
        assert_eq!(header(&format!("{}.e30.c2ln", b64("[1]"))), None);
    }

    #[test]
    fn keys_are_read_by_type_and_fit_their_algorithms() {
        let of = |v: Value| Jwk::from_object(v.as_object().unwrap());
        let rsa = of(json!({"kty":"RSA","n":"AQAB","e":"AQAB","kid":"r","use":"sig"})).unwrap();
        assert!(rsa.fits(Alg::PS512) && !rsa.fits(Alg::ES256));
        assert_eq!(rsa.family_default(), Alg::RS256);
        assert_eq!(rsa.key_use.as_deref(), Some("sig"));
        let p384 = of(json!({"kty":"EC","crv":"P-384","x":"AA","y":"AA"})).unwrap();
        assert!(p384.fits(Alg::ES384) && !p384.fits(Alg::ES256));
        assert_eq!(p384.family_default(), Alg::ES384);
        let ed = of(json!({"kty":"OKP","crv":"Ed25519","x":"AA"})).unwrap();
        assert!(ed.fits(Alg::EdDSA));
        let x448 = of(json!({"kty":"OKP","crv":"X448","x":"AA"})).unwrap();
        assert!(!x448.fits(Alg::EdDSA));
        assert_eq!(of(json!({"kty":"oct","k":"AA"})), None);
        assert_eq!(of(json!({"kty":"RSA","n":"AQAB"})), None);
        assert_eq!(of(json!({"kty":"RSA","n":"AQAB","e":1})), None);
        assert_eq!(of(json!({"kty":"RSA","n":"AQAB","e":"AQAB","kid":1})), None);
    }
}
