//! What plugins and the broker ask of a socket through its mailbox: frames
//! to write, changes to the socket (tokens, kick-outs, closes) applied in
//! order with them, and procedures to invoke on the client.

use super::{Ending, Session, Transport};
use crate::mailbox::{Control, Outbound};
use crate::protocol;
use std::rc::Rc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

impl<S: Transport> Session<S> {
    /// Write a queued frame, or apply an auth change a plugin asked for and
    /// write the frame that tells the client.
    pub(super) async fn apply(&mut self, queued: Outbound) -> Result<(), Ending> {
        let control = match queued {
            Outbound::Frame(frame) => return self.feed(frame).await,
            Outbound::Numbered(numbered) if self.caught_up.covers(&numbered) => return Ok(()),
            Outbound::Numbered(numbered) => return self.feed(numbered.frame.clone()).await,
            Outbound::Control(control) => *control,
        };
        match control {
            Control::SetAuthToken {
                token,
                claims,
                expires_at,
            } => {
                Rc::make_mut(&mut self.socket).auth_token = Some(claims);
                self.token_expiry = expires_at;
                let data = serde_json::json!({ "token": token }).to_string();
                self.feed(Utf8Bytes::from(protocol::event(
                    "#setAuthToken",
                    Some(&data),
                )))
                .await?;
                self.feed_revocations().await
            }
            Control::Deauthenticate => {
                self.clear_auth();
                self.feed(Utf8Bytes::from(protocol::event("#removeAuthToken", None)))
                    .await?;
                self.feed_revocations().await
            }
            Control::KickOut { channel, message } => {
                self.leave(&channel);
                let data = protocol::kick_out(&channel, message.as_deref());
                self.feed(Utf8Bytes::from(protocol::event("#kickOut", Some(&data))))
                    .await
            }
            Control::Disconnect { code, reason } => Err(Ending::close(code, &reason)),
            Control::InvokeClient {
                event,
                data,
                answer,
            } => match self.client_calls.start(answer) {
                Some(cid) => {
                    self.feed(Utf8Bytes::from(protocol::invoke(
                        &event,
                        cid,
                        data.as_deref(),
                    )))
                    .await
                }
                None => Ok(()),
            },
        }
    }

    /// Revoke the subscriptions an auth change took the right to, writing
    /// the `#kickOut`s in order with what is being written.
    async fn feed_revocations(&mut self) -> Result<(), Ending> {
        for kick in self.revoke_lost_subscriptions().await {
            self.feed(Utf8Bytes::from(kick)).await?;
        }
        Ok(())
    }
}
