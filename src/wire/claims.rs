//! Claims pushed to Keycloak with a decision request, and those a permission carries: names to
//! lists of values.

use serde::ser::{Serialize, SerializeMap, Serializer};

/// Claim name -> values, ordered by name so that the JSON sent and its digest are deterministic.
/// A sorted list rather than a `BTreeMap`: a request carries a handful of claims, and the
/// B-tree's code was 19 KB of the module (docs/benchmark.md, "Module size").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims(Vec<(String, Vec<String>)>);

impl Claims {
    pub fn new() -> Claims {
        Claims(Vec::new())
    }

    /// Sets a claim's values, replacing any it had; the values it had.
    pub fn insert(&mut self, name: String, values: Vec<String>) -> Option<Vec<String>> {
        match self.0.binary_search_by(|(n, _)| n.as_str().cmp(&name)) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, values)),
            Err(at) => {
                self.0.insert(at, (name, values));
                None
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Vec<String>> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|at| &self.0[at].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The names in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(n, _)| n)
    }

    /// The claims in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Extend<(String, Vec<String>)> for Claims {
    fn extend<I: IntoIterator<Item = (String, Vec<String>)>>(&mut self, items: I) {
        for (name, values) in items {
            self.insert(name, values);
        }
    }
}

impl FromIterator<(String, Vec<String>)> for Claims {
    fn from_iter<I: IntoIterator<Item = (String, Vec<String>)>>(items: I) -> Claims {
        let mut c = Claims::new();
        c.extend(items);
        c
    }
}

impl<const N: usize> From<[(String, Vec<String>); N]> for Claims {
    fn from(items: [(String, Vec<String>); N]) -> Claims {
        items.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Claims {
    type Item = (&'a String, &'a Vec<String>);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Vec<String>)>,
        fn(&'a (String, Vec<String>)) -> (&'a String, &'a Vec<String>),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(n, v)| (n, v))
    }
}

/// `claims["name"]` in tests (a missing name panics, as a map's index does).
#[cfg(test)]
impl std::ops::Index<&str> for Claims {
    type Output = Vec<String>;

    #[allow(clippy::panic)]
    fn index(&self, name: &str) -> &Vec<String> {
        match self.get(name) {
            Some(v) => v,
            None => panic!("no claim {name}"),
        }
    }
}

/// A JSON object, names in order.
impl Serialize for Claims {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, values) in &self.0 {
            map.serialize_entry(name, values)?;
        }
        map.end()
    }
}

/// A digest of the claims for the decision-cache key (the JSON is canonical: ordered names).
pub fn digest(claims: &Claims) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(claims).unwrap_or_default();
    Sha256::digest(json).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(items: &[(&str, &[&str])]) -> Claims {
        items
            .iter()
            .map(|(n, v)| (n.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn digest_depends_on_claims() {
        let a = c(&[("x", &["1"])]);
        let b = c(&[("x", &["2"])]);
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(digest(&a), digest(&a.clone()));
    }

    #[test]
    fn claims_keep_name_order_and_the_last_values_of_a_name() {
        let mut claims = c(&[("b", &["1"]), ("a", &["2"]), ("c", &[])]);
        assert_eq!(
            claims.insert("b".into(), vec!["3".into()]),
            Some(vec!["1".into()])
        );
        assert_eq!(
            serde_json::to_string(&claims).unwrap(),
            r#"{"a":["2"],"b":["3"],"c":[]}"#
        );
        assert_eq!(claims.get("a"), Some(&vec!["2".to_string()]));
        assert_eq!(claims.get("z"), None);
        assert_eq!(
            digest(&claims),
            digest(&c(&[("c", &[]), ("b", &["3"]), ("a", &["2"])]))
        );
    }
}
