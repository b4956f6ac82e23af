//! OpenID Connect Back-Channel Logout 1.0: the logout token Keycloak posts to a client's
//! back-channel logout URL when a session ends. Checked as the spec's §2.6 says: signed by the
//! realm, `iss`, `aud` naming one of the configured clients, `iat` fresh, the back-channel logout
//! event, no `nonce`, a `jti` (taken once, by the caller), and `sid` or `sub`.

use crate::keycloak::token::{self, HostVerifier, Jwks, TokenError};
use serde_json::Value;

/// The event a logout token must carry (§2.4).
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The largest logout request body read.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What a logout token is checked against.
#[derive(Debug, Clone)]
pub struct TokenCheck<'a> {
    pub issuer: &'a str,
    /// The clients whose back-channel logout URL this is (`aud` must name one).
    pub audiences: &'a [String],
    pub now: i64,
    /// How old (s) `iat` may be.
    pub max_age_s: i64,
    pub leeway_s: i64,
}

/// A session (or every session of a subject) that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub jti: String,
    pub iat: i64,
}

/// Why a logout request is refused (400 `invalid_request`, §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutError {
    NoToken,
    Signature,
    Issuer,
    Audience,
    Stale,
    Expired,
    Event,
    Nonce,
    NoJti,
    NoSubject,
    Replayed,
    NotVerifiable,
}

impl LogoutError {
    pub fn describe(self) -> &'static str {
        match self {
            LogoutError::NoToken => "no logout_token in a form body",
            LogoutError::Signature => "logout token not signed by the realm",
            LogoutError::Issuer => "logout token from another issuer",
            LogoutError::Audience => "logout token for another client",
            LogoutError::Stale => "logout token iat too old or in the future",
            LogoutError::Expired => "logout token expired",
            LogoutError::Event => "not a back-channel logout event",
            LogoutError::Nonce => "logout token carries a nonce",
            LogoutError::NoJti => "logout token without jti",
            LogoutError::NoSubject => "logout token names neither sid nor sub",
            LogoutError::Replayed => "logout token already used",
            LogoutError::NotVerifiable => "realm keys not loaded yet",
        }
    }
}

