//! A small wasmtime host that loads a proxy-wasm module (ABI 0.2.1, e.g. the built
//! `dist/keycloak_pep.wasm`) and drives it the way Envoy (proxy-wasm-cpp-host) does, for
//! ABI-level tests. It doubles as documentation of the ABI the filter relies on:
//! `abi.rs` (the `env.proxy_*` imports), `wasi.rs` (WASI), `mem.rs` (memory, pairs encoding).
//!
//! Lifecycle, as Envoy calls it:
//! - VM start (`Vm::configure`): `_initialize` (+ `main(0, 0)` if exported),
//!   `proxy_on_context_create(1, 0)`, `proxy_on_vm_start(1, vm_config_len)`,
//!   `proxy_on_configure(1, plugin_config_len)`.
//! - Per request: `proxy_on_context_create(ctx, 1)`, `proxy_on_request_headers(ctx, n, eos)`,
//!   `proxy_on_request_body(ctx, len, eos)`, `proxy_on_response_headers(ctx, n, eos)`, and at the
//!   end `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` (`Vm::finish`).
//! - Callouts complete with `proxy_on_http_call_response(1, token, n_headers, body_len,
//!   n_trailers)`: Envoy issues every callout on the *root* context; the SDK maps the token back
//!   to the HTTP context that dispatched it and makes it the effective context.
//! - Timers: `proxy_on_tick(1)`.
//!
//! Envoy semantics kept on purpose:
//! - `continue_stream`, `send_local_response`, `close_stream` take effect after the callback
//!   returns (a host applying them inline triggers RefCell re-borrow panics in the SDK).
//! - `on_request_headers` returning Pause stops the stream (StopAllIterationAndWatermark): body
//!   sent meanwhile is held back and delivered after the filter resumes the request.
//! - A local reply ends the request (it is never forwarded, whatever the callback returned) and
//!   travels the encoder path: the filter's own `proxy_on_response_headers` sees it.
//! - A trap (Rust panic = `unreachable`) is returned as `Err(Trap)` and fails the VM, like
//!   FAIL_CLOSED: the stream whose callback trapped gets a 503 (`wasm_fail_stream`), every later
//!   request gets a 503 without reaching the guest, and no other callback is made.
//! - Imports Envoy does not provide make `Vm::new` fail, as Envoy refuses to load such a module.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abi;
pub mod envoy_crypto;
mod mem;
mod wasi;

#[allow(unused_imports)] // not every test binary uses them
pub use mem::{decode_pairs, encode_pairs};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use wasmtime::{
    Engine, Extern, ExternType, Instance, Linker, Module, Store, StoreLimits, StoreLimitsBuilder,
    Val,
};

/// Context id of the (single) root context; HTTP contexts get 2, 3, ...
pub const ROOT_ID: u32 = 1;

/// A header map: lower-case names, byte values, in order (a name may repeat).
pub type Headers = Vec<(String, Vec<u8>)>;

/// Shared data of a vm_id; hand the same one to several `Vm`s to model several workers.
pub type Shared = Arc<Mutex<SharedData>>;

/// Host function a test installs as Envoy's foreign functions: `(name, args) -> result`,
/// `None` = no such function (NotFound).
pub type ForeignFn = dyn Fn(&str, &[u8]) -> Option<Vec<u8>> + Send + Sync;

/// proxy-wasm status codes (proxy-wasm 0.2.5 types.rs + cpp-host `WasmResult`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    #[default]
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    fn from_i32(v: i32) -> Option<Self> {
        use LogLevel::*;
        [Trace, Debug, Info, Warn, Error, Critical]
            .get(usize::try_from(v).ok()?)
            .copied()
    }
}

/// What a stream callback returned (SDK `Action`: 0 Continue, 1 Pause).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
    Other(i32),
}

impl Action {
    fn from_i32(v: i32) -> Self {
        match v {
            0 => Action::Continue,
            1 => Action::Pause,
            v => Action::Other(v),
        }
    }
}

/// An HTTP callout the guest dispatched (`proxy_http_call`), as the upstream would get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    pub token: u32,
    pub cluster: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    /// `None`: the guest passed 0, which Envoy treats as *no timeout at all*.
    pub timeout_ms: Option<u32>,
}

impl Callout {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }
}

/// A local reply the guest sent (`proxy_send_local_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Headers,
    /// -1 = none (what the SDK's send_http_response passes).
    pub grpc_status: i32,
}

impl LocalResponse {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }
}

/// First value of `name` in a header map.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// A guest trap (or a module Envoy would not load), with the log lines of the failing call.
#[derive(Clone, Debug)]
pub struct Trap {
    pub message: String,
    pub logs: Vec<(LogLevel, String)>,
    /// The context whose callback trapped (0: not a callback, e.g. instantiation).
    pub context_id: u32,
}

