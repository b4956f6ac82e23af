//! What the filter counts, decided here: the events a request or a background fetch gives rise
//! to, the counters each one moves, and which Keycloak endpoint a call went to. The shell defines
//! one proxy-wasm metric per [`Counter`] (named `kcpep.<name>`) and increments what
//! [`Event::counters`] names; it decides nothing about them.

use crate::enforce::binding::Refusal;
use crate::enforce::step::CacheUse;

/// The Keycloak endpoints calls are counted by (`kcpep.keycloak.calls.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    ResourceSet,
    Permission,
    Certs,
    /// Discovery, and anything else.
    Discovery,
    /// AuthZEN evaluations (`kcpep.decision-protocol`).
    Authzen,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Token,
        Endpoint::ResourceSet,
        Endpoint::Permission,
        Endpoint::Certs,
        Endpoint::Discovery,
        Endpoint::Authzen,
    ];

    /// The endpoint a request path goes to (the query aside).
    pub fn of_path(path: &str) -> Endpoint {
        let p = path.split('?').next().unwrap_or(path);
        if p.ends_with("/token") {
            Endpoint::Token
        } else if p.ends_with("/resource_set") {
            Endpoint::ResourceSet
        } else if p.ends_with("/permission") {
            Endpoint::Permission
        } else if p.ends_with("/certs") {
            Endpoint::Certs
        } else if p.ends_with("/authzen/access/v1/evaluations") {
            Endpoint::Authzen
        } else {
            Endpoint::Discovery
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::ResourceSet => "resource_set",
            Endpoint::Permission => "permission",
            Endpoint::Certs => "certs",
            Endpoint::Discovery => "discovery",
            Endpoint::Authzen => "authzen",
        }
    }
}

/// One counter (`kcpep.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    /// 401, 403, 302, 503, 400, 413; any other status is `DeniedOther`.
    Denied(u16),
    DeniedOther,
    DryRunDenied,
    ClaimCalls,
    ClaimErrors,
    CacheHit,
    CacheMiss,
    CacheStale,
    CacheCoalesced,
    Calls(Endpoint),
    /// Decisions a request asked Keycloak for (UMA grants on the token endpoint, AuthZEN
    /// evaluations), apart from the background's PAT, so "was Keycloak asked for this request"
    /// has a counter nothing else moves.
    Grants,
    KeycloakErrors,
    KeycloakTimeouts,
    /// A sender constraint refused, by reason (a [`Refusal`]'s counter name).
    Binding(&'static str),
}

const DENIED: [u16; 6] = [401, 403, 302, 503, 400, 413];

impl Counter {
    /// Every counter, in a fixed order ([`Counter::index`] is the position here).
    pub fn all() -> Vec<Counter> {
        let mut all = vec![Counter::Allowed];
        all.extend(DENIED.map(Counter::Denied));
        all.extend([
            Counter::DeniedOther,
            Counter::DryRunDenied,
            Counter::ClaimCalls,
            Counter::ClaimErrors,
            Counter::CacheHit,
            Counter::CacheMiss,
            Counter::CacheStale,
            Counter::CacheCoalesced,
        ]);
        all.extend(Endpoint::ALL.map(Counter::Calls));
        all.extend([
            Counter::Grants,
            Counter::KeycloakErrors,
            Counter::KeycloakTimeouts,
        ]);
        all.extend(Refusal::counters().into_iter().map(Counter::Binding));
        all
    }

