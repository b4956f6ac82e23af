//! Claims pushed to Keycloak with a decision request: names to lists of values.

use std::collections::BTreeMap;

/// Claim name -> values, ordered so that the JSON sent and its digest are deterministic.
pub type Claims = BTreeMap<String, Vec<String>>;

/// A digest of the claims for the decision-cache key (the JSON is canonical: ordered map).
pub fn digest(claims: &Claims) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(claims).unwrap_or_default();
    Sha256::digest(json).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_claims() {
        let a: Claims = [("x".to_string(), vec!["1".to_string()])].into();
        let b: Claims = [("x".to_string(), vec!["2".to_string()])].into();
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(digest(&a), digest(&a.clone()));
    }
}
