//! A worker thread: a single-threaded tokio runtime serving a share of the
//! connections with its own instance of every plugin.

use super::connection;
use super::shared::Shared;
use crate::metrics;
use crate::plugins::{PluginSet, WorkerPlugins, run_timers};
use crate::session::SessionContext;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinSet, LocalSet};

/// The accept loop's handle on a worker thread.
pub(super) struct Worker {
    index: usize,
    /// New connections for this worker.
    connections: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    /// Reloaded plugin sets to switch to; the sender is told when done.
    reloads: mpsc::UnboundedSender<(Arc<PluginSet>, oneshot::Sender<()>)>,
    /// Resolves once the worker's plugin instances are up.
    ready: Option<oneshot::Receiver<()>>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    /// Start worker `index`.
    pub(super) fn spawn(
        index: usize,
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (connections, incoming) = mpsc::unbounded_channel();
        let (reloads, reload_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready) = oneshot::channel();
        let channels = Channels {
            incoming,
            reloads: reload_rx,
            ready: ready_tx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                LocalSet::new().block_on(&runtime, serve(index, shared, shutdown, channels));
            })?;
        Ok(Worker {
            index,
            connections,
            reloads,
            ready: Some(ready),
            thread,
        })
    }

    /// Wait until the worker has built its plugin instances.
    pub(super) async fn ready(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.await;
        }
    }

    /// Give the worker a new connection.
    pub(super) fn hand_over(&self, stream: TcpStream, peer: SocketAddr) {
        match stream.into_std() {
            Ok(stream) => {
                if self.connections.send((stream, peer)).is_err() {
                    tracing::error!(
                        worker = self.index,
                        "worker is gone; connection from {peer} dropped"
                    );
                }
            }
            Err(error) => tracing::warn!("could not hand over the connection from {peer}: {error}"),
        }
    }

    /// Switch the worker to a reloaded set of plugins; resolves once the
    /// next event on this worker goes to it.
    pub(super) async fn switch_to(&self, set: Arc<PluginSet>) {
        let (done, switched) = oneshot::channel();
        if self.reloads.send((set, done)).is_ok() {
            let _ = switched.await;
        }
    }

    /// Stop handing connections over and wait for the thread to finish its
    /// sessions.
    pub(super) async fn join(self) {
        drop(self.connections);
        let index = self.index;
        let thread = self.thread;
        if tokio::task::spawn_blocking(move || thread.join())
            .await
            .is_err()
        {
            tracing::error!(worker = index, "worker thread panicked");
        }
    }
}

/// What the accept loop sends a worker.
struct Channels {
    incoming: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    reloads: mpsc::UnboundedReceiver<(Arc<PluginSet>, oneshot::Sender<()>)>,
    ready: oneshot::Sender<()>,
}

/// The worker's event loop: start the plugins, then serve connections and
/// reloads until the accept loop stops, then let the sessions close.
async fn serve(
    index: usize,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    channels: Channels,
) {
    let Channels {
        mut incoming,
        mut reloads,
        ready,
    } = channels;
    let stats = shared.worker_stats[index].clone();
    metrics::enter_worker(stats.clone());
    let plugins =
        WorkerPlugins::start_counting(shared.plugins(), shared.services.clone(), stats.clone())
            .await;
    let mut stopping = shutdown.clone();
    let ctx = Rc::new(SessionContext {
        plugins: RefCell::new(Rc::new(plugins)),
        services: shared.services.clone(),
        settings: shared.config.session.clone(),
        stats,
        auth: shared.auth.clone(),
        shutdown,
    });
    let timers = tokio::task::spawn_local({
        let ctx = ctx.clone();
        async move { run_timers(|| ctx.current_plugins()).await }
    });
    let _ = ready.send(());
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.recv() => match next {
                Some((stream, peer)) => match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        sessions.spawn_local(connection::handle(stream, peer, ctx.clone(), shared.clone()));
                    }
                    Err(error) => tracing::warn!("could not register the connection from {peer}: {error}"),
                },
                None => break,
            },
            Some((set, switched)) = reloads.recv() => {
                let next = ctx.current_plugins().switch_to(set).await;
                *ctx.plugins.borrow_mut() = next;
                let _ = switched.send(());
            }
            Some(_) = sessions.join_next() => {}
            // Every worker starts draining as soon as the server stops, not
            // when the accept loop gets round to it.
            _ = stopping.wait_for(|&stop| stop) => break,
        }
    }
    let drained = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.config.shutdown_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached with connections still open");
    }
    timers.abort();
}
