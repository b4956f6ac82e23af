//! Envoy stats through proxy-wasm metrics (Envoy lists them in /stats, names starting `kcpep.`).

use crate::enforce::events::{Counter, Event};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Metric ids of one VM (Envoy shares the metric itself across VMs by name): one per core
/// [`Counter`], by its index, and the latency histogram.
#[derive(Default)]
pub struct Metrics {
    counters: Vec<u32>,
    latency: u32,
}

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
        CACHE_ENTRIES.store(
            define(MetricType::Gauge, "kcpep.cache.entries"),
            std::sync::atomic::Ordering::Relaxed,
        );
        MEMORY.store(
            define(MetricType::Gauge, "kcpep.wasm.memory_bytes"),
            std::sync::atomic::Ordering::Relaxed,
        );
        Metrics {
            counters: Counter::all()
                .into_iter()
                .map(|c| define(MetricType::Counter, &format!("kcpep.{}", c.name())))
                .collect(),
            latency: define(MetricType::Histogram, "kcpep.keycloak.latency_ms"),
        }
    }

    /// Counts what the core says `event` moves.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn record(&self, event: Event) {
        for c in event.counters().into_iter().flatten() {
            if let Some(id) = self.counters.get(c.index()) {
                inc(*id);
            }
        }
        if let (Some(ms), true) = (event.latency_ms(), self.latency != 0) {
            let _ = hostcalls::record_metric(self.latency, ms);
        }
    }
}
