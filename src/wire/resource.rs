//! A server resource, as the protection API describes it.

use serde::Deserialize;

/// A resource of the protection API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Resource {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub uris: Vec<String>,
    #[serde(default, alias = "resource_scopes")]
    pub scopes: Vec<ScopeRef>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ScopeRef {
    pub name: String,
}

impl Resource {
    pub fn scope_names(&self) -> Vec<String> {
        self.scopes.iter().map(|s| s.name.clone()).collect()
    }
}
