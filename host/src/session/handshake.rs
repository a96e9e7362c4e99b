//! The handshake and authentication: `#handshake`, `#authenticate`,
//! `#removeAuthToken`, token expiry, and the `handshake` and
//! `authenticate` middleware.

use super::{Ending, Session, State, Transport};
use crate::auth::{AuthEngine, AuthError, VerifiedToken};
use crate::plugins::HandshakeInfo;
use crate::protocol::{self, ErrorObject, close_code};
use serde_json::value::RawValue;
use std::rc::Rc;

/// Why a token did not authenticate a socket: SocketCluster's `authError`.
struct AuthRefusal {
    error: ErrorObject,
    /// Whether the client is told to drop the token.
    is_bad_token: bool,
}

impl From<AuthError> for AuthRefusal {
    fn from(error: AuthError) -> Self {
        AuthRefusal {
            error: error.to_error_object(),
            is_bad_token: error.is_bad_token,
        }
    }
}

impl AuthRefusal {
    /// An `authenticate` middleware denied the token; like a SocketCluster
    /// middleware error, it is a bad token only when it says so.
    fn denied(error: ErrorObject) -> Self {
        let is_bad_token = error.details.get("isBadToken") == Some(&serde_json::Value::Bool(true));
        AuthRefusal {
            error,
            is_bad_token,
        }
    }
}

impl<S: Transport> Session<S> {
    pub(super) async fn on_handshake(
        &mut self,
        data: Option<&RawValue>,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        let Some(cid) = cid else {
            tracing::debug!("handshake without a numeric cid; closing with 4008");
            return Err(Ending::close(close_code::HANDSHAKE_REJECTED, ""));
        };
        // A missing or null token is no error; a refused one is reported in
        // the reply and the connection still opens.
        let verified = protocol::handshake_token(data).map(|token| self.ctx.auth.verify(&token));
        if let Some(upgrade) = self.upgrade.take() {
            let info = HandshakeInfo {
                remote_address: self.socket.remote_address.clone(),
                url: upgrade.url,
                origin: upgrade.origin,
                auth_token: match &verified {
                    Some(Ok(token)) => Some(token.claims.clone()),
                    _ => None,
                },
            };
            let plugins = self.ctx.current_plugins();
            let checked = async move { plugins.check_handshake(&info).await };
            if let Err(error) = self.serving(Box::pin(checked)).await {
                return self.refuse_handshake(cid, error).await;
            }
        }
        let refusal = match verified {
            Some(Ok(token)) => self.accept_token(token).await.err(),
            Some(Err(error)) => {
                self.clear_auth();
                Some(AuthRefusal::from(error))
            }
            None => None,
        };
        let reply = protocol::handshake_reply(
            cid,
            &self.socket.id,
            self.ctx.settings.ping_timeout.as_millis() as u64,
            refusal.as_ref().map(|refusal| &refusal.error),
            self.socket.auth_token.is_some(),
        );
        self.send(reply).await?;
        if refusal.is_some_and(|refusal| refusal.is_bad_token) {
            self.remove_client_token().await?;
        }
        if self.state == State::Connecting {
            self.state = State::Open;
            self.ctx.services.sockets.register(
                &self.socket.id,
                self.outbox.clone(),
                self.subscriptions.clone(),
            );
            let (plugins, socket) = (self.ctx.current_plugins(), self.socket.clone());
            self.serving(Box::pin(async move { plugins.connected(&socket).await }))
                .await;
        }
        Ok(())
    }

    /// A `handshake` middleware denied the connection: answer the handshake
    /// with its error and close with its `statusCode` (4008 unless the
    /// plugin chose a code of 4000-4999), as SocketCluster does.
    async fn refuse_handshake(
        &mut self,
        cid: &RawValue,
        mut error: ErrorObject,
    ) -> Result<(), Ending> {
        let code = error
            .details
            .get("statusCode")
            .and_then(serde_json::Value::as_u64)
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| (4000..=4999).contains(code))
            .unwrap_or(close_code::HANDSHAKE_REJECTED);
        error = error.with("statusCode", code);
        tracing::info!(
            socket = self.socket.id,
            code,
            "handshake denied by middleware: {}: {}",
            error.name,
            error.message
        );
        self.send(protocol::error_response(cid, &error)).await?;
        Err(Ending::close(code, ""))
    }

    /// `#authenticate`: verify the token and answer as SocketCluster does: a
    /// bad token is an error (and `#removeAuthToken`), a token that is not
    /// valid yet (or denied by middleware) an unauthenticated status.
    pub(super) async fn on_authenticate(
        &mut self,
        data: Option<&RawValue>,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        let Some(cid) = cid else {
            return Err(Ending::close(close_code::HANDSHAKE_REJECTED, ""));
        };
        let token = data
            .and_then(|data| serde_json::from_str::<String>(data.get()).ok())
            .unwrap_or_default();
        let outcome = match self.ctx.auth.verify(&token) {
            Ok(verified) => self.accept_token(verified).await,
            Err(error) => {
                self.clear_auth();
                Err(AuthRefusal::from(error))
            }
        };
        match outcome {
            Ok(()) => {
                self.send(protocol::ok_response(
                    cid,
                    Some(&protocol::auth_status(true, None)),
                ))
                .await?;
            }
            Err(refusal) if refusal.is_bad_token => {
                self.send(protocol::error_response(cid, &refusal.error))
                    .await?;
                self.remove_client_token().await?;
            }
            Err(refusal) => {
                let status = protocol::auth_status(false, Some(&refusal.error));
                self.send(protocol::ok_response(cid, Some(&status))).await?;
            }
        }
        // The socket's token changed, or it has none any more.
        self.recheck_subscriptions().await
    }

    /// Run the `authenticate` middleware on a verified token and, when it
    /// allows it, authenticate the socket with its claims; otherwise the
    /// socket is unauthenticated.
    async fn accept_token(&mut self, verified: VerifiedToken) -> Result<(), AuthRefusal> {
        let (plugins, socket) = (self.ctx.current_plugins(), self.socket.clone());
        let claims = &verified.claims;
        let checked = async move { plugins.check_authenticate(&socket, claims).await };
        if let Err(error) = self.serving(Box::pin(checked)).await {
            self.clear_auth();
            return Err(AuthRefusal::denied(error));
        }
        Rc::make_mut(&mut self.socket).auth_token = Some(verified.claims);
        self.token_expiry = verified.expires_at;
        Ok(())
    }

    /// Whether `require_auth` holds this socket back: the server requires
    /// authentication and the socket has no token.
    pub(super) fn must_authenticate(&self) -> bool {
        self.ctx.settings.require_auth && self.socket.auth_token.is_none()
    }

    pub(super) fn clear_auth(&mut self) {
        Rc::make_mut(&mut self.socket).auth_token = None;
        self.token_expiry = None;
    }

    /// Tell the client to drop its token.
    async fn remove_client_token(&mut self) -> Result<(), Ending> {
        self.send(protocol::event("#removeAuthToken", None)).await
    }

    /// Drop an expired token, and tell the client.
    pub(super) async fn check_token_expiry(&mut self) -> Result<(), Ending> {
        if self.socket.auth_token.is_some() && AuthEngine::has_expired(self.token_expiry) {
            self.clear_auth();
            self.remove_client_token().await?;
            self.recheck_subscriptions().await?;
        }
        Ok(())
    }
}
