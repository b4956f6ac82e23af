//! The enforcer's live set of paths: configured paths bound to server resources, paths loaded from
//! the server at start, and lazily resolved paths in Keycloak's path cache (docs/keycloak-enforcer.md §2-3).

use crate::config::{EnforcementMode, EnforcerConfig, PathCacheConfig, PathConfig};
use crate::request::pattern::PathMatcher;
use crate::wire::hashmap::HashMap;
use crate::wire::resource::Resource;
use std::rc::Rc;

/// The server resource a path stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    pub id: Option<String>,
    pub name: Option<String>,
    /// The resource's `type` as the server gave it (`""`: none), once looked up: AuthZEN names a
    /// resource by name and type.
    pub kind: Option<String>,
}

/// A path the enforcer can match, with the resource it protects.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub config: PathConfig,
    pub resource: ResourceRef,
}

impl Entry {
    fn from_config(p: &PathConfig) -> Self {
        Entry {
            resource: ResourceRef {
                id: p.id.clone(),
                name: p.name.clone(),
                kind: None,
            },
            config: p.clone(),
        }
    }

    /// A path for a server resource: all its scopes, enforcement inherited from `like` (the
    /// configured match it refines) or ENFORCING.
    pub fn from_resource(r: &Resource, uri: &str, like: Option<&Entry>) -> Self {
        let (methods, mode, cip) = match like {
            Some(e) => (
                e.config.methods.clone(),
                e.config.enforcement_mode,
                e.config.claim_information_point.clone(),
            ),
            None => (Vec::new(), EnforcementMode::Enforcing, None),
        };
        Entry {
            config: PathConfig {
                name: Some(r.name.clone()),
                path: uri.to_string(),
                id: Some(r.id.clone()),
                methods,
                scopes: r.scope_names(),
                enforcement_mode: mode,
                claim_information_point: cip,
            },
            resource: ResourceRef {
                id: Some(r.id.clone()),
                name: Some(r.name.clone()),
                kind: Some(r.kind.clone().unwrap_or_default()),
            },
        }
    }
}

/// Configured (and server-loaded) paths with their compiled matcher.
#[derive(Debug, Clone, Default)]
pub struct PathSet {
    /// Shared with the requests that matched them: a match is a reference count, not a copy.
    entries: Vec<Rc<Entry>>,
    matcher: PathMatcher,
}

impl PathSet {
    pub fn from_config(cfg: &EnforcerConfig) -> Self {
        PathSet {
            entries: cfg
                .paths
                .iter()
                .map(|p| Rc::new(Entry::from_config(p)))
                .collect(),
            matcher: cfg.matcher.clone(),
        }
    }

    pub fn entries(&self) -> &[Rc<Entry>] {
        &self.entries
    }

    pub fn find(&self, normalized: &str) -> Option<&Rc<Entry>> {
        self.matcher
            .find(normalized)
            .map(|m| &self.entries[m.index])
    }

    /// Records the server resource a configured path was resolved to at start.
    pub fn bind(&mut self, index: usize, resource: &Resource) {
        if let Some(e) = self.entries.get_mut(index).map(Rc::make_mut) {
            e.resource.id = Some(resource.id.clone());
            if e.resource.name.is_none() {
                e.resource.name = Some(resource.name.clone());
            }
            e.resource.kind = Some(resource.kind.clone().unwrap_or_default());
            e.config.id = Some(resource.id.clone());
        }
    }

