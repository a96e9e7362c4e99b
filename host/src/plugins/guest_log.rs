//! A plugin's stdout and stderr, forwarded to the host log line by line and
//! tagged with the plugin's name. A guest panic message arrives this way.

use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept before it is logged anyway, so that a guest writing
/// without newlines cannot grow host memory.
const MAX_LINE: usize = 16 * 1024;

/// The hint Rust's panic handler prints after a panic message. A plugin
/// cannot take it (it has no environment); the host's fault report has the
/// backtrace already, with files and lines.
const RUST_BACKTRACE_HINT: &str = "note: run with `RUST_BACKTRACE=1`";

/// How many recent stderr lines are kept for fault reports.
const RECENT_LINES: usize = 8;

/// The last lines a guest wrote to stderr: a panic message is printed just
/// before the trap it causes, so the fault report can quote it.
#[derive(Debug, Default, Clone)]
pub(super) struct RecentStderr(Arc<Mutex<VecDeque<String>>>);

impl RecentStderr {
    fn push(&self, line: &str) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == RECENT_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
    }

    /// Take the kept lines, joined with ` | `.
    pub(super) fn take(&self) -> String {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let joined = lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" | ");
        lines.clear();
        joined
    }
}

/// Which guest stream a [`GuestLog`] carries.
#[derive(Debug, Clone)]
pub(super) enum GuestStream {
    /// The guest's stdout, logged at info.
    Stdout,
    /// The guest's stderr (panic messages), logged at warn and kept.
    Stderr(RecentStderr),
}

/// A `wasi:cli` stdout/stderr that writes to the host log.
#[derive(Debug, Clone)]
pub(super) struct GuestLog {
    plugin: Arc<str>,
    stream: GuestStream,
}

impl GuestLog {
    /// The log for one stream of one plugin.
    pub(super) fn new(plugin: Arc<str>, stream: GuestStream) -> Self {
        GuestLog { plugin, stream }
    }
}

/// Buffers partial lines and emits complete ones.
struct LineWriter {
    log: GuestLog,
    pending: Vec<u8>,
}

impl LineWriter {
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&bytes[..newline]);
            self.emit();
            bytes = &bytes[newline + 1..];
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= MAX_LINE {
            self.emit();
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        if line.trim().is_empty() || line.starts_with(RUST_BACKTRACE_HINT) {
            self.pending.clear();
            return;
        }
        let plugin = &*self.log.plugin;
        match &self.log.stream {
            GuestStream::Stdout => tracing::info!(plugin, "{line}"),
            GuestStream::Stderr(recent) => {
                tracing::warn!(plugin, "{line}");
                recent.push(&line);
            }
        }
        self.pending.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(GuestOutput(LineWriter {
            log: self.clone(),
            pending: Vec::new(),
        }))
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(GuestOutput(LineWriter {
            log: self.clone(),
            pending: Vec::new(),
        }))
    }
}

/// The stream object handed to the guest; always ready, never blocks.
struct GuestOutput(LineWriter);

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().0.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