/// The `logout_token` of an `application/x-www-form-urlencoded` body.
pub fn token_of(content_type: Option<&str>, body: &[u8]) -> Result<String, LogoutError> {
    let form = content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| {
            c.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form || body.len() > MAX_BODY_BYTES {
        return Err(LogoutError::NoToken);
    }
    let text = std::str::from_utf8(body).map_err(|_| LogoutError::NoToken)?;
    crate::request::view::first_param(text, "logout_token")
        .filter(|t| !t.is_empty())
        .ok_or(LogoutError::NoToken)
}

/// Verifies a logout token; the session or subject it ends.
pub fn verify(
    raw: &str,
    jwks: &Jwks,
    expected: &TokenCheck,
    host: Option<HostVerifier>,
) -> Result<Logout, LogoutError> {
    let claims = token::signed_claims(raw, jwks, host).map_err(|e| match e {
        TokenError::NoVerifier => LogoutError::NotVerifiable,
        _ => LogoutError::Signature,
    })?;
    let text = |k: &str| token::text_claim(&claims, k);
    if text("iss") != Some(expected.issuer) {
        return Err(LogoutError::Issuer);
    }
    if !token::names_audience(&claims, expected.audiences) {
        return Err(LogoutError::Audience);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(LogoutError::Stale)?;
    if iat > expected.now.saturating_add(expected.leeway_s)
        || iat
            < expected
                .now
                .saturating_sub(expected.max_age_s + expected.leeway_s)
    {
        return Err(LogoutError::Stale);
    }
    // validated as an ID token is (§2.6 step 3): `exp`, when present, with the same leeway
    match claims.get("exp") {
        None => {}
        Some(exp) => match exp.as_i64() {
            Some(exp) if exp.saturating_add(expected.leeway_s) >= expected.now => {}
            _ => return Err(LogoutError::Expired),
        },
    }
    if !claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|e| e.get(EVENT).is_some_and(Value::is_object))
    {
        return Err(LogoutError::Event);
    }
    if claims.get("nonce").is_some() {
        return Err(LogoutError::Nonce);
    }
    let jti = text("jti").ok_or(LogoutError::NoJti)?.to_string();
    let (sid, sub) = (
        text("sid").map(str::to_string),
        text("sub").map(str::to_string),
    );
    if sid.is_none() && sub.is_none() {
        return Err(LogoutError::NoSubject);
    }
    Ok(Logout { sid, sub, jti, iat })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keycloak::token::tests::{jwks, sign_rs256, ISSUER, NOW};
    use serde_json::json;

    fn good() -> Value {
        json!({"iss": ISSUER, "aud": "demo-cli", "iat": NOW, "jti": "l-1", "sid": "s-1",
               "sub": "u-1", "typ": "Logout", "events": {EVENT: {}}})
    }

    fn check_raw(raw: &str) -> Result<Logout, LogoutError> {
        let audiences = ["demo-cli".to_string()];
        let e = TokenCheck {
            issuer: ISSUER,
            audiences: &audiences,
            now: NOW,
            max_age_s: 60,
            leeway_s: 5,
        };
        verify(raw, &jwks(), &e, None)
    }

    fn check(claims: &Value) -> Result<Logout, LogoutError> {
        check_raw(&sign_rs256(claims))
    }

    #[test]
    fn a_good_logout_token_names_its_session() {
        let l = check(&good()).unwrap();
        assert_eq!(
            (l.sid.as_deref(), l.sub.as_deref()),
            (Some("s-1"), Some("u-1"))
        );
        let mut only_sub = good();
        only_sub.as_object_mut().unwrap().remove("sid");
        assert_eq!(check(&only_sub).unwrap().sid, None);
    }

    #[test]
    fn every_broken_logout_token_is_refused_for_its_reason() {
        let with = |k: &str, v: Value| {
            let mut c = good();
            c[k] = v;
            check(&c)
        };
        let without = |keys: &[&str]| {
            let mut c = good();
            for k in keys {
                c.as_object_mut().unwrap().remove(*k);
            }
            check(&c)
        };
        assert_eq!(with("iss", json!("http://other")), Err(LogoutError::Issuer));
        assert_eq!(with("aud", json!("bank-api")), Err(LogoutError::Audience));
        assert_eq!(
            with("aud", json!(["x", "demo-cli"])).map(|l| l.jti),
            Ok("l-1".into())
        );
        assert_eq!(with("iat", json!(NOW - 70)), Err(LogoutError::Stale));
        assert_eq!(with("iat", json!(NOW + 10)), Err(LogoutError::Stale));
        // `exp` is optional; when present it is checked with the leeway (5 s here)
        assert_eq!(with("exp", json!(NOW - 6)), Err(LogoutError::Expired));
        assert_eq!(with("exp", json!("never")), Err(LogoutError::Expired));
        assert!(with("exp", json!(NOW - 4)).is_ok());
        assert!(with("exp", json!(NOW + 60)).is_ok());
        assert_eq!(
            with("events", json!({"other": {}})),
            Err(LogoutError::Event)
        );
        assert_eq!(with("nonce", json!("n")), Err(LogoutError::Nonce));
        assert_eq!(without(&["jti"]), Err(LogoutError::NoJti));
        assert_eq!(without(&["sid", "sub"]), Err(LogoutError::NoSubject));
        let forged = format!("{}x", sign_rs256(&good()));
        assert_eq!(check_raw(&forged), Err(LogoutError::Signature));
    }

    #[test]
    fn the_token_comes_in_a_form() {
        let form = Some("application/x-www-form-urlencoded; charset=UTF-8");
        assert_eq!(
            token_of(form, b"logout_token=abc.def.ghi"),
            Ok("abc.def.ghi".into())
        );
        assert_eq!(
            token_of(Some("application/json"), b"logout_token=a"),
            Err(LogoutError::NoToken)
        );
        assert_eq!(token_of(form, b"other=1"), Err(LogoutError::NoToken));
        assert_eq!(token_of(None, b"logout_token=a"), Err(LogoutError::NoToken));
    }
}
