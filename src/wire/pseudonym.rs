//! Subjects named without being named: a keyed hash (HMAC-SHA256) of a token's `sub` for
//! decision records that must not carry user ids. The same user is the same pseudonym in every
//! record under one key; only the key's holder can tell who it is.

use sha2::{Digest, Sha256};

const BLOCK: usize = 64;

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The pseudonym of `subject`: `hmac:` and the first 16 bytes of its HMAC in hex.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn pseudonym(key: &[u8], subject: &str) -> String {
    let mac = hmac_sha256(key, subject.as_bytes());
    let mut out = String::from("hmac:");
    for b in &mac[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rfc_4231_test_vectors() {
        // test case 1: key 20 x 0x0b, "Hi There"
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // test case 2: key "Jefe"
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // test case 6: a key longer than the block is hashed first
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_pseudonym_is_stable_per_key_and_says_nothing_of_the_subject() {
        let a = pseudonym(b"0123456789abcdef", "3729474f-93a6");
        assert_eq!(a, pseudonym(b"0123456789abcdef", "3729474f-93a6"));
        assert_ne!(a, pseudonym(b"0123456789abcdeX", "3729474f-93a6"));
        assert_ne!(a, pseudonym(b"0123456789abcdef", "3729474f-93a7"));
        assert!(a.starts_with("hmac:") && a.len() == 5 + 32, "{a}");
        assert!(!a.contains("3729474f"));
    }
}
