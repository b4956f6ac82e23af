//! Envoy's `verify_signature` foreign function: RSA PKCS#1 v1.5 and ECDSA checks done by the
//! host's BoringSSL instead of in wasm (measured ~10x cheaper per token, and the module carries no
//! RSA or elliptic-curve code). Sans-IO: the argument and result protobufs, the
//! SubjectPublicKeyInfo DER of a JWK's RSA or EC key, and JOSE's `r || s` ECDSA signature as
//! the DER `ECDSA-Sig-Value` BoringSSL reads. The shell detects the function at configure time;
//! without it only the `rust-crypto` build verifies tokens (in wasm).
//!
//! Messages (envoy/source/extensions/common/wasm/ext/verify_signature.proto):
//! `VerifySignatureArguments { string hash_function = 1; bytes public_key = 2; bytes signature = 3; bytes text = 4; }`
//! `VerifySignatureResult { bool result = 1; string error = 2; }`

pub const FUNCTION: &str = "verify_signature";

/// A signature check the host can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCheck<'a> {
    pub hash: &'static str,
    /// DER SubjectPublicKeyInfo.
    pub public_key: &'a [u8],
    pub signature: &'a [u8],
    pub text: &'a [u8],
}

/// A known-good RS256 vector (a public test key and its signature over [`PROBE_TEXT`]): the
/// host function is used only if it accepts this and refuses a corrupted copy.
pub const PROBE_TEXT: &[u8] = b"keycloak-pep verify_signature probe";
/// Modulus of the probe key (exponent 65537).
pub const PROBE_N_HEX: &str = "DADC1BC31431490AA1BA3EEF0F7228384AB544B125CDBC9DFEDBA82706FA4FE920DAA0F810A4927748B4A1AD645B4DBE1135C8C689F56504E074FB8A6503A928F594E4A10353ECAAB8BF8DFD95889894D6879FDC544F900F32AFC39C011BE568ADED51A5822889E317FEBCF4455A2A64BF6BD2DD91999D92AA9FFB49EADB84968199F6F0FAAA1382F0A0440BB01E1F92AA713116F890AEF3A67063558EC9A9C92AF253BCBA42714C762056B73B32ADEE8CB0B7FB746399737E631BD394C3939DB287967E86666C602792515FD99BDF9828A94E594304BB6B9390E944081B0615469FC2B7B373AD61BB52E108C1C5D2F21530550D59E28C6E9A31B0BDC4F6FD9F";
pub const PROBE_SIG_HEX: &str = "c5ef2ef4c53bc360d9dba597957573b626d9a27a1eee35fcf4f0fbf7771f90cb9dc36d9c307eccfa9c05faa70690aa8a92a700d64bcd80501951bbb39fa27f757bedb42bd2dcea5a594c35da080867ca75bd8d703075e898f0b93d2836ce20a9958b4364549823b19f194f82ebf550586597ae6fd44219a7a357f0fb0136c7ebb1f7269f21f0baa43e33bec62531ad1e5aef726643fcac36fbb799e1278ae538653421e14c44d2cf08712d02478928cdfd88f4d4f3f9a3f1fb436b07d246d4235ad7d913f14a88184a6fd1a1054f7567403b6cbf13516249265e0c1da497c511629d4c46da677d6087a7666b2ba09c712505f23bb11aed502d301b4935225fcc";

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The probe's two calls: the valid vector (must be `true`) and a corrupted one (must be `false`).
pub fn probe_arguments() -> (Vec<u8>, Vec<u8>) {
    let spki = rsa_spki(&unhex(PROBE_N_HEX), &[1, 0, 1]);
    let sig = unhex(PROBE_SIG_HEX);
    let mut bad = sig.clone();
    if let Some(b) = bad.last_mut() {
        *b ^= 1;
    }
    let check = |signature: &[u8]| {
        encode_arguments(&HostCheck {
            hash: "sha256",
            public_key: &spki,
            signature,
            text: PROBE_TEXT,
        })
    };
    (check(&sig), check(&bad))
}

/// Is the host's function usable? Given its answers to [`probe_arguments`].
pub fn probe_passed(good: Option<&[u8]>, bad: Option<&[u8]>) -> bool {
    good.and_then(decode_result) == Some(true) && bad.and_then(decode_result) == Some(false)
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    varint(bytes.len(), out);
    out.extend_from_slice(bytes);
}