    /// Its position in [`Counter::all`].
    pub fn index(self) -> usize {
        let fixed = |c: Counter| Counter::all().iter().position(|x| *x == c);
        match self {
            Counter::Allowed => 0,
            Counter::Denied(s) => DENIED.iter().position(|d| *d == s).map_or(7, |i| 1 + i),
            Counter::DeniedOther => 7,
            Counter::DryRunDenied => 8,
            Counter::ClaimCalls => 9,
            Counter::ClaimErrors => 10,
            Counter::CacheHit => 11,
            Counter::CacheMiss => 12,
            Counter::CacheStale => 13,
            Counter::CacheCoalesced => 14,
            Counter::Calls(e) => 15 + Endpoint::ALL.iter().position(|x| *x == e).unwrap_or(4),
            Counter::Grants => 21,
            Counter::KeycloakErrors => 22,
            Counter::KeycloakTimeouts => 23,
            // rare (a refusal): looked up
            Counter::Binding(_) => fixed(self).unwrap_or(0),
        }
    }

    /// The metric's name after `kcpep.`.
    pub fn name(self) -> String {
        match self {
            Counter::Allowed => "requests.allowed".into(),
            Counter::Denied(s) => format!("requests.denied.{s}"),
            Counter::DeniedOther => "requests.denied.other".into(),
            Counter::DryRunDenied => "requests.dry_run_denied".into(),
            Counter::ClaimCalls => "claims.calls".into(),
            Counter::ClaimErrors => "claims.errors".into(),
            Counter::CacheHit => "cache.hit".into(),
            Counter::CacheMiss => "cache.miss".into(),
            Counter::CacheStale => "cache.stale".into(),
            Counter::CacheCoalesced => "cache.coalesced".into(),
            Counter::Calls(e) => format!("keycloak.calls.{}", e.name()),
            Counter::Grants => "keycloak.grants".into(),
            Counter::KeycloakErrors => "keycloak.errors".into(),
            Counter::KeycloakTimeouts => "keycloak.timeouts".into(),
            Counter::Binding(r) => format!("binding.{r}"),
        }
    }
}

/// Something the filter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Allowed(CacheUse),
    Denied {
        status: u16,
        cache: CacheUse,
    },
    /// A request dry-run let through that would have been refused.
    DryRunDenied,
    /// A decision the cache did not have, asked of Keycloak.
    CacheMiss,
    /// A request waiting on another request's identical Keycloak call.
    Coalesced,
    /// A call to Keycloak: by a request (`by_request`) or by the background.
    KeycloakCall {
        path_endpoint: Endpoint,
        by_request: bool,
    },
    /// A call the host would not send.
    KeycloakNotSent,
    /// Keycloak's answer (`ok`: one arrived) after `latency_ms`.
    KeycloakAnswer {
        ok: bool,
        status: u16,
        latency_ms: i64,
    },
    ClaimCall,
    /// A claim service's answer (`ok`: one arrived; `false, 0`: not sent).
    ClaimAnswer {
        ok: bool,
        status: u16,
    },
    BindingRefused(&'static str),
}

impl Event {
    /// The counters this event moves (at most two).
    pub fn counters(self) -> [Option<Counter>; 2] {
        let cache = |c: CacheUse| match c {
            CacheUse::Hit => Some(Counter::CacheHit),
            CacheUse::Stale => Some(Counter::CacheStale),
            CacheUse::None | CacheUse::Stored => None,
        };
        match self {
            Event::Allowed(c) => [Some(Counter::Allowed), cache(c)],
            Event::Denied { status, cache: c } => {
                let d = if DENIED.contains(&status) {
                    Counter::Denied(status)
                } else {
                    Counter::DeniedOther
                };
                [Some(d), cache(c)]
            }
            Event::DryRunDenied => [Some(Counter::DryRunDenied), None],
            Event::CacheMiss => [Some(Counter::CacheMiss), None],
            Event::Coalesced => [Some(Counter::CacheCoalesced), None],
            Event::KeycloakCall {
                path_endpoint,
                by_request,
            } => [
                Some(Counter::Calls(path_endpoint)),
                (by_request && matches!(path_endpoint, Endpoint::Token | Endpoint::Authzen))
                    .then_some(Counter::Grants),
            ],
            Event::KeycloakNotSent => [Some(Counter::KeycloakErrors), None],
            Event::KeycloakAnswer { ok, status, .. } => [
                if !ok {
                    Some(Counter::KeycloakTimeouts)
                } else if status >= 500 {
                    Some(Counter::KeycloakErrors)
                } else {
                    None
                },
                None,
            ],
            Event::ClaimCall => [Some(Counter::ClaimCalls), None],
            Event::ClaimAnswer { ok, status } => {
                [(!ok || status >= 500).then_some(Counter::ClaimErrors), None]
            }
            Event::BindingRefused(r) => [Some(Counter::Binding(r)), None],
        }
    }

