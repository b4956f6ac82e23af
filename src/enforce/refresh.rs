//! Keeping an enforcer's knowledge of Keycloak fresh (discovery, realm keys, PAT, path bindings)
//! across every VM of the proxy: before a fetch is sent, another VM's copy in shared data is
//! used when still good, and only the VM holding the fetch's lease asks Keycloak. The order of
//! those checks, the rounds per tick and what an answer changes are decided here; the shell
//! only performs them ([`FetchHost`]).

use crate::enforce::enforcer::Enforcer;
use crate::keycloak::background::{self, Fetch};
use crate::store::documents;
use crate::wire::http::{Answer, HttpRequest};

/// What a refresh needs from the proxy.
pub trait FetchHost {
    /// The value another VM stored under `key`, if any.
    fn shared(&mut self, key: &str) -> Option<Vec<u8>>;
    /// This VM already waits for the answer to the fetch stored under `key`.
    fn in_flight(&self, key: &str) -> bool;
    /// Takes the fetch's cross-VM lease; false while another VM holds it.
    fn take_lease(&mut self, lease: &str, now_ms: i64) -> bool;
    /// Sends the fetch to Keycloak; the answer comes back through [`Enforcer::fetched`] with
    /// `key`. False when the proxy refused to send it.
    fn send(&mut self, fetch: Fetch, key: String, req: &HttpRequest, now_ms: i64) -> bool;
}

/// What a refresh or an answer left for the shell to report.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// Problems worth a warning (each said once).
    pub notes: Vec<String>,
    /// Nothing is due or in flight any more: the tick may slow down.
    pub settled: bool,
}

/// What to do with a fetch's answer.
#[derive(Debug, Default, PartialEq)]
pub struct Fetched {
    /// The value to store under the fetch's key for the other VMs (good answers only).
    pub share: Option<Vec<u8>>,
    /// The lease to release: the fetch is over, answered or not.
    pub lease: String,
    /// The realm's keys arrived for the first time (tokens can be verified now).
    pub keys_loaded: bool,
    pub report: Report,
}

impl Enforcer {
    /// Sends (or takes from shared data) every fetch due now. An answer found in shared data
    /// can make more fetches due (path bindings need the PAT), so up to
    /// [`background::ROUNDS_PER_TICK`] rounds run.
    pub fn refresh(&self, host: &mut dyn FetchHost, now_ms: i64) -> Report {
        let cfg = &self.config;
        let mut st = self.learnt();
        let mut due = st.due(cfg, now_ms);
        let mut rounds = 0;
        while !due.is_empty() && rounds < background::ROUNDS_PER_TICK {
            rounds += 1;
            let mut from_shared = false;
            for (fetch, req) in std::mem::take(&mut due) {
                let key = documents::doc_key(cfg, fetch, &req);
                // Another VM (or enforcer of the same realm) may have fetched it already.
                if let Some(stored) = host.shared(&key) {
                    if let Some((stored_at, doc)) =
                        documents::usable(&stored, fetch, now_ms, st.background.jwks_forced)
                    {
                        let answer = Answer::Http {
                            status: 200,
                            body: doc,
                        };
                        st.complete(cfg, fetch, answer, stored_at);
                        from_shared = true;
                        continue;
                    }
                }
                if host.in_flight(&key) || !host.take_lease(&documents::lease_key(&key), now_ms) {
                    st.background.skip(fetch);
                    continue;
                }
                if !host.send(fetch, key, &req, now_ms) {
                    st.background.notes.push(format!(
                        "cannot call cluster {} for {}",
                        cfg.proxy.cluster,
                        fetch.name()
                    ));
                    st.complete(cfg, fetch, Answer::NoAnswer, now_ms);
                }
            }
            if from_shared {
                due = st.due(cfg, now_ms);
            }
        }
        Report {
            notes: st.background.notes.drain(..).collect(),
            settled: st.background.settled(),
        }
    }