impl fmt::Display for Trap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wasm trap in context {}: {}",
            self.context_id, self.message
        )?;
        for (level, line) in &self.logs {
            writeln!(f, "  [{level:?}] {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Trap {}

fn load_error(message: String) -> Trap {
    Trap {
        message,
        logs: Vec::new(),
        context_id: 0,
    }
}

/// Envoy's shared key/value store for one vm_id (cpp-host `SharedData`).
#[derive(Debug, Default)]
pub struct SharedData {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    last_cas: u32,
}

impl SharedData {
    pub fn new() -> Shared {
        Arc::new(Mutex::new(SharedData::default()))
    }

    /// Value and cas of `key`.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.get_bytes(key.as_bytes())
    }

    /// Envoy's rules: cas 0 writes unconditionally; any other cas must equal the stored one
    /// (else CasMismatch) unless the key is absent. Every write takes the next global cas
    /// (a counter from 1 that skips 0).
    pub fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Status {
        self.set_bytes(key.as_bytes(), value, cas)
    }

    /// Every key, for tests that inspect what a filter stored.
    pub fn keys(&self) -> Vec<String> {
        self.entries
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    fn get_bytes(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.entries.get(key).cloned()
    }

    fn set_bytes(&mut self, key: &[u8], value: &[u8], cas: u32) -> Status {
        if let Some((_, current)) = self.entries.get(key) {
            if cas != 0 && cas != *current {
                return Status::CasMismatch;
            }
        }
        self.last_cas = self.last_cas.wrapping_add(1).max(1);
        self.entries
            .insert(key.to_vec(), (value.to_vec(), self.last_cas));
        Status::Ok
    }
}

/// Metrics by name; ids carry the type in their low 2 bits like Envoy's.
#[derive(Default)]
struct Metrics {
    ids: Vec<String>,
    values: HashMap<String, Metric>,
}

#[derive(Default, Clone)]
struct Metric {
    kind: i32,
    value: i64,
    samples: Vec<u64>,
}

impl Metrics {
    fn define(&mut self, kind: i32, name: String) -> Option<u32> {
        if !(0..=2).contains(&kind) {
            return None;
        }
        let id = ((self.ids.len() as u32) << 2) | kind as u32;
        self.values.entry(name.clone()).or_insert(Metric {
            kind,
            ..Metric::default()
        });
        self.ids.push(name);
        Some(id)
    }

    fn lookup(&mut self, id: u32) -> Option<&mut Metric> {
        let name = self.ids.get((id >> 2) as usize)?;
        self.values
            .get_mut(name)
            .filter(|m| m.kind == (id & 3) as i32)
    }

    fn increment(&mut self, id: u32, offset: i64) -> Status {
        match self.lookup(id) {
            None => Status::NotFound,
            Some(m) if m.kind == 2 || (m.kind == 0 && offset <= 0) => Status::BadArgument,
            Some(m) => {
                m.value += offset;
                Status::Ok
            }
        }
    }

    fn record(&mut self, id: u32, value: u64) -> Status {
        let Some(m) = self.lookup(id) else {
            return Status::NotFound;
        };
        match m.kind {
            0 => m.value += value as i64,
            1 => m.value = value as i64,
            _ => m.samples.push(value),
        }
        Status::Ok
    }

    fn get(&mut self, id: u32) -> Result<u64, Status> {
        match self.lookup(id) {
            None => Err(Status::NotFound),
            Some(m) if m.kind == 2 => Err(Status::BadArgument),
            Some(m) => Ok(m.value as u64),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamType {
    Request,
    Response,
}

/// Effects Envoy applies after the running callback returns.
enum Deferred {
    Continue(u32, StreamType),
    Close(u32),
    LocalReply(u32, LocalResponse),
}

/// A header map of a stream and whether Envoy currently holds it (its pointer is set).
#[derive(Default)]
struct Slot {
    map: Headers,
    open: bool,
}

#[derive(Default)]
struct Stream {
    request_headers: Slot,
    request_trailers: Slot,
    response_headers: Slot,
    response_trailers: Slot,
    /// Request body the filter sees (buffered while it pauses body callbacks).
    request_body: Vec<u8>,
    body_open: bool,
    /// Body that arrived while the headers were paused: (bytes, end_of_stream).
    held_body: Option<(Vec<u8>, bool)>,
    forwarded_body: Vec<u8>,
    headers_action: Option<Action>,
    resumed: bool,
    response_resumed: bool,
    local: Option<LocalResponse>,
    reset: bool,
    /// Properties the guest set on this stream (Envoy filter state).
    properties: HashMap<Vec<u8>, Vec<u8>>,
    in_log: bool,
    deleted: bool,
}

impl Stream {
    fn finished(&self) -> bool {
        self.local.is_some() || self.reset || self.deleted
    }

    fn request_flowing(&self) -> bool {
        !self.finished() && (self.resumed || self.headers_action == Some(Action::Continue))
    }

    /// Envoy drops its pointers to the maps/body of a direction when it continues.
    fn close_maps(&mut self, kind: StreamType) {
        match kind {
            StreamType::Request => {
                self.request_headers.open = false;
                self.request_trailers.open = false;
            }
            StreamType::Response => {
                self.response_headers.open = false;
                self.response_trailers.open = false;
            }
        }
    }
}

struct CallResponse {
    headers: Headers,
    body: Vec<u8>,
    trailers: Headers,
}

/// Everything the imports see (`Store` data). One per `Vm`, so tests run in parallel.
#[derive(Default)]
struct HostState {
    // Set up by the test.
    vm_config: Vec<u8>,
    plugin_config: Vec<u8>,
    env: Vec<(String, String)>,
    allowed_clusters: HashSet<String>,
    foreign: Option<Arc<ForeignFn>>,
    log_level: LogLevel,
    properties: HashMap<Vec<u8>, Vec<u8>>,
    shared: Shared,
    now_ns: u64,
    monotonic_ns: u64,
    rng: u64,
    limits: StoreLimits,
    // Observed.
    logs: Vec<(LogLevel, String)>,
    tick_period_ms: u32,
    callouts: Vec<Callout>,
    outstanding: HashSet<u32>,
    next_token: u32,
    metrics: Metrics,
    status: (u32, String),
    streams: BTreeMap<u32, Stream>,
    root_draining: bool,
    root_done: bool,
    // During a callback.
    current: u32,
    effective: u32,
    configuring: bool,
    call_response: Option<CallResponse>,
    deferred: Vec<Deferred>,
    /// Host calls by import name, when the VM was made with [`Vm::counting_host_calls`].
    host_calls: BTreeMap<String, u64>,
    /// The VM's instance, for imports called without a calling instance (counting wrapper).
    instance: Option<Instance>,
}

impl HostState {
    fn log(&mut self, level: LogLevel, line: String) {
        eprintln!("[wasm {level:?}] {line}");
        self.logs.push((level, line));
    }

    /// cpp-host's contextOrEffectiveContext().
    fn ctx(&self) -> u32 {
        if self.effective != 0 && self.context_exists(self.effective) {
            self.effective
        } else {
            self.current
        }
    }

    fn context_exists(&self, id: u32) -> bool {
        id == ROOT_ID || self.streams.get(&id).is_some_and(|s| !s.deleted)
    }

    /// The stream of the current (effective) context, if it is one.
    fn stream(&mut self) -> Option<&mut Stream> {
        let id = self.ctx();
        self.streams.get_mut(&id).filter(|s| !s.deleted)
    }

    fn property(&mut self, path: &[u8]) -> Option<Vec<u8>> {
        let global = self.properties.get(path).cloned();
        let Some(stream) = self.stream() else {
            return global;
        };
        if let Some(value) = stream.properties.get(path).cloned().or(global) {
            return Some(value);
        }
        if !(stream.request_headers.open || stream.in_log) {
            return None;
        }
        let h = |name: &str| header(&stream.request_headers.map, name).map(<[u8]>::to_vec);
        match path {
            b"request\0path" => h(":path"),
            b"request\0url_path" => {
                h(":path").map(|p| p.split(|b| *b == b'?').next().unwrap_or_default().to_vec())
            }
            b"request\0host" => h(":authority"),
            b"request\0method" => h(":method"),
            b"request\0scheme" => h(":scheme"),
            b"request\0id" => h("x-request-id"),
            _ => None,
        }
    }

    fn next_random(&mut self) -> u8 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as u8
    }
}

/// Path of the filter module built by `make wasm` (signatures checked by the host).
pub fn wasm_path() -> PathBuf {
    // `make profile` points it at an unstripped build (function names for perf)
    if let Some(path) = std::env::var_os("KCPEP_WASM") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dist/keycloak_pep.wasm")
}

/// Path of the module built by `make wasm-rust-crypto` (signatures checked in wasm).
pub fn rust_crypto_wasm_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dist/keycloak_pep_rust_crypto.wasm")
}

/// The rust-crypto module, compiled once per test binary.
pub fn rust_crypto_module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| load(&rust_crypto_wasm_path(), "make wasm-rust-crypto"))
}

/// A built module, compiled (or taken from the compile cache).
fn load(path: &std::path::Path, builder: &str) -> Module {
    let bytes = std::fs::read(path).unwrap_or_default();
    assert!(
        !bytes.is_empty(),
        "{} is missing or empty: run `{builder}` first",
        path.display()
    );
    compile_cached(&bytes)
}

pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        // `make profile`: the compiled guest functions named in /tmp/perf-<pid>.map for perf.
        if std::env::var_os("KCPEP_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config).unwrap_or_else(|e| panic!("cannot make the wasmtime engine: {e:?}"))
    })
}

