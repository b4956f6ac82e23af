//! Decision cache rules: what a decision is keyed by, how long it lives, how it is stored in a
//! bounded table of shared-data slots, and how concurrent identical misses coalesce.
//!
//! Keycloak's Java enforcer asks the token endpoint on every request that carries a plain access
//! token. Here a decision is remembered per (client, the enforcer's rules digest, token digest,
//! resource, scopes, claims digest) until the earlier of the configured lifespan and the token's
//! own `exp`; denials get a shorter lifespan of their own. Tokens are never stored, only their
//! SHA-256.
//!
//! Shared data has no eviction, so the table is fixed: `max-entries` slots addressed by the key's
//! hash (`kcpep/v1/dc/<cluster>/<authority>/<realm>/<client>/<slot>`); a new decision overwrites whatever its slot held. Memory is
//! bounded by `max-entries` x slot size whatever the key cardinality; the slots are made, empty, at
//! configure, so their keys' memory is taken at start and CAS is exact. A slot can also hold a
//! *pending* marker: the first VM to miss claims the key with CAS, and other requests for it wait
//! for the answer instead of calling Keycloak themselves (up to a bound).

use crate::config::CacheConfig;
use crate::store::lanes::lanes;

pub type Key = [u8; 32];

/// The identity of a decision: four SipHash-1-3 passes with fixed keys (std's `DefaultHasher`),
/// deterministic within one build, so every VM of the module computes the same key. Several times
/// cheaper in wasm than SHA-256, and safe here: the only input a client varies is the token's
/// SHA-256 digest, and a valid token must be issued by Keycloak.
pub fn key(
    client: &str,
    rules: u64,
    token_digest: &[u8; 32],
    resource: &str,
    scopes: &[String],
    claims_digest: Option<&[u8; 32]>,
) -> Key {
    let mut sorted: Vec<&str> = scopes.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let parts = (client, rules, token_digest, resource, sorted, claims_digest);
    let mut out = [0u8; 32];
    for (chunk, lane) in out.chunks_exact_mut(8).zip(lanes::<4>(&parts)) {
        chunk.copy_from_slice(&lane.to_be_bytes());
    }
    out
}

/// The shared-data key counting the slots of a client's table that hold an entry (the "cache
/// entries in use" gauge): a slot, once written, holds a decision until it is reused.
pub fn slots_used_key(table: &str) -> String {
    format!("kcpep/v1/dc-used/{table}")
}

/// The shared path cache: Keycloak's answers to lazy `resource_set?uri=..&matchingUri=true` lookups,
/// one per normalized path, in a table of `path-cache.max-entries` slots per realm and client
/// (`table`, [`crate::config::EnforcerConfig::shared_table`]); enforcers with another size keep
/// a table of their own. A new path overwrites its slot; the value names its path, so a slot
/// reused by another path is a miss.
pub fn path_slot_key(table: &str, path: &str, slots: u32) -> String {
    let slots = u64::from(slots.max(1));
    let [h] = lanes::<1>(&path);
    format!("kcpep/v1/pc/{table}/{slots}/{}", h % slots)
}

/// `expires_ms (8 bytes BE) | path length (4 bytes BE) | path | Keycloak's answer`.
pub fn encode_path(path: &str, expires_ms: i64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + path.len() + body.len());
    v.extend_from_slice(&expires_ms.to_be_bytes());
    v.extend_from_slice(&(path.len() as u32).to_be_bytes());
    v.extend_from_slice(path.as_bytes());
    v.extend_from_slice(body);
    v
}

/// Keycloak's answer for `path`, if the slot holds this path's and it has not expired.
pub fn decode_path<'v>(path: &str, value: &'v [u8], now_ms: i64) -> Option<&'v [u8]> {
    let expires = i64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let len = u32::from_be_bytes(value.get(8..12)?.try_into().ok()?) as usize;
    let stored = value.get(12..12 + len)?;
    (stored == path.as_bytes() && now_ms < expires).then(|| &value[12 + len..])
}