    /// Takes Keycloak's answer to a fetch this VM sent under `key`.
    pub fn fetched(&self, fetch: Fetch, key: &str, answer: Answer, now_ms: i64) -> Fetched {
        let cfg = &self.config;
        let mut st = self.learnt();
        let had_keys = st.background.ready();
        let share = match answer {
            Answer::Http { status: 200, body } => Some(documents::encode_doc(now_ms, body)),
            _ => None,
        };
        st.complete(cfg, fetch, answer, now_ms);
        Fetched {
            share,
            lease: documents::lease_key(key),
            keys_loaded: !had_keys && st.background.ready(),
            report: Report {
                notes: st.background.notes.drain(..).collect(),
                settled: st.background.settled(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnforcerConfig;
    use std::collections::HashMap;

    /// A proxy of one VM: shared data, leases held by others, what it sent.
    #[derive(Default)]
    struct Proxy {
        shared: HashMap<String, Vec<u8>>,
        leased_elsewhere: bool,
        refuse_sends: bool,
        sent: Vec<(Fetch, String)>,
    }

    impl FetchHost for Proxy {
        fn shared(&mut self, key: &str) -> Option<Vec<u8>> {
            self.shared.get(key).cloned()
        }
        fn in_flight(&self, key: &str) -> bool {
            self.sent.iter().any(|(_, k)| k == key)
        }
        fn take_lease(&mut self, _: &str, _: i64) -> bool {
            !self.leased_elsewhere
        }
        fn send(&mut self, fetch: Fetch, key: String, _: &HttpRequest, _: i64) -> bool {
            if self.refuse_sends {
                return false;
            }
            self.sent.push((fetch, key));
            true
        }
    }

    fn enforcer() -> Enforcer {
        let v = serde_json::json!({"realm": "bank", "auth-server-url": "http://kc",
            "resource": "api", "credentials": {"secret": "s"},
            "policy-enforcer": {"paths": [{"path": "/a", "enforcement-mode": "DISABLED"}]}});
        Enforcer::new(
            "e".into(),
            EnforcerConfig::from_value(&v, "").expect("config"),
        )
    }

    /// The realm keys of tests/fixtures.
    fn jwks() -> Vec<u8> {
        include_bytes!("../../tests/fixtures/jwks.json").to_vec()
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn the_first_refresh_sends_each_due_fetch_once_and_waits_for_it() {
        let e = enforcer();
        let mut proxy = Proxy::default();
        let report = e.refresh(&mut proxy, NOW);
        assert!(!proxy.sent.is_empty());
        assert!(!report.settled);
        let first = proxy.sent.len();
        // nothing new is due while those are in flight
        e.refresh(&mut proxy, NOW + 1);
        assert_eq!(proxy.sent.len(), first);
    }

    #[test]
    fn another_vms_copy_is_used_instead_of_a_call() {
        let e = enforcer();
        let mut probe = Proxy::default();
        enforcer().refresh(&mut probe, NOW);
        let (fetch, key) = probe
            .sent
            .iter()
            .find(|(f, _)| matches!(f, Fetch::Jwks))
            .cloned()
            .expect("keys are fetched first");
        let mut proxy = Proxy::default();
        proxy
            .shared
            .insert(key.clone(), documents::encode_doc(NOW - 10, &jwks()));
        e.refresh(&mut proxy, NOW);
        assert!(
            !proxy.sent.iter().any(|(f, _)| *f == fetch),
            "sent {:?} although another VM had it",
            fetch.name()
        );
        assert!(e.learnt().background.jwks.is_some());
    }

    #[test]
    fn a_lease_held_by_another_vm_skips_the_fetch_without_backoff() {
        let e = enforcer();
        let mut proxy = Proxy {
            leased_elsewhere: true,
            ..Default::default()
        };
        e.refresh(&mut proxy, NOW);
        assert!(proxy.sent.is_empty());
        // the other VM's answer never came: the next tick asks again, at once
        proxy.leased_elsewhere = false;
        e.refresh(&mut proxy, NOW + 1);
        assert!(!proxy.sent.is_empty());
    }

    #[test]
    fn a_refused_send_is_an_unanswered_fetch_and_is_reported() {
        let e = enforcer();
        let mut proxy = Proxy {
            refuse_sends: true,
            ..Default::default()
        };
        let report = e.refresh(&mut proxy, NOW);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("cannot call cluster")),
            "{:?}",
            report.notes
        );
        // backed off: not asked again in the same millisecond
        proxy.refuse_sends = false;
        e.refresh(&mut proxy, NOW);
        assert!(proxy.sent.is_empty(), "{:?}", proxy.sent);
    }

    #[test]
    fn only_good_answers_are_shared_and_every_answer_releases_the_lease() {
        let e = enforcer();
        let mut proxy = Proxy::default();
        e.refresh(&mut proxy, NOW);
        let (fetch, key) = proxy.sent[0].clone();
        let bad = e.fetched(
            fetch,
            &key,
            Answer::Http {
                status: 500,
                body: b"oops",
            },
            NOW,
        );
        assert_eq!(bad.share, None);
        assert_eq!(bad.lease, documents::lease_key(&key));
        let none = e.fetched(fetch, &key, Answer::NoAnswer, NOW);
        assert_eq!(none.share, None);
    }

    #[test]
    fn the_first_key_set_is_reported_once() {
        let e = enforcer();
        let mut proxy = Proxy::default();
        e.refresh(&mut proxy, NOW);
        let (fetch, key) = proxy
            .sent
            .iter()
            .find(|(f, _)| matches!(f, Fetch::Jwks))
            .cloned()
            .expect("keys are fetched");
        let body = &jwks();
        let first = e.fetched(fetch, &key, Answer::Http { status: 200, body }, NOW);
        assert!(first.keys_loaded);
        assert_eq!(first.share, Some(documents::encode_doc(NOW, body)));
        let again = e.fetched(fetch, &key, Answer::Http { status: 200, body }, NOW + 5);
        assert!(!again.keys_loaded);
    }
}
