//! A server resource, as the protection API describes it.

use crate::wire::json::{self, index, Obj};
use serde_json::Value;

/// A resource of the protection API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `_id`
    pub id: String,
    pub name: String,
    pub uris: Vec<String>,
    /// `scopes` (`resource_scopes` in some Keycloak answers)
    pub scopes: Vec<ScopeRef>,
    /// `type`
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRef {
    pub name: String,
}

impl Resource {
    /// A resource as the protection API answers it (`GET .../resource_set/{id}`, or each item of
    /// `?deep=true`); other members are ignored. Read by hand, not by a derived deserializer:
    /// see `crate::keycloak::jose`.
    pub fn read(v: &Value, path: &str) -> json::Result<Resource> {
        let mut o = Obj::new(v, path)?;
        let scopes = match o.array("scopes")? {
            Some(s) => Some(s),
            None => o.array("resource_scopes")?,
        };
        let scopes_path = o.key_path("scopes");
        let scopes = scopes
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        Obj::new(s, &index(&scopes_path, i))?
                            .required_string("name")
                            .map(|name| ScopeRef { name })
                    })
                    .collect::<json::Result<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(Resource {
            id: o.required_string("_id")?,
            name: o.required_string("name")?,
            uris: o.string_list("uris")?.unwrap_or_default(),
            scopes,
            kind: o.string("type")?,
        })
    }

    /// A JSON array of resources (`?deep=true`).
    pub fn read_list(v: &Value) -> json::Result<Vec<Resource>> {
        json::array_of(v, Resource::read)
    }

    pub fn scope_names(&self) -> Vec<String> {
        self.scopes.iter().map(|s| s.name.clone()).collect()
    }
}
