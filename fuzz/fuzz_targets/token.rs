//! `AuthEngine::verify` on any UTF-8 text (a token from a client), and
//! `sign` on the same text as claims (a plugin's `setAuthToken`). Must never
//! panic; and a token that `sign` made must verify, unless the claims
//! themselves make it expired or not yet valid.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};
use wasmcluster::auth::AuthEngine;

const DEFAULT_EXPIRY_SECS: u64 = 3600;

static ENGINE: LazyLock<AuthEngine> = LazyLock::new(|| {
    AuthEngine::new(b"fuzz-secret-key", DEFAULT_EXPIRY_SECS).expect("a non-empty key")
});

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match ENGINE.verify(text) {
        Ok(verified) => {
            assert!(verified.claims.starts_with('{'), "claims not an object");
        }
        Err(error) => {
            let _ = error.to_error_object();
        }
    }
    let Ok(signed) = ENGINE.sign(text) else {
        return;
    };
    let no_exp = !text_has_key(text, "exp");
    match ENGINE.verify(&signed.token) {
        // With `exp` given, floats may come back off by one in the last
        // place; without, `exp` is the integer `iat` + the default expiry.
        Ok(verified) if no_exp => assert_eq!(verified.expires_at, signed.expires_at),
        Ok(_) => {}
        Err(error) => assert!(
            !should_verify(text),
            "the token signed from {text:?} does not verify: {error:?} (token {})",
            signed.token
        ),
    }
});

/// Whether the claims object has this key.
fn text_has_key(claims: &str, key: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, Value>>(claims)
        .is_ok_and(|claims| claims.contains_key(key))
}

/// Whether claims leave the token valid for at least another minute: no
/// `nbf`, no `exp`, and `iat` (now when it is not a number) plus the
/// default expiry later than that.
fn should_verify(claims: &str) -> bool {
    let Ok(Value::Object(claims)) = serde_json::from_str::<Value>(claims) else {
        return false;
    };
    if claims.contains_key("nbf") || claims.contains_key("exp") {
        return false;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let iat = match claims.get("iat").and_then(Value::as_f64) {
        Some(iat) => iat.max(0.0).floor() as u64,
        None => now,
    };
    iat.checked_add(DEFAULT_EXPIRY_SECS)
        .is_some_and(|exp| exp > now + 60)
}
