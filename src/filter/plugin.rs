//! What a root context shares with the HTTP contexts it creates: the worker and the stats.

use super::host::{call_answer, ProxyHost};
use super::metrics::Metrics;
use crate::pipeline::Worker;
use std::cell::RefCell;

/// One configuration's worker. A reconfiguration makes a new one; streams that began under the
/// old one finish with it.
pub struct Plugin {
    worker: RefCell<Worker>,
    metrics: Metrics,
    /// Streams that ended while the worker was busy, told to it on its next callback.
    gone: RefCell<Vec<u32>>,
}

impl Plugin {
    pub fn new(worker: Worker, metrics: Metrics) -> Self {
        Plugin {
            worker: RefCell::new(worker),
            metrics,
            gone: RefCell::new(Vec::new()),
        }
    }

    /// Runs one callback of `context` on the worker. `None`: the worker is busy, which only
    /// happens when a host re-enters the module from the worker's own action on a stream (a
    /// continue or a local reply), so for a stream already decided. Envoy defers those actions
    /// until the callback returns; other hosts may not.
    pub fn run<R>(
        &self,
        context: u32,
        f: impl FnOnce(&mut Worker, &mut ProxyHost<'_>) -> R,
    ) -> Option<R> {
        let mut worker = self.worker.try_borrow_mut().ok()?;
        for id in self.gone.take() {
            worker.on_stream_gone(id);
        }
        let mut host = ProxyHost::new(&self.metrics, context);
        Some(f(&mut worker, &mut host))
    }

    /// A callout's answer, arrived in `context`.
    pub fn call_answer(&self, context: u32, token: u32, num_headers: usize, body_size: usize) {
        let mut body = Vec::new();
        let answer = call_answer(num_headers, body_size, &mut body);
        self.run(context, |w, host| w.on_call_answer(host, token, answer));
    }

    /// The stream's context is being deleted.
    pub fn stream_gone(&self, id: u32) {
        match self.worker.try_borrow_mut() {
            Ok(mut worker) => worker.on_stream_gone(id),
            Err(_) => self.gone.borrow_mut().push(id),
        }
    }
}
