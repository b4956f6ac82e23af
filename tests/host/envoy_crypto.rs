//! Envoy's `verify_signature` foreign function, emulated natively as Envoy does it
//! (source/common/crypto/utility_impl.cc): the key is a DER SubjectPublicKeyInfo
//! (`EVP_parse_public_key`), the signature is checked with `EVP_DigestVerify` and the named digest,
//! so RSA keys take PKCS#1 v1.5 signatures and EC keys DER `ECDSA-Sig-Value`s. Arguments and
//! result are the protobufs of envoy/source/extensions/common/wasm/ext/verify_signature.proto.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The foreign function; `calls` counts its calls.
pub fn verify_signature(
    calls: Arc<AtomicU32>,
) -> impl Fn(&str, &[u8]) -> Option<Vec<u8>> + Send + Sync + 'static {
    move |name: &str, args: &[u8]| {
        if name != "verify_signature" {
            return None;
        }
        calls.fetch_add(1, Ordering::SeqCst);
        let fields = protobuf_fields(args)?;
        let (hash, spki, sig, text) = (fields[0], fields[1], fields[2], fields[3]);
        let ok = match check(hash, spki, sig, text) {
            Some(ok) => ok,
            None => return Some(result(false, "Failed to initialize digest verify.")),
        };
        Some(result(ok, "Failed to verify digest."))
    }
}

fn protobuf_fields(args: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        i += 1; // tag
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = *args.get(i)?;
            i += 1;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        fields.push(args.get(i..i + len)?);
        i += len;
    }
    (fields.len() == 4).then_some(fields)
}

fn result(ok: bool, error: &str) -> Vec<u8> {
    if ok {
        return vec![0x08, 0x01];
    }
    let mut out = vec![0x12, error.len() as u8];
    out.extend_from_slice(error.as_bytes());
    out
}

/// None: the key could not be read or the digest is unknown (Envoy's "Failed to initialize").
fn check(hash: &[u8], spki: &[u8], sig: &[u8], text: &[u8]) -> Option<bool> {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(spki) {
        // EVP_DigestVerify hashes with the digest named; P-256 tokens use SHA-256
        if hash != b"sha256" {
            return Some(false);
        }
        let Ok(sig) = p256::ecdsa::Signature::from_der(sig) else {
            return Some(false);
        };
        return Some(key.verify(text, &sig).is_ok());
    }
    if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(spki) {
        if hash != b"sha384" {
            return Some(false);
        }
        let Ok(sig) = p384::ecdsa::Signature::from_der(sig) else {
            return Some(false);
        };
        return Some(key.verify(text, &sig).is_ok());
    }
    let alg = match hash {
        b"sha256" => jsonwebtoken::Algorithm::RS256,
        b"sha384" => jsonwebtoken::Algorithm::RS384,
        b"sha512" => jsonwebtoken::Algorithm::RS512,
        _ => return None,
    };
    let pkcs1 = keycloak_pep::keycloak::signature::rsa_public_key_of_spki(spki)?;
    let key = jsonwebtoken::DecodingKey::from_rsa_der(pkcs1);
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
    Some(jsonwebtoken::crypto::verify(&sig, text, &key, alg).unwrap_or(false))
}

use base64::Engine;