/// The shared-data key of the slot a decision key lives in.
pub fn slot_key(table: &str, key: &Key, slots: u32) -> String {
    let n = u64::from_be_bytes([
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
    ]);
    slot_name(table, n % u64::from(slots.max(1)))
}

fn slot_name(table: &str, n: u64) -> String {
    crate::store::names::numbered_key("kcpep/v1/dc/", table, '/', n)
}

/// Every slot key of a table of `slots` slots, the ones [`slot_key`] gives.
pub fn slot_keys(table: &str, slots: u32) -> impl Iterator<Item = String> + '_ {
    (0..u64::from(slots.max(1))).map(move |n| slot_name(table, n))
}

/// The slot keys of these enforcers' decision tables, each table once (enforcers of one client
/// share it), to make at configure.
pub fn reserved_slot_keys<'c>(
    configs: impl Iterator<Item = &'c crate::config::EnforcerConfig> + 'c,
) -> impl Iterator<Item = String> + 'c {
    // a configure-time dedup over a few enforcers: a scan, not a set type's code
    let mut done: Vec<(&str, u32)> = Vec::new();
    configs
        .filter(move |cfg| {
            let table = (
                cfg.shared_table.as_str(),
                cfg.proxy.decision_cache.max_entries,
            );
            let new = table.1 > 0 && !done.contains(&table);
            if new {
                done.push(table);
            }
            new
        })
        .flat_map(|cfg| slot_keys(&cfg.shared_table, cfg.proxy.decision_cache.max_entries))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, with the permissions header value for the upstream.
    Allow(String),
    Deny,
}

/// What a slot holds for a key: a decision, or a claim that one is being asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Decided {
        verdict: Verdict,
        expires_ms: i64,
    },
    /// Someone is asking Keycloak; wait until `until_ms`.
    Pending {
        until_ms: i64,
    },
}

/// What a lookup means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(Verdict),
    /// Another request is asking Keycloak for the same key.
    Wait,
    /// Ask Keycloak (and claim the key).
    Miss,
}

const MAGIC: u8 = 0xd1;

pub fn encode(key: &Key, entry: &State) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.push(MAGIC);
    v.extend_from_slice(key);
    match entry {
        State::Pending { until_ms } => {
            v.push(0);
            v.extend_from_slice(&until_ms.to_be_bytes());
        }
        State::Decided {
            verdict,
            expires_ms,
        } => {
            v.push(match verdict {
                Verdict::Allow(_) => 1,
                Verdict::Deny => 2,
            });
            v.extend_from_slice(&expires_ms.to_be_bytes());
            if let Verdict::Allow(perms) = verdict {
                v.extend_from_slice(perms.as_bytes());
            }
        }
    }
    v
}

/// The entry for `key` in a slot value; `None` if the slot holds another key or garbage.
pub fn decode(key: &Key, value: &[u8]) -> Option<State> {
    if value.len() < 42 || value[0] != MAGIC || &value[1..33] != key {
        return None;
    }
    let t = i64::from_be_bytes(value[34..42].try_into().ok()?);
    match value[33] {
        0 => Some(State::Pending { until_ms: t }),
        1 => Some(State::Decided {
            verdict: Verdict::Allow(String::from_utf8(value[42..].to_vec()).ok()?),
            expires_ms: t,
        }),
        2 => Some(State::Decided {
            verdict: Verdict::Deny,
            expires_ms: t,
        }),
        _ => None,
    }
}

/// Reads a slot for a request.
pub fn lookup(entry: Option<&State>, now_ms: i64) -> Lookup {
    match entry {
        Some(State::Decided {
            verdict,
            expires_ms,
        }) if now_ms < *expires_ms => Lookup::Hit(verdict.clone()),
        Some(State::Pending { until_ms }) if now_ms < *until_ms => Lookup::Wait,
        _ => Lookup::Miss,
    }
}

