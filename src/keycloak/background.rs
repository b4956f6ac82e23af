//! Background knowledge an enforcer needs from Keycloak, and when to (re)fetch it: the discovery
//! document, the realm's JWKS, the protection API token (PAT), and the binding of configured paths
//! to server resources (docs/keycloak-enforcer.md §2). Sans-IO: [`Background::due`] says what to fetch now,
//! [`Background::complete`] takes the answer.
//!
//! Rules that keep Keycloak safe from the filter: at most one fetch of each kind in flight, failures
//! back off (1 s doubling to 30 s), a bad answer never replaces a good copy, and an unknown `kid`
//! triggers at most one JWKS refetch per 10 s, never one per request.

use crate::config::{DecisionProtocol, EnforcementMode, EnforcerConfig};
use crate::keycloak::knowledge::Knowledge;
use crate::keycloak::resources::PathSet;
use crate::keycloak::token::Jwks;
use crate::keycloak::uma::{self, ResourceQuery};
use crate::wire::http::{Answer, HttpRequest};

const JWKS_MAX_AGE_MS: i64 = 10 * 60 * 1000;
const JWKS_UNKNOWN_KID_MIN_MS: i64 = 10 * 1000;
const BACKOFF_START_MS: i64 = 1000;
const BACKOFF_MAX_MS: i64 = 30 * 1000;
/// Renew the PAT this long before it expires.
const PAT_MARGIN_MS: i64 = 30 * 1000;

/// How long after configure an unsettled VM looks for the realm's keys, PAT and resources every
/// [`STARTING_TICK_MS`]: a VM whose fetches another VM made finds them in shared data within
/// that much of their arrival, so the first request it can decide is not held by the slower pace.
pub const STARTING_MS: i64 = 3000;
pub const STARTING_TICK_MS: u64 = 10;

/// How often the shell's timer fires: fast while requests wait for a decision another request
/// is asking for, fast while the background knowledge is still being fetched (faster in the
/// first seconds after configure: `starting`), slow once settled.
pub fn tick_period_ms(requests_waiting: bool, settled: bool, starting: bool) -> u64 {
    if requests_waiting {
        5
    } else if settled {
        1000
    } else if starting {
        STARTING_TICK_MS
    } else {
        100
    }
}

/// At most this many rounds of fetches per tick: an answer found in shared data can make the next
/// fetch due at once (a binding needs the PAT), but a tick never loops on it.
pub const ROUNDS_PER_TICK: usize = 4;

/// How a configured path gets its server resource id (Keycloak's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindStep {
    ByName,
    ByUri,
    ByMatchingUri,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    Discovery,
    Jwks,
    Pat,
    /// Resolve configured path `index`.
    Bind {
        index: usize,
        step: BindStep,
    },
    /// Load every server resource (no enforced path configured).
    LoadAll,
}

impl Fetch {
    pub fn name(self) -> &'static str {
        match self {
            Fetch::Discovery => "discovery",
            Fetch::Jwks => "jwks",
            Fetch::Pat => "pat",
            Fetch::Bind { .. } => "resource_lookup",
            Fetch::LoadAll => "resource_load",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    in_flight: bool,
    /// Last success.
    ok_at_ms: Option<i64>,
    /// No new attempt before this time.
    retry_at_ms: i64,
    backoff_ms: i64,
}

impl Slot {
    fn startable(&self, now_ms: i64) -> bool {
        !self.in_flight && now_ms >= self.retry_at_ms
    }

    fn start(&mut self) {
        self.in_flight = true;
    }

    fn succeed(&mut self, now_ms: i64) {
        self.in_flight = false;
        self.ok_at_ms = Some(now_ms);
        self.backoff_ms = 0;
        self.retry_at_ms = 0;
    }