pub fn encode_arguments(c: &HostCheck) -> Vec<u8> {
    let mut out = Vec::with_capacity(c.public_key.len() + c.signature.len() + c.text.len() + 32);
    field(0x0a, c.hash.as_bytes(), &mut out);
    field(0x12, c.public_key, &mut out);
    field(0x1a, c.signature, &mut out);
    field(0x22, c.text, &mut out);
    out
}

/// The host's verdict: `Some(true)` valid, `Some(false)` invalid, `None` unreadable answer.
pub fn decode_result(bytes: &[u8]) -> Option<bool> {
    let mut result = false;
    let mut i = 0;
    while i < bytes.len() {
        let tag = bytes[i];
        i += 1;
        match tag {
            0x08 => {
                let v = *bytes.get(i)?;
                i += 1;
                if v & 0x80 != 0 {
                    return None;
                }
                result = v != 0;
            }
            0x12 => {
                let (len, used) = read_varint(&bytes[i..])?;
                i = i.checked_add(used)?.checked_add(len)?;
                if i > bytes.len() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(result)
}

fn read_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut n: usize = 0;
    for (i, byte) in b.iter().enumerate().take(5) {
        n |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

#[cfg_attr(kcpep_size, optimize(speed))]
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg_attr(kcpep_size, optimize(speed))]
fn der_uint(big_endian: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let first = big_endian
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(big_endian.len());
        &big_endian[first..]
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    der(0x02, &content)
}

/// DER SubjectPublicKeyInfo of an RSA public key (modulus and exponent, big-endian).
pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const ALG: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut rsa_key = der_uint(n);
    rsa_key.extend(der_uint(e));
    let rsa_key = der(0x30, &rsa_key);
    let mut bits = vec![0u8];
    bits.extend(rsa_key);
    let mut spki = ALG.to_vec();
    spki.extend(der(0x03, &bits));
    der(0x30, &spki)
}

/// The curves a JWK's EC key may be on, as far as the host checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// The length of one coordinate (and of `r` and `s` in a JOSE signature).
    pub fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// DER SubjectPublicKeyInfo of an EC public key (uncompressed point `04 || x || y`); None when
/// a coordinate has the wrong length for the curve.
pub fn ec_spki(curve: Curve, x: &[u8], y: &[u8]) -> Option<Vec<u8>> {
    if x.len() != curve.size() || y.len() != curve.size() {
        return None;
    }
    // AlgorithmIdentifier { id-ecPublicKey (1.2.840.10045.2.1), the curve's OID }
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let curve_oid: &[u8] = match curve {
        // prime256v1 (1.2.840.10045.3.1.7)
        Curve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        // secp384r1 (1.3.132.0.34)
        Curve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
    };
    let mut alg = EC_PUBLIC_KEY.to_vec();
    alg.extend_from_slice(curve_oid);
    let mut bits = vec![0u8, 0x04];
    bits.extend_from_slice(x);
    bits.extend_from_slice(y);
    let mut spki = der(0x30, &alg);
    spki.extend(der(0x03, &bits));
    Some(der(0x30, &spki))
}

/// A JOSE ECDSA signature (`r || s`, each [`Curve::size`] bytes, RFC 7518 §3.4) as DER
/// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`; None when its length is wrong.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn jose_to_der(curve: Curve, sig: &[u8]) -> Option<Vec<u8>> {
    if sig.len() != 2 * curve.size() {
        return None;
    }
    let (r, s) = sig.split_at(curve.size());
    let mut seq = der_uint(r);
    seq.extend(der_uint(s));
    Some(der(0x30, &seq))
}

/// The `PKCS#1` RSAPublicKey inside an SPKI built by [`rsa_spki`] (for hosts that emulate the function).
pub fn rsa_public_key_of_spki(spki: &[u8]) -> Option<&[u8]> {
    // SEQUENCE(len) ALG BITSTRING(len) 00 RSAPublicKey
    let (body, _) = der_content(spki, 0x30)?;
    let alg_len = 15;
    let (bits, _) = der_content(body.get(alg_len..)?, 0x03)?;
    bits.get(1..)
}

fn der_content(b: &[u8], tag: u8) -> Option<(&[u8], usize)> {
    if *b.first()? != tag {
        return None;
    }
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    Some((b.get(header..header + len)?, header + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_keys_and_jose_signatures_become_what_boringssl_reads() {
        // A P-256 key and an ES256 signature (JOSE r || s), read back by RustCrypto's own DER
        // parsers: the SPKI as a verifying key, the converted signature as a valid signature.
        use p256::ecdsa::signature::{Signer, Verifier};
        use p256::pkcs8::DecodePublicKey;
        let secret = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let point = secret.verifying_key().to_encoded_point(false);
        let (x, y) = (point.x().unwrap(), point.y().unwrap());
        let spki = ec_spki(Curve::P256, x, y).unwrap();
        let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
        let sig: p256::ecdsa::Signature = secret.sign(b"text");
        let der = jose_to_der(Curve::P256, &sig.to_bytes()).unwrap();
        let back = p256::ecdsa::Signature::from_der(&der).unwrap();
        assert!(key.verify(b"text", &back).is_ok());
        // high-bit r and s get their leading zero; wrong lengths are refused
        let der = jose_to_der(Curve::P256, &[0x80; 64]).unwrap();
        assert_eq!(&der[..4], &[0x30, 0x46, 0x02, 0x21]);
        assert!(jose_to_der(Curve::P256, &[1; 63]).is_none());
        assert!(ec_spki(Curve::P384, x, y).is_none());
    }

    #[test]
    fn arguments_are_protobuf() {
        let a = encode_arguments(&HostCheck {
            hash: "sha256",
            public_key: b"K",
            signature: b"SS",
            text: &[7; 200],
        });
        assert_eq!(&a[..8], b"\x0a\x06sha256");
        assert_eq!(&a[8..11], b"\x12\x01K");
        assert_eq!(&a[11..15], b"\x1a\x02SS");
        assert_eq!(&a[15..18], &[0x22, 0xc8, 0x01]);
        assert_eq!(a.len(), 18 + 200);
    }

    #[test]
    fn probe_vector_is_a_valid_signature() {
        let (good, bad) = probe_arguments();
        assert_ne!(good, bad);
        // the fixture key of tests/fixtures is the probe key
        let jwks: serde_json::Value = serde_json::from_slice(
            &std::fs::read(format!(
                "{}/tests/fixtures/jwks.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        use base64::Engine;
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["n"].as_str().unwrap())
            .unwrap();
        assert_eq!(n, unhex(PROBE_N_HEX));
        let spki = rsa_spki(&n, &[1, 0, 1]);
        let key = jsonwebtoken::DecodingKey::from_rsa_der(rsa_public_key_of_spki(&spki).unwrap());
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(unhex(PROBE_SIG_HEX));
        assert!(jsonwebtoken::crypto::verify(
            &sig,
            PROBE_TEXT,
            &key,
            jsonwebtoken::Algorithm::RS256
        )
        .unwrap());
        assert!(probe_passed(Some(b"\x08\x01"), Some(b"")));
        assert!(
            !probe_passed(Some(b"\x08\x01"), Some(b"\x08\x01")),
            "a host that says yes to everything"
        );
        assert!(!probe_passed(None, None));
    }

    #[test]
    fn results_decode() {
        assert_eq!(decode_result(b"\x08\x01"), Some(true));
        assert_eq!(decode_result(b""), Some(false));
        assert_eq!(decode_result(b"\x12\x03bad"), Some(false));
        assert_eq!(decode_result(b"\x08\x00\x12\x03bad"), Some(false));
        assert_eq!(decode_result(b"\x12\x09bad"), None);
        assert_eq!(decode_result(b"\xff"), None);
    }

    #[test]
    fn spki_round_trips_and_matches_openssl_layout() {
        let n = [0xc3u8; 256];
        let spki = rsa_spki(&n, &[1, 0, 1]);
        // 30 82 01 22 30 0d ... 03 82 01 0f 00 30 82 01 0a 02 82 01 01 00 c3...
        assert_eq!(&spki[..4], &[0x30, 0x82, 0x01, 0x22]);
        assert_eq!(spki.len(), 0x122 + 4);
        let inner = rsa_public_key_of_spki(&spki).unwrap();
        assert_eq!(
            &inner[..9],
            &[0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00]
        );
        assert!(inner.ends_with(&[0x02, 0x03, 0x01, 0x00, 0x01]));
    }
}
