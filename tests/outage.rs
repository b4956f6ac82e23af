//! Keycloak stopped mid-run: uncached requests fail closed with 503, cached decisions keep being
//! served (and, within the stale-on-error window, expired ALLOWs too); everything recovers when
//! Keycloak returns. A test binary of its own because it stops the shared Keycloak (`make test`
//! runs it last).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn stack(cmd: &str) {
    let script = env("KCPEP_STACK");
    let ok = Command::new(&script).arg(cmd).status().unwrap().success();
    assert!(ok, "{script} {cmd} failed");
}

fn account(host: &str, token: &str) -> u16 {
    account_at(host, "/account/1", token)
}

fn account_at(host: &str, path: &str, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    request(
        &envoy(),
        "GET",
        path,
        &[
            ("host", host.as_bytes()),
            ("authorization", auth.as_bytes()),
        ],
        b"",
    )
    .status
}

#[test]
fn keycloak_down_fails_closed_serves_cached_and_stale_allows_and_recovers() {
    let cached = user_token("owner");
    let stale = user_token("both");
    let uncached = user_token("owner"); // a new token: a question nobody asked yet
    assert_eq!(account("unanimous.bank.local", &cached), 200);
    // another path of the same resource too, so its stale answer has an access-log line of its
    // own (asked once while Keycloak is up: the path's lookup is cached then)
    let stale_path = format!("/account/stale-{}", std::process::id());
    assert_eq!(account("stale.bank.local", &stale), 200);
    assert_eq!(account_at("stale.bank.local", &stale_path, &stale), 200);
    // The stale host keeps decisions for 1 ms: by the time Keycloak is down, this ALLOW expired.
    let stale_before = stat("kcpep.cache.stale");
    stack("stop-keycloak");
    let down_uncached = account("unanimous.bank.local", &uncached);
    let down_cached = account("unanimous.bank.local", &cached);
    let down_stale = account_at("stale.bank.local", &stale_path, &stale);
    let public = request(
        &envoy(),
        "GET",
        "/public/x",
        &[("host", b"unanimous.bank.local")],
        b"",
    )
    .status;
    let stale_after = stat("kcpep.cache.stale");
    stack("start-keycloak");
    assert_eq!(down_uncached, 503, "fail closed while Keycloak is down");
    assert_eq!(down_cached, 200, "a cached decision needs no Keycloak");
    assert_eq!(
        down_stale, 200,
        "an expired ALLOW within the stale-on-error window"
    );
    assert!(
        stale_after > stale_before,
        "stale answers are counted ({stale_before} -> {stale_after})"
    );
    assert_eq!(public, 200);
    // its decision record says so: the path's second line (the first asked Keycloak)
    poll_until("the stale answer's line", Duration::from_secs(15), || {
        let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".run/envoy.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let records: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| l.contains(&format!("\"GET {stale_path}\"")))
            .map(decision_of)
            .collect();
        (records.len() == 2).then_some(records)
    })
    .iter()
    .zip(["keycloak", "stale"])
    .for_each(|(record, source)| {
        assert_eq!(
            (&record["outcome"], &record["source"]),
            (&serde_json::json!("allow"), &serde_json::json!(source)),
            "{record}"
        )
    });
    // Keycloak is ready again (start-keycloak waits for it); the filter recovers without a restart.
    poll_until(
        "200 again after Keycloak came back",
        Duration::from_secs(60),
        || (account("unanimous.bank.local", &uncached) == 200).then_some(()),
    );
}
