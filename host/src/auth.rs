//! JWT authentication the way SocketCluster does it (`ag-auth` on top of
//! `jsonwebtoken`): HS256 with a shared key; `iat` and `exp` added when
//! signing; and on failure the same error names, messages and extra fields,
//! so that existing clients keep working and tokens are interchangeable
//! with a SocketCluster server that uses the same key.

use crate::protocol::ErrorObject;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Signs and verifies auth tokens with the server's key.
pub struct AuthEngine {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Seconds a signed token is valid when its claims set no `exp`.
    default_expiry_secs: u64,
}

/// A token the server signed, with the claims it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedToken {
    /// The JWT.
    pub token: String,
    /// Its claims (with `iat` and `exp`), a JSON object.
    pub claims: String,
    /// `exp` in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

/// A verified token: its claims as JSON and when it expires.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// The claims, a JSON object, as plugins receive them.
    pub claims: String,
    /// `exp` in seconds since the Unix epoch, if the token has one.
    pub expires_at: Option<u64>,
}

/// Why a token was not accepted, as SocketCluster reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthError {
    /// `AuthTokenExpiredError`, `AuthTokenInvalidError`, ...
    pub name: &'static str,
    /// jsonwebtoken's message, e.g. `jwt expired`.
    pub message: String,
    /// Whether the client should drop the token (`#removeAuthToken`).
    pub is_bad_token: bool,
    /// `expiry` (expired tokens) or `date` (not yet valid), as ISO 8601.
    pub when: Option<(&'static str, String)>,
}

impl AuthError {
    fn invalid(message: &str) -> Self {
        AuthError {
            name: "AuthTokenInvalidError",
            message: message.to_owned(),
            is_bad_token: true,
            when: None,
        }
    }

    /// The error object sent to the client.
    pub fn to_error_object(&self) -> ErrorObject {
        let mut error = ErrorObject::new(self.name, self.message.clone());
        if let Some((key, date)) = &self.when {
            error = error.with(key, date.clone());
        }
        error.with("isBadToken", self.is_bad_token)
    }
}

/// The auth key is empty.
#[derive(Debug, Error, PartialEq)]
#[error("the auth key must not be empty")]
pub struct EmptyKey;

/// Why claims could not be signed into a token.
#[derive(Debug, Error, PartialEq)]
pub enum SignError {
    /// The claims are not a JSON object.
    #[error("auth token claims must be a JSON object")]
    NotAnObject,
    /// The signer failed.
    #[error("could not sign the auth token: {0}")]
    Signing(String),
}

