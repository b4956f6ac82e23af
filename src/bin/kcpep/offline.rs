//! The offline subcommands: `check`, `explain` and `bench-paths` read only the configuration.

use crate::{load, Select};
use anyhow::{anyhow, Result};
use keycloak_pep::config::routes::{PluginConfig, Selector};
use keycloak_pep::config::DecisionProtocol;
use keycloak_pep::enforce;
use keycloak_pep::enforce::enforcer::Enforcer;
use keycloak_pep::request::pattern::PathMatcher;
use keycloak_pep::request::uri;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// `kcpep check`: the configuration loads; what an operator should know about it.
pub fn check(config: &Path) -> Result<()> {
    let cfg = load(config)?;
    let names: Vec<&str> = cfg.enforcers.iter().map(|(n, _)| n.as_str()).collect();
    println!(
        "ok: {} enforcer(s) [{}], {} route rule(s)",
        cfg.enforcers.len(),
        names.join(", "),
        cfg.routes.rules.len()
    );
    for (name, e) in &cfg.enforcers {
        for warning in warnings(e) {
            println!("warning: [{name}] {warning}");
        }
        for note in notes(e) {
            println!("note: [{name}] {note}");
        }
    }
    Ok(())
}

/// The enforcer a request goes to: the one named, else the one the route rules select.
pub fn select(cfg: &PluginConfig, sel: &Select, path: &str) -> Result<usize> {
    match &sel.enforcer {
        Some(n) => cfg
            .enforcers
            .iter()
            .position(|(name, _)| name == n)
            .ok_or_else(|| anyhow!("no enforcer named {n}")),
        None => cfg
            .routes
            .select(&Selector {
                route_name: sel.route.as_deref(),
                virtual_host: sel.virtual_host.as_deref(),
                authority: sel.host.as_deref().unwrap_or(""),
                path: uri::normalize(path).as_deref(),
            })
            .ok_or_else(|| {
                anyhow!("no enforcer selected for this request (no rule matched, no default)")
            }),
    }
}

