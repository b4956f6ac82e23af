//! keycloak.json (adapter keys + `policy-enforcer`) -> a validated, compiled enforcer configuration.
//!
//! A user pastes the keycloak.json they already have. Adapter keys that mean nothing to a proxy are
//! accepted and ignored; everything the filter itself needs beyond Keycloak's format lives in one
//! extra object, `kcpep`, so a plain keycloak.json stays valid. Semantics: docs/keycloak-enforcer.md §1.

pub(crate) mod claim_providers;
pub(crate) mod claims;
pub mod routes;

use crate::config::claims::Cip;
use crate::request::forwarded::{Cidr, ProxyHeaders, ProxyTrust};
use crate::request::pattern::{fails_in_keycloak, PathMatcher};
use crate::request::uri;
use crate::wire::http::Url;
use crate::wire::json::{self, ConfigError, Obj, Result};
use serde_json::Value;
use std::rc::Rc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforcementMode {
    Enforcing,
    Permissive,
    Disabled,
}

impl EnforcementMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementMode::Enforcing => "ENFORCING",
            EnforcementMode::Permissive => "PERMISSIVE",
            EnforcementMode::Disabled => "DISABLED",
        }
    }
}

const ENFORCEMENT_MODES: &[(&str, EnforcementMode)] = &[
    ("ENFORCING", EnforcementMode::Enforcing),
    ("PERMISSIVE", EnforcementMode::Permissive),
    ("DISABLED", EnforcementMode::Disabled),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopesMode {
    All,
    Any,
    Disabled,
}

impl ScopesMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopesMode::All => "ALL",
            ScopesMode::Any => "ANY",
            ScopesMode::Disabled => "DISABLED",
        }
    }
}

const SCOPES_MODES: &[(&str, ScopesMode)] = &[
    ("ALL", ScopesMode::All),
    ("ANY", ScopesMode::Any),
    ("DISABLED", ScopesMode::Disabled),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodConfig {
    pub method: String,
    pub scopes: Vec<String>,
    pub scopes_enforcement_mode: ScopesMode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PathConfig {
    pub name: Option<String>,
    pub path: String,
    /// A server resource id given in the config (Keycloak writes `id` back into resolved configs).
    pub id: Option<String>,
    pub methods: Vec<MethodConfig>,
    pub scopes: Vec<String>,
    pub enforcement_mode: EnforcementMode,
    pub claim_information_point: Option<Rc<Cip>>,
}

/// Keycloak's `path-cache`. `configured` matters in itself: with it, wildcard and unresolved
/// matches are refined against the server even without lazy-load-paths (docs/keycloak-enforcer.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathCacheConfig {
    pub configured: bool,
    /// Milliseconds; -1 never expires; 0 or below -1 disables the cache.
    pub lifespan_ms: i64,
    pub max_entries: u32,
}

impl PathCacheConfig {
    pub fn enabled(&self) -> bool {
        self.lifespan_ms > 0 || self.lifespan_ms == -1
    }
}

impl Default for PathCacheConfig {
    fn default() -> Self {
        PathCacheConfig {
            configured: false,
            lifespan_ms: 30_000,
            max_entries: 1000,
        }
    }
}

/// What to answer when Keycloak cannot be reached or errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnKeycloakError {
    /// 503 (fail closed). The default.
    Deny,
    /// Let the request through; only for explicitly non-critical routes.
    Allow,
}

/// The method-override headers frameworks honour (Express's method-override, Spring's and
/// Rails' clients, Google's APIs): the default of `kcpep.method-override-headers`.
pub const DEFAULT_METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Filter-only settings: the `kcpep` object of a keycloak.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Envoy cluster that reaches Keycloak.
    pub cluster: String,
    /// `:authority` sent to Keycloak; defaults to the host of `auth-server-url`.
    pub authority: String,
    pub timeout_ms: u32,
    /// How many times Envoy may send a Keycloak call that is safe to repeat to another node when
    /// it never got an answer (refused, reset, or 502/503/504 from a proxy in between).
    pub keycloak_retries: u32,
    /// Request header carrying the granted permissions to the upstream.
    pub permissions_header: String,
    /// Whether that header is written (`send-permissions-header`). Off, the permissions are only
    /// in the filter state (for upstreams that must not see them); a client's copy of the header
    /// is removed all the same.
    pub send_permissions_header: bool,
    /// Headers an upstream may take as the request's method instead of the real one (lower
    /// case); a request whose copy names another method is refused (`enforce::gate`).
    pub method_override_headers: Vec<String>,
    pub on_keycloak_error: OnKeycloakError,
    pub clock_skew_seconds: u32,
    /// Expected `iss`; defaults to `<auth-server-url>/realms/<realm>`.
    pub issuer: String,
    /// When set, `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// A path prefix removed before matching (the servlet context path of Keycloak's enforcer).
    pub strip_prefix: Option<String>,
    pub max_token_bytes: u32,
    pub decision_cache: CacheConfig,
    /// Which forwarding headers are believed, and from which peers (claims' remoteAddr/secure).
    pub proxy_trust: ProxyTrust,
    /// The largest request body buffered for body claims; larger requests get 413.
    pub max_body_bytes: u32,
    /// Evaluate everything, record would-be denials, never block.
    pub dry_run: bool,
    /// `kcpep.decision-record`: each request's decision record in the filter state
    /// `wasm.kcpep.decision` (for access logs), and how it names the subject.
    pub decision_record: DecisionRecord,
    /// A request without a token on an enforced path: 401 with a Bearer challenge (RFC 6750, the
    /// default), or 403 as Keycloak's Java enforcer answers (`no-token-status`).
    pub no_token_status: u16,
    /// Whether sender-constrained tokens (DPoP, certificate-bound) must come with their proof.
    pub sender_constraint: SenderConstraint,
    /// `kcpep.decision-protocol`: how Keycloak is asked for a decision.
    pub decision_protocol: DecisionProtocol,
    pub dpop: DpopSettings,
    /// The back-channel logout endpoint the filter answers itself (`backchannel-logout`).
    pub backchannel_logout: Option<BackchannelLogout>,
}

/// `kcpep.backchannel-logout`: where Keycloak posts logout tokens, and what they must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackchannelLogout {
    /// The request path (exact, query aside) answered by the filter, never forwarded.
    pub path: String,
    /// The clients whose "Backchannel logout URL" points here (`aud` of the logout token).
    pub audiences: Vec<String>,
    /// How old a logout token's `iat` may be.
    pub max_age_s: u32,
    /// How long an ended session is remembered: at least the realm's longest token lifespan.
    pub remember_s: u32,
}

/// `kcpep.decision-protocol`: which Keycloak endpoint decides (docs/configuration.md, "Decision
/// protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecisionProtocol {
    /// The UMA grant of the token endpoint, with the user's token (Keycloak's own enforcer).
    #[default]
    UmaGrant,
    /// Keycloak's AuthZEN evaluations (26.7, `--features=authzen`), the PAT as caller and the
    /// token's `sub` as subject, for every token.
    Authzen,
    /// The UMA grant, and AuthZEN for the sender-constrained tokens (DPoP or certificate bound)
    /// whose binding held: the UMA grant refuses a DPoP-bound subject token.
    AuthzenForBoundTokens,
}

