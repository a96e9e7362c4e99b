//! Example plugin `auth`: log in with a username and a password checked
//! against Argon2 hashes, inside the plugin, and private channels per user.
//!
//! - RPC `login` `{username, password}` (public: callable before login when
//!   the server runs with `--require-auth`) verifies the password against
//!   the user's hash. On success the socket gets a signed auth token with
//!   the claims `{"username":..}` (the client receives it before the answer)
//!   and the answer is `{"username":..}`. On failure the answer is the error
//!   `LoginFailedError`, with the same message whether the user is unknown or
//!   the password wrong, and after the same work (an unknown user is checked
//!   against another user's hash; give every user the same parameters), so
//!   that neither the answer nor its delay tells which usernames exist.
//! - RPC `logout` removes the socket's token (the client gets
//!   `#removeAuthToken`).
//! - Hook `Subscribe`: channel `private:<user>` may be subscribed to only by
//!   a socket whose token says `username` `<user>`; others get the error
//!   `SubscribeForbidden`. Every other channel is left alone.
//!
//! # Config
//!
//! `init` takes `{"users": {"<username>": "<Argon2 PHC string>"}}`, from the
//! `[plugin.auth]` section of the server's config file:
//!
//! ```toml
//! [plugin.auth]
//! deadline-ms = 500
//! config = { users = { alice = "$argon2id$v=19$m=19456,t=2,p=1$..." } }
//! ```
//!
//! A config without `users`, with other keys, with an empty username, or
//! with a hash that is not an Argon2 (`argon2id`, `argon2i`, `argon2d`) PHC
//! string with valid parameters, a salt and an output refuses the plugin, and
//! the server logs why. Make hashes with any Argon2 tool, and choose the
//! parameters (see Cost below), e.g. Python's `argon2-cffi`
//! (`argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(password)`;
//! its defaults, 64 MiB and 3 passes, need a larger memory cap and deadline)
//! or the `argon2` command line
//! (`echo -n "$PASSWORD" | argon2 "$(openssl rand -base64 16)" -id -t 2 -k 19456 -p 1 -e`).
//!
//! # Cost
//!
//! Checking a password is slow on purpose: it costs what the hash's
//! parameters say (memory `m` KiB, `t` passes), every time, and runs on the
//! worker's thread, so the worker's other sockets wait meanwhile. With
//! `m=19456,t=2,p=1` (the OWASP minimum for Argon2id and the `argon2` crate's
//! default) one check takes about 30 ms in the plugin on a current x86-64
//! core (the log says how long each took, at debug level). The plugin
//! deadline (100 ms by default) is wall-clock time, so on a slower or busy
//! machine that comes close: give the plugin a longer deadline
//! (`deadline-ms` above), or a login that overruns fails with `PluginError`.
//! The memory, 19 MiB, fits the default 64 MiB cap; `m=65536` (64 MiB) does
//! not, and every check runs out of memory unless `memory-mib` is raised
//! (`init` warns about hashes above 48 MiB). `p` lanes run one after the
//! other: a plugin has one thread.
//!
//! `login` is public, so anyone who can connect can make the server do
//! this work; put a rate limit in front of it in production (per address or
//! per username, e.g. with `kv::incr`).
//!
//! # Limits of the example
//!
//! The private channels are private to read. This plugin does not stop
//! other clients from publishing into them: run the server with
//! `--allow-client-publish false`, or add a `PublishIn` hook, if they carry
//! messages only the server may send. A token stays valid until it expires
//! (`auth-default-expiry-secs`, a day by default), also after its user is
//! removed from the config; an `Authenticate` hook that checks the username
//! against the configured users would refuse it at the next connection.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordVerifier, Version};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmcluster_sdk::{Error, Hook, LogLevel, Manifest, Payload, Plugin, Socket, export, host};

/// The users and their parsed hashes.
struct Auth {
    users: BTreeMap<String, PasswordHash>,
}

/// What `init` receives.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    users: BTreeMap<String, String>,
}

/// The data of RPC `login`.
#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// The claims of the token this plugin gives, and its answer to `login`.
#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
}

/// The channels only one user may subscribe to: `private:<username>`.
const PRIVATE_PREFIX: &str = "private:";

/// Hashes that need more memory than this (KiB) get a warning at start: the
/// default memory cap of a plugin is 64 MiB.
const WARN_MEMORY_KIB: u32 = 48 * 1024;