    /// The latency this event records (`kcpep.keycloak.latency_ms`), if any.
    pub fn latency_ms(self) -> Option<u64> {
        match self {
            Event::KeycloakAnswer { latency_ms, .. } => {
                Some(u64::try_from(latency_ms).unwrap_or(0))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_one_index_and_one_name() {
        let all = Counter::all();
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
        let mut names: Vec<String> = all.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(names.contains(&"binding.replay_key_share".to_string()));
        assert_eq!(Counter::Denied(418).index(), Counter::DeniedOther.index());
    }

    #[test]
    fn a_call_is_counted_by_its_endpoint_and_a_requests_token_call_is_a_grant() {
        let call = |path: &str, by_request| {
            Event::KeycloakCall {
                path_endpoint: Endpoint::of_path(path),
                by_request,
            }
            .counters()
        };
        let token = "/realms/bank/protocol/openid-connect/token";
        assert_eq!(
            call(token, true),
            [Some(Counter::Calls(Endpoint::Token)), Some(Counter::Grants)]
        );
        // the background's PAT is a token call, not a grant
        assert_eq!(
            call(token, false),
            [Some(Counter::Calls(Endpoint::Token)), None]
        );
        for (path, e) in [
            (
                "/realms/b/authz/protection/resource_set?uri=/a&matchingUri=true",
                Endpoint::ResourceSet,
            ),
            (
                "/realms/b/authz/protection/permission",
                Endpoint::Permission,
            ),
            ("/realms/b/protocol/openid-connect/certs", Endpoint::Certs),
            (
                "/realms/b/.well-known/uma2-configuration",
                Endpoint::Discovery,
            ),
        ] {
            assert_eq!(call(path, true), [Some(Counter::Calls(e)), None], "{path}");
        }
        // an AuthZEN evaluation a request asked is a decision, as a UMA grant
        assert_eq!(
            call("/realms/b/authzen/access/v1/evaluations", true),
            [
                Some(Counter::Calls(Endpoint::Authzen)),
                Some(Counter::Grants)
            ]
        );
    }

    #[test]
    fn replies_count_by_status_and_where_the_verdict_came_from() {
        let denied = |status, cache| Event::Denied { status, cache }.counters();
        assert_eq!(
            denied(403, CacheUse::Hit),
            [Some(Counter::Denied(403)), Some(Counter::CacheHit)]
        );
        assert_eq!(
            denied(429, CacheUse::Stored),
            [Some(Counter::DeniedOther), None]
        );
        assert_eq!(
            Event::Allowed(CacheUse::Stale).counters(),
            [Some(Counter::Allowed), Some(Counter::CacheStale)]
        );
        let answer = |ok, status| Event::KeycloakAnswer {
            ok,
            status,
            latency_ms: 7,
        };
        assert_eq!(
            answer(false, 0).counters()[0],
            Some(Counter::KeycloakTimeouts)
        );
        assert_eq!(
            answer(true, 502).counters()[0],
            Some(Counter::KeycloakErrors)
        );
        assert_eq!(answer(true, 403).counters(), [None, None]);
        assert_eq!(answer(true, 200).latency_ms(), Some(7));
        assert_eq!(
            Event::ClaimAnswer {
                ok: true,
                status: 503
            }
            .counters()[0],
            Some(Counter::ClaimErrors)
        );
    }
}