    /// Keycloak's start-up load when no path would be enforced otherwise: every URI of every
    /// resource becomes a path, then the configured paths are laid over them. Server paths are
    /// ordered by resource name, then URI (Keycloak's order here is a HashMap's).
    pub fn with_server_resources(cfg: &EnforcerConfig, resources: &[Resource]) -> Self {
        // (name, URI) in order; of two equal pairs the later resource's
        let mut by_path: Vec<(&str, &str, &Resource)> = resources
            .iter()
            .flat_map(|r| r.uris.iter().map(move |u| (r.name.as_str(), u.as_str(), r)))
            .collect();
        by_path.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut entries: Vec<Rc<Entry>> = Vec::new();
        for (i, (name, uri, r)) in by_path.iter().enumerate() {
            if by_path
                .get(i + 1)
                .is_some_and(|next| (next.0, next.1) == (*name, *uri))
            {
                continue;
            }
            let e = Entry::from_resource(r, uri, None);
            if !cfg.paths.iter().any(|p| p.path == e.config.path)
                && !entries.iter().any(|x| x.config.path == e.config.path)
            {
                entries.push(Rc::new(e));
            }
        }
        entries.extend(cfg.paths.iter().map(|p| Rc::new(Entry::from_config(p))));
        let matcher = PathMatcher::new(entries.iter().map(|e| e.config.path.as_str()));
        PathSet { entries, matcher }
    }

    /// Is this server resource already bound by name to a configured, enforced path?
    pub fn binds_resource_elsewhere(&self, id: &str) -> bool {
        self.entries.iter().any(|e| {
            e.config.name.is_some()
                && e.config.enforcement_mode != EnforcementMode::Disabled
                && e.resource.id.as_deref() == Some(id)
        })
    }
}

/// Keycloak's path cache: normalized path -> resolved entry (or none: negative caching), LRU
/// bounded by `max-entries`, each entry living `lifespan` ms (-1: forever).
#[derive(Debug, Clone)]
pub struct PathCache {
    config: PathCacheConfig,
    /// Each slot remembers when it was last used (`tick`): the least recently used is found by
    /// a scan when the cache overflows, which is rare (a new path resolved at Keycloak) where a
    /// lookup is every request's.
    map: HashMap<String, CacheSlot>,
    tick: u64,
}

#[derive(Debug, Clone)]
struct CacheSlot {
    entry: Option<Rc<Entry>>,
    expires_at_ms: Option<i64>,
    tick: u64,
}

/// A cache answer: `Some(None)` is a cached "no such path".
pub type Cached = Option<Option<Rc<Entry>>>;

