//! A TCP proxy on 127.0.0.1 that a test can cut and restore, to make a real server (the
//! PostgreSQL ledger) unreachable and then reachable again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Forwards every connection to `target` while up; while down, open connections are dropped
/// and new ones closed at once.
pub struct TcpProxy {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TcpProxy {
    /// Starts a proxy to `target` (e.g. `127.0.0.1:5432`) on a free port, up.
    pub async fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let target = target.to_string();
        let (accept_up, accept_open) = (Arc::clone(&up), Arc::clone(&open));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                accept_open.lock().expect("lock").push(task.abort_handle());
            }
        });
        TcpProxy { port, up, open }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.open.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    /// Forwards again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