/// `kcpep explain`: which configured path, scopes and mode a request maps to (no server asked).
pub fn explain(config: &Path, sel: &Select, method: &str, path: &str) -> Result<()> {
    let cfg = load(config)?;
    let index = select(&cfg, sel, path)?;
    let (name, ec) = &cfg.enforcers[index];
    let e = Enforcer::new(name.clone(), ec.clone()).explain(method, path);
    let out = json!({
        "enforcer": name,
        "client": ec.client_id,
        "method": method,
        "request_path": path,
        "normalized_path": e.normalized_path,
        "path": e.entry.as_ref().map(|x| x.config.path.clone()),
        "name": e.entry.as_ref().and_then(|x| x.config.name.clone()),
        "enforcement_mode": e.enforcement_mode.as_str(),
        "scopes": e.method.as_ref().map(|m| m.scopes.clone()).unwrap_or_default(),
        "scopes_enforcement_mode": e.method.as_ref().map(|m| m.scopes_enforcement_mode.as_str()),
        "lazy_load": ec.lazy_load_paths,
        "would": match uri::segmentation_hazard(path) {
            Some(why) => format!("refuse with 400: ambiguous path ({why})"),
            None => would(ec, &e),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// What happens next, in words (offline: no token, no server).
fn would(cfg: &keycloak_pep::config::EnforcerConfig, e: &enforce::Explanation) -> String {
    use keycloak_pep::config::EnforcementMode::*;
    match (&e.entry, e.enforcement_mode) {
        (_, Disabled) => "pass without checks".into(),
        (None, Permissive) => "pass (no path matched, PERMISSIVE)".into(),
        (None, _) if cfg.lazy_load_paths => "ask Keycloak for a resource with this URI (lazy-load-paths)".into(),
        (None, _) => "deny: no path matched (403, or 302 to on-deny-redirect-to)".into(),
        (Some(_), _) => match cfg.proxy.decision_protocol {
            DecisionProtocol::UmaGrant => "verify the token, then ask Keycloak for the scopes unless the token (RPT) already grants them".into(),
            DecisionProtocol::AuthzenForBoundTokens => "verify the token (and its binding), then ask Keycloak for the scopes unless the token (RPT) already grants them: the UMA grant, or AuthZEN's evaluations (one call) for a sender-constrained token".into(),
            DecisionProtocol::Authzen => "verify the token, then ask Keycloak's AuthZEN for the scopes (one call, the user by the token's sub) unless the token (RPT) already grants them".into(),
        },
    }
}

/// Nanoseconds per lookup (a micro-benchmark, printed, never asserted).
pub fn bench_paths() {
    println!("path lookup (normalize + match), ns per lookup:");
    for n in [10usize, 1_000, 10_000] {
        let mut paths: Vec<String> = (0..n).map(|i| format!("/api/v1/items{i}/detail")).collect();
        // a realistic tail of patterns
        paths.extend(
            [
                "/api/{version}/users/{id}",
                "/static/*.css",
                "/admin/*",
                "/api/*",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let m = PathMatcher::new(paths.iter().map(String::as_str));
        let targets: Vec<String> = (0..64)
            .map(|i| match i % 4 {
                0 => format!("/api/v1/items{}/detail", (i * 7919) % n),
                1 => format!("/api/v2/users/{i}"),
                2 => format!("/static/site{i}.css"),
                _ => format!("/unknown/{i}"),
            })
            .collect();
        let iters = 200_000;
        let start = Instant::now();
        let mut hits = 0usize;
        for k in 0..iters {
            let t = &targets[k % targets.len()];
            if let Some(n) = uri::normalize(t) {
                hits += usize::from(m.find(&n).is_some());
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / iters as f64;
        println!("  {n:>6} literal paths + 4 patterns: {ns:>8.0} ns/lookup ({hits} hits)");
    }
}

/// What an operator should know about an enforcer that a valid configuration does not say.
pub fn notes(e: &keycloak_pep::config::EnforcerConfig) -> Vec<String> {
    use keycloak_pep::config::OnKeycloakError;
    let mut out: Vec<String> = Vec::new();
    for (i, p) in e.paths.iter().enumerate() {
        if let Err(why) = keycloak_pep::request::pattern::validate_template(&p.path) {
            out.push(format!(
                "paths[{i}].path \"{}\": {why} (Keycloak's newest matcher calls it malformed; its enforcer, and this filter, match it anyway, often more widely than it reads: check with kcpep explain)",
                p.path
            ));
        }
    }
    out.extend(e.host_requirements());
    if e.proxy.dry_run {
        out.push(
            "dry-run: nothing is blocked, would-be denials are only logged and counted".into(),
        );
    }
    if e.proxy.on_keycloak_error == OnKeycloakError::Allow {
        out.push(
            "on-keycloak-error allow: requests pass unchecked while Keycloak is unreachable".into(),
        );
    }
    if !e.proxy.decision_cache.enabled() {
        out.push("decision cache off: every request asks Keycloak".into());
    }
    out.extend(sender_constraint_note(&e.proxy));
    match e.proxy.decision_protocol {
        DecisionProtocol::UmaGrant => {}
        DecisionProtocol::AuthzenForBoundTokens => out.push("decision-protocol authzen-for-bound-tokens: a sender-constrained token whose binding holds is decided by Keycloak's AuthZEN evaluations (Keycloak 26.7 or later with --features=authzen; the user as stored in Keycloak, by the token's sub), other tokens by the UMA grant".into()),
        DecisionProtocol::Authzen => out.push("decision-protocol authzen: every decision comes from Keycloak's AuthZEN evaluations (Keycloak 26.7 or later with --features=authzen): the user as stored in Keycloak, by the token's sub, not the token's own roles; paths need a resource name and the methods a scope".into()),
    }
    out
}

/// Settings that open what the defaults keep closed: the configuration loads, but says so.
pub fn warnings(e: &keycloak_pep::config::EnforcerConfig) -> Vec<String> {
    use keycloak_pep::config::SenderConstraint;
    let mut out = Vec::new();
    if e.proxy.sender_constraint == SenderConstraint::Off {
        out.push(
            "sender-constraint off: a certificate-bound token (cnf.x5t#S256) is taken as a bearer token on any connection, so one copied from a log works here; DPoP-bound tokens are refused (the default, if-bound, checks every binding)"
                .into(),
        );
    }
    out
}

/// What `sender-constraint` does with this enforcer's tokens (docs/configuration.md).
fn sender_constraint_note(p: &keycloak_pep::config::ProxySettings) -> Option<String> {
    use keycloak_pep::config::SenderConstraint;
    let d = &p.dpop;
    let dpop = format!(
        "DPoP proofs: iat within {} s (+{} s skew), each taken once across the VM's workers ({} replay slots: up to about {} proofs per second, more are refused; one key's or token's proofs take at most {} % of them, about {} a second, and past that only its own are refused); the URL (scheme, host, port, path) is compared with the one the client used, the scheme {}",
        d.proof_lifetime_s,
        d.clock_skew_s,
        d.replay_slots,
        // docs/configuration.md's sizing: slots >= 2 x proofs per second x (lifetime + skew)
        u64::from(d.replay_slots) / 2 / u64::from((d.proof_lifetime_s + d.clock_skew_s).max(1)),
        d.replay_share_percent,
        u64::from(d.replay_slots) * u64::from(d.replay_share_percent)
            / 100
            / u64::from((d.proof_lifetime_s + d.clock_skew_s).max(1)),
        if p.proxy_trust.headers.is_some() {
            "the connection's, or X-Forwarded-Proto/Forwarded from trusted-proxies"
        } else {
            "the connection's (behind a TLS-terminating proxy set proxy-headers and trusted-proxies)"
        }
    );
    let unbound_dpop = if d.accept_unbound_tokens {
        "an unbound token may come with the DPoP scheme and a valid proof"
    } else {
        "an unbound token with the DPoP scheme is refused"
    };
    let decided = match p.decision_protocol {
        DecisionProtocol::UmaGrant => " Keycloak's UMA grant evaluates no permission for DPoP-bound tokens: with a good proof, paths that need a decision answer 403 (decision-protocol authzen-for-bound-tokens asks Keycloak's AuthZEN for them)",
        _ => "",
    };
    match p.sender_constraint {
        SenderConstraint::Off => None,
        SenderConstraint::IfBound => Some(format!(
            "sender-constraint if-bound (the default): a cnf.jkt token needs the DPoP scheme and its proof, a cnf.x5t#S256 token its client certificate; unbound tokens are bearer tokens and {unbound_dpop}. {dpop}.{decided}"
        )),
        SenderConstraint::Required => Some(format!(
            "sender-constraint required: tokens without a binding are refused; a cnf.jkt token needs the DPoP scheme and its proof, a cnf.x5t#S256 token its client certificate; {unbound_dpop}. {dpop}.{decided}"
        )),
    }
}
