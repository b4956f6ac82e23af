//! A granted permission, as Keycloak writes it in RPTs and decision answers, and as the filter
//! passes it to the upstream.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A granted permission as Keycloak writes it in RPTs and `response_mode=permissions` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Permission {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, Vec<String>>>,
}

/// `authorization.permissions` of a token's claims.
pub fn permissions_of(claims: &Value) -> Option<Vec<Permission>> {
    let perms = claims.get("authorization")?.get("permissions")?;
    serde_json::from_value(perms.clone()).ok()
}

/// The granted permissions as the upstream receives them in a header: compact JSON, non-ASCII
/// escaped so the value is a plain visible-ASCII header value.
pub fn permissions_header_value(perms: &[Permission]) -> String {
    let json = serde_json::to_string(perms).unwrap_or_else(|_| "[]".into());
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_header_is_ascii_json() {
        let p = vec![Permission {
            rsid: Some("1".into()),
            rsname: Some("Café".into()),
            scopes: vec!["v".into()],
            claims: None,
        }];
        let h = permissions_header_value(&p);
        assert_eq!(h, r#"[{"rsid":"1","rsname":"Caf\u00e9","scopes":["v"]}]"#);
        let back: Vec<Permission> = serde_json::from_str(&h).unwrap();
        assert_eq!(back, p);
    }
}