    fn fail(&mut self, now_ms: i64) {
        self.in_flight = false;
        self.backoff_ms = if self.backoff_ms == 0 {
            BACKOFF_START_MS
        } else {
            (self.backoff_ms * 2).min(BACKOFF_MAX_MS)
        };
        self.retry_at_ms = now_ms + self.backoff_ms;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindState {
    /// Static (DISABLED) or already has an id.
    Done,
    Next(BindStep),
    /// Nothing found or ambiguous; the path asks by URI/name instead.
    Unresolved,
}

/// What an enforcer knows of Keycloak, and its fetch schedule.
#[derive(Debug, Default)]
pub struct Background {
    pub jwks: Option<Jwks>,
    jwks_slot: Slot,
    jwks_wanted: bool,
    /// The JWKS fetch in flight was forced by an unknown `kid`.
    pub jwks_forced: bool,
    discovery: Slot,
    pat_slot: Slot,
    pat_expires_ms: i64,
    /// When Keycloak last refused our PAT: a copy in shared data from before is not taken.
    pub pat_refused_at_ms: Option<i64>,
    binds: Vec<BindState>,
    bind_slots: Vec<Slot>,
    load_all: Option<Slot>,
    /// Human-readable notes for the log (new issues since last drained).
    pub notes: Vec<String>,
}

impl Background {
    pub fn new(cfg: &EnforcerConfig) -> Self {
        let binds = cfg
            .paths
            .iter()
            .map(|p| {
                // AuthZEN names a resource by name and type: a path configured by id is looked
                // up too when AuthZEN may decide.
                let id_enough = cfg.proxy.decision_protocol == DecisionProtocol::UmaGrant;
                if p.enforcement_mode == EnforcementMode::Disabled || (p.id.is_some() && id_enough)
                {
                    BindState::Done
                } else if p.name.is_some() {
                    BindState::Next(BindStep::ByName)
                } else {
                    BindState::Next(BindStep::ByUri)
                }
            })
            .collect::<Vec<_>>();
        Background {
            bind_slots: vec![Slot::default(); binds.len()],
            binds,
            load_all: cfg.loads_paths_from_server().then(Slot::default),
            ..Default::default()
        }
    }

    /// Keys are loaded: tokens can be verified.
    pub fn ready(&self) -> bool {
        self.jwks.is_some()
    }

    /// When the realm's keys were last loaded (a JWKS document taken, not merely answered).
    pub fn jwks_loaded_at_ms(&self) -> Option<i64> {
        self.jwks_slot.ok_at_ms
    }

    /// A token named a key we do not have: refetch soon (rate-limited).
    pub fn want_jwks(&mut self) {
        self.jwks_wanted = true;
    }

    pub fn needs_pat(cfg: &EnforcerConfig) -> bool {
        cfg.secret.is_some()
    }

    /// Keycloak refused the PAT (revoked, its session ended, the client's keys rotated): the next
    /// fetch round gets a new one, once per PAT held, whatever its expiry said.
    pub fn pat_refused(&mut self, known: &mut Knowledge, now_ms: i64) {
        known.pat_refused = false;
        let held_since = self.pat_slot.ok_at_ms.unwrap_or(i64::MIN);
        if self.pat_refused_at_ms.is_some_and(|at| at >= held_since) {
            return;
        }
        self.pat_refused_at_ms = Some(now_ms);
        self.pat_expires_ms = now_ms;
        self.notes
            .push("Keycloak refused the PAT as a caller: fetching a new one".into());
    }

    /// The fetches to start now; each is marked in flight.
    pub fn due(
        &mut self,
        cfg: &EnforcerConfig,
        known: &Knowledge,
        now_ms: i64,
    ) -> Vec<(Fetch, HttpRequest)> {
        let mut out = Vec::new();
        if self.discovery.ok_at_ms.is_none() && self.discovery.startable(now_ms) {
            self.discovery.start();
            out.push((Fetch::Discovery, uma::discovery_request(cfg)));
        }
        let jwks_age = self.jwks_slot.ok_at_ms.map(|t| now_ms - t);
        let jwks_due = match jwks_age {
            None => true,
            Some(age) => {
                age >= JWKS_MAX_AGE_MS || (self.jwks_wanted && age >= JWKS_UNKNOWN_KID_MIN_MS)
            }
        };
        if jwks_due && self.jwks_slot.startable(now_ms) {
            self.jwks_slot.start();
            self.jwks_forced = self.jwks_wanted && jwks_age.is_some();
            self.jwks_wanted = false;
            out.push((Fetch::Jwks, uma::jwks_request(cfg)));
        }
        if Self::needs_pat(cfg)
            && (known.pat.is_none() || now_ms >= self.pat_expires_ms - PAT_MARGIN_MS)
            && self.pat_slot.startable(now_ms)
        {
            self.pat_slot.start();
            out.push((Fetch::Pat, uma::pat_request(cfg)));
        }
        let Some(pat) = known.pat.as_deref() else {
            return out;
        };
        if let Some(slot) = self.load_all.as_mut() {
            if slot.ok_at_ms.is_none() && slot.startable(now_ms) {
                slot.start();
                let q = ResourceQuery::default();
                out.push((Fetch::LoadAll, uma::resource_query_request(cfg, pat, &q)));
            }
        }
        for (index, state) in self.binds.iter().enumerate() {
            let BindState::Next(step) = *state else {
                continue;
            };
            let slot = &mut self.bind_slots[index];
            if !slot.startable(now_ms) {
                continue;
            }
            let p = &cfg.paths[index];
            let q = match step {
                BindStep::ByName => ResourceQuery {
                    name: p.name.clone(),
                    owner: Some(cfg.client_id.clone()),
                    exact_name: true,
                    ..Default::default()
                },
                BindStep::ByUri => ResourceQuery {
                    uri: Some(p.path.clone()),
                    ..Default::default()
                },
                BindStep::ByMatchingUri => ResourceQuery {
                    uri: Some(p.path.clone()),
                    matching_uri: true,
                    ..Default::default()
                },
            };
            slot.start();
            out.push((
                Fetch::Bind { index, step },
                uma::resource_query_request(cfg, pat, &q),
            ));
        }
        out
    }

    /// A fetch that was not started after all (another VM holds its lease): no backoff.
    pub fn skip(&mut self, fetch: Fetch) {
        let slot = match fetch {
            Fetch::Discovery => &mut self.discovery,
            Fetch::Jwks => &mut self.jwks_slot,
            Fetch::Pat => &mut self.pat_slot,
            Fetch::LoadAll => match self.load_all.as_mut() {
                Some(s) => s,
                None => return,
            },
            Fetch::Bind { index, .. } => match self.bind_slots.get_mut(index) {
                Some(s) => s,
                None => return,
            },
        };
        slot.in_flight = false;
    }

    /// Takes an answer (`at_ms`: when it was obtained). Never replaces good state with a bad answer.
    pub fn complete(
        &mut self,
        cfg: &EnforcerConfig,
        known: &mut Knowledge,
        fetch: Fetch,
        answer: Answer,
        now_ms: i64,
    ) {
        let (status, body) = match answer {
            Answer::Http { status, body } => (status, body),
            Answer::NoAnswer => (0, &[][..]),
        };
        match fetch {
            Fetch::Discovery => match uma::parse_discovery(status, body) {
                Ok(d) => {
                    self.discovery.succeed(now_ms);
                    if d.issuer != cfg.proxy.issuer {
                        self.notes.push(format!(
                            "Keycloak announces issuer {} but tokens are expected from {} (set kcpep.issuer if that is intended)",
                            d.issuer, cfg.proxy.issuer
                        ));
                    }
                    known.issuer = d.issuer;
                }
                Err(e) => {
                    self.discovery.fail(now_ms);
                    self.notes.push(format!(
                        "discovery failed: {}",
                        describe(status, &e.to_string())
                    ));
                }
            },
            Fetch::Jwks => {
                let parsed = if status == 200 {
                    Jwks::parse(body).map_err(|e| e.to_string())
                } else {
                    Err(describe(status, ""))
                };
                match parsed {
                    Ok(jwks) => {
                        if !jwks.unchecked.is_empty() {
                            self.notes.push(format!(
                                "realm keys {} cannot be checked here and tokens they sign get 401: {}",
                                jwks.unchecked.join(", "),
                                crate::keycloak::token::UNCHECKED_KEYS_HINT
                            ));
                        }
                        self.jwks = Some(jwks);
                        self.jwks_slot.succeed(now_ms);
                    }
                    Err(why) => {
                        self.jwks_slot.fail(now_ms);
                        self.notes.push(format!(
                            "JWKS fetch failed (keeping the last good keys): {why}"
                        ));
                    }
                }
            }
            Fetch::Pat => match uma::parse_token_response(status, body) {
                Ok(t) => {
                    self.pat_expires_ms = now_ms + t.expires_in.unwrap_or(60).max(1) * 1000;
                    known.pat = Some(t.access_token);
                    self.pat_slot.succeed(now_ms);
                }
                Err(e) => {
                    self.pat_slot.fail(now_ms);
                    self.notes.push(format!(
                        "PAT (client_credentials) failed: {}",
                        describe(status, &e.to_string())
                    ));
                }
            },
            Fetch::LoadAll => match uma::parse_resources(status, body) {
                Ok(resources) => {
                    known.paths = PathSet::with_server_resources(cfg, &resources);
                    if let Some(s) = self.load_all.as_mut() {
                        s.succeed(now_ms)
                    }
                }
                Err(e) => {
                    if let Some(s) = self.load_all.as_mut() {
                        s.fail(now_ms)
                    }
                    self.notes.push(format!(
                        "loading resources failed: {}",
                        describe(status, &e.to_string())
                    ));
                }
            },
            Fetch::Bind { index, step } => {
                let Some(slot) = self.bind_slots.get_mut(index) else {
                    return;
                };
                match uma::parse_resources(status, body) {
                    Err(e) => {
                        slot.fail(now_ms);
                        self.notes.push(format!(
                            "resolving path {} failed: {}",
                            cfg.paths[index].path,
                            describe(status, &e.to_string())
                        ));
                    }
                    Ok(found) => {
                        slot.succeed(now_ms);
                        self.binds[index] = match (step, found.as_slice()) {
                            (_, [one]) => {
                                known.paths.bind(index, one);
                                BindState::Done
                            }
                            (BindStep::ByName, [first, ..]) => {
                                known.paths.bind(index, first);
                                BindState::Done
                            }
                            (BindStep::ByName, []) => {
                                self.notes.push(format!(
                                    "no resource named {:?}; path {} asks Keycloak by name",
                                    cfg.paths[index].name.as_deref().unwrap_or(""),
                                    cfg.paths[index].path
                                ));
                                BindState::Unresolved
                            }
                            (BindStep::ByUri, []) => BindState::Next(BindStep::ByMatchingUri),
                            (_, []) => {
                                self.notes.push(format!(
                                    "no resource for path {}; it asks Keycloak by URI",
                                    cfg.paths[index].path
                                ));
                                BindState::Unresolved
                            }
                            (_, _) => {
                                self.notes.push(format!(
                                    "several resources match path {}; name one with \"name\"",
                                    cfg.paths[index].path
                                ));
                                BindState::Unresolved
                            }
                        };
                    }
                }
            }
        }
    }

    /// Everything fetched once (for the tick period: fast until then).
    pub fn settled(&self) -> bool {
        self.jwks.is_some()
            && self.discovery.ok_at_ms.is_some()
            && !self.pat_slot.in_flight
            && self.binds.iter().all(|b| !matches!(b, BindState::Next(_)))
            && self.load_all.is_none_or(|s| s.ok_at_ms.is_some())
    }
}

fn describe(status: u16, detail: &str) -> String {
    match (status, detail.is_empty()) {
        (0, _) => "no answer (timeout or reset)".to_string(),
        (s, true) => format!("HTTP {s}"),
        (_, false) => detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_is_fast_only_while_something_waits() {
        assert_eq!(
            tick_period_ms(true, true, false),
            5,
            "requests wait for an answer"
        );
        assert_eq!(
            tick_period_ms(false, false, false),
            100,
            "knowledge still being fetched"
        );
        assert_eq!(
            tick_period_ms(false, false, true),
            STARTING_TICK_MS,
            "knowledge still being fetched, just configured"
        );
        assert_eq!(tick_period_ms(false, true, true), 1000, "settled");
    }

    fn cfg() -> EnforcerConfig {
        EnforcerConfig::from_json(
            br#"{"realm":"bank","auth-server-url":"http://kc","resource":"bank-api",
            "credentials":{"secret":"s"},
            "policy-enforcer":{"paths":[{"name":"Acc","path":"/account/{id}"},{"path":"/r/*"},
                                        {"path":"/p/*","enforcement-mode":"DISABLED"}]}}"#,
        )
        .unwrap()
    }

    fn jwks_body() -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/jwks.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn kinds(v: &[(Fetch, HttpRequest)]) -> Vec<Fetch> {
        v.iter().map(|(f, _)| *f).collect()
    }

    #[test]
    fn start_fetches_once_and_single_flight() {
        let c = cfg();
        let mut known = Knowledge::new(&c);
        let mut bg = Background::new(&c);
        assert_eq!(
            kinds(&bg.due(&c, &known, 0)),
            vec![Fetch::Discovery, Fetch::Jwks, Fetch::Pat]
        );
        assert!(
            bg.due(&c, &known, 1).is_empty(),
            "nothing twice while in flight"
        );
        bg.complete(
            &c,
            &mut known,
            Fetch::Pat,
            Answer::Http {
                status: 200,
                body: br#"{"access_token":"P","expires_in":300}"#,
            },
            5,
        );
        assert_eq!(known.pat.as_deref(), Some("P"));
        let next = bg.due(&c, &known, 6);
        assert_eq!(
            kinds(&next),
            vec![
                Fetch::Bind {
                    index: 0,
                    step: BindStep::ByName
                },
                Fetch::Bind {
                    index: 1,
                    step: BindStep::ByUri
                }
            ]
        );
        assert!(next[0]
            .1
            .path
            .contains("name=Acc&owner=bank-api&exactName=true"));
        bg.complete(
            &c,
            &mut known,
            Fetch::Bind {
                index: 0,
                step: BindStep::ByName,
            },
            Answer::Http {
                status: 200,
                body: br#"[{"_id":"r1","name":"Acc"}]"#,
            },
            7,
        );
        bg.complete(
            &c,
            &mut known,
            Fetch::Bind {
                index: 1,
                step: BindStep::ByUri,
            },
            Answer::Http {
                status: 200,
                body: b"[]",
            },
            7,
        );
        let next = bg.due(&c, &known, 8);
        assert_eq!(
            kinds(&next),
            vec![Fetch::Bind {
                index: 1,
                step: BindStep::ByMatchingUri
            }]
        );
        assert!(next[0].1.path.contains("matchingUri=true"));
        assert_eq!(
            known
                .paths
                .find("/account/1")
                .unwrap()
                .resource
                .id
                .as_deref(),
            Some("r1")
        );
    }

    #[test]
    fn bad_jwks_keeps_the_last_good_copy_and_backs_off() {
        let c = cfg();
        let mut known = Knowledge::new(&c);
        let mut bg = Background::new(&c);
        bg.due(&c, &known, 0);
        bg.complete(
            &c,
            &mut known,
            Fetch::Jwks,
            Answer::Http {
                status: 200,
                body: &jwks_body(),
            },
            0,
        );
        assert!(bg.ready());
        // refetch after max age; Envoy's 503 for an unreachable Keycloak must not replace the keys
        assert!(kinds(&bg.due(&c, &known, JWKS_MAX_AGE_MS)).contains(&Fetch::Jwks));
        bg.complete(
            &c,
            &mut known,
            Fetch::Jwks,
            Answer::Http {
                status: 503,
                body: b"upstream connect error",
            },
            JWKS_MAX_AGE_MS,
        );
        assert!(bg.ready());
        assert!(
            !kinds(&bg.due(&c, &known, JWKS_MAX_AGE_MS + 500)).contains(&Fetch::Jwks),
            "backing off"
        );
        assert!(kinds(&bg.due(&c, &known, JWKS_MAX_AGE_MS + 1000)).contains(&Fetch::Jwks));
        bg.complete(
            &c,
            &mut known,
            Fetch::Jwks,
            Answer::Http {
                status: 200,
                body: b"<html>",
            },
            JWKS_MAX_AGE_MS + 1000,
        );
        assert!(bg.ready());
        assert!(
            !kinds(&bg.due(&c, &known, JWKS_MAX_AGE_MS + 2500)).contains(&Fetch::Jwks),
            "backoff doubled"
        );
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let c = cfg();
        let mut known = Knowledge::new(&c);
        let mut bg = Background::new(&c);
        bg.due(&c, &known, 0);
        bg.complete(
            &c,
            &mut known,
            Fetch::Jwks,
            Answer::Http {
                status: 200,
                body: &jwks_body(),
            },
            0,
        );
        bg.want_jwks();
        assert!(!kinds(&bg.due(&c, &known, 5_000)).contains(&Fetch::Jwks));
        assert!(kinds(&bg.due(&c, &known, 10_000)).contains(&Fetch::Jwks));
    }

    #[test]
    fn pat_is_renewed_before_expiry() {
        let c = cfg();
        let mut known = Knowledge::new(&c);
        let mut bg = Background::new(&c);
        bg.due(&c, &known, 0);
        bg.complete(
            &c,
            &mut known,
            Fetch::Pat,
            Answer::Http {
                status: 200,
                body: br#"{"access_token":"P","expires_in":60}"#,
            },
            0,
        );
        assert!(!kinds(&bg.due(&c, &known, 29_000)).contains(&Fetch::Pat));
        assert!(kinds(&bg.due(&c, &known, 30_000)).contains(&Fetch::Pat));
        bg.complete(&c, &mut known, Fetch::Pat, Answer::NoAnswer, 30_000);
        assert_eq!(known.pat.as_deref(), Some("P"), "old PAT kept on failure");
    }

    #[test]
    fn a_refused_pat_is_fetched_again_once() {
        let c = cfg();
        let mut known = Knowledge::new(&c);
        let mut bg = Background::new(&c);
        let pat = |bg: &mut Background, known: &mut Knowledge, token: &str, at: i64| {
            let body = format!(r#"{{"access_token":"{token}","expires_in":300}}"#);
            bg.complete(
                &c,
                known,
                Fetch::Pat,
                Answer::Http {
                    status: 200,
                    body: body.as_bytes(),
                },
                at,
            );
        };
        bg.due(&c, &known, 0);
        pat(&mut bg, &mut known, "P1", 0);
        assert!(!kinds(&bg.due(&c, &known, 1_000)).contains(&Fetch::Pat));
        bg.pat_refused(&mut known, 1_000);
        assert_eq!(bg.pat_refused_at_ms, Some(1_000));
        assert!(kinds(&bg.due(&c, &known, 1_000)).contains(&Fetch::Pat));
        // more refusals of the same PAT (requests in flight) ask for nothing more
        bg.complete(&c, &mut known, Fetch::Pat, Answer::NoAnswer, 1_100);
        bg.pat_refused(&mut known, 1_200);
        assert_eq!(bg.pat_refused_at_ms, Some(1_000));
        pat(&mut bg, &mut known, "P2", 5_000);
        assert_eq!(known.pat.as_deref(), Some("P2"));
        assert!(!kinds(&bg.due(&c, &known, 6_000)).contains(&Fetch::Pat));
        // the new PAT refused in turn: fetched again
        bg.pat_refused(&mut known, 7_000);
        assert!(kinds(&bg.due(&c, &known, 7_000)).contains(&Fetch::Pat));
    }

    #[test]
    fn no_enforced_paths_loads_all_resources() {
        let c = EnforcerConfig::from_json(br#"{"realm":"bank","auth-server-url":"http://kc","resource":"bank-api","credentials":{"secret":"s"}}"#).unwrap();
        let mut known = Knowledge::new(&c);
        let mut bg = Background::new(&c);
        bg.due(&c, &known, 0);
        bg.complete(
            &c,
            &mut known,
            Fetch::Pat,
            Answer::Http {
                status: 200,
                body: br#"{"access_token":"P","expires_in":300}"#,
            },
            0,
        );
        let next = bg.due(&c, &known, 1);
        assert_eq!(kinds(&next), vec![Fetch::LoadAll]);
        bg.complete(&c, &mut known, Fetch::LoadAll, Answer::Http { status: 200, body: br#"[{"_id":"r1","name":"A","uris":["/a/{id}"],"resource_scopes":[{"name":"v"}]}]"# }, 2);
        assert_eq!(
            known.paths.find("/a/1").unwrap().resource.id.as_deref(),
            Some("r1")
        );
    }
}