impl PathCache {
    pub fn new(config: PathCacheConfig) -> Self {
        PathCache {
            config,
            map: HashMap::new(),
            tick: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&mut self, key: &str, now_ms: i64) -> Cached {
        let slot = self.map.get_mut(key)?;
        if slot.expires_at_ms.is_some_and(|t| now_ms >= t) {
            self.map.remove(key);
            return None;
        }
        self.tick += 1;
        slot.tick = self.tick;
        Some(slot.entry.clone())
    }

    /// Stores a resolution; does not overwrite a live entry (as Keycloak's `put`).
    pub fn put(&mut self, key: &str, entry: Option<Rc<Entry>>, now_ms: i64) {
        if !self.config.enabled() || self.config.max_entries == 0 {
            return;
        }
        if self.get(key, now_ms).is_some() {
            return;
        }
        self.tick += 1;
        let expires_at_ms = match self.config.lifespan_ms {
            -1 => None,
            l => Some(now_ms.saturating_add(l)),
        };
        self.map.insert(
            key.to_string(),
            CacheSlot {
                entry,
                expires_at_ms,
                tick: self.tick,
            },
        );
        let max = self.config.max_entries as usize;
        if self.map.len() > max {
            // The least recently used go; a sixteenth more of a large cache in the same scan,
            // so a stream of new paths costs a scan per max/16 of them, not one each.
            let evict = self.map.len() - max + max / 16;
            let mut ticks: Vec<u64> = self.map.values().map(|slot| slot.tick).collect();
            let (_, newest_evicted, _) = ticks.select_nth_unstable(evict - 1);
            let newest_evicted = *newest_evicted;
            self.map.retain(|_, slot| slot.tick > newest_evicted);
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::resource::ScopeRef;

    fn cfg(pe: &str) -> EnforcerConfig {
        EnforcerConfig::from_json(
            format!(r#"{{"realm":"r","auth-server-url":"http://k","resource":"c","policy-enforcer":{pe}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    fn resource(id: &str, name: &str, uris: &[&str], scopes: &[&str]) -> Resource {
        Resource {
            id: id.into(),
            name: name.into(),
            uris: uris.iter().map(|s| s.to_string()).collect(),
            scopes: scopes
                .iter()
                .map(|s| ScopeRef {
                    name: s.to_string(),
                })
                .collect(),
            kind: None,
        }
    }

    #[test]
    fn server_resources_become_paths_and_config_wins() {
        let c = cfg(r#"{"paths":[{"path":"/public/*","enforcement-mode":"DISABLED"}]}"#);
        assert!(c.loads_paths_from_server());
        let set = PathSet::with_server_resources(
            &c,
            &[
                resource("1", "B", &["/b/{id}", "/b2"], &["view"]),
                resource("2", "A", &["/a"], &[]),
                resource("3", "NoUri", &[], &["x"]),
                resource("4", "Shadowed", &["/public/*"], &["x"]),
            ],
        );
        let paths: Vec<&str> = set
            .entries()
            .iter()
            .map(|e| e.config.path.as_str())
            .collect();
        assert_eq!(paths, vec!["/a", "/b/{id}", "/b2", "/public/*"]);
        let b = set.find("/b/7").unwrap();
        assert_eq!(b.resource.id.as_deref(), Some("1"));
        assert_eq!(b.config.scopes, vec!["view"]);
        assert_eq!(
            set.find("/public/x").unwrap().config.enforcement_mode,
            EnforcementMode::Disabled
        );
    }

    #[test]
    fn binding_sets_the_resource_id() {
        let c = cfg(r#"{"paths":[{"name":"Acc","path":"/account/{id}"}]}"#);
        let mut set = PathSet::from_config(&c);
        assert_eq!(set.find("/account/1").unwrap().resource.id, None);
        set.bind(0, &resource("r1", "Acc", &["/account/{id}"], &[]));
        assert_eq!(
            set.find("/account/1").unwrap().resource.id.as_deref(),
            Some("r1")
        );
        assert!(set.binds_resource_elsewhere("r1"));
    }

    fn pc(lifespan: i64, max: u32) -> PathCache {
        PathCache::new(PathCacheConfig {
            configured: true,
            lifespan_ms: lifespan,
            max_entries: max,
        })
    }

    #[test]
    fn path_cache_expires_and_caches_negatives() {
        let mut c = pc(1000, 10);
        c.put("/x", None, 0);
        assert_eq!(c.get("/x", 999), Some(None));
        assert_eq!(c.get("/x", 1000), None);
        let mut c = pc(-1, 10);
        c.put("/x", None, 0);
        assert_eq!(c.get("/x", i64::MAX), Some(None));
    }

    #[test]
    fn path_cache_disabled_values() {
        for l in [0, -2] {
            let mut c = pc(l, 10);
            c.put("/x", None, 0);
            assert_eq!(c.get("/x", 0), None);
        }
    }

    #[test]
    fn path_cache_is_lru_bounded() {
        let mut c = pc(-1, 2);
        c.put("/a", None, 0);
        c.put("/b", None, 0);
        assert!(c.get("/a", 0).is_some()); // /b is now least recently used
        c.put("/c", None, 0);
        assert_eq!(c.len(), 2);
        assert!(c.get("/b", 0).is_none());
        assert!(c.get("/a", 0).is_some() && c.get("/c", 0).is_some());
        for i in 0..100 {
            c.put(&format!("/k{i}"), None, 0);
        }
        assert_eq!(c.len(), 2);
        // a large cache sheds its least recently used sixteenth at once
        let mut c = pc(-1, 64);
        for i in 0..64 {
            c.put(&format!("/k{i}"), None, 0);
        }
        assert!(c.get("/k0", 0).is_some());
        c.put("/new", None, 0);
        assert_eq!(c.len(), 60);
        assert!(c.get("/k0", 0).is_some() && c.get("/new", 0).is_some());
        assert!((1..=5).all(|i| c.get(&format!("/k{i}"), 0).is_none()));
        assert!(c.get("/k6", 0).is_some());
    }
}
