//! A DPoP client as the tests play it: its own P-256 key, the proofs it makes, the bound tokens
//! Keycloak's `demo-cli-dpop` client gives it.

use super::{keycloak, request};
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};
use sha2::Digest;

/// Base64url without padding, as JOSE writes it.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A fresh token id.
pub fn jti() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A client's DPoP key.
pub struct Client {
    pub key: SigningKey,
}

impl Client {
    pub fn new() -> Client {
        Client {
            key: SigningKey::random(&mut rand::thread_rng()),
        }
    }

    pub fn jwk(&self) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        json!({"kty": "EC", "crv": "P-256",
               "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
    }

    /// RFC 7638, for the EC key: `{"crv","kty","x","y"}` in that order.
    pub fn thumbprint(&self) -> String {
        let j = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            j["x"].as_str().unwrap(),
            j["y"].as_str().unwrap()
        );
        b64(&sha2::Sha256::digest(canonical.as_bytes()))
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()})
    }

    /// A proof for `method url`, naming `token` (`ath`) when given.
    pub fn proof(&self, method: &str, url: &str, token: Option<&str>) -> String {
        self.proof_with(method, url, token, |_, _| {})
    }

    pub fn proof_with(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        change: impl FnOnce(&mut Value, &mut Value),
    ) -> String {
        let mut header = self.header();
        let mut claims = json!({"jti": jti(), "htm": method, "htu": url, "iat": now()});
        if let Some(t) = token {
            claims["ath"] = json!(b64(&sha2::Sha256::digest(t.as_bytes())));
        }
        change(&mut header, &mut claims);
        self.sign(&header, &claims)
    }

    /// A DPoP-bound access token of `user` from Keycloak (password grant of `demo-cli-dpop`,
    /// with a proof for the token endpoint).
    pub fn token(&self, user: &str) -> String {
        let body = self.grant(user);
        // (the body holds the tokens: only its type is shown)
        assert_eq!(body["token_type"], "DPoP", "Keycloak bound the token");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// Keycloak's answer to `user`'s password grant with a proof.
    pub fn grant(&self, user: &str) -> Value {
        let path = "/realms/bank/protocol/openid-connect/token";
        let proof = self.proof("POST", &format!("{}{path}", keycloak()), None);
        let form = format!(
            "grant_type=password&client_id=demo-cli-dpop&username={user}&password=password"
        );
        let r = request(
            &keycloak(),
            "POST",
            path,
            &[
                ("content-type", b"application/x-www-form-urlencoded"),
                ("dpop", proof.as_bytes()),
            ],
            form.as_bytes(),
        );
        assert_eq!(r.status, 200, "token of {user}: {}", r.text());
        r.json()
    }
}
