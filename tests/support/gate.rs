//! A TCP proxy in front of a server that a test can close and open again:
//! it takes one client's connections away (say one host's connection to
//! Redis) while everyone else keeps theirs, which killing the server
//! cannot do.
//!
//! It runs on a thread of its own, so that tests that block their own
//! runtime (starting a server waits for it synchronously) do not stall it.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; dropping it stops it.
pub struct Gate {
    /// The port to connect to instead of the server's.
    pub port: u16,
    open: watch::Sender<bool>,
}

impl Gate {
    /// A gate, open, in front of `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Gate {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, opened) = watch::channel(true);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, upstream, opened));
        });
        Gate { port, open }
    }

    /// Close every connection through the gate and refuse new ones (each
    /// is accepted and closed at once) until [`Gate::open`].
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Let connections through again.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Accept and forward until the gate is dropped (its sender with it).
async fn serve(listener: std::net::TcpListener, upstream: u16, mut opened: watch::Receiver<bool>) {
    let listener = TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if *opened.borrow() {
                    tokio::spawn(forward(client, upstream, opened.clone()));
                }
            }
            changed = opened.changed() => if changed.is_err() { return },
        }
    }
}

/// Copy both ways between `client` and the server until either side ends
/// or the gate closes.
async fn forward(mut client: TcpStream, upstream: u16, mut opened: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], upstream))).await
    else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = opened.wait_for(|open| !open) => {}
    }
}
