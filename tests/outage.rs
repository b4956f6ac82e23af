//! Keycloak stopped mid-run: ENFORCING fails closed with 503, and recovers when Keycloak returns.
//! A test binary of its own because it stops the shared Keycloak (`make test` runs it last).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn stack(cmd: &str) {
    let script = env("KCPEP_STACK");
    let ok = Command::new(&script).arg(cmd).status().unwrap().success();
    assert!(ok, "{script} {cmd} failed");
}

fn account(token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    request(
        &envoy(),
        "GET",
        "/account/1",
        &[
            ("host", b"unanimous.bank.local"),
            ("authorization", auth.as_bytes()),
        ],
        b"",
    )
    .status
}

#[test]
fn keycloak_down_gives_503_and_recovers() {
    let owner = user_token("owner");
    assert_eq!(account(&owner), 200);
    stack("stop-keycloak");
    let status = account(&owner);
    // public paths do not need Keycloak
    let public = request(
        &envoy(),
        "GET",
        "/public/x",
        &[("host", b"unanimous.bank.local")],
        b"",
    )
    .status;
    stack("start-keycloak");
    assert_eq!(status, 503, "fail closed while Keycloak is down");
    assert_eq!(public, 200);
    // Keycloak is ready again (start-keycloak waits for it); the filter recovers without a restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    while Instant::now() < deadline {
        last = account(&owner);
        if last == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("still {last} 60 s after Keycloak came back");
}