impl DecisionProtocol {
    /// Whether AuthZEN decides for a token with (`true`) or without a binding.
    pub fn authzen_for(self, bound: bool) -> bool {
        match self {
            DecisionProtocol::UmaGrant => false,
            DecisionProtocol::Authzen => true,
            DecisionProtocol::AuthzenForBoundTokens => bound,
        }
    }
}

/// `kcpep.decision-record`: `true` (the default), `false`, or
/// `{"subject": "sub" | "hashed" | "omitted", "subject-key": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub enabled: bool,
    pub subject: RecordSubject,
}

/// How a decision record names the token's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordSubject {
    /// Its `sub`.
    Sub,
    /// HMAC-SHA256 of the `sub` under this key: the same user is the same pseudonym in every
    /// record, and only the key's holder can tell who it is.
    Hashed(SubjectKey),
    /// Not at all.
    Omitted,
}

/// The key of hashed subjects; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey(pub Vec<u8>);

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

/// The shortest `subject-key`: a key one could guess makes the pseudonyms reversible.
const MIN_SUBJECT_KEY: usize = 16;

fn parse_decision_record(value: Option<&Value>, path: &str) -> Result<DecisionRecord> {
    let on = |subject| DecisionRecord {
        enabled: true,
        subject,
    };
    match value {
        None | Some(Value::Bool(true)) => Ok(on(RecordSubject::Sub)),
        Some(Value::Bool(false)) => Ok(DecisionRecord {
            enabled: false,
            subject: RecordSubject::Omitted,
        }),
        Some(v @ Value::Object(_)) => {
            let mut o = Obj::new(v, path)?;
            let key_path = o.key_path("subject-key");
            let key = o.string("subject-key")?;
            let subject = o
                .choice("subject", &[("sub", 0u8), ("hashed", 1), ("omitted", 2)])?
                .unwrap_or(0);
            o.finish()?;
            let subject = match (subject, key) {
                (1, Some(k)) if k.len() >= MIN_SUBJECT_KEY => {
                    RecordSubject::Hashed(SubjectKey(k.into_bytes()))
                }
                (1, Some(_)) => {
                    return Err(ConfigError::new(
                        &key_path,
                        format!(
                            "at least {MIN_SUBJECT_KEY} characters (a secret, e.g. ${{env.NAME}})"
                        ),
                    ))
                }
                (1, None) => {
                    return Err(ConfigError::new(
                        &key_path,
                        "is required with \"subject\": \"hashed\"",
                    ))
                }
                (_, Some(_)) => {
                    return Err(ConfigError::new(
                        &key_path,
                        "only with \"subject\": \"hashed\"",
                    ))
                }
                (0, None) => RecordSubject::Sub,
                (_, None) => RecordSubject::Omitted,
            };
            Ok(on(subject))
        }
        Some(other) => Err(ConfigError::new(
            path,
            format!(
                "expected true, false or an object, found {}",
                json::type_name(other)
            ),
        )),
    }
}

/// `kcpep.sender-constraint`: what the filter does with a token's `cnf` binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderConstraint {
    /// The binding is not checked: DPoP-bound tokens (`typ` DPoP) are refused as not access
    /// tokens, certificate-bound ones are taken as bearer tokens. Only as an explicit choice.
    Off,
    /// A token with `cnf.jkt` needs its DPoP proof, one with `cnf.x5t#S256` its certificate
    /// (the default: RFC 8705 §3 and RFC 9449 §7 ask a resource server to check the binding).
    IfBound,
    /// As `IfBound`, and a token without a binding is refused.
    Required,
}

/// Keycloak's default DPoP proof lifetime (s), its `DPoPUtil`'s.
pub const DPOP_DEFAULT_LIFETIME_S: u32 = 10;
/// Keycloak's default allowed clock skew for DPoP proofs (s).
pub const DPOP_DEFAULT_SKEW_S: u32 = 15;

/// `kcpep.dpop`: the proof window (Keycloak's defaults) and the DPoP scheme for unbound tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpopSettings {
    pub proof_lifetime_s: u32,
    pub clock_skew_s: u32,
    /// Whether a token without `cnf.jkt` may be sent with the `DPoP` scheme (RFC 9449 §7.1 lets a
    /// resource server accept it; refused by default, as Keycloak's own endpoints refuse it).
    pub accept_unbound_tokens: bool,
    /// Slots of the replay table (shared by the VM's workers and enforcers; the largest setting
    /// of them is used). A proof takes a slot for lifetime + skew seconds; the table refuses
    /// none until two thirds full (`store::replay`): slots >= 2 x proofs per second x
    /// (lifetime + skew) leaves a margin.
    pub replay_slots: u32,
    /// The share of the replay table (percent) one owner's live proofs may take: the key its
    /// token is bound to, or the token itself. A client flooding valid proofs is refused alone.
    pub replay_share_percent: u32,
}

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            proof_lifetime_s: DPOP_DEFAULT_LIFETIME_S,
            clock_skew_s: DPOP_DEFAULT_SKEW_S,
            accept_unbound_tokens: false,
            replay_slots: 131_072,
            replay_share_percent: 10,
        }
    }
}

/// Decision cache settings (`kcpep.decision-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// 0 turns the cache off.
    pub max_entries: u32,
    pub allow_lifespan_ms: i64,
    pub deny_lifespan_ms: i64,
    /// How long an expired ALLOW may still be served while Keycloak errors or times out (0: never).
    pub stale_on_error_ms: i64,
    /// How long a request waits for another request's identical Keycloak call.
    pub coalesce_wait_ms: i64,
}

/// The largest `decision-cache.max-entries`.
pub const MAX_DECISION_SLOTS: u32 = 1 << 20;

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            allow_lifespan_ms: 30_000,
            deny_lifespan_ms: 5_000,
            stale_on_error_ms: 0,
            coalesce_wait_ms: 1_000,
        }
    }
}

impl CacheConfig {
    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }
}

/// One enforcer: a whole keycloak.json, validated and compiled.
#[derive(Debug, Clone)]
pub struct EnforcerConfig {
    pub realm: String,
    /// `auth-server-url` without a trailing slash; may carry the legacy `/auth` context path.
    pub auth_server_url: String,
    /// Path prefix of Keycloak's endpoints on the cluster (`""` or `/auth`).
    pub base_path: String,
    pub client_id: String,
    pub secret: Option<String>,
    pub enforcement_mode: EnforcementMode,
    pub paths: Vec<PathConfig>,
    pub path_cache: PathCacheConfig,
    pub lazy_load_paths: bool,
    pub http_method_as_scope: bool,
    pub on_deny_redirect_to: Option<String>,
    /// The same page normalized once, to compare request paths with.
    pub on_deny_normalized: Option<String>,
    pub user_managed_access: bool,
    pub claim_information_point: Option<Rc<Cip>>,
    pub proxy: ProxySettings,
    pub matcher: PathMatcher,
    /// Whose shared tables (decision and path caches) this enforcer reads and writes: one per
    /// Keycloak, realm and client, so that the same client id in two realms (a common layout for
    /// tenants) never takes the other realm's resources or decisions.
    pub shared_table: String,
    /// A digest of this enforcer's whole configuration but its credentials. Decisions are keyed
    /// by it: shared data outlives a configuration change in Envoy (same `vm_id`), and a decision
    /// made under other rules (scopes, lifespans, claims, modes) must not answer for the new ones.
    pub rules_digest: u64,
}

