//! Envoy stats through proxy-wasm metrics (Envoy lists them in /stats, names starting `kcpep.`).

use crate::enforce::step::CacheUse;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Metric ids of one VM (Envoy shares the metric itself across VMs by name).
#[derive(Default)]
pub struct Metrics {
    allowed: u32,
    denied_401: u32,
    denied_403: u32,
    denied_302: u32,
    denied_503: u32,
    denied_400: u32,
    denied_413: u32,
    denied_other: u32,
    dry_run: u32,
    claim_calls: u32,
    claim_errors: u32,
    cache_hit: u32,
    cache_miss: u32,
    cache_stale: u32,
    cache_coalesced: u32,
    calls: [u32; 5],
    /// `kcpep.keycloak.grants`: token-endpoint calls a request made (UMA grants), apart from
    /// the PAT the background keeps fresh, so "was Keycloak asked for this request" has a
    /// counter that nothing else moves.
    grants: u32,
    errors: u32,
    timeouts: u32,
    latency: u32,
    /// `kcpep.binding.<reason>`: refused sender constraints, per reason.
    binding: Vec<(&'static str, u32)>,
}

const ENDPOINTS: [&str; 5] = ["token", "resource_set", "permission", "certs", "discovery"];

/// The "cache entries in use" gauge, set from the decision store (which has no `Metrics`).
static CACHE_ENTRIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Decision-table slots holding an entry, over all workers (each slot holds one decision until
/// it is reused, so this is the table's memory in use; at most `max-entries`).
pub fn set_cache_entries(n: u64) {
    let id = CACHE_ENTRIES.load(std::sync::atomic::Ordering::Relaxed);
    if id != 0 {
        let _ = hostcalls::record_metric(id, n);
    }
}

/// The gauge of the wasm memory of all this plugin's VMs, and what this VM has added to it.
static MEMORY: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static MEMORY_PAGES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Adds this VM's growth of linear memory since the last call to `kcpep.wasm.memory_bytes`, so
/// the gauge is the sum over the VMs (a wasm memory only grows: it is each VM's high-water mark,
/// the part of Envoy's RSS the module owns).
pub fn note_memory(pages: u32) {
    use std::sync::atomic::Ordering::Relaxed;
    let (id, seen) = (MEMORY.load(Relaxed), MEMORY_PAGES.load(Relaxed));
    if id != 0 && pages > seen {
        MEMORY_PAGES.store(pages, Relaxed);
        let _ = hostcalls::increment_metric(id, i64::from(pages - seen) * 65536);
    }
}

fn define(kind: MetricType, name: &str) -> u32 {
    hostcalls::define_metric(kind, name).unwrap_or(0)
}

fn inc(id: u32) {
    if id != 0 {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

impl Metrics {
    pub fn define() -> Self {
        let c = |n: &str| define(MetricType::Counter, &format!("kcpep.{n}"));
        CACHE_ENTRIES.store(
            define(MetricType::Gauge, "kcpep.cache.entries"),
            std::sync::atomic::Ordering::Relaxed,
        );
        MEMORY.store(
            define(MetricType::Gauge, "kcpep.wasm.memory_bytes"),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut calls = [0; 5];
        for (i, e) in ENDPOINTS.iter().enumerate() {
            calls[i] = c(&format!("keycloak.calls.{e}"));
        }
        Metrics {
            allowed: c("requests.allowed"),
            denied_401: c("requests.denied.401"),
            denied_403: c("requests.denied.403"),
            denied_302: c("requests.denied.302"),
            denied_503: c("requests.denied.503"),
            denied_400: c("requests.denied.400"),
            denied_413: c("requests.denied.413"),
            denied_other: c("requests.denied.other"),
            dry_run: c("requests.dry_run_denied"),
            claim_calls: c("claims.calls"),
            claim_errors: c("claims.errors"),
            cache_hit: c("cache.hit"),
            cache_miss: c("cache.miss"),
            cache_stale: c("cache.stale"),
            cache_coalesced: c("cache.coalesced"),
            calls,
            grants: c("keycloak.grants"),
            errors: c("keycloak.errors"),
            timeouts: c("keycloak.timeouts"),
            latency: define(MetricType::Histogram, "kcpep.keycloak.latency_ms"),
            binding: crate::enforce::binding::Refusal::counters()
                .into_iter()
                .map(|n| (n, c(&format!("binding.{n}"))))
                .collect(),
        }
    }

    /// A token's sender constraint refused, for `reason` (a [`Refusal`]'s counter name).
    ///
    /// [`Refusal`]: crate::enforce::binding::Refusal
    pub fn binding_refused(&self, reason: &str) {
        if let Some((_, id)) = self.binding.iter().find(|(n, _)| *n == reason) {
            inc(*id);
        }
    }

    pub fn allowed(&self, cache: CacheUse) {
        inc(self.allowed);
        self.cache_use(cache);
    }

    pub fn denied(&self, status: u16, cache: CacheUse) {
        inc(match status {
            401 => self.denied_401,
            403 => self.denied_403,
            302 => self.denied_302,
            503 => self.denied_503,
            400 => self.denied_400,
            413 => self.denied_413,
            _ => self.denied_other,
        });
        self.cache_use(cache);
    }

    fn cache_use(&self, cache: CacheUse) {
        match cache {
            CacheUse::Hit => inc(self.cache_hit),
            CacheUse::Stale => inc(self.cache_stale),
            CacheUse::None | CacheUse::Stored => {}
        }
    }

    /// A request dry-run let through that would have been refused.
    pub fn dry_run_denied(&self) {
        inc(self.dry_run);
    }

    pub fn claim_call(&self) {
        inc(self.claim_calls);
    }

    /// A claim service answered with no answer, or a status >= 500.
    pub fn claim_answer(&self, ok: bool, status: u16) {
        if !ok || status >= 500 {
            inc(self.claim_errors);
        }
    }

    pub fn cache_miss(&self) {
        inc(self.cache_miss);
    }

    pub fn coalesced(&self) {
        inc(self.cache_coalesced);
    }

    /// Counts a call by endpoint (from its path); returns the endpoint index.
    pub fn keycloak_call(&self, path: &str) -> usize {
        let p = path.split('?').next().unwrap_or(path);
        let i = if p.ends_with("/token") {
            0
        } else if p.ends_with("/resource_set") {
            1
        } else if p.ends_with("/permission") {
            2
        } else if p.ends_with("/certs") {
            3
        } else {
            4
        };
        inc(self.calls[i]);
        i
    }

    /// A Keycloak call a request made (not the background's): counted as [`keycloak_call`], and
    /// a token-endpoint one as a grant too.
    ///
    /// [`keycloak_call`]: Metrics::keycloak_call
    pub fn request_call(&self, path: &str) -> usize {
        let i = self.keycloak_call(path);
        if i == 0 {
            inc(self.grants);
        }
        i
    }

    pub fn keycloak_error(&self, _endpoint: usize) {
        inc(self.errors);
    }

    /// An answer arrived (`ok`: with headers) after `latency_ms`.
    pub fn keycloak_answer(&self, ok: bool, status: u16, latency_ms: i64) {
        if !ok {
            inc(self.timeouts);
        } else if status >= 500 {
            inc(self.errors);
        }
        if self.latency != 0 {
            let _ = hostcalls::record_metric(self.latency, u64::try_from(latency_ms).unwrap_or(0));
        }
    }
}
