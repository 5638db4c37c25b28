//! The sinks the runs send into: postfix's `smtp-sink` with a running message counter, and an
//! HTTP push sink in this process that counts requests and connections.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::routing::post;

use crate::process::{is_root, tool};

/// postfix's `smtp-sink` on a free port of 127.0.0.1, started with `-c`: it prints
/// `sess=… quit=… mesg=N` (separated by `\r`) whenever a session ends or a message's `.` is
/// received. A reader thread timestamps every new `mesg` value, which gives first and last
/// message instants at the sink for any run.
pub(super) struct SmtpSink {
    pub(super) port: u16,
    child: Child,
    /// `(when, mesg)` at every change of the message counter.
    changes: Arc<Mutex<Vec<(Instant, u64)>>>,
}

impl SmtpSink {
    pub(super) fn start() -> anyhow::Result<SmtpSink> {
        let port = free_port()?;
        let mut command = Command::new(tool("smtp-sink")?);
        command.arg("-c");
        if is_root() {
            // smtp-sink refuses to run as root without a user to switch to.
            command.args(["-u", "nobody"]);
        }
        let mut child = command
            .args([format!("127.0.0.1:{port}").as_str(), "256"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start smtp-sink")?;
        let mut stdout = child.stdout.take().expect("piped");
        let changes: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let sink_changes = Arc::clone(&changes);
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let mut line = Vec::new();
            let mut last = 0u64;
            while let Ok(read) = stdout.read(&mut buf) {
                if read == 0 {
                    break;
                }
                let now = Instant::now();
                for &byte in &buf[..read] {
                    if byte != b'\r' && byte != b'\n' {
                        line.push(byte);
                        continue;
                    }
                    if let Some(mesg) = parse_mesg(&line)
                        && mesg != last
                    {
                        last = mesg;
                        lock(&sink_changes).push((now, mesg));
                    }
                    line.clear();
                }
            }
        });
        wait_for_port(port)?;
        Ok(SmtpSink {
            port,
            child,
            changes,
        })
    }

    /// Messages received so far.
    pub(super) fn count(&self) -> u64 {
        lock(&self.changes).last().map_or(0, |&(_, n)| n)
    }

    /// Waits until `base + n` messages arrived; the instants of message `base + 1` and
    /// `base + n`.
    pub(super) fn window(
        &self,
        base: u64,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<(Instant, Instant)> {
        let target = base + n as u64;
        let deadline = Instant::now() + timeout;
        while self.count() < target {
            ensure!(
                Instant::now() < deadline,
                "smtp-sink: {} of {n} messages after {timeout:?}",
                self.count() - base
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (first, last) = {
            let changes = lock(&self.changes);
            let first = changes.iter().find(|(_, m)| *m > base).map(|c| c.0);
            let last = changes.iter().find(|(_, m)| *m >= target).map(|c| c.0);
            (first, last)
        };
        let (Some(first), Some(last)) = (first, last) else {
            bail!("smtp-sink counter lost");
        };
        // The sender has exited: anything more than `n` would be a duplicate.
        std::thread::sleep(Duration::from_millis(50));
        ensure!(
            self.count() == target,
            "smtp-sink got {} messages, expected {n}",
            self.count() - base
        );
        Ok((first, last))
    }

    pub(super) fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_mesg(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line).ok()?;
    let at = line.find("mesg=")?;
    line[at + 5..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// HTTP push sink

/// What the push sink saw since the last reset; instants as nanoseconds after `epoch` (0 = none).
pub(super) struct PushStats {
    epoch: Instant,
    pub(super) count: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
    pub(super) peers: Mutex<HashSet<SocketAddr>>,
    sampled: AtomicBool,
    pub(super) sample: Mutex<Option<(Bytes, String)>>,
}

impl PushStats {
    pub(super) fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.first.store(0, Ordering::SeqCst);
        self.last.store(0, Ordering::SeqCst);
        lock(&self.peers).clear();
    }

    /// Waits for `n` requests; the first-to-last window.
    pub(super) fn window(&self, n: usize, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        while self.count.load(Ordering::SeqCst) < n as u64 {
            ensure!(
                Instant::now() < deadline,
                "push sink: {} of {n} requests after {timeout:?}",
                self.count.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(self.span())
    }

    pub(super) fn span(&self) -> Duration {
        Duration::from_nanos(
            self.last
                .load(Ordering::SeqCst)
                .saturating_sub(self.first.load(Ordering::SeqCst)),
        )
    }
}

/// Answers `POST /push` with 200 `{}`, counting requests and connections.
async fn receive(
    State(stats): State<Arc<PushStats>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> &'static str {
    let now = (stats.epoch.elapsed().as_nanos() as u64).max(1);
    let _ = stats
        .first
        .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    stats.last.fetch_max(now, Ordering::SeqCst);
    stats.count.fetch_add(1, Ordering::SeqCst);
    lock(&stats.peers).insert(peer);
    if !stats.sampled.swap(true, Ordering::SeqCst) {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        *lock(&stats.sample) = Some((body, key));
    }
    "{}"
}

pub(super) async fn start_push_sink() -> anyhow::Result<(String, Arc<PushStats>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(PushStats {
        epoch: Instant::now(),
        count: AtomicU64::new(0),
        first: AtomicU64::new(0),
        last: AtomicU64::new(0),
        peers: Mutex::default(),
        sampled: AtomicBool::new(false),
        sample: Mutex::default(),
    });
    let app = Router::new()
        .route("/push", post(receive))
        .with_state(Arc::clone(&stats));
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok((format!("http://{addr}/push"), stats))
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