/// See [`EnforcerConfig::rules_digest`]. A rotated secret changes no decision, so it keeps them.
fn rules_digest(value: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut rules = value.clone();
    if let Some(o) = rules.as_object_mut() {
        o.remove("credentials");
    }
    let mut h = std::hash::DefaultHasher::new();
    rules.to_string().hash(&mut h);
    h.finish()
}

/// More retries than this only add load on a Keycloak that is failing: all tries share one
/// `timeout-ms`.
const MAX_KEYCLOAK_RETRIES: u32 = 5;

/// Adapter keys (Java adapters / keycloak.json) that do not apply to a proxy filter.
const IGNORED_ADAPTER_KEYS: &[&str] = &[
    "ssl-required",
    "public-client",
    "bearer-only",
    "confidential-port",
    "use-resource-role-mappings",
    "enable-cors",
    "cors-max-age",
    "cors-allowed-methods",
    "cors-allowed-headers",
    "cors-exposed-headers",
    "expose-token",
    "verify-token-audience",
    "truststore",
    "truststore-password",
    "client-keystore",
    "client-keystore-password",
    "client-key-password",
    "always-refresh-token",
    "register-node-at-startup",
    "register-node-period",
    "token-store",
    "adapter-state-cookie-path",
    "principal-attribute",
    "turn-off-change-session-id-on-login",
    "token-minimum-time-to-live",
    "min-time-between-jwks-requests",
    "public-key-cache-ttl",
    "autodetect-bearer-only",
    "enable-pkce",
    "ignore-oauth-query-parameter",
    "disable-trust-manager",
    "allow-any-hostname",
    "connection-pool-size",
    "socket-timeout-millis",
    "connection-timeout-millis",
    "connection-ttl",
    "proxy-url",
    "enable-basic-auth",
    "redirect-rewrite-rules",
    "realm-public-key",
    "auth-server-url-for-backend-requests",
];

impl EnforcerConfig {
    /// Whether a request body of `len` bytes is more than body claims may read (413).
    pub fn body_over_bound(&self, len: usize) -> bool {
        len > self.proxy.max_body_bytes as usize
    }

    /// Parses a keycloak.json document.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(text)
            .map_err(|e| ConfigError::new("", format!("invalid JSON: {e}")))?;
        Self::from_value(&value, "")
    }

    /// Parses one keycloak.json; `${env.NAME}` reads the process (VM) environment.
    pub fn from_value(value: &Value, path: &str) -> Result<Self> {
        Self::from_value_env(value, path, &|name| std::env::var(name).ok())
    }

    pub fn from_value_env(
        value: &Value,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let value = &json::substitute_env(value, path, env)?;
        let rules_digest = rules_digest(value);
        let mut o = Obj::new(value, path)?;
        let realm = o.required_string("realm")?;
        let url_path = o.key_path("auth-server-url");
        let auth_server_url = o
            .required_string("auth-server-url")?
            .trim_end_matches('/')
            .to_string();
        let url = parse_url(&auth_server_url, &url_path)?;
        let client_id = o.required_string("resource")?;
        let secret = match o.object("credentials")? {
            None => None,
            Some(mut c) => {
                let secret = c.string("secret")?;
                if c.get("jwt").is_some() || c.get("secret-jwt").is_some() {
                    return Err(ConfigError::new(
                        &c.path,
                        "only client-secret credentials (\"secret\") are supported",
                    ));
                }
                c.finish()?;
                secret
            }
        };
        o.ignore(IGNORED_ADAPTER_KEYS);

        let pe_value = o.get("policy-enforcer");
        let pe_path = o.key_path("policy-enforcer");
        // keycloak-policy-enforcer's flat PolicyEnforcerConfig: the same settings at the top.
        let flat: Vec<(&'static str, &Value)> = POLICY_ENFORCER_KEYS
            .iter()
            .filter_map(|k| o.get(k).map(|v| (*k, v)))
            .collect();
        let kcpep_value = o.get("kcpep");
        let kcpep_path = o.key_path("kcpep");
        o.finish()?;

        let default_issuer = format!("{auth_server_url}/realms/{realm}");
        let mut proxy = parse_proxy(kcpep_value, &kcpep_path, &url.authority, default_issuer)?;
        if proxy.decision_protocol != DecisionProtocol::UmaGrant && secret.is_none() {
            // AuthZEN's caller is the resource server itself, with its client-credentials token
            return Err(ConfigError::new(
                &json::join(&kcpep_path, "decision-protocol"),
                "AuthZEN is asked with the client's own token: needs credentials.secret",
            ));
        }
        if let Some(b) = proxy
            .backchannel_logout
            .as_mut()
            .filter(|b| b.audiences.is_empty())
        {
            // Keycloak sends the logout token to the client whose URL this is: by default this one
            b.audiences = vec![client_id.clone()];
        }

        let PolicyEnforcerSettings {
            enforcement_mode,
            paths,
            path_cache,
            lazy_load_paths,
            http_method_as_scope,
            on_deny_redirect_to,
            user_managed_access,
            claim_information_point,
        } = policy_enforcer_settings(path, &flat, pe_value, &pe_path)?;

        if proxy.decision_protocol != DecisionProtocol::UmaGrant {
            let cips = std::iter::once(claim_information_point.as_deref())
                .chain(paths.iter().map(|p| p.claim_information_point.as_deref()));
            if let Some(at) = cips.flatten().flat_map(|c| &c.several_values).next() {
                return Err(ConfigError::new(
                    at,
                    "several values for one claim: Keycloak's AuthZEN keeps one value per claim \
                     (an array arrives as its JSON text, which the UMA grant's policies never see); \
                     write one value, or keep decision-protocol uma-grant",
                ));
            }
        }
        let matcher = PathMatcher::new(paths.iter().map(|p| p.path.as_str()));
        let shared_table = format!(
            "{}/{}{}/{realm}/{client_id}",
            proxy.cluster, proxy.authority, url.path
        );
        Ok(EnforcerConfig {
            shared_table,
            rules_digest,
            realm,
            auth_server_url,
            base_path: url.path,
            client_id,
            secret,
            enforcement_mode,
            paths,
            path_cache,
            lazy_load_paths,
            http_method_as_scope,
            on_deny_normalized: on_deny_redirect_to.as_deref().and_then(uri::normalize),
            on_deny_redirect_to,
            user_managed_access,
            claim_information_point,
            proxy,
            matcher,
        })
    }

    /// Whether the enforcer has a claim information point, globally or on a path (then a token's
    /// claims can be pushed to Keycloak, and all of them are kept).
    pub fn has_claim_providers(&self) -> bool {
        self.claim_information_point.is_some()
            || self
                .paths
                .iter()
                .any(|p| p.claim_information_point.is_some())
    }

    /// What this enforcer needs of the host that the filter cannot see for itself: requests whose
    /// body it reads with the headers held (body claims, the back-channel logout endpoint) need
    /// Envoy's `allow_on_headers_stop_iteration`. The filter logs these at start, `kcpep check`
    /// prints them.
    pub fn host_requirements(&self) -> Vec<String> {
        const SETTING: &str = "set allow_on_headers_stop_iteration: true on the Wasm filter (Envoy >= 1.35; Istio: an EnvoyFilter)";
        let mut out = Vec::new();
        if self.reads_bodies() {
            out.push(format!("claims read request bodies, with the headers held until the body is read: {SETTING}, or those requests wait until Envoy's timeouts (never forwarded undecided)"));
        }
        if let Some(b) = &self.proxy.backchannel_logout {
            out.push(format!("back-channel logout at {}: the logout token is read with the headers held: {SETTING}, or Keycloak's logout requests wait until Envoy's timeouts", b.path));
        }
        out
    }

    /// Whether any path of an enforcer has claims that read the request body (then Envoy must let
    /// the filter hold the headers while it reads it: `allow_on_headers_stop_iteration`).
    pub fn reads_bodies(&self) -> bool {
        let global = self.claim_information_point.as_deref();
        std::iter::once(None)
            .chain(
                self.paths
                    .iter()
                    .map(|p| p.claim_information_point.as_deref()),
            )
            .any(|path| claims::needs_body(&claims::chain(global, path), false))
    }

    /// Keycloak loads every server resource at start when no path would be enforced otherwise.
    pub fn loads_paths_from_server(&self) -> bool {
        !self.lazy_load_paths
            && self
                .paths
                .iter()
                .all(|p| p.enforcement_mode == EnforcementMode::Disabled)
    }

    /// `…/realms/<realm>` on the Keycloak cluster.
    pub fn realm_path(&self) -> String {
        format!("{}/realms/{}", self.base_path, self.realm)
    }
}