/// The second from which a token whose `exp` claim is `exp` has expired.
/// `exp` may be fractional (what `time.time() + n` or `Date.now() / 1000 + n`
/// write): the `jsonwebtoken` package compares it with the current whole
/// second, so the token expires at the first whole second not before it.
fn expiry_secs(exp: &Value) -> Option<u64> {
    let exp = exp.as_f64().filter(|exp| exp.is_finite())?;
    Some(exp.max(0.0).ceil() as u64)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl AuthEngine {
    /// An engine with an HMAC key (SocketCluster's `authKey`); the key must
    /// not be empty.
    pub fn new(key: &[u8], default_expiry_secs: u64) -> Result<Self, EmptyKey> {
        let (Ok(encoding), Ok(decoding)) =
            (EncodingKey::from_secret(key), DecodingKey::from_secret(key))
        else {
            return Err(EmptyKey);
        };
        let mut validation = Validation::new(Algorithm::HS256);
        // As node's jsonwebtoken: no clock tolerance, no claim required,
        // no audience unless configured.
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.validate_nbf = true;
        Ok(AuthEngine {
            encoding,
            decoding,
            validation,
            default_expiry_secs,
        })
    }

    /// Verify a signed token; its claims, or SocketCluster's error.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        if token.is_empty() {
            return Err(AuthError::invalid("jwt must be provided"));
        }
        match jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(VerifiedToken {
                expires_at: data.claims.get("exp").and_then(expiry_secs),
                claims: Value::Object(data.claims).to_string(),
            }),
            Err(error) => Err(self.describe(token, error.kind())),
        }
    }

    fn describe(&self, token: &str, kind: &ErrorKind) -> AuthError {
        let claim = |name: &str| {
            jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(token)
                .ok()
                .and_then(|data| data.claims.get(name).and_then(Value::as_f64))
                .filter(|secs| secs.is_finite())
                .map(|secs| iso8601(secs.floor() as i64))
        };
        match kind {
            ErrorKind::ExpiredSignature => AuthError {
                name: "AuthTokenExpiredError",
                message: "jwt expired".into(),
                is_bad_token: true,
                when: claim("exp").map(|date| ("expiry", date)),
            },
            ErrorKind::ImmatureSignature => AuthError {
                name: "AuthTokenNotBeforeError",
                message: "jwt not active".into(),
                is_bad_token: false,
                when: claim("nbf").map(|date| ("date", date)),
            },
            ErrorKind::InvalidSignature => AuthError::invalid("invalid signature"),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::invalid("invalid algorithm")
            }
            ErrorKind::InvalidToken => AuthError::invalid("jwt malformed"),
            ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                AuthError::invalid("invalid token")
            }
            other => AuthError {
                name: "AuthTokenError",
                message: format!("{other:?}"),
                is_bad_token: true,
                when: None,
            },
        }
    }

    /// Sign claims (a JSON object) into a token, adding `iat` and, unless
    /// the claims have one, `exp` after the default expiry.
    pub fn sign(&self, claims: &str) -> Result<SignedToken, SignError> {
        let Ok(Value::Object(mut claims)) = serde_json::from_str::<Value>(claims) else {
            return Err(SignError::NotAnObject);
        };
        // As the `jsonwebtoken` package SocketCluster signs with: `iat`
        // defaults to now, and a default `exp` counts from `iat`.
        let iat = match claims.get("iat").and_then(Value::as_f64) {
            Some(iat) if iat.is_finite() => iat.max(0.0).floor() as u64,
            _ => {
                let now = now_secs();
                claims.entry("iat").or_insert(now.into());
                now
            }
        };
        claims
            .entry("exp")
            .or_insert(iat.saturating_add(self.default_expiry_secs).into());
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| SignError::Signing(error.to_string()))?;
        Ok(SignedToken {
            token,
            expires_at: claims.get("exp").and_then(expiry_secs),
            claims: Value::Object(claims).to_string(),
        })
    }

    /// An engine with a random key, for when the operator gave none: its
    /// tokens do not survive a restart nor work on other hosts.
    pub fn with_random_key(default_expiry_secs: u64) -> Self {
        let key: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        match AuthEngine::new(key.as_bytes(), default_expiry_secs) {
            Ok(engine) => engine,
            Err(EmptyKey) => unreachable!("a 64-character key is not empty"),
        }
    }

    /// Whether a token that expires at `expires_at` has expired: as the
    /// `jsonwebtoken` package SocketCluster uses, once the current second
    /// reaches it.
    pub fn has_expired(expires_at: Option<u64>) -> bool {
        expires_at.is_some_and(|exp| now_secs() >= exp)
    }
}