/// The filter module, compiled once per test binary.
pub fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| load(&wasm_path(), "make wasm"))
}

/// Compiling the filter with the debug build of Cranelift `cargo test` uses takes ~20 s, so
/// the compiled code is kept in CARGO_TARGET_TMPDIR, keyed by the module bytes and the engine's
/// compatibility hash (a new build or a new wasmtime simply misses and recompiles).
fn compile_cached(bytes: &[u8]) -> Module {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    engine().precompile_compatibility_hash().hash(&mut hasher);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let name = format!("keycloak_pep-{:016x}.cwasm", hasher.finish());
    if let Ok(serialized) = std::fs::read(dir.join(&name)) {
        // SAFETY: only this function writes these files, from `Module::serialize` (written to a
        // temporary name, then renamed into place); wasmtime checks their version header.
        if let Ok(module) = unsafe { Module::deserialize(engine(), serialized) } {
            return module;
        }
    }
    let module = compile(bytes);
    if let Ok(serialized) = module.serialize() {
        let stale = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        for entry in stale.filter(|e| e.file_name().to_string_lossy().starts_with("keycloak_pep-"))
        {
            let _ = std::fs::remove_file(entry.path());
        }
        let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, serialized).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(&name));
        }
    }
    module
}

/// Compiles a module from wasm bytes or WAT text (for inline test guests).
pub fn compile(wasm_or_wat: impl AsRef<[u8]>) -> Module {
    Module::new(engine(), wasm_or_wat).unwrap_or_else(|e| panic!("cannot compile module: {e:?}"))
}