/// The settings Keycloak's `PolicyEnforcerConfig` holds, at the top of the flat form
/// (keycloak-policy-enforcer) or in the adapter's `policy-enforcer` object.
const POLICY_ENFORCER_KEYS: &[&str] = &[
    "enforcement-mode",
    "paths",
    "path-cache",
    "lazy-load-paths",
    "http-method-as-scope",
    "on-deny-redirect-to",
    "user-managed-access",
    "claim-information-point",
];

/// What the policy enforcer settings say, wherever they were written.
struct PolicyEnforcerSettings {
    enforcement_mode: EnforcementMode,
    paths: Vec<PathConfig>,
    path_cache: PathCacheConfig,
    lazy_load_paths: bool,
    http_method_as_scope: bool,
    on_deny_redirect_to: Option<String>,
    user_managed_access: bool,
    claim_information_point: Option<Rc<Cip>>,
}

/// Both forms load as they are; a file may even mix them, as long as no setting is written in
/// both places with different values (that one is refused, naming the top-level key). Errors
/// name the field where it was written.
fn policy_enforcer_settings(
    top: &str,
    flat: &[(&'static str, &Value)],
    nested: Option<&Value>,
    nested_path: &str,
) -> Result<PolicyEnforcerSettings> {
    let mut merged = match nested {
        None => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(ConfigError::new(
                nested_path,
                format!("expected an object, found {}", json::type_name(other)),
            ))
        }
    };
    for (key, value) in flat {
        match merged.get(*key) {
            Some(v) if v != *value => {
                return Err(ConfigError::new(
                    &json::join(top, key),
                    format!(
                        "also set in {} with another value: write it once, at the top (keycloak-policy-enforcer's format) or in \"policy-enforcer\" (the adapter's)",
                        json::join(nested_path, key)
                    ),
                ))
            }
            _ => {
                merged.insert((*key).to_string(), (*value).clone());
            }
        }
    }
    let base = if nested.is_some() { nested_path } else { top };
    let value = Value::Object(merged);
    read_policy_enforcer(&value, base).map_err(|mut e| {
        // A key written at the top is named there, even when the nested object exists (only a
        // key absent from it can have come from the top: equal values in both were merged).
        let nested_keys = nested.and_then(Value::as_object);
        for (key, _) in flat
            .iter()
            .filter(|(k, _)| nested_keys.is_some_and(|n| !n.contains_key(*k)))
        {
            let written = json::join(nested_path, key);
            if let Some(rest) = e.path.strip_prefix(&written) {
                if rest.is_empty() || rest.starts_with(['.', '[']) {
                    e.path = format!("{}{rest}", json::join(top, key));
                }
            }
        }
        e
    })
}

fn read_policy_enforcer(value: &Value, base: &str) -> Result<PolicyEnforcerSettings> {
    let mut pe = Obj::new(value, base)?;
    let enforcement_mode = pe
        .choice("enforcement-mode", ENFORCEMENT_MODES)?
        .unwrap_or(EnforcementMode::Enforcing);
    let mut paths: Vec<PathConfig> = Vec::new();
    if let Some(items) = pe.array("paths")? {
        let base = pe.key_path("paths");
        for (i, item) in items.iter().enumerate() {
            let pc = parse_path(item, &json::index(&base, i))?;
            // Keycloak merges entries with the same `path`: methods and scopes are concatenated.
            if let Some(existing) = paths.iter_mut().find(|p| p.path == pc.path) {
                existing.methods.extend(pc.methods);
                existing.scopes.extend(pc.scopes);
            } else {
                paths.push(pc);
            }
        }
    }
    let path_cache = match pe.object("path-cache")? {
        None => PathCacheConfig::default(),
        Some(mut pc) => {
            let lifespan_ms = pc.i64("lifespan")?.unwrap_or(30_000);
            let max_path = pc.key_path("max-entries");
            let max_entries = match pc.i64("max-entries")? {
                None => 1000,
                Some(n) => u32::try_from(n).map_err(|_| {
                    ConfigError::new(&max_path, "expected a number from 0 to 4294967295")
                })?,
            };
            pc.finish()?;
            PathCacheConfig {
                configured: true,
                lifespan_ms,
                max_entries,
            }
        }
    };
    let lazy_load_paths = pe.bool("lazy-load-paths")?.unwrap_or(false);
    let http_method_as_scope = pe.bool("http-method-as-scope")?.unwrap_or(false);
    let on_deny_redirect_to = pe.string("on-deny-redirect-to")?;
    let user_managed_access = match pe.get("user-managed-access") {
        None => false,
        Some(Value::Object(_)) => true,
        Some(other) => {
            return Err(ConfigError::new(
                &pe.key_path("user-managed-access"),
                format!(
                    "expected an object ({{}} turns it on), found {}",
                    json::type_name(other)
                ),
            ))
        }
    };
    let claim_information_point = parse_cip(&mut pe)?;
    pe.finish()?;

    Ok(PolicyEnforcerSettings {
        enforcement_mode,
        paths,
        path_cache,
        lazy_load_paths,
        http_method_as_scope,
        on_deny_redirect_to,
        user_managed_access,
        claim_information_point,
    })
}

fn parse_path(value: &Value, path: &str) -> Result<PathConfig> {
    let mut o = Obj::new(value, path)?;
    let name = o.string("name")?;
    let p = o.required_string("path")?;
    if let Some(why) = fails_in_keycloak(&p) {
        return Err(ConfigError::new(&o.key_path("path"), why));
    }
    let id = o.string("id")?;
    let mut methods = Vec::new();
    if let Some(items) = o.array("methods")? {
        let base = o.key_path("methods");
        for (i, item) in items.iter().enumerate() {
            let mut m = Obj::new(item, &json::index(&base, i))?;
            let method = m.required_string("method")?;
            let scopes = m.string_list("scopes")?.unwrap_or_default();
            let scopes_enforcement_mode = m
                .choice("scopes-enforcement-mode", SCOPES_MODES)?
                .unwrap_or(ScopesMode::All);
            m.finish()?;
            methods.push(MethodConfig {
                method,
                scopes,
                scopes_enforcement_mode,
            });
        }
    }
    let scopes = o.string_list("scopes")?.unwrap_or_default();
    let enforcement_mode = o
        .choice("enforcement-mode", ENFORCEMENT_MODES)?
        .unwrap_or(EnforcementMode::Enforcing);
    let claim_information_point = parse_cip(&mut o)?;
    // Fields Keycloak itself writes into resolved path configs.
    o.ignore(&["type", "static", "invalidated", "parentConfig"]);
    o.finish()?;
    Ok(PathConfig {
        name,
        path: p,
        id,
        methods,
        scopes,
        enforcement_mode,
        claim_information_point,
    })
}

fn parse_cip(o: &mut Obj) -> Result<Option<Rc<Cip>>> {
    let path = o.key_path("claim-information-point");
    match o.get("claim-information-point") {
        None => Ok(None),
        Some(v) => Ok(Some(Rc::new(Cip::parse(v, &path)?))),
    }
}

fn parse_proxy(
    value: Option<&Value>,
    path: &str,
    default_authority: &str,
    default_issuer: String,
) -> Result<ProxySettings> {
    let empty = Value::Object(Default::default());
    let mut o = Obj::new(value.unwrap_or(&empty), path)?;
    let cluster = o.string("cluster")?.unwrap_or_else(|| "keycloak".into());
    let authority = o
        .string("authority")?
        .unwrap_or_else(|| default_authority.to_string());
    let timeout_path = o.key_path("timeout-ms");
    let timeout_ms = o.u32("timeout-ms")?.unwrap_or(2000);
    if timeout_ms == 0 {
        // Envoy treats 0 as "no timeout at all": every callout must be bounded.
        return Err(ConfigError::new(&timeout_path, "must be at least 1"));
    }
    let header_path = o.key_path("permissions-header");
    let permissions_header = o
        .string("permissions-header")?
        .unwrap_or_else(|| "x-kcpep-permissions".into())
        .to_ascii_lowercase();
    if !is_header_name(&permissions_header) {
        return Err(ConfigError::new(
            &header_path,
            "expected an HTTP header name",
        ));
    }
    let send_permissions_header = o.bool("send-permissions-header")?.unwrap_or(true);
    let retries_path = o.key_path("keycloak-retries");
    let keycloak_retries = o.u32("keycloak-retries")?.unwrap_or(2);
    if keycloak_retries > MAX_KEYCLOAK_RETRIES {
        return Err(ConfigError::new(
            &retries_path,
            format!("at most {MAX_KEYCLOAK_RETRIES}"),
        ));
    }
    let override_path = o.key_path("method-override-headers");
    let method_override_headers = match o.string_list("method-override-headers")? {
        None => DEFAULT_METHOD_OVERRIDE_HEADERS
            .iter()
            .map(|h| h.to_string())
            .collect(),
        Some(list) => {
            let list: Vec<String> = list.iter().map(|h| h.to_ascii_lowercase()).collect();
            if let Some(bad) = list.iter().find(|h| !is_header_name(h)) {
                return Err(ConfigError::new(
                    &override_path,
                    format!("expected HTTP header names, not {bad:?}"),
                ));
            }
            list
        }
    };
    let on_keycloak_error = o
        .choice(
            "on-keycloak-error",
            &[
                ("deny", OnKeycloakError::Deny),
                ("allow", OnKeycloakError::Allow),
            ],
        )?
        .unwrap_or(OnKeycloakError::Deny);
    let clock_skew_seconds = o.u32("clock-skew-seconds")?.unwrap_or(30);
    let issuer = o.string("issuer")?.unwrap_or(default_issuer);
    let audiences = o.string_list("audiences")?.unwrap_or_default();
    let strip_prefix = o
        .string("strip-prefix")?
        .map(|s| s.trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty());
    let max_token_bytes = o.u32("max-token-bytes")?.unwrap_or(16 * 1024);
    let decision_cache = match o.object("decision-cache")? {
        None => CacheConfig::default(),
        Some(mut c) => {
            let d = CacheConfig::default();
            let ms = |c: &mut Obj, key: &'static str, default: i64| -> Result<i64> {
                Ok(c.u32(key)?.map_or(default, i64::from))
            };
            let entries_path = c.key_path("max-entries");
            let parsed = CacheConfig {
                max_entries: c.u32("max-entries")?.unwrap_or(d.max_entries),
                allow_lifespan_ms: ms(&mut c, "lifespan-ms", d.allow_lifespan_ms)?,
                deny_lifespan_ms: ms(&mut c, "deny-lifespan-ms", d.deny_lifespan_ms)?,
                stale_on_error_ms: ms(&mut c, "stale-on-error-ms", d.stale_on_error_ms)?,
                coalesce_wait_ms: ms(&mut c, "coalesce-wait-ms", d.coalesce_wait_ms)?,
            };
            c.finish()?;
            // Every slot is made at configure (store::shared::reserve_slots): a bound keeps that
            // a start-up cost, not a hang.
            if parsed.max_entries > MAX_DECISION_SLOTS {
                return Err(ConfigError::new(
                    &entries_path,
                    "expected 0 to 1048576 slots",
                ));
            }
            parsed
        }
    };
    let proxy_headers = o.choice(
        "proxy-headers",
        &[
            ("forwarded", ProxyHeaders::Forwarded),
            ("xforwarded", ProxyHeaders::XForwarded),
        ],
    )?;
    let trusted_path = o.key_path("trusted-proxies");
    let trusted = o
        .string_list("trusted-proxies")?
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Cidr::parse(s)
                .map_err(|e| ConfigError::new(&json::index(&trusted_path, i), e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    if proxy_headers.is_some() && trusted.is_empty() {
        // Keycloak trusts every peer when proxy-trusted-addresses is unset; we do not.
        return Err(ConfigError::new(
            &trusted_path,
            "proxy-headers needs the addresses of the trusted proxies (\"0.0.0.0/0\" and \"::/0\" trust every peer)",
        ));
    }
    let max_body_bytes = o.u32("max-body-bytes")?.unwrap_or(64 * 1024);
    let dry_run = o.bool("dry-run")?.unwrap_or(false);
    let record_path = o.key_path("decision-record");
    let decision_record = parse_decision_record(o.get("decision-record"), &record_path)?;
    let no_token_path = o.key_path("no-token-status");
    let no_token_status = match o.u32("no-token-status")? {
        None | Some(401) => 401,
        Some(403) => 403,
        Some(other) => {
            return Err(ConfigError::new(
                &no_token_path,
                format!(
                "expected 401 (a Bearer challenge) or 403 (as Keycloak's enforcer), found {other}"
            ),
            ))
        }
    };
    let sender_constraint = o
        .choice(
            "sender-constraint",
            &[
                ("off", SenderConstraint::Off),
                ("if-bound", SenderConstraint::IfBound),
                ("required", SenderConstraint::Required),
            ],
        )?
        .unwrap_or(SenderConstraint::IfBound);
    let decision_protocol = o
        .choice(
            "decision-protocol",
            &[
                ("uma-grant", DecisionProtocol::UmaGrant),
                ("authzen", DecisionProtocol::Authzen),
                (
                    "authzen-for-bound-tokens",
                    DecisionProtocol::AuthzenForBoundTokens,
                ),
            ],
        )?
        .unwrap_or_default();
    let dpop = match o.object("dpop")? {
        None => DpopSettings::default(),
        Some(mut d) => {
            let def = DpopSettings::default();
            let lifetime_path = d.key_path("proof-lifetime-seconds");
            let parsed = DpopSettings {
                proof_lifetime_s: d
                    .u32("proof-lifetime-seconds")?
                    .unwrap_or(def.proof_lifetime_s),
                clock_skew_s: d.u32("clock-skew-seconds")?.unwrap_or(def.clock_skew_s),
                accept_unbound_tokens: d
                    .bool("accept-unbound-tokens")?
                    .unwrap_or(def.accept_unbound_tokens),
                replay_slots: d.u32("replay-slots")?.unwrap_or(def.replay_slots),
                replay_share_percent: d
                    .u32("replay-share-percent")?
                    .unwrap_or(def.replay_share_percent),
            };
            let slots_path = d.key_path("replay-slots");
            let share_path = d.key_path("replay-share-percent");
            d.finish()?;
            if parsed.proof_lifetime_s == 0 || parsed.proof_lifetime_s > 3600 {
                return Err(ConfigError::new(
                    &lifetime_path,
                    "expected 1 to 3600 seconds",
                ));
            }
            if !(64..=1 << 20).contains(&parsed.replay_slots) {
                return Err(ConfigError::new(
                    &slots_path,
                    "expected 64 to 1048576 slots",
                ));
            }
            if !(1..=100).contains(&parsed.replay_share_percent) {
                return Err(ConfigError::new(&share_path, "expected 1 to 100 percent"));
            }
            parsed
        }
    };
    let backchannel_logout = match o.object("backchannel-logout")? {
        None => None,
        Some(mut b) => {
            let path_path = b.key_path("path");
            let path = b.string("path")?.unwrap_or_default();
            if !path.starts_with('/') || path.contains(['?', '#']) {
                return Err(ConfigError::new(
                    &path_path,
                    "expected the request path Keycloak posts logout tokens to, like \"/kcpep/backchannel-logout\"",
                ));
            }
            let parsed = BackchannelLogout {
                path,
                audiences: b.string_list("audiences")?.unwrap_or_default(),
                max_age_s: b.u32("max-age-seconds")?.unwrap_or(60),
                remember_s: b.u32("remember-seconds")?.unwrap_or(3600),
            };
            b.finish()?;
            Some(parsed)
        }
    };
    o.finish()?;
    Ok(ProxySettings {
        backchannel_logout,
        sender_constraint,
        decision_protocol,
        decision_record,
        dpop,
        cluster,
        authority,
        timeout_ms,
        permissions_header,
        send_permissions_header,
        keycloak_retries,
        method_override_headers,
        on_keycloak_error,
        clock_skew_seconds,
        issuer,
        audiences,
        strip_prefix,
        max_token_bytes,
        decision_cache,
        proxy_trust: ProxyTrust {
            headers: proxy_headers,
            trusted,
        },
        max_body_bytes,
        dry_run,
        no_token_status,
    })
}

struct ServerUrl {
    authority: String,
    path: String,
}

/// `auth-server-url`: Keycloak's base, with or without a context path, no query.
fn parse_url(url: &str, at: &str) -> Result<ServerUrl> {
    let u = Url::parse(url).map_err(|e| ConfigError::new(at, e.to_string()))?;
    if u.rest.contains(['?', '#']) {
        return Err(ConfigError::new(at, "must not carry a query or fragment"));
    }
    Ok(ServerUrl {
        authority: u.authority.to_string(),
        path: u.rest.trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<EnforcerConfig> {
        EnforcerConfig::from_value(&v, "")
    }

    fn minimal() -> Value {
        json!({"realm": "bank", "auth-server-url": "http://kc:8080", "resource": "bank-api",
               "credentials": {"secret": "s3cret"}})
    }

    #[test]
    fn minimal_keycloak_json_gets_keycloak_defaults() {
        let c = parse(minimal()).unwrap();
        assert_eq!(c.enforcement_mode, EnforcementMode::Enforcing);
        assert_eq!(c.path_cache, PathCacheConfig::default());
        assert!(!c.lazy_load_paths && !c.http_method_as_scope && !c.user_managed_access);
        assert_eq!(c.secret.as_deref(), Some("s3cret"));
        assert_eq!(c.base_path, "");
        assert_eq!(c.realm_path(), "/realms/bank");
        assert_eq!(c.proxy.authority, "kc:8080");
        assert_eq!(c.proxy.issuer, "http://kc:8080/realms/bank");
        assert_eq!(c.proxy.cluster, "keycloak");
        assert!(c.loads_paths_from_server());
    }

    #[test]
    fn one_client_id_in_two_realms_has_two_shared_tables() {
        let a = parse(minimal()).unwrap();
        let mut v = minimal();
        v["realm"] = json!("tenant-2");
        let b = parse(v).unwrap();
        assert_eq!(a.shared_table, "keycloak/kc:8080/bank/bank-api");
        assert_ne!(a.shared_table, b.shared_table);
        assert_eq!(a.shared_table, parse(minimal()).unwrap().shared_table);
    }

    #[test]
    fn legacy_auth_context_path() {
        let mut v = minimal();
        v["auth-server-url"] = json!("https://kc.example/auth/");
        let c = parse(v).unwrap();
        assert_eq!(c.base_path, "/auth");
        assert_eq!(c.realm_path(), "/auth/realms/bank");
        assert_eq!(c.proxy.issuer, "https://kc.example/auth/realms/bank");
        assert_eq!(c.proxy.authority, "kc.example");
    }

    #[test]
    fn full_policy_enforcer_section() {
        let mut v = minimal();
        v["ssl-required"] = json!("external");
        v["bearer-only"] = json!(true);
        v["policy-enforcer"] = json!({
            "enforcement-mode": "PERMISSIVE",
            "lazy-load-paths": true,
            "http-method-as-scope": true,
            "on-deny-redirect-to": "/denied",
            "user-managed-access": {},
            "path-cache": {"lifespan": -1, "max-entries": 5},
            "claim-information-point": {"claims": {"a": "{request.method}"}},
            "paths": [
                {"name": "Account", "path": "/account/{id}",
                 "methods": [{"method": "GET", "scopes": ["account:view"]},
                             {"method": "POST", "scopes": ["a", "b"], "scopes-enforcement-mode": "ANY"}],
                 "claim-information-point": {"claims": {"b": "x"}}},
                {"path": "/public/*", "enforcement-mode": "DISABLED"},
                {"path": "/account/{id}", "scopes": ["extra"], "methods": [{"method": "DELETE", "scopes": ["d"]}]}
            ]
        });
        let c = parse(v).unwrap();
        assert_eq!(c.enforcement_mode, EnforcementMode::Permissive);
        assert!(c.lazy_load_paths && c.http_method_as_scope && c.user_managed_access);
        assert_eq!(c.on_deny_redirect_to.as_deref(), Some("/denied"));
        assert_eq!(
            c.path_cache,
            PathCacheConfig {
                configured: true,
                lifespan_ms: -1,
                max_entries: 5
            }
        );
        assert!(c.path_cache.enabled());
        assert!(c.claim_information_point.is_some());
        assert_eq!(c.paths.len(), 2, "identical paths are merged");
        let acc = &c.paths[0];
        assert_eq!(acc.methods.len(), 3);
        assert_eq!(acc.methods[1].scopes_enforcement_mode, ScopesMode::Any);
        assert_eq!(acc.methods[0].scopes_enforcement_mode, ScopesMode::All);
        assert_eq!(acc.scopes, vec!["extra"]);
        assert!(acc.claim_information_point.is_some());
        assert_eq!(c.paths[1].enforcement_mode, EnforcementMode::Disabled);
        assert!(!c.loads_paths_from_server());
    }

    #[test]
    fn path_cache_special_values() {
        for (lifespan, enabled) in [(0, false), (-1, true), (-2, false), (1, true)] {
            let mut v = minimal();
            v["policy-enforcer"] = json!({"path-cache": {"lifespan": lifespan}});
            let c = parse(v).unwrap();
            assert_eq!(c.path_cache.enabled(), enabled, "lifespan {lifespan}");
            assert_eq!(c.path_cache.max_entries, 1000);
        }
    }

    #[test]
    fn errors_name_the_json_path() {
        let cases = [
            (json!({"paths": [{"path": "/a"}, {"path": "/b"}, {"path": "/c"},
                    {"path": "/d", "methods": [{"method": "GET", "scopes-enforcement-mode": "SOME"}]}]}),
             "policy-enforcer.paths[3].methods[0].scopes-enforcement-mode: expected ALL, ANY or DISABLED, found \"SOME\""),
            (json!({"enforcement-mode": "enforcing"}),
             "policy-enforcer.enforcement-mode: expected ENFORCING, PERMISSIVE or DISABLED, found \"enforcing\""),
            (json!({"paths": [{"path": "/a", "scopes": "x"}]}),
             "policy-enforcer.paths[0].scopes: expected an array of strings, found a string"),
            (json!({"paths": [{"name": "x"}]}), "policy-enforcer.paths[0].path: is required"),
            (json!({"paths": [{"path": "/a/{id"}]}), "policy-enforcer.paths[0].path: missing closing '}': Keycloak's enforcer fails the requests this pattern is tried on"),
            (json!({"lazy-load-path": true}),
             "policy-enforcer.lazy-load-path: unknown key (did you mean \"lazy-load-paths\"?)"),
            (json!({"path-cache": {"lifespan": "1s"}}),
             "policy-enforcer.path-cache.lifespan: expected a whole number, found a string"),
            (json!({"path-cache": {"max-entries": -1}}),
             "policy-enforcer.path-cache.max-entries: expected a number from 0 to 4294967295"),
            (json!({"user-managed-access": true}),
             "policy-enforcer.user-managed-access: expected an object ({} turns it on), found a boolean"),
            (json!({"paths": [{"path": "/a", "methods": [{"scopes": []}]}]}),
             "policy-enforcer.paths[0].methods[0].method: is required"),
        ];
        for (pe, want) in cases {
            let mut v = minimal();
            v["policy-enforcer"] = pe;
            assert_eq!(parse(v).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn the_flat_policy_enforcer_config_form_loads_and_may_be_mixed_without_contradiction() {
        // keycloak-policy-enforcer's PolicyEnforcerConfig: the settings at the top
        let mut v = minimal();
        v["enforcement-mode"] = json!("PERMISSIVE");
        v["lazy-load-paths"] = json!(true);
        v["paths"] =
            json!([{"path": "/users/*", "methods": [{"method": "GET", "scopes": ["view"]}]}]);
        let c = parse(v.clone()).unwrap();
        assert_eq!(c.enforcement_mode, EnforcementMode::Permissive);
        assert!(c.lazy_load_paths);
        assert_eq!(c.paths[0].path, "/users/*");
        // errors name the field where it is written
        let mut bad = minimal();
        bad["paths"] = json!([{"path": "/a"}, {"path": "/a/{id"}]);
        assert_eq!(
            parse(bad).unwrap_err().to_string(),
            "paths[1].path: missing closing '}': Keycloak's enforcer fails the requests this pattern is tried on"
        );
        let mut typo = minimal();
        typo["lazy-load-path"] = json!(true);
        assert_eq!(
            parse(typo).unwrap_err().to_string(),
            "lazy-load-path: unknown key (did you mean \"lazy-load-paths\"?)"
        );
        // a mix: each setting in one place
        let mut mixed = minimal();
        mixed["policy-enforcer"] = json!({"lazy-load-paths": true});
        mixed["paths"] = json!([{"name": "x"}]);
        assert_eq!(
            parse(mixed.clone()).unwrap_err().to_string(),
            "paths[0].path: is required",
            "named at the top, where it is written"
        );
        mixed["paths"] = json!([{"path": "/x"}]);
        mixed["enforcement-mode"] = json!("ENFORCING");
        let c = parse(mixed.clone()).unwrap();
        assert!(c.lazy_load_paths && c.paths.len() == 1);
        // the same setting twice with the same value is no contradiction; with another, it is
        mixed["policy-enforcer"]["enforcement-mode"] = json!("ENFORCING");
        assert!(parse(mixed.clone()).is_ok());
        mixed["policy-enforcer"]["enforcement-mode"] = json!("DISABLED");
        let e = parse(mixed).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "enforcement-mode: also set in policy-enforcer.enforcement-mode with another value"
            ),
            "{e}"
        );
    }

    #[test]
    fn no_token_status_is_401_or_403() {
        let mut v = minimal();
        v["kcpep"] = json!({"no-token-status": 403});
        assert_eq!(parse(v.clone()).unwrap().proxy.no_token_status, 403);
        v["kcpep"] = json!({"no-token-status": 404});
        assert_eq!(
            parse(v).unwrap_err().to_string(),
            "kcpep.no-token-status: expected 401 (a Bearer challenge) or 403 (as Keycloak's enforcer), found 404"
        );
        assert_eq!(parse(minimal()).unwrap().proxy.no_token_status, 401);
    }

    #[test]
    fn the_decision_table_is_bounded() {
        let mut v = minimal();
        v["kcpep"] = json!({"decision-cache": {"max-entries": 1 << 20}});
        assert_eq!(
            parse(v.clone()).unwrap().proxy.decision_cache.max_entries,
            MAX_DECISION_SLOTS
        );
        v["kcpep"] = json!({"decision-cache": {"max-entries": (1 << 20) + 1}});
        assert_eq!(
            parse(v).unwrap_err().to_string(),
            "kcpep.decision-cache.max-entries: expected 0 to 1048576 slots"
        );
    }

    #[test]
    fn adapter_level_errors() {
        let mut v = minimal();
        v["auth-server-url"] = json!("kc:8080");
        assert!(parse(v)
            .unwrap_err()
            .to_string()
            .starts_with("auth-server-url: expected an http"));
        let mut v = minimal();
        v["credentials"] = json!({"jwt": {"client-keystore-file": "x"}});
        assert_eq!(
            parse(v).unwrap_err().to_string(),
            "credentials: only client-secret credentials (\"secret\") are supported"
        );
        let mut v = minimal();
        v["realmm"] = json!("x");
        assert_eq!(
            parse(v).unwrap_err().to_string(),
            "realmm: unknown key (did you mean \"realm\"?)"
        );
        let v = json!({"realm": "r", "auth-server-url": "http://k"});
        assert_eq!(parse(v).unwrap_err().to_string(), "resource: is required");
        assert!(EnforcerConfig::from_json(b"{")
            .unwrap_err()
            .to_string()
            .starts_with("invalid JSON"));
    }

    #[test]
    fn a_decision_record_setting_is_checked_at_load() {
        let with = |record: Value| {
            let mut v = json!({"realm": "bank", "auth-server-url": "http://kc",
                               "resource": "bank-api"});
            v["kcpep"] = json!({"decision-record": record});
            EnforcerConfig::from_value(&v, "").map(|c| c.proxy.decision_record)
        };
        let err = |record: Value| with(record).unwrap_err().to_string();
        assert!(!with(json!(false)).unwrap().enabled);
        assert_eq!(
            with(json!({"subject": "omitted"})).unwrap().subject,
            RecordSubject::Omitted
        );
        assert!(matches!(
            with(json!({"subject": "hashed", "subject-key": "0123456789abcdef"}))
                .unwrap()
                .subject,
            RecordSubject::Hashed(_)
        ));
        assert_eq!(
            err(json!({"subject": "hashed"})),
            "kcpep.decision-record.subject-key: is required with \"subject\": \"hashed\""
        );
        assert!(err(json!({"subject": "hashed", "subject-key": "short"}))
            .starts_with("kcpep.decision-record.subject-key: at least 16 characters"));
        assert!(
            err(json!({"subject": "name"})).starts_with("kcpep.decision-record.subject: expected")
        );
        assert_eq!(
            err(json!("yes")),
            "kcpep.decision-record: expected true, false or an object, found a string"
        );
        let key = with(json!({"subject": "hashed", "subject-key": "0123456789abcdef"})).unwrap();
        assert!(
            !format!("{key:?}").contains("0123456789abcdef"),
            "the key is never printed"
        );
    }

    #[test]
    fn decisions_are_keyed_by_the_rules_not_by_the_secret() {
        let a = parse(minimal()).unwrap().rules_digest;
        assert_eq!(a, parse(minimal()).unwrap().rules_digest);
        let mut v = minimal();
        v["credentials"] = json!({"secret": "rotated"});
        assert_eq!(
            parse(v).unwrap().rules_digest,
            a,
            "a new secret keeps decisions"
        );
        let mut v = minimal();
        v["policy-enforcer"] = json!({"paths": [{"path": "/a", "scopes": ["read"]}]});
        let b = parse(v.clone()).unwrap().rules_digest;
        assert_ne!(b, a);
        v["policy-enforcer"]["paths"][0]["scopes"] = json!(["write"]);
        assert_ne!(parse(v.clone()).unwrap().rules_digest, b, "a changed scope");
        v["kcpep"] = json!({"decision-cache": {"lifespan-ms": 1000}});
        assert_ne!(parse(v).unwrap().rules_digest, b, "a changed lifespan");
    }

    #[test]
    fn keycloak_retries_are_bounded() {
        assert_eq!(parse(minimal()).unwrap().proxy.keycloak_retries, 2);
        let mut v = minimal();
        v["kcpep"] = json!({"keycloak-retries": 0});
        assert_eq!(parse(v).unwrap().proxy.keycloak_retries, 0);
        let mut v = minimal();
        v["kcpep"] = json!({"keycloak-retries": 9});
        assert_eq!(
            parse(v).unwrap_err().to_string(),
            "kcpep.keycloak-retries: at most 5"
        );
    }

    #[test]
    fn the_permissions_header_can_be_left_to_the_filter_state() {
        let mut v = minimal();
        v["kcpep"] = json!({"send-permissions-header": false});
        assert!(!parse(v).unwrap().proxy.send_permissions_header);
        let mut v = minimal();
        v["kcpep"] = json!({"send-permissions-header": "no"});
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("kcpep.send-permissions-header"), "{e}");
    }

    #[test]
    fn kcpep_settings() {
        let mut v = minimal();
        v["kcpep"] = json!({"cluster": "outbound|8080||keycloak.ns.svc.cluster.local",
                            "timeout-ms": 500, "permissions-header": "X-Perms",
                            "on-keycloak-error": "allow", "issuer": "https://id/realms/bank",
                            "strip-prefix": "/app/", "audiences": ["bank-api"]});
        let c = parse(v).unwrap();
        assert_eq!(
            c.proxy.cluster,
            "outbound|8080||keycloak.ns.svc.cluster.local"
        );
        assert_eq!(c.proxy.timeout_ms, 500);
        assert_eq!(c.proxy.permissions_header, "x-perms");
        assert!(c.proxy.send_permissions_header, "on unless turned off");
        assert_eq!(c.proxy.on_keycloak_error, OnKeycloakError::Allow);
        assert_eq!(c.proxy.issuer, "https://id/realms/bank");
        assert_eq!(c.proxy.strip_prefix.as_deref(), Some("/app"));
        assert_eq!(c.proxy.decision_cache, CacheConfig::default());
        let mut v = minimal();
        v["kcpep"] = json!({"decision-cache": {"max-entries": 0, "lifespan-ms": 1000, "deny-lifespan-ms": 10,
                                               "stale-on-error-ms": 60000, "coalesce-wait-ms": 500}});
        let c = parse(v).unwrap();
        assert!(!c.proxy.decision_cache.enabled());
        assert_eq!(c.proxy.decision_cache.allow_lifespan_ms, 1000);
        assert_eq!(c.proxy.decision_cache.stale_on_error_ms, 60000);
        let mut v = minimal();
        v["kcpep"] = json!({"decision-cache": {"lifespan": 1}});
        assert_eq!(
            parse(v).unwrap_err().to_string(),
            "kcpep.decision-cache.lifespan: unknown key (did you mean \"lifespan-ms\"?)"
        );
        let mut v = minimal();
        v["kcpep"] = json!({"timeout-ms": 0});
        assert_eq!(
            parse(v).unwrap_err().to_string(),
            "kcpep.timeout-ms: must be at least 1"
        );
        let mut v = minimal();
        v["kcpep"] = json!({"clustr": "x"});
        assert_eq!(
            parse(v).unwrap_err().to_string(),
            "kcpep.clustr: unknown key (did you mean \"cluster\"?)"
        );
    }
}