/// Whether an ALLOW that expired at `expires_ms` may still be served while Keycloak is failing
/// (`stale-on-error-ms`, off by default). Only allows are kept for this; a denial never is.
pub fn stale_usable(expires_ms: i64, now_ms: i64, cfg: &CacheConfig) -> bool {
    cfg.stale_on_error_ms > 0 && now_ms < expires_ms.saturating_add(cfg.stale_on_error_ms)
}

/// When a fresh decision expires: the earlier of its lifespan and the token's `exp`.
pub fn expiry(verdict: &Verdict, now_ms: i64, token_exp_s: i64, cfg: &CacheConfig) -> i64 {
    let life = match verdict {
        Verdict::Allow(_) => cfg.allow_lifespan_ms,
        Verdict::Deny => cfg.deny_lifespan_ms,
    };
    now_ms
        .saturating_add(life)
        .min(token_exp_s.saturating_mul(1000))
}

/// Whether a parked request (waiting on another request's identical Keycloak call) decides
/// again: its answer is in the table, or, on the VM's tick only (`on_tick`), its wait is over
/// and it asks Keycloak itself. A request's own callback wakes only answered ones: it must not
/// send callouts for other requests.
pub fn wakes(found: Option<&State>, now_ms: i64, until_ms: i64, on_tick: bool) -> bool {
    matches!(lookup(found, now_ms), Lookup::Hit(_)) || (on_tick && now_ms >= until_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_path_answers_name_their_path_and_expire() {
        let v = encode_path("/reports/7", 1000, b"[{\"_id\":\"r\"}]");
        assert_eq!(
            decode_path("/reports/7", &v, 999),
            Some(&b"[{\"_id\":\"r\"}]"[..])
        );
        assert_eq!(decode_path("/reports/7", &v, 1000), None);
        assert_eq!(
            decode_path("/reports/8", &v, 0),
            None,
            "a slot reused by another path"
        );
        assert_eq!(decode_path("/reports/7", &v[..10], 0), None);
        assert!(path_slot_key("c", "/a", 10).starts_with("kcpep/v1/pc/c/"));
        assert_eq!(path_slot_key("c", "/a", 10), path_slot_key("c", "/a", 10));
    }

    #[test]
    fn the_reserved_slots_are_the_ones_keys_land_in() {
        let all: std::collections::HashSet<String> = slot_keys("t", 50).collect();
        assert_eq!(all.len(), 50);
        for n in 0..200u8 {
            let k = key("c", 1, &[n; 32], "r", &[], None);
            assert!(all.contains(&slot_key("t", &k, 50)), "key {n}");
        }
    }

    #[test]
    fn each_table_is_reserved_once() {
        let config = |client: &str, entries: u32| {
            crate::config::EnforcerConfig::from_value(
                &serde_json::json!({"realm": "r", "auth-server-url": "http://kc", "resource": client,
                    "credentials": {"secret": "s"},
                    "kcpep": {"decision-cache": {"max-entries": entries}}}),
                "",
            )
            .unwrap()
        };
        let (a, a2, b, off) = (
            config("a", 3),
            config("a", 3),
            config("b", 2),
            config("c", 0),
        );
        let keys: Vec<String> = reserved_slot_keys([&a, &a2, &b, &off].into_iter()).collect();
        assert_eq!(keys.len(), 5, "{keys:?}");
        assert!(keys.contains(&slot_name(&b.shared_table, 1)));
    }

    fn cfg() -> CacheConfig {
        CacheConfig {
            stale_on_error_ms: 10_000,
            ..CacheConfig::default()
        }
    }

    #[test]
    fn keys_cover_every_part_and_ignore_scope_order() {
        let t1 = [1u8; 32];
        let t2 = [2u8; 32];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let base = key("c", 0, &t1, "r", &s(&["a", "b"]), None);
        assert_eq!(base, key("c", 0, &t1, "r", &s(&["b", "a"]), None));
        assert_ne!(base, key("c", 0, &t2, "r", &s(&["a", "b"]), None));
        assert_ne!(base, key("d", 0, &t1, "r", &s(&["a", "b"]), None));
        assert_ne!(base, key("c", 0, &t1, "r2", &s(&["a", "b"]), None));
        assert_ne!(base, key("c", 0, &t1, "r", &s(&["a"]), None));
        assert_ne!(base, key("c", 0, &t1, "r", &s(&["a", "b"]), Some(&[9; 32])));
        assert_ne!(
            base,
            key("c", 1, &t1, "r", &s(&["a", "b"]), None),
            "other rules"
        );
        // no ambiguity between fields
        assert_ne!(
            key("ab", 0, &t1, "c", &[], None),
            key("a", 0, &t1, "bc", &[], None)
        );
    }

    #[test]
    fn slots_are_bounded() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..5000u32 {
            let k = key("c", 0, &[0; 32], &i.to_string(), &[], None);
            seen.insert(slot_key("c", &k, 64));
        }
        assert_eq!(seen.len(), 64, "5000 keys land in exactly 64 slots");
    }

    #[test]
    fn entries_round_trip_and_other_keys_miss() {
        let k = key("c", 0, &[1; 32], "r", &[], None);
        let other = key("c", 0, &[2; 32], "r", &[], None);
        for e in [
            State::Pending { until_ms: 5 },
            State::Decided {
                verdict: Verdict::Deny,
                expires_ms: 7,
            },
            State::Decided {
                verdict: Verdict::Allow("[{\"rsid\":\"x\"}]".into()),
                expires_ms: 9,
            },
        ] {
            let v = encode(&k, &e);
            assert_eq!(decode(&k, &v), Some(e));
            assert_eq!(decode(&other, &v), None, "a slot collision is a miss");
        }
        assert_eq!(decode(&k, b"junk"), None);
    }

    #[test]
    fn lookup_rules() {
        let allow = State::Decided {
            verdict: Verdict::Allow("p".into()),
            expires_ms: 100,
        };
        assert_eq!(
            lookup(Some(&allow), 99),
            Lookup::Hit(Verdict::Allow("p".into()))
        );
        assert_eq!(lookup(Some(&allow), 100), Lookup::Miss);
        assert_eq!(
            lookup(Some(&State::Pending { until_ms: 50 }), 49),
            Lookup::Wait
        );
        assert_eq!(
            lookup(Some(&State::Pending { until_ms: 50 }), 50),
            Lookup::Miss,
            "a stuck claim expires"
        );
        assert_eq!(lookup(None, 0), Lookup::Miss);
    }

    #[test]
    fn expiry_is_bounded_by_the_token() {
        let c = cfg();
        assert_eq!(
            expiry(&Verdict::Allow(String::new()), 1_000, 1_000_000, &c),
            31_000
        );
        assert_eq!(expiry(&Verdict::Deny, 1_000, 1_000_000, &c), 6_000);
        assert_eq!(
            expiry(&Verdict::Allow(String::new()), 1_000, 10, &c),
            10_000,
            "token exp first"
        );
    }

    #[test]
    fn allows_go_stale_only_for_the_window() {
        let c = cfg();
        assert!(stale_usable(100, 5_000, &c));
        assert!(!stale_usable(100, 10_100, &c));
        assert!(
            !stale_usable(100, 500, &CacheConfig::default()),
            "off by default"
        );
    }

    #[test]
    fn a_parked_request_wakes_on_its_answer_or_on_the_tick_after_its_wait() {
        let answer = State::Decided {
            verdict: Verdict::Deny,
            expires_ms: 500,
        };
        let pending = State::Pending { until_ms: 300 };
        // the answer wakes it from anywhere, while it is fresh
        assert!(wakes(Some(&answer), 100, 300, false));
        assert!(!wakes(Some(&answer), 600, 700, false));
        // still pending: only the tick, only once the wait is over
        assert!(!wakes(Some(&pending), 100, 300, true));
        assert!(!wakes(Some(&pending), 400, 300, false));
        assert!(wakes(Some(&pending), 400, 300, true));
        assert!(wakes(None, 300, 300, true));
    }
}