/// One Envoy VM (one worker) running the module, with its single root context.
pub struct Vm {
    store: Store<HostState>,
    instance: Instance,
    started: bool,
    failed: Option<String>,
    next_ctx: u32,
    /// Envoy's Wasm `allow_on_headers_stop_iteration` (on in the shipped configurations): headers
    /// paused with StopIteration still let body and trailer callbacks reach the filter. Off, a
    /// paused header phase stops everything until the filter resumes (proxy-wasm-cpp-host turns
    /// StopIteration into StopAllIterationAndWatermark).
    stop_iteration: bool,
}

impl Vm {
    pub fn new(module: &Module) -> Result<Vm, Trap> {
        Vm::with_shared(module, SharedData::new())
    }

    /// A VM whose shared data is `shared` (same vm_id as every other VM given it).
    pub fn with_shared(module: &Module, shared: Shared) -> Result<Vm, Trap> {
        Vm::make(module, shared, false)
    }

    /// A VM that counts the guest's host calls by name ([`Vm::take_host_calls`]): what a request
    /// costs in transitions to the host, which is where Envoy spends its share.
    pub fn counting_host_calls(module: &Module, shared: Shared) -> Result<Vm, Trap> {
        Vm::make(module, shared, true)
    }

    fn make(module: &Module, shared: Shared, count: bool) -> Result<Vm, Trap> {
        let state = HostState {
            shared,
            now_ns: 1_700_000_000_000_000_000,
            monotonic_ns: 1_000_000_000,
            rng: 0x5EED,
            // Envoy caps a VM's memory at 1 GiB.
            limits: StoreLimitsBuilder::new().memory_size(1 << 30).build(),
            ..HostState::default()
        };
        let mut store = Store::new(module.engine(), state);
        store.limiter(|s| &mut s.limits);
        let mut linker = Linker::new(module.engine());
        let defined = abi::define(&mut linker).and_then(|()| wasi::define(&mut linker));
        defined.map_err(|e| load_error(format!("cannot define imports: {e:?}")))?;
        let mut missing = Vec::new();
        for import in module.imports() {
            let (m, name) = (import.module(), import.name());
            if linker.get(&mut store, m, name).is_ok() {
                continue;
            }
            match (m, abi::unimplemented(name), import.ty()) {
                ("env", Some(why), ExternType::Func(ty)) => {
                    let msg = format!("{m}.{name}: {why}");
                    linker
                        .func_new(m, name, ty, move |_, _, _| {
                            Err(wasmtime::Error::msg(msg.clone()))
                        })
                        .map_err(|e| load_error(format!("{e:?}")))?;
                }
                _ => missing.push(format!("{m}.{name}")),
            }
        }
        if !missing.is_empty() {
            let msg =
                format!("Envoy would refuse to load this module: missing imports {missing:?}");
            return Err(load_error(msg));
        }
        for export in ["proxy_abi_version_0_2_1", "memory"] {
            if module.get_export(export).is_none() {
                return Err(load_error(format!("module does not export {export}")));
            }
        }
        if module.get_export("proxy_on_memory_allocate").is_none()
            && module.get_export("malloc").is_none()
        {
            return Err(load_error(
                "module exports no proxy_on_memory_allocate".into(),
            ));
        }
        if count {
            linker = counted(&linker, &mut store).map_err(|e| load_error(format!("{e:?}")))?;
        }
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| load_error(format!("cannot instantiate: {e:?}")))?;
        store.data_mut().instance = count.then_some(instance);
        Ok(Vm {
            store,
            instance,
            started: false,
            failed: None,
            next_ctx: ROOT_ID + 1,
            stop_iteration: true,
        })
    }

    fn state(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    fn stream(&mut self, ctx: u32) -> &mut Stream {
        let known = self.state().streams.contains_key(&ctx);
        assert!(known, "no request with context id {ctx}");
        self.state().streams.get_mut(&ctx).expect("checked above")
    }

    fn stream_ref(&self, ctx: u32) -> &Stream {
        let stream = self.store.data().streams.get(&ctx);
        stream.unwrap_or_else(|| panic!("no request with context id {ctx}"))
    }

    // ---- Builder-style set-up (before `configure`).

    /// Adds a VM environment variable (read by the guest through WASI environ_get).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.state().env.push((key.into(), value.into()));
        self
    }

    /// The clusters `proxy_http_call` may target; any other name is BadArgument.
    pub fn allow_clusters(mut self, clusters: &[&str]) -> Self {
        self.state()
            .allowed_clusters
            .extend(clusters.iter().map(|c| c.to_string()));
        self
    }

    /// Installs a foreign function implementation (default: every name is NotFound).
    pub fn foreign_function(
        mut self,
        f: impl Fn(&str, &[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> Self {
        self.state().foreign = Some(Arc::new(f));
        self
    }

    /// The VM configuration (`vm_config.configuration`), passed to on_vm_start.
    pub fn vm_config(mut self, config: &[u8]) -> Self {
        self.state().vm_config = config.to_vec();
        self
    }

    /// What proxy_get_log_level answers (default Trace).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.state().log_level = level;
        self
    }

    /// Seed of WASI random_get.
    pub fn seed(mut self, seed: u64) -> Self {
        self.state().rng = seed;
        self
    }

    // ---- Clock, properties, observations.

    pub fn set_time_ms(&mut self, ms: u64) {
        self.state().now_ns = ms * 1_000_000;
    }

    /// Moves the wall clock and the monotonic clock forward (fires no tick: call `tick`).
    pub fn advance_ms(&mut self, ms: u64) {
        self.state().now_ns += ms * 1_000_000;
        self.state().monotonic_ns += ms * 1_000_000;
    }

    pub fn now_ms(&self) -> u64 {
        self.store.data().now_ns / 1_000_000
    }

    /// Sets a property for `proxy_get_property`, e.g. `&["route_name"]`, `&["source", "address"]`.
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.state()
            .properties
            .insert(path.join("\0").into_bytes(), value.to_vec());
    }

    pub fn remove_property(&mut self, path: &[&str]) {
        self.state().properties.remove(path.join("\0").as_bytes());
    }

    pub fn shared(&self) -> Shared {
        self.store.data().shared.clone()
    }

    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.store.data().logs.clone()
    }

    pub fn take_logs(&mut self) -> Vec<(LogLevel, String)> {
        std::mem::take(&mut self.state().logs)
    }

    pub fn log_contains(&self, text: &str) -> bool {
        self.store
            .data()
            .logs
            .iter()
            .any(|(_, line)| line.contains(text))
    }

    /// Counter or gauge value by name.
    pub fn metric(&self, name: &str) -> Option<i64> {
        let m = self.store.data().metrics.values.get(name)?;
        (m.kind != 2).then_some(m.value)
    }

    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        let m = self.store.data().metrics.values.get(name)?;
        (m.kind == 2).then(|| m.samples.clone())
    }

    /// Host calls by import name since the last call (empty unless counting).
    pub fn take_host_calls(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.state().host_calls)
    }

    /// The last tick period the guest set (0 = none).
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// Callouts dispatched since the last call.
    pub fn take_callouts(&mut self) -> Vec<Callout> {
        std::mem::take(&mut self.state().callouts)
    }

    /// Tokens of callouts not yet answered.
    pub fn outstanding_callouts(&self) -> Vec<u32> {
        let mut tokens: Vec<u32> = self.store.data().outstanding.iter().copied().collect();
        tokens.sort_unstable();
        tokens
    }

    /// Copies guest memory (for tests of the host itself).
    pub fn memory(&mut self, ptr: u32, len: u32) -> Vec<u8> {
        let memory = self
            .instance
            .get_memory(&mut self.store, "memory")
            .expect("exports memory");
        memory.data(&self.store)[ptr as usize..(ptr + len) as usize].to_vec()
    }

    /// The guest's linear memory, in bytes (it only ever grows).
    pub fn memory_size(&mut self) -> usize {
        self.instance
            .get_memory(&mut self.store, "memory")
            .expect("exports memory")
            .data_size(&self.store)
    }

    /// Why the VM failed (first trap), if it did.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    // ---- Per request observations.

    /// What proxy_on_request_headers returned.
    pub fn action(&self, req: u32) -> Action {
        let action = self.stream_ref(req).headers_action;
        action.unwrap_or_else(|| panic!("request {req} never ran on_request_headers"))
    }

    /// The request went (or goes) upstream: headers returned Continue or the filter resumed it,
    /// and there was no local reply or reset.
    /// Models Envoy without `allow_on_headers_stop_iteration` (see [`Vm::stop_iteration`]).
    pub fn without_stop_iteration(&mut self) {
        self.stop_iteration = false;
    }

    pub fn continued(&self, req: u32) -> bool {
        self.stream_ref(req).request_flowing()
    }

    pub fn local_response(&self, req: u32) -> Option<LocalResponse> {
        self.stream_ref(req).local.clone()
    }

    /// The filter reset the stream (`proxy_close_stream`).
    pub fn was_reset(&self, req: u32) -> bool {
        self.stream_ref(req).reset
    }

    /// Request headers after the filter's mutations (what goes upstream).
    pub fn request_headers(&self, req: u32) -> Headers {
        self.stream_ref(req).request_headers.map.clone()
    }

    pub fn request_header(&self, req: u32, name: &str) -> Option<Vec<u8>> {
        header(&self.stream_ref(req).request_headers.map, name).map(<[u8]>::to_vec)
    }

    /// A property the filter set on this stream (Envoy: filter state `wasm.<path>`).
    pub fn stream_property(&self, req: u32, path: &[&str]) -> Option<Vec<u8>> {
        self.stream_ref(req)
            .properties
            .get(path.join("\0").as_bytes())
            .cloned()
    }

    /// Response headers after the filter's mutations (upstream response or local reply).
    pub fn response_headers(&self, req: u32) -> Headers {
        self.stream_ref(req).response_headers.map.clone()
    }

    /// Request body forwarded upstream so far.
    pub fn forwarded_body(&self, req: u32) -> Vec<u8> {
        self.stream_ref(req).forwarded_body.clone()
    }

    // ---- Driving the guest.

    /// Starts the VM if needed (`_initialize`, root context, `on_vm_start`) and runs
    /// `proxy_on_configure(1, len)` with `plugin_config`; returns what it returned (false: Envoy
    /// rejects the configuration). Calling it again reconfigures the same root context.
    pub fn configure(&mut self, plugin_config: &[u8]) -> Result<bool, Trap> {
        if self.failed.is_some() {
            return Ok(false);
        }
        self.state().plugin_config = plugin_config.to_vec();
        if !self.started {
            self.started = true;
            if self.has_export("_initialize") {
                self.call(0, "_initialize", &[])?;
                self.call(0, "main", &[0, 0])?;
            } else {
                self.call(0, "_start", &[])?;
            }
            self.call(ROOT_ID, "proxy_on_context_create", &[ROOT_ID as i32, 0])?;
            let len = self.state().vm_config.len() as i32;
            self.state().configuring = true;
            let started = self.call(ROOT_ID, "proxy_on_vm_start", &[ROOT_ID as i32, len]);
            self.state().configuring = false;
            if started?.is_some_and(|ok| ok == 0) {
                return Ok(false);
            }
        }
        self.state().configuring = true;
        let len = plugin_config.len() as i32;
        let result = self.call(ROOT_ID, "proxy_on_configure", &[ROOT_ID as i32, len]);
        self.state().configuring = false;
        Ok(result?.is_none_or(|ok| ok != 0))
    }

    /// A request with these headers and no body: creates the HTTP context and runs
    /// `on_request_headers(ctx, n, end_of_stream = true)`. Returns the context id.
    pub fn request(&mut self, headers: &[(&str, &[u8])]) -> Result<u32, Trap> {
        self.request_with(headers, true)
    }

    /// Like `request`, with `end_of_stream = false` when a body follows (`request_body`).
    pub fn request_with(
        &mut self,
        headers: &[(&str, &[u8])],
        end_of_stream: bool,
    ) -> Result<u32, Trap> {
        assert!(self.started, "call configure() before sending requests");
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let mut stream = Stream::default();
        stream.request_headers.map = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
            .collect();
        stream.request_headers.open = true;
        self.state().streams.insert(ctx, stream);
        if self.failed.is_some() {
            self.fail_stream(ctx);
            self.stream(ctx).headers_action = Some(Action::Pause);
            return Ok(ctx);
        }
        let id = ctx as i32;
        self.call(ctx, "proxy_on_context_create", &[id, ROOT_ID as i32])?;
        let args = [id, headers.len() as i32, i32::from(end_of_stream)];
        let action = self
            .call(ctx, "proxy_on_request_headers", &args)?
            .map_or(Action::Continue, Action::from_i32);
        let stream = self.stream(ctx);
        stream.headers_action = Some(action);
        if action == Action::Continue && stream.local.is_none() {
            stream.close_maps(StreamType::Request);
        }
        Ok(ctx)
    }

    /// A chunk of request body. Delivered now if the request flows (returns the action of
    /// `on_request_body`); held back while the headers are paused and delivered when the filter
    /// resumes (returns None); dropped after a local reply or reset (None).
    pub fn request_body(
        &mut self,
        req: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Option<Action>, Trap> {
        let failed = self.failed.is_some();
        let stop_iteration = self.stop_iteration;
        let stream = self.stream(req);
        if stream.finished() || failed {
            return Ok(None);
        }
        let reaches_filter = stream.request_flowing()
            || (stop_iteration && stream.headers_action == Some(Action::Pause));
        if !reaches_filter {
            let held = stream.held_body.get_or_insert_with(Default::default);
            held.0.extend_from_slice(chunk);
            held.1 = end_of_stream;
            return Ok(None);
        }
        self.deliver_body(req, chunk.to_vec(), end_of_stream)
            .map(Some)
    }

    fn deliver_body(
        &mut self,
        req: u32,
        chunk: Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Action, Trap> {
        let stream = self.stream(req);
        stream.request_body.extend(chunk);
        stream.body_open = true;
        let len = stream.request_body.len() as i32;
        let args = [req as i32, len, i32::from(end_of_stream)];
        let action = self
            .call(req, "proxy_on_request_body", &args)?
            .map_or(Action::Continue, Action::from_i32);
        let stream = self.stream(req);
        if action == Action::Continue && stream.local.is_none() {
            let body = std::mem::take(&mut stream.request_body);
            stream.forwarded_body.extend(body);
            stream.body_open = false;
            // Going on from the body callback releases headers paused with StopIteration too.
            if !stream.request_flowing() {
                stream.resumed = true;
                stream.close_maps(StreamType::Request);
            }
        }
        Ok(action)
    }

    /// The request's trailers arrive (after body chunks without end of stream): runs
    /// `on_request_trailers(ctx, n)`. Continue forwards the buffered body (and the trailers) as
    /// Envoy does. None when the stream is finished or not flowing.
    pub fn request_trailers(
        &mut self,
        req: u32,
        trailers: &[(&str, &str)],
    ) -> Result<Option<Action>, Trap> {
        let failed = self.failed.is_some();
        let stop_iteration = self.stop_iteration;
        let stream = self.stream(req);
        let reaches_filter = stream.request_flowing()
            || (stop_iteration && stream.headers_action == Some(Action::Pause));
        if stream.finished() || failed || !reaches_filter {
            return Ok(None);
        }
        stream.request_trailers = Slot {
            map: trailers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
                .collect(),
            open: true,
        };
        let args = [req as i32, trailers.len() as i32];
        let action = self
            .call(req, "proxy_on_request_trailers", &args)?
            .map_or(Action::Continue, Action::from_i32);
        let stream = self.stream(req);
        if action == Action::Continue && stream.local.is_none() {
            let body = std::mem::take(&mut stream.request_body);
            stream.forwarded_body.extend(body);
            stream.body_open = false;
            stream.request_trailers.open = false;
            if !stream.request_flowing() {
                stream.resumed = true;
                stream.close_maps(StreamType::Request);
            }
        }
        Ok(Some(action))
    }

    /// The upstream response headers arrive (`:status` is added first): runs
    /// `on_response_headers(ctx, n, end_of_stream)`.
    pub fn response(
        &mut self,
        req: u32,
        status: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action, Trap> {
        assert!(
            self.continued(req),
            "request {req} was never forwarded upstream"
        );
        let mut map = vec![(":status".to_string(), status.to_string().into_bytes())];
        map.extend(
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
        );
        if self.failed.is_some() {
            self.stream(req).response_headers.map = map;
            return Ok(Action::Continue);
        }
        self.encode_headers(req, map, end_of_stream)
    }

    fn encode_headers(
        &mut self,
        req: u32,
        map: Headers,
        end_of_stream: bool,
    ) -> Result<Action, Trap> {
        let n = map.len() as i32;
        let stream = self.stream(req);
        stream.response_headers = Slot { map, open: true };
        let args = [req as i32, n, i32::from(end_of_stream)];
        let action = self
            .call(req, "proxy_on_response_headers", &args)?
            .map_or(Action::Continue, Action::from_i32);
        if action == Action::Continue {
            self.stream(req).close_maps(StreamType::Response);
        }
        Ok(action)
    }

    /// Completes callout `token` with a response (`:status` added first).
    pub fn respond(
        &mut self,
        token: u32,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Trap> {
        let mut map = vec![(":status".to_string(), status.to_string().into_bytes())];
        map.extend(
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
        );
        let response = CallResponse {
            headers: map,
            body: body.to_vec(),
            trailers: Vec::new(),
        };
        self.complete_callout(token, Some(response))
    }

    /// Completes callout `token` with exactly these headers (no `:status` added) and body.
    pub fn respond_raw(&mut self, token: u32, headers: Headers, body: &[u8]) -> Result<(), Trap> {
        let response = CallResponse {
            headers,
            body: body.to_vec(),
            trailers: Vec::new(),
        };
        self.complete_callout(token, Some(response))
    }

    /// Fails callout `token` (reset/timeout): `num_headers = 0`, no response maps or body, and
    /// proxy_get_status answers (BrokenConnection, "reset") during the callback.
    pub fn fail_callout(&mut self, token: u32) -> Result<(), Trap> {
        self.complete_callout(token, None)
    }

    fn complete_callout(&mut self, token: u32, response: Option<CallResponse>) -> Result<(), Trap> {
        let known = self.state().outstanding.remove(&token);
        assert!(known, "no outstanding callout with token {token}");
        if self.failed.is_some() {
            return Ok(());
        }
        let counts = match &response {
            Some(r) => [r.headers.len(), r.body.len(), r.trailers.len()].map(|n| n as i32),
            None => [0, 0, 0],
        };
        let st = self.state();
        if response.is_none() {
            st.status = (Status::BrokenConnection as u32, "reset".into());
        }
        st.call_response = response;
        let args = [
            ROOT_ID as i32,
            token as i32,
            counts[0],
            counts[1],
            counts[2],
        ];
        let result = self.call_raw(ROOT_ID, "proxy_on_http_call_response", &args);
        let st = self.state();
        st.call_response = None;
        st.status.1.clear();
        result?;
        self.apply_deferred()
    }

    /// Fires the root context's timer: `proxy_on_tick(1)`.
    pub fn tick(&mut self) -> Result<(), Trap> {
        assert!(
            self.tick_period_ms() > 0,
            "the guest set no tick period; Envoy would not tick"
        );
        if self.failed.is_some() {
            return Ok(());
        }
        self.call(ROOT_ID, "proxy_on_tick", &[ROOT_ID as i32])
            .map(drop)
    }

    /// Ends the request: `proxy_on_done`, `proxy_on_log` (all maps readable), `proxy_on_delete`.
    pub fn finish(&mut self, req: u32) -> Result<(), Trap> {
        if self.stream(req).deleted {
            return Ok(());
        }
        if self.failed.is_none() {
            let id = req as i32;
            self.call(req, "proxy_on_done", &[id])?;
            self.stream(req).in_log = true;
            let logged = self.call(req, "proxy_on_log", &[id]);
            self.stream(req).in_log = false;
            logged?;
            self.call(req, "proxy_on_delete", &[id])?;
        }
        self.stream(req).deleted = true;
        Ok(())
    }

    /// Envoy tearing the plugin down: `proxy_on_done(1)`; if it returns false the root drains
    /// until the guest calls `proxy_done`, then `proxy_on_delete(1)`. Returns whether it is done.
    pub fn shutdown(&mut self) -> Result<bool, Trap> {
        if self.failed.is_some() {
            return Ok(true);
        }
        let done = self
            .call(ROOT_ID, "proxy_on_done", &[ROOT_ID as i32])?
            .is_none_or(|d| d != 0);
        self.state().root_draining = !done;
        self.state().root_done = done;
        if done {
            self.call(ROOT_ID, "proxy_on_delete", &[ROOT_ID as i32])?;
        }
        Ok(done)
    }

    /// The root context finished (on_done returned true, or the guest called proxy_done).
    pub fn root_done(&self) -> bool {
        self.store.data().root_done
    }

    /// Calls an arbitrary guest export with i32 arguments (for tests of the host itself).
    pub fn call_export(&mut self, ctx: u32, name: &str, args: &[i32]) -> Result<Option<i32>, Trap> {
        self.call(ctx, name, args)
    }

    // ---- Internals.

    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Runs one callback on `ctx` (a missing export is a no-op, as in cpp-host), then applies
    /// the effects Envoy defers to after the VM call.
    fn call(&mut self, ctx: u32, name: &str, args: &[i32]) -> Result<Option<i32>, Trap> {
        let result = self.call_raw(ctx, name, args)?;
        self.apply_deferred()?;
        Ok(result)
    }

    fn call_raw(&mut self, ctx: u32, name: &str, args: &[i32]) -> Result<Option<i32>, Trap> {
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        let st = self.state();
        (st.current, st.effective) = (ctx, 0);
        let first_log = st.logs.len();
        let outcome = func.call(&mut self.store, &params, &mut results);
        let st = self.state();
        (st.current, st.effective) = (0, 0);
        match outcome {
            Ok(()) => Ok(results.first().and_then(Val::i32)),
            Err(e) => Err(self.trap(ctx, format!("{name}: {e:?}"), first_log)),
        }
    }

    /// FAIL_CLOSED: the VM is failed for good; the stream whose callback trapped gets a 503.
    fn trap(&mut self, ctx: u32, message: String, first_log: usize) -> Trap {
        self.failed = Some(message.clone());
        let st = self.state();
        st.deferred.clear();
        let logs = st.logs[first_log..].to_vec();
        if st.streams.contains_key(&ctx) {
            self.fail_stream(ctx);
        }
        Trap {
            message,
            logs,
            context_id: ctx,
        }
    }

    fn fail_stream(&mut self, ctx: u32) {
        let stream = self.stream(ctx);
        if !stream.finished() {
            stream.local = Some(LocalResponse {
                status: 503,
                details: "wasm_fail_stream".into(),
                body: Vec::new(),
                headers: Vec::new(),
                grpc_status: 14,
            });
        }
    }

    fn apply_deferred(&mut self) -> Result<(), Trap> {
        let deferred = std::mem::take(&mut self.state().deferred);
        for action in deferred {
            // Effects aimed at the root context have no stream to act on (Envoy: no callbacks).
            let Some(stream) = self.state().streams.get_mut(&action_ctx(&action)) else {
                continue;
            };
            if stream.finished() {
                continue;
            }
            match action {
                Deferred::Close(_) => stream.reset = true,
                Deferred::Continue(_, StreamType::Response) => stream.response_resumed = true,
                Deferred::Continue(ctx, StreamType::Request) => {
                    stream.resumed = true;
                    let body = std::mem::take(&mut stream.request_body);
                    stream.forwarded_body.extend(body);
                    stream.body_open = false;
                    if let Some((chunk, end_of_stream)) = stream.held_body.take() {
                        self.deliver_body(ctx, chunk, end_of_stream)?;
                    }
                }
                Deferred::LocalReply(ctx, reply) => {
                    let mut map =
                        vec![(":status".to_string(), reply.status.to_string().into_bytes())];
                    map.extend(reply.headers.iter().cloned());
                    let end_of_stream = reply.body.is_empty();
                    stream.local = Some(reply);
                    self.encode_headers(ctx, map, end_of_stream)?;
                }
            }
        }
        Ok(())
    }
}

fn action_ctx(action: &Deferred) -> u32 {
    match action {
        Deferred::Continue(ctx, _) | Deferred::Close(ctx) | Deferred::LocalReply(ctx, _) => *ctx,
    }
}

/// The same imports, each counting its calls in [`HostState::host_calls`] before it runs.
fn counted(
    linker: &Linker<HostState>,
    store: &mut Store<HostState>,
) -> wasmtime::Result<Linker<HostState>> {
    let defined: Vec<(String, String, Extern)> = linker
        .iter(&mut *store)
        .map(|(m, n, e)| (m.to_string(), n.to_string(), e))
        .collect();
    let mut out = Linker::new(store.engine());
    for (m, n, e) in defined {
        let Extern::Func(f) = e else {
            out.define(&mut *store, &m, &n, e)?;
            continue;
        };
        let ty = f.ty(&*store);
        let name = n.clone();
        out.func_new(&m, &n, ty, move |mut c, params, results| {
            *c.data_mut().host_calls.entry(name.clone()).or_default() += 1;
            f.call(&mut c, params, results)
        })?;
    }
    Ok(out)
}