/// `2026-11-29T20:15:56.000Z` for seconds since the Unix epoch, as
/// JavaScript's `Date.toISOString` writes it.
fn iso8601(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

impl std::fmt::Debug for AuthEngine {
    /// The keys stay out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthEngine")
            .field("default_expiry_secs", &self.default_expiry_secs)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> AuthEngine {
        AuthEngine::new(b"capture-secret-key", 86_400).unwrap()
    }

    #[test]
    fn iso_dates_match_javascript() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_795_983_414), "2026-11-29T20:16:54.000Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn fractional_times_count_as_the_jsonwebtoken_package_counts_them() {
        assert_eq!(expiry_secs(&serde_json::json!(1000.2)), Some(1001));
        assert_eq!(expiry_secs(&serde_json::json!(1000)), Some(1000));
        assert_eq!(expiry_secs(&serde_json::json!("1000")), None);
        assert!(AuthEngine::has_expired(Some(now_secs())));
        assert!(!AuthEngine::has_expired(Some(now_secs() + 2)));
        let engine = AuthEngine::new(b"key", 60).unwrap();
        let soon = now_secs() as f64 + 30.5;
        let signed = engine
            .sign(&format!(r#"{{"exp":{soon},"iat":1.5}}"#))
            .unwrap();
        let verified = engine.verify(&signed.token).unwrap();
        let expected = now_secs() + 30..=now_secs() + 32;
        assert!(
            verified
                .expires_at
                .is_some_and(|exp| expected.contains(&exp))
        );
    }

    #[test]
    fn signed_tokens_verify_with_iat_and_default_exp() {
        let engine = engine();
        let signed = engine.sign(r#"{"username":"alice"}"#).unwrap();
        let verified = engine.verify(&signed.token).unwrap();
        assert_eq!(verified.claims, signed.claims);
        let claims: Value = serde_json::from_str(&verified.claims).unwrap();
        assert_eq!(claims["username"], "alice");
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["exp"].as_u64().unwrap(), iat + 86_400);
        assert_eq!(verified.expires_at, Some(iat + 86_400));
    }

    #[test]
    fn a_given_iat_is_kept_and_the_default_exp_counts_from_it() {
        let signed = engine().sign(r#"{"username":"alice","iat":1000}"#).unwrap();
        let claims: Value = serde_json::from_str(&signed.claims).unwrap();
        assert_eq!(
            (claims["iat"].as_u64(), claims["exp"].as_u64()),
            (Some(1000), Some(87_400))
        );
    }

    #[test]
    fn an_iat_past_the_largest_time_gives_the_largest_exp_not_a_wrapped_one() {
        let signed = engine().sign(r#"{"iat":1e77}"#).unwrap();
        let claims: Value = serde_json::from_str(&signed.claims).unwrap();
        assert_eq!(claims["exp"].as_u64(), Some(u64::MAX));
        assert_eq!(signed.expires_at, Some(u64::MAX));
    }

    #[test]
    fn an_empty_key_is_refused() {
        assert!(AuthEngine::new(b"", 60).is_err());
    }

    #[test]
    fn claims_must_be_an_object() {
        assert_eq!(engine().sign("[1]").unwrap_err(), SignError::NotAnObject);
    }

    #[test]
    fn failures_are_named_as_socketcluster_names_them() {
        let engine = engine();
        let expired = engine.sign(r#"{"exp":1000}"#).unwrap().token;
        let error = engine.verify(&expired).unwrap_err();
        assert_eq!(
            (error.name, error.message.as_str(), error.is_bad_token),
            ("AuthTokenExpiredError", "jwt expired", true)
        );
        assert_eq!(
            error.when,
            Some(("expiry", "1970-01-01T00:16:40.000Z".to_owned()))
        );

        let other_key = AuthEngine::new(b"other", 60)
            .unwrap()
            .sign("{}")
            .unwrap()
            .token;
        assert_eq!(
            engine.verify(&other_key).unwrap_err().message,
            "invalid signature"
        );
        assert_eq!(
            engine.verify("garbage").unwrap_err().message,
            "jwt malformed"
        );
        assert_eq!(
            engine.verify("").unwrap_err().message,
            "jwt must be provided"
        );

        let future = now_secs() + 3600;
        let early = engine
            .sign(&format!(r#"{{"nbf":{future}}}"#))
            .unwrap()
            .token;
        let error = engine.verify(&early).unwrap_err();
        assert_eq!(
            (error.name, error.is_bad_token),
            ("AuthTokenNotBeforeError", false)
        );
    }

    #[test]
    fn unsigned_tokens_never_authenticate() {
        use base64::Engine as _;
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"username":"mallory"}"#)
        );
        let error = engine().verify(&none).unwrap_err();
        assert_eq!(error.name, "AuthTokenInvalidError");
        assert!(engine().verify(&"x".repeat(100_000)).is_err());
    }
}
