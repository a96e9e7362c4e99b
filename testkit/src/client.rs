//! The client tests drive: JSON packets, call ids, replies matched to their
//! calls while other packets wait their turn. It panics on anything a test
//! did not expect, with the packet that surprised it.

use super::{Closed, Connection, Error};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;

/// How long a test waits for any single expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// A SocketCluster client for tests.
#[derive(Debug)]
pub struct Client {
    connection: Connection,
    /// Packets read while waiting for something else, returned first.
    pending: VecDeque<Value>,
    next_cid: u64,
    /// Answer `""` and `#1` pings automatically while waiting for packets.
    pub auto_pong: bool,
    /// The socket id from the handshake.
    pub id: String,
}

impl Client {
    /// Open a WebSocket to `url` (`ws://`), without handshaking.
    pub async fn connect(url: &str) -> Client {
        let connection = Connection::connect(url, None).await.expect("connect");
        Client::over(connection)
    }

    /// Open a `wss://` WebSocket to `url`, trusting only `root_pem`.
    pub async fn connect_tls(url: &str, root_pem: &str) -> Result<Client, Error> {
        Ok(Client::over(Connection::connect_tls(url, root_pem).await?))
    }

    fn over(connection: Connection) -> Client {
        Client {
            connection,
            pending: VecDeque::new(),
            next_cid: 1,
            auto_pong: true,
            id: String::new(),
        }
    }

    /// Send a text frame as it is, now.
    pub async fn send_text(&mut self, text: &str) {
        self.connection.send(text).await.expect("send");
        self.connection.flush().await.expect("send");
    }

    /// Send a JSON packet.
    pub async fn send(&mut self, packet: Value) {
        self.send_text(&packet.to_string()).await;
    }

    /// The next text frame, heartbeats included.
    pub async fn next_text(&mut self) -> Result<String, Closed> {
        tokio::time::timeout(WAIT, self.connection.next_frame())
            .await
            .expect("timed out waiting for a frame")
            .map(|text| text.to_string())
    }

    /// The next packet, answering heartbeats on the way when `auto_pong`.
    pub async fn next_packet(&mut self) -> Value {
        if let Some(packet) = self.pending.pop_front() {
            return packet;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = tokio::time::timeout_at(deadline, self.next_text())
                .await
                .expect("timed out waiting for a packet")
                .expect("connection closed");
            match text.as_str() {
                "" | "#1" => {
                    if self.auto_pong {
                        let pong = if text.is_empty() { "" } else { "#2" };
                        self.send_text(pong).await;
                    }
                }
                _ => return serde_json::from_str(&text).expect("a JSON packet"),
            }
        }
    }

    /// Wait until the server closes the connection; its close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(closed) = self.next_text().await {
                return closed;
            }
        }
    }

    /// Assert that nothing but heartbeats arrives for `time`.
    pub async fn expect_silence(&mut self, time: Duration) {
        assert!(
            self.pending.is_empty(),
            "unread packets: {:?}",
            self.pending
        );
        let deadline = tokio::time::Instant::now() + time;
        while let Ok(frame) = tokio::time::timeout_at(deadline, self.connection.next_frame()).await
        {
            match frame {
                Ok(text) if text.is_empty() || text == "#1" => {}
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    fn cid(&mut self) -> u64 {
        self.next_cid += 1;
        self.next_cid - 1
    }

    /// Send `#handshake` and return the reply's data.
    pub async fn handshake(&mut self) -> Value {
        let cid = self.cid();
        self.send(json!({"event": "#handshake", "data": {"authToken": null}, "cid": cid}))
            .await;
        let reply = self.next_packet().await;
        assert_eq!(reply["rid"], cid, "handshake reply: {reply}");
        self.id = reply["data"]["id"].as_str().unwrap().to_owned();
        reply["data"].clone()
    }

    /// Invoke an RPC and return the whole reply packet; packets that arrive
    /// before it are kept for [`Client::next_packet`].
    pub async fn invoke(&mut self, event: &str, data: Value) -> Value {
        let cid = self.send_invoke(event, data).await;
        self.reply(cid).await
    }

    /// Send an RPC without waiting for its reply; its call id, for
    /// [`Client::reply`].
    pub async fn send_invoke(&mut self, event: &str, data: Value) -> u64 {
        let cid = self.cid();
        self.send(json!({"event": event, "data": data, "cid": cid}))
            .await;
        cid
    }

    /// Wait for the reply to `cid`; other packets are kept for later.
    pub async fn reply(&mut self, cid: u64) -> Value {
        if let Some(index) = self.pending.iter().position(|p| p["rid"] == cid) {
            return self.pending.remove(index).unwrap();
        }
        let mut skipped = Vec::new();
        let reply = loop {
            let packet = self.read_packet().await;
            if packet["rid"] == cid {
                break packet;
            }
            skipped.push(packet);
        };
        self.pending.extend(skipped);
        reply
    }

    /// Read a packet from the connection, bypassing `pending`.
    async fn read_packet(&mut self) -> Value {
        let kept = std::mem::take(&mut self.pending);
        let packet = self.next_packet().await;
        self.pending = kept;
        packet
    }

    /// Invoke and return the reply's data, failing on an error reply.
    pub async fn call(&mut self, event: &str, data: Value) -> Value {
        let reply = self.invoke(event, data).await;
        assert!(reply.get("error").is_none(), "{event} failed: {reply}");
        reply.get("data").cloned().unwrap_or(Value::Null)
    }

    /// Send a transmit.
    pub async fn transmit(&mut self, event: &str, data: Value) {
        self.send(json!({"event": event, "data": data})).await;
    }

    /// Subscribe to a channel (as an RPC, as the official client does).
    pub async fn subscribe(&mut self, channel: &str) {
        let reply = self.invoke("#subscribe", json!({"channel": channel})).await;
        assert_eq!(
            reply.as_object().unwrap().len(),
            1,
            "subscribe reply: {reply}"
        );
    }

    /// The next packet, which must be a publication: (channel, data).
    pub async fn publication(&mut self) -> (String, Value) {
        let packet = self.next_packet().await;
        assert_eq!(
            packet["event"], "#publish",
            "expected a publication, got {packet}"
        );
        let data = &packet["data"];
        (
            data["channel"].as_str().unwrap().to_owned(),
            data["data"].clone(),
        )
    }

    /// Close the connection with a code.
    pub async fn close(self, code: u16) {
        self.connection.close(code).await;
    }
}
