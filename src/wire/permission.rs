//! A granted permission, as Keycloak writes it in RPTs and decision answers, and as the filter
//! passes it to the upstream.

use crate::wire::claims::Claims;
use crate::wire::json::{self, index, ConfigError, Obj};
use serde::Serialize;
use serde_json::Value;

/// A granted permission as Keycloak writes it in RPTs and `response_mode=permissions` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Permission {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rsid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rsname: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Claims>,
}

impl Permission {
    /// One permission as Keycloak writes it (members it may add later are ignored; null is
    /// absent). Read by hand, not by a derived deserializer: see `crate::keycloak::jose`.
    pub fn read(v: &Value, path: &str) -> json::Result<Permission> {
        let mut o = Obj::new(v, path)?;
        let claims = match o.object("claims")? {
            None => None,
            Some(c) => {
                let mut out = Claims::new();
                for (name, values) in c.entries() {
                    let at = json::join(&c.path, name);
                    let Value::Array(items) = values else {
                        return Err(ConfigError::new(&at, "expected an array of strings"));
                    };
                    let mut list = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let text = item
                            .as_str()
                            .ok_or_else(|| ConfigError::new(&index(&at, i), "expected a string"))?;
                        list.push(text.to_owned());
                    }
                    out.insert(name.clone(), list);
                }
                Some(out)
            }
        };
        Ok(Permission {
            rsid: o.string("rsid")?,
            rsname: o.string("rsname")?,
            scopes: o.string_list("scopes")?.unwrap_or_default(),
            claims,
        })
    }
}

/// A JSON array of permissions (a `response_mode=permissions` answer, an RPT's
/// `authorization.permissions`).
pub fn read_permissions(v: &Value) -> json::Result<Vec<Permission>> {
    json::array_of(v, Permission::read)
}

/// `authorization.permissions` of a token's claims.
pub fn permissions_of(claims: &Value) -> Option<Vec<Permission>> {
    read_permissions(claims.get("authorization")?.get("permissions")?).ok()
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
        let back = read_permissions(&serde_json::from_str(&h).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn permissions_are_read_as_keycloak_writes_them() {
        let v = serde_json::json!([
            {"rsid": "1", "rsname": "A", "scopes": ["s"], "claims": {"c": ["x", "y"]}, "new": 1},
            {"rsid": null, "scopes": null},
        ]);
        let p = read_permissions(&v).unwrap();
        assert_eq!(p[0].claims.as_ref().unwrap()["c"], ["x", "y"]);
        assert_eq!(p[1], Permission::default());
        let bad = |v: Value| read_permissions(&v).unwrap_err().to_string();
        assert_eq!(
            bad(serde_json::json!({})),
            "expected an array, found an object"
        );
        assert_eq!(
            bad(serde_json::json!([{"scopes": "s"}])),
            "[0].scopes: expected an array of strings, found a string"
        );
        assert_eq!(
            bad(serde_json::json!([{}, {"claims": {"c": [1]}}])),
            "[1].claims.c[0]: expected a string"
        );
    }
}