/// What the config must look like, for error messages.
const CONFIG_SHAPE: &str = r#"{"users": {"<username>": "<argon2 PHC hash>"}} (the config of [plugin.auth] in the server's config file)"#;

/// Parse one user's hash and check that this plugin can verify against it.
fn parse_hash(username: &str, hash: &str) -> Result<PasswordHash, String> {
    let bad = |why: String| format!("auth: the hash of user '{username}' {why}");
    let parsed =
        PasswordHash::new(hash).map_err(|error| bad(format!("is not a PHC string: {error}")))?;
    Algorithm::try_from(parsed.algorithm.as_str()).map_err(|_| {
        bad(format!(
            "uses '{}', not argon2id, argon2i or argon2d",
            parsed.algorithm
        ))
    })?;
    if let Some(version) = parsed.version {
        Version::try_from(version)
            .map_err(|_| bad(format!("has an unknown Argon2 version {version}")))?;
    }
    let params = Params::try_from(&parsed)
        .map_err(|error| bad(format!("has invalid parameters: {error}")))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(bad("has no salt or no output".into()));
    }
    if params.m_cost() > WARN_MEMORY_KIB {
        host::warn(&format!(
            "auth: checking the password of user '{username}' needs {} MiB; \
             give the plugin a memory cap (memory-mib) well above that",
            params.m_cost() / 1024
        ));
    }
    Ok(parsed)
}

impl Auth {
    fn login(
        &self,
        socket: &Socket,
        Login { username, password }: Login,
    ) -> Result<Payload, Error> {
        // An unknown user is checked against another user's hash, so that it
        // costs the same time as a wrong password.
        let (hash, known) = match self.users.get(&username) {
            Some(hash) => (hash, true),
            None => match self.users.values().next() {
                Some(decoy) => (decoy, false),
                None => return Err(login_failed()),
            },
        };
        let started = host::now_ms();
        let verified = Argon2::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok();
        host::log(
            LogLevel::Debug,
            &format!(
                "password check took {} ms",
                host::now_ms().saturating_sub(started)
            ),
        );
        if !(known && verified) {
            return Err(login_failed());
        }
        let claims = Claims { username };
        host::set_auth_token(&socket.id, &claims)?;
        Ok(Payload::json(&claims))
    }
}

/// The one answer to a failed login, whatever the reason.
fn login_failed() -> Error {
    Error::new("LoginFailedError", "Invalid username or password")
}

impl Plugin for Auth {
    fn describe() -> Manifest {
        Manifest::new("auth", env!("CARGO_PKG_VERSION"))
            .rpc(["login", "logout"])
            .public(["login"])
            .hooks([Hook::Subscribe])
    }

    fn init(config: Payload) -> Result<Self, String> {
        let Config { users } = config.parse().map_err(|error| {
            format!("auth: the config must be {CONFIG_SHAPE}: {}", error.message)
        })?;
        if users.is_empty() {
            host::warn("auth: no users are configured, so every login fails");
        }
        let users = users
            .iter()
            .map(|(username, hash)| {
                if username.is_empty() {
                    return Err("auth: a username is empty".to_owned());
                }
                Ok((username.clone(), parse_hash(username, hash)?))
            })
            .collect::<Result<_, String>>()?;
        Ok(Auth { users })
    }

    fn on_invoke(&mut self, socket: &Socket, event: &str, data: Payload) -> Result<Payload, Error> {
        match event {
            "login" => self.login(socket, data.parse()?),
            "logout" => {
                host::deauthenticate(&socket.id)?;
                Ok(Payload::none())
            }
            other => Err(Error::unknown_event(other)),
        }
    }

    fn on_subscribe(
        &mut self,
        socket: &Socket,
        channel: &str,
        _data: Payload,
    ) -> Result<(), Error> {
        let Some(owner) = channel.strip_prefix(PRIVATE_PREFIX) else {
            return Ok(());
        };
        // A token without a string `username` (given by another plugin, or
        // signed elsewhere with the same key) is nobody here.
        let username = socket
            .auth_claims::<Claims>()
            .and_then(Result::ok)
            .map(|claims| claims.username);
        if username.as_deref() == Some(owner) {
            return Ok(());
        }
        Err(Error::new(
            "SubscribeForbidden",
            format!("Only user '{owner}' may subscribe to channel '{channel}'"),
        )
        .with_detail("channel", channel))
    }
}

export!(Auth);
