//! Campaign throughput of the built `sunset` binary against reference tools, in the same run, on
//! the same sinks:
//!
//! 1. **email**: N notices → RabbitMQ → `sunset worker` (no ledger) → SMTP (8 pooled connections) into
//!    postfix's `smtp-sink`, against `smtp-source -d -s 8 -m N -l <sunset's average size>`
//!    into the same sink.
//! 2. **push**: N notices → `sunset worker` (no ledger) → HTTP into a small axum sink in this process,
//!    against `wrk` posting a body sunset sent, with as many connections as sunset opened.
//! 3. **enqueue**: 200,000 CSV rows → `sunset enqueue` → confirmed batches of 500.
//! 4. **worker RSS**: `/usr/bin/time -v` peak RSS of `sunset worker` for 10k and 200k emails.
//! 5. **ledger**: the email run of 1. and the push run of 2. with the delivery ledger off, on
//!    SQLite (the default; for push also two workers on one file) and on PostgreSQL
//!    (127.0.0.1:5432, database `test`), interleaved; ratios against ledger-off. Then `sunset
//!    status` on ledgers of 1 and 10 million recipients and SQLite's bytes per recipient. The
//!    campaigns it writes to PostgreSQL are deleted when it ends.
//! 6. **shaping** (`campaign/shaping.rs`): 10 % "451 Try again later" against none, and a relay
//!    refusing above 100/s, on the tests' scripted SMTP sink.
//! 7. **dkim** (`campaign/dkim.rs`): the email run of 1. with DKIM signing (RSA-2048) against
//!    without, interleaved; one pair at the default rate limits; and one signature's cost in µs.
//!
//! Throughput is measured at the sink, from the first message received to the last, for
//! sunset and for the reference tool alike: start-up, connecting and the worker's
//! `--exit-when-idle` tail (three empty polls 500 ms apart, ~1.5 s) are excluded. The worker's
//! whole wall time (start to exit) is printed as well.
//!
//! Needs RabbitMQ at 127.0.0.1:5672 (guest/guest) and the Debian packages `postfix` (for
//! `smtp-sink`/`smtp-source`; the daemon need not run), `wrk` and `time`. Run:
//!
//! ```sh
//! cargo bench --bench campaign                 # full: 20,000 emails, 100,000 pushes, enqueue 200,000
//! cargo bench --bench campaign -- --quick      # smoke check with small N (or SUNSET_BENCH_QUICK=1)
//! cargo bench --bench campaign -- email push   # only some: email, push, enqueue, rss, ledger, shaping, dkim
//! ```
//!
//! Knobs (environment): `SUNSET_BENCH_N` (emails), `SUNSET_BENCH_PUSH_N` (pushes, default
//! 100,000: 20,000 take a quarter second at the sink), `SUNSET_BENCH_ENQUEUE_N`,
//! `SUNSET_BENCH_RSS_N` (comma list, default `10000,200000`), `SUNSET_BENCH_CONCURRENCY`
//! (comma list of `worker.concurrency` values for push, default `16,64,256`),
//! `SUNSET_BENCH_REPEAT` (sunset runs per measurement, interleaved with reference runs; default 3),
//! `SUNSET_BENCH_BIN` (another `sunset` binary), `SUNSET_BENCH_KEEP=1` (keep temp folders),
//! `SUNSET_BENCH_SCALE` (comma list of ledger sizes for `status`, default `1000000,10000000`;
//! PostgreSQL takes the first), `SUNSET_BENCH_LEDGER_CONCURRENCY` (`worker.concurrency` of the
//! ledger push runs, default 64). `ledger` runs `ledger-email`, `ledger-push` and `ledger-scale`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::routing::post;
use sunset::broker::{Broker, QueueNames};
use sunset::config::BrokerConfig;

#[path = "campaign/dkim.rs"]
mod dkim;
#[path = "campaign/shaping.rs"]
mod shaping;

/// Rate limits off: the figures are the most sunset sends, not what a limit allows.
const UNLIMITED: &str =
    "[rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n";
/// Retry delays of the bench queues (only their names matter: nothing fails).
const RETRY_DELAYS: [u64; 2] = [1000, 2000];
/// The email measurement compares the send path with smtp-source, so it runs without the
/// delivery ledger; `ledger` measures what the ledger costs on top.
const NO_LEDGER: &str = "[ledger]\nurl = \"\"\n";
/// The ledger a user gets by default: SQLite in the working folder.
const SQLITE_LEDGER: &str = "[ledger]\nurl = \"sqlite://sunset-ledger.db\"\n";
/// The PostgreSQL ledger of the `ledger` measurement. Unlike SQLite's file in a run's work
/// folder it outlives the run: the campaigns a bench wrote there are deleted when it ends.
const POSTGRES_LEDGER: &str = "postgres://postgres@127.0.0.1:5432/test";
/// SMTP connections: sunset's `email.pool_size` and smtp-source's `-s`.
const SMTP_CONNECTIONS: usize = 8;
/// Recipients per batch, `enqueue`'s default.
const BATCH_SIZE: usize = 500;
/// Sent notices are sampled from this many recipients to measure the average email size.
const SIZE_SAMPLE: usize = 400;
/// The longest any one step may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(900);

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    quick: bool,
    only: Vec<String>,
    n: usize,
    /// Push notices: more than emails, since 20,000 pushes take a quarter second.
    push_n: usize,
    enqueue_n: usize,
    rss_n: Vec<usize>,
    concurrencies: Vec<usize>,
    repeat: usize,
    keep: bool,
    wrk_seconds: u64,
}

fn env_usize(key: &str) -> anyhow::Result<Option<usize>> {
    match std::env::var(key) {
        Ok(v) => Ok(Some(
            v.trim()
                .replace('_', "")
                .parse()
                .with_context(|| format!("{key}={v}"))?,
        )),
        Err(_) => Ok(None),
    }
}

fn env_list(key: &str) -> anyhow::Result<Option<Vec<usize>>> {
    match std::env::var(key) {
        Ok(v) => Ok(Some(
            v.split(',')
                .map(|s| {
                    s.trim()
                        .replace('_', "")
                        .parse()
                        .with_context(|| format!("{key}={v}"))
                })
                .collect::<anyhow::Result<_>>()?,
        )),
        Err(_) => Ok(None),
    }
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        // `cargo bench` passes `--bench`; anything starting with `-` we do not know is ignored.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("SUNSET_BENCH_QUICK").is_ok_and(|v| v != "0");
        let only: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .cloned()
            .collect();
        for name in &only {
            ensure!(
                [
                    "email",
                    "push",
                    "enqueue",
                    "rss",
                    "ledger",
                    "ledger-email",
                    "ledger-push",
                    "ledger-scale",
                    "shaping",
                    "dkim"
                ]
                .contains(&name.as_str()),
                "unknown measurement `{name}` (email, push, enqueue, rss, ledger, ledger-email, ledger-push, ledger-scale, shaping, dkim)"
            );
        }
        let (n, push_n, enqueue_n, rss_n, concurrencies, repeat, wrk_seconds) = if quick {
            (2_000, 2_000, 20_000, vec![1_000, 5_000], vec![64], 1, 2)
        } else {
            (
                20_000,
                100_000,
                200_000,
                vec![10_000, 200_000],
                vec![16, 64, 256],
                3,
                3,
            )
        };
        Ok(Options {
            quick,
            only,
            n: env_usize("SUNSET_BENCH_N")?.unwrap_or(n),
            push_n: env_usize("SUNSET_BENCH_PUSH_N")?.unwrap_or(push_n),
            enqueue_n: env_usize("SUNSET_BENCH_ENQUEUE_N")?.unwrap_or(enqueue_n),
            rss_n: env_list("SUNSET_BENCH_RSS_N")?.unwrap_or(rss_n),
            concurrencies: env_list("SUNSET_BENCH_CONCURRENCY")?.unwrap_or(concurrencies),
            repeat: env_usize("SUNSET_BENCH_REPEAT")?.unwrap_or(repeat).max(1),
            keep: std::env::var("SUNSET_BENCH_KEEP").is_ok_and(|v| v != "0"),
            wrk_seconds,
        })
    }

    fn wants(&self, name: &str) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|o| o == name || (o == "ledger" && name.starts_with("ledger-")))
    }
}

// ---------------------------------------------------------------------------------------------
// The binary, scratch folders with their own queues

/// The `sunset` binary: cargo builds it (bench profile = release settings, `target/release/`)
/// for this bench and tells us where.
fn sunset_bin() -> PathBuf {
    std::env::var_os("SUNSET_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_sunset")),
        PathBuf::from,
    )
}

/// A temp folder with `templates/` (a symlink to the shipped ones), a `sunset.toml` with its own
/// random queue `sunset.bench.<random>`, and the queues deleted when dropped.
struct Workdir {
    dir: tempfile::TempDir,
    queue: String,
    runtime: tokio::runtime::Handle,
    keep: bool,
}

impl Workdir {
    /// `worker` goes into the `[worker]` table, `extra` after every other table.
    fn new(
        runtime: &tokio::runtime::Handle,
        keep: bool,
        worker: &str,
        extra: &str,
    ) -> anyhow::Result<Workdir> {
        let dir = tempfile::Builder::new().prefix("sunset-bench-").tempdir()?;
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        std::os::unix::fs::symlink(&templates, dir.path().join("templates"))?;
        let queue = format!("sunset.bench.{:016x}", fastrand::u64(..));
        let delays: Vec<String> = RETRY_DELAYS.iter().map(u64::to_string).collect();
        let config = format!(
            "[broker]\nqueue = \"{queue}\"\n[worker]\nretry_delays_ms = [{}]\n{worker}\
             [templates]\ndir = \"templates\"\n[metrics]\nlisten = \"\"\n{extra}",
            delays.join(", ")
        );
        std::fs::write(dir.path().join("sunset.toml"), config)?;
        Ok(Workdir {
            dir,
            queue,
            runtime: runtime.clone(),
            keep,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn names(&self) -> QueueNames {
        QueueNames::new(&self.queue, &RETRY_DELAYS)
    }

    fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            queue: self.queue.clone(),
            ..BrokerConfig::default()
        }
    }

    /// Messages ready in the dead-letter queue.
    fn dead_letters(&self) -> anyhow::Result<u32> {
        let (config, names) = (self.broker_config(), self.names());
        self.runtime.block_on(async move {
            let broker = Broker::connect(&config, names.clone()).await?;
            let count = broker.ready_count(&names.dlq).await;
            broker.close().await;
            Ok(count?)
        })
    }

    /// `sunset ARGS` in this folder, without `SUNSET*` variables from outside.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args).current_dir(self.path());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SUNSET")) {
            command.env_remove(key);
        }
        command
    }

    /// Writes an audience CSV of `n` users; locales and domains cycle.
    fn audience(&self, name: &str, n: usize) -> anyhow::Result<PathBuf> {
        let locales = ["ar-EG", "zh-CN", "zh-TW", "en-US"];
        let domains = [
            "example.com",
            "example.net",
            "qq.com",
            "163.com",
            "gmail.com",
        ];
        let mut csv = String::with_capacity(n * 48 + 32);
        csv.push_str("user_id,email,locale,name\n");
        for i in 1..=n {
            let _ = writeln!(
                csv,
                "u-{i:07},user{i}@{},{},User {i}",
                domains[i % domains.len()],
                locales[i % locales.len()]
            );
        }
        let path = self.path().join(name);
        std::fs::write(&path, csv)?;
        Ok(path)
    }

    /// `sunset enqueue` of the audience for `channels`; returns the run and its wall time.
    fn enqueue(
        &self,
        campaign: &str,
        audience: &str,
        channels: &str,
        dry_run: bool,
    ) -> anyhow::Result<(Finished, Usage)> {
        let batch = BATCH_SIZE.to_string();
        let mut args = vec![
            "enqueue",
            "--campaign",
            campaign,
            "--template",
            "xiami-shutdown",
            "--audience",
            audience,
            "--channels",
            channels,
            "--batch-size",
            &batch,
        ];
        if dry_run {
            args.push("--dry-run");
        }
        let label = if dry_run {
            "enqueue-dry-run"
        } else {
            "enqueue"
        };
        let (run, usage) = timed(self.command(&sunset_bin(), &args), self.path(), label)?;
        run.expect_success("sunset enqueue")?;
        Ok((run, usage))
    }

    /// `sunset worker --exit-when-idle` under `/usr/bin/time -v`: wall time and peak RSS.
    fn worker(&self, label: &str) -> anyhow::Result<Usage> {
        let mut command = self.command(&sunset_bin(), &["worker", "--exit-when-idle"]);
        command.env(
            "RUST_LOG",
            std::env::var("SUNSET_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let (finished, usage) = timed(command, self.path(), label)?;
        finished.expect_success("sunset worker")?;
        Ok(usage)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let (config, names) = (self.broker_config(), self.names());
        let deleted = self.runtime.block_on(async move {
            let broker = Broker::connect(&config, names).await?;
            let deleted = broker.delete_queues().await;
            broker.close().await;
            deleted
        });
        if let Err(e) = deleted {
            eprintln!("warning: could not delete queues of {}: {e}", self.queue);
        }
        if self.keep {
            let path =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!("kept {}", path.display());
        }
    }
}

/// What a process took: wall time, and from `/usr/bin/time -v` (when installed) its peak RSS
/// and CPU time (user + system).
struct Usage {
    wall: Duration,
    peak_rss_kb: Option<u64>,
    cpu: Option<Duration>,
}

impl Usage {
    fn rss(&self) -> String {
        self.peak_rss_kb
            .map_or("?".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0))
    }

    /// CPU microseconds per item.
    fn cpu_per(&self, n: usize) -> String {
        self.cpu.map_or("?".into(), |cpu| {
            let micros = cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
            if micros < 10.0 {
                format!("{micros:.2} µs")
            } else {
                format!("{micros:.0} µs")
            }
        })
    }
}

/// Runs `command` under `/usr/bin/time -v` (same arguments, folder and environment) if it is
/// installed, else as it is.
fn timed(command: Command, dir: &Path, label: &str) -> anyhow::Result<(Finished, Usage)> {
    let time = Path::new("/usr/bin/time");
    let report = dir.join(format!("{label}.time"));
    let mut actual = if time.exists() {
        let mut wrapped = Command::new(time);
        wrapped
            .arg("-v")
            .arg("-o")
            .arg(&report)
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(cwd) = command.get_current_dir() {
            wrapped.current_dir(cwd);
        }
        wrapped
    } else {
        command
    };
    let _ = std::fs::remove_file(&report);
    let started = Instant::now();
    let finished = run(
        std::mem::replace(&mut actual, Command::new("true")),
        dir,
        label,
    )?;
    let wall = started.elapsed();
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let cpu = match (
        field("User time (seconds):"),
        field("System time (seconds):"),
    ) {
        (Some(user), Some(system)) => Some(Duration::from_secs_f64(user + system)),
        _ => None,
    };
    let usage = Usage {
        wall,
        peak_rss_kb: field("Maximum resident set size (kbytes):").map(|kb| kb as u64),
        cpu,
    };
    Ok((finished, usage))
}

/// A finished process: status and its output, which is also kept in the work folder.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn expect_success(&self, what: &str) -> anyhow::Result<()> {
        ensure!(
            self.status.success(),
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr (last 3000 bytes)\n{}",
            self.status,
            self.stdout,
            tail(&self.stderr, 3000)
        );
        Ok(())
    }
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Runs a command to the end, output to files `<label>.out`/`.err` in `dir` (no pipes to fill).
fn run(mut command: Command, dir: &Path, label: &str) -> anyhow::Result<Finished> {
    let (out, err) = (
        dir.join(format!("{label}.out")),
        dir.join(format!("{label}.err")),
    );
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?);
    let mut child = command
        .spawn()
        .with_context(|| format!("start {:?}", command.get_program()))?;
    let status = wait_timeout(&mut child, STEP_TIMEOUT)?;
    Ok(Finished {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    })
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("gave up after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// smtp-sink with a running counter

/// postfix's `smtp-sink` on a free port of 127.0.0.1, started with `-c`: it prints
/// `sess=… quit=… mesg=N` (separated by `\r`) whenever a session ends or a message's `.` is
/// received. A reader thread timestamps every new `mesg` value, which gives first and last
/// message instants at the sink for any run.
struct SmtpSink {
    port: u16,
    child: Child,
    /// `(when, mesg)` at every change of the message counter.
    changes: Arc<Mutex<Vec<(Instant, u64)>>>,
}

impl SmtpSink {
    fn start() -> anyhow::Result<SmtpSink> {
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
    fn count(&self) -> u64 {
        lock(&self.changes).last().map_or(0, |&(_, n)| n)
    }

    /// Waits until `base + n` messages arrived; the instants of message `base + 1` and
    /// `base + n`.
    fn window(&self, base: u64, n: usize, timeout: Duration) -> anyhow::Result<(Instant, Instant)> {
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

    fn url(&self) -> String {
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
struct PushStats {
    epoch: Instant,
    count: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
    peers: Mutex<HashSet<SocketAddr>>,
    sampled: AtomicBool,
    sample: Mutex<Option<(Bytes, String)>>,
}

impl PushStats {
    fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.first.store(0, Ordering::SeqCst);
        self.last.store(0, Ordering::SeqCst);
        lock(&self.peers).clear();
    }

    /// Waits for `n` requests; the first-to-last window.
    fn window(&self, n: usize, timeout: Duration) -> anyhow::Result<Duration> {
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

    fn span(&self) -> Duration {
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

async fn start_push_sink() -> anyhow::Result<(String, Arc<PushStats>)> {
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

// ---------------------------------------------------------------------------------------------
// Helpers

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A reference tool, or how to install it.
fn tool(name: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    let package = match name {
        "smtp-sink" | "smtp-source" => "postfix",
        other => other,
    };
    Err(anyhow!(
        "`{name}` not found: install it with `DEBIAN_FRONTEND=noninteractive apt-get install -y {package}`"
    ))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn rate(n: usize, span: Duration) -> f64 {
    n as f64 / span.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------------------------------------
// The report

struct Row {
    measurement: String,
    sunset: String,
    reference: String,
    ratio: String,
    goal: String,
    verdict: &'static str,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// A throughput row from interleaved runs: each sunset run is paired with the mean of the
    /// reference runs just before and just after it; the row shows medians, and the ratio is
    /// the median of the paired ratios (robust to a busy machine's drift). `reference_first`:
    /// the runs went reference, sunset, reference, …; else sunset, reference, sunset, ….
    fn ratio(
        &mut self,
        measurement: &str,
        (sunset, reference, reference_first): (&[f64], &[f64], bool),
        unit: &str,
        goal: f64,
    ) {
        let ratios: Vec<f64> = sunset
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (from, count) = match (reference_first, i) {
                    (true, _) => (i, 2),
                    (false, 0) => (0, 1),
                    (false, _) => (i - 1, 2),
                };
                let around: Vec<f64> = reference.iter().skip(from).take(count).copied().collect();
                s / (around.iter().sum::<f64>() / around.len().max(1) as f64).max(1e-9)
            })
            .collect();
        let ratio = median(&ratios);
        let list = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if ratios.len() > 1 {
            self.notes
                .push(format!("{measurement}: paired ratios {}", list(&ratios)));
        }
        self.rows.push(Row {
            measurement: measurement.into(),
            sunset: format!("{:.0} {unit}", median(sunset)),
            reference: format!("{:.0} {unit}", median(reference)),
            ratio: format!("{ratio:.2}"),
            goal: format!("≥ {goal:.2}"),
            verdict: if ratio >= goal { "ok" } else { "MISSED" },
        });
    }

    fn info(&mut self, measurement: &str, sunset: String, reference: &str) {
        self.rows.push(Row {
            measurement: measurement.into(),
            sunset,
            reference: reference.into(),
            ratio: "-".into(),
            goal: "-".into(),
            verdict: "",
        });
    }

    fn absolute(&mut self, measurement: &str, sunset: String, goal: String, met: bool) {
        self.rows.push(Row {
            measurement: measurement.into(),
            sunset,
            reference: "-".into(),
            ratio: "-".into(),
            goal,
            verdict: if met { "ok" } else { "MISSED" },
        });
    }

    fn note(&mut self, note: String) {
        eprintln!("  {note}");
        self.notes.push(note);
    }

    fn print(&self) {
        let header = Row {
            measurement: "measurement".into(),
            sunset: "sunset".into(),
            reference: "reference".into(),
            ratio: "ratio".into(),
            goal: "goal".into(),
            verdict: "",
        };
        let all: Vec<&Row> = std::iter::once(&header).chain(&self.rows).collect();
        let width =
            |f: fn(&Row) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
        let w = [
            width(|r| &r.measurement),
            width(|r| &r.sunset),
            width(|r| &r.reference),
            width(|r| &r.ratio),
            width(|r| &r.goal),
        ];
        let pad =
            |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
        println!();
        for (i, r) in all.iter().enumerate() {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                pad(&r.measurement, w[0]),
                pad(&r.sunset, w[1]),
                pad(&r.reference, w[2]),
                pad(&r.ratio, w[3]),
                pad(&r.goal, w[4]),
                pad(r.verdict, 6)
            );
            if i == 0 {
                println!(
                    "|{}|{}|{}|{}|{}|{}|",
                    "-".repeat(w[0] + 2),
                    "-".repeat(w[1] + 2),
                    "-".repeat(w[2] + 2),
                    "-".repeat(w[3] + 2),
                    "-".repeat(w[4] + 2),
                    "-".repeat(8)
                );
            }
        }
        if !self.notes.is_empty() {
            println!();
            for note in &self.notes {
                println!("- {note}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements

struct Bench {
    options: Options,
    runtime: tokio::runtime::Runtime,
    report: Report,
    /// Campaigns written to [`POSTGRES_LEDGER`], to delete once measured.
    postgres_campaigns: Vec<String>,
}

impl Bench {
    fn workdir(&self, extra: &str) -> anyhow::Result<Workdir> {
        Workdir::new(self.runtime.handle(), self.options.keep, "", extra)
    }

    /// `[email]` sending to `sink`, then `limits` (a `[rate]` table, or empty for the defaults).
    fn smtp_config(sink: &SmtpSink, limits: &str) -> String {
        format!(
            "[email]\ntransport = \"smtp\"\nurl = \"{}\"\npool_size = {SMTP_CONNECTIONS}\n{limits}",
            sink.url()
        )
    }

    /// Average size of the emails sunset sends to the bench audience: `sunset send` of a
    /// sample to the `.eml` outbox (the exact bytes it would send over SMTP, CRLF and all).
    fn email_size(&mut self) -> anyhow::Result<usize> {
        let work = self.workdir(&format!(
            "[email]\ntransport = \"file\"\noutbox = \"outbox\"\n{UNLIMITED}"
        ))?;
        work.audience("sample.csv", SIZE_SAMPLE)?;
        let args = [
            "send",
            "--campaign",
            "size",
            "--template",
            "xiami-shutdown",
            "--audience",
            "sample.csv",
            "--channels",
            "email",
        ];
        run(work.command(&sunset_bin(), &args), work.path(), "send")?
            .expect_success("sunset send (size sample)")?;
        let mut sizes = Vec::new();
        for entry in std::fs::read_dir(work.path().join("outbox"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "eml") {
                sizes.push(std::fs::metadata(&path)?.len() as usize);
            }
        }
        ensure!(
            sizes.len() == SIZE_SAMPLE,
            "{} emails in the outbox, expected {SIZE_SAMPLE}",
            sizes.len()
        );
        let average = sizes.iter().sum::<usize>() / sizes.len();
        let (min, max) = (
            sizes.iter().min().copied().unwrap_or(0),
            sizes.iter().max().copied().unwrap_or(0),
        );
        self.report.note(format!(
            "email size: sunset's messages average {average} bytes (min {min}, max {max}, {} sampled); smtp-source sends `-l {average}` bytes of body plus its own few headers",
            sizes.len()
        ));
        Ok(average)
    }

    /// One sunset email run with the rate limits off: enqueue `n`, time the worker; sink rate
    /// (first → last message). `worker` goes into `[worker]`; `ledger` is a `[ledger]` table, or
    /// empty for the default (SQLite in the work folder).
    fn sunset_email(
        &mut self,
        sink: &SmtpSink,
        n: usize,
        label: &str,
        (worker, ledger): (&str, &str),
    ) -> anyhow::Result<(f64, Usage)> {
        self.sunset_email_at(sink, n, label, (worker, ledger), UNLIMITED)
    }

    /// [`Bench::sunset_email`] with `limits` as the `[rate]` table (empty: the defaults).
    fn sunset_email_at(
        &mut self,
        sink: &SmtpSink,
        n: usize,
        label: &str,
        (worker, ledger): (&str, &str),
        limits: &str,
    ) -> anyhow::Result<(f64, Usage)> {
        let work = Workdir::new(
            self.runtime.handle(),
            self.options.keep,
            worker,
            &format!("{}{ledger}", Self::smtp_config(sink, limits)),
        )?;
        work.audience("audience.csv", n)?;
        // A campaign id of its own: a shared PostgreSQL ledger remembers earlier runs.
        let campaign = format!("{label}-{:08x}", fastrand::u32(..));
        if ledger.contains(POSTGRES_LEDGER) {
            self.postgres_campaigns.push(campaign.clone());
        }
        work.enqueue(&campaign, "audience.csv", "email", false)?;
        let base = sink.count();
        let worker = work.worker(label)?;
        let (first, last) = sink.window(base, n, Duration::from_secs(30))?;
        ensure!(work.dead_letters()? == 0, "{label}: dead letters");
        let sink_rate = rate(n - 1, last - first);
        eprintln!(
            "  sunset worker: {n} emails, sink window {:.2}s = {sink_rate:.0}/s; worker wall {:.2}s = {:.0}/s; CPU {}/email; peak RSS {}",
            (last - first).as_secs_f64(),
            worker.wall.as_secs_f64(),
            rate(n, worker.wall),
            worker.cpu_per(n),
            worker.rss()
        );
        Ok((sink_rate, worker))
    }

    /// One smtp-source run of `n` messages of `size` bytes over 8 connections into the sink.
    fn smtp_source(&self, sink: &SmtpSink, n: usize, size: usize) -> anyhow::Result<(f64, Usage)> {
        let base = sink.count();
        let mut command = Command::new(tool("smtp-source")?);
        command.args([
            "-d",
            "-s",
            &SMTP_CONNECTIONS.to_string(),
            "-m",
            &n.to_string(),
            "-l",
            &size.to_string(),
            "-f",
            "noreply@xiami.example",
            "-t",
            "user@example.com",
            &format!("127.0.0.1:{}", sink.port),
        ]);
        let dir = tempfile::tempdir()?;
        let (finished, usage) = timed(command, dir.path(), "smtp-source")?;
        finished.expect_success("smtp-source")?;
        let (first, last) = sink.window(base, n, Duration::from_secs(30))?;
        let sink_rate = rate(n - 1, last - first);
        eprintln!(
            "  smtp-source: {n} messages, sink window {:.2}s = {sink_rate:.0}/s; wall {:.2}s = {:.0}/s; CPU {}/message",
            (last - first).as_secs_f64(),
            usage.wall.as_secs_f64(),
            rate(n, usage.wall),
            usage.cpu_per(n)
        );
        Ok((sink_rate, usage))
    }

    fn email(&mut self) -> anyhow::Result<()> {
        let n = self.options.n;
        eprintln!("== email: {n} notices, {SMTP_CONNECTIONS} SMTP connections, into smtp-sink");
        let size = self.email_size()?;
        let sink = SmtpSink::start()?;
        let (mut sunset_rates, mut source_rates) = (Vec::new(), Vec::new());
        let (mut sunset_runs, mut source_runs) = (Vec::new(), Vec::new());
        // smtp-source, sunset, smtp-source, sunset, …, smtp-source.
        let (source, usage) = self.smtp_source(&sink, n, size)?;
        source_rates.push(source);
        source_runs.push(usage);
        for round in 1..=self.options.repeat {
            eprintln!(" round {round}");
            let (sunset, worker) =
                self.sunset_email(&sink, n, &format!("email-{round}"), ("", NO_LEDGER))?;
            sunset_rates.push(sunset);
            sunset_runs.push(worker);
            let (source, usage) = self.smtp_source(&sink, n, size)?;
            source_rates.push(source);
            source_runs.push(usage);
        }
        self.report.ratio(
            &format!("email msgs/s, N={n}, {SMTP_CONNECTIONS} conns (sink first→last)"),
            (&sunset_rates, &source_rates, true),
            "/s",
            0.8,
        );
        let fastest = |runs: &[Usage]| {
            runs.iter()
                .min_by_key(|u| u.wall)
                .map(|u| (u.wall, u.cpu_per(n)))
        };
        if let (Some((wall, sunset_cpu)), Some((source_wall, source_cpu))) =
            (fastest(&sunset_runs), fastest(&source_runs))
        {
            self.report.info(
                "email msgs/s, whole process, fastest run (worker: start → idle exit)",
                format!("{:.0} /s ({:.2}s)", rate(n, wall), wall.as_secs_f64()),
                &format!(
                    "{:.0} /s ({:.2}s)",
                    rate(n, source_wall),
                    source_wall.as_secs_f64()
                ),
            );
            self.report.info(
                "email client CPU per message (user+sys), fastest run",
                sunset_cpu,
                &source_cpu,
            );
        }
        Ok(())
    }

    /// The ledger's cost: the same email run with the ledger off, on SQLite and on PostgreSQL,
    /// in rounds off → SQLite → PostgreSQL → off …, each ledger against the off runs around it;
    /// at the default `worker.concurrency` (64) and at 256. A send holds its slot until its
    /// outcome is recorded, so with a ledger the concurrency also bounds the database's latency.
    fn ledger(&mut self) -> anyhow::Result<()> {
        let n = self.options.n;
        let sink = SmtpSink::start()?;
        let off = NO_LEDGER;
        let postgres = format!("[ledger]\nurl = \"{POSTGRES_LEDGER}\"\n");
        let ledgers = [
            ("SQLite", "[ledger]\nurl = \"sqlite://sunset-ledger.db\"\n"),
            ("PostgreSQL", postgres.as_str()),
        ];
        for concurrency in [64, 256] {
            eprintln!(
                "== ledger: {n} emails with the ledger off, on SQLite, on PostgreSQL; concurrency {concurrency}"
            );
            let worker = format!("concurrency = {concurrency}\n");
            let setup = |ledger| (worker.as_str(), ledger);
            let mut off_rates = vec![self.sunset_email(&sink, n, "ledger-off-0", setup(off))?.0];
            let mut rates = vec![Vec::new(); ledgers.len()];
            for round in 1..=self.options.repeat {
                eprintln!(" round {round}");
                for ((name, section), rates) in ledgers.iter().zip(&mut rates) {
                    let label = format!("ledger-{}-{round}", name.to_lowercase());
                    rates.push(self.sunset_email(&sink, n, &label, setup(section))?.0);
                }
                let label = format!("ledger-off-{round}");
                off_rates.push(self.sunset_email(&sink, n, &label, setup(off))?.0);
            }
            for ((name, _), rates) in ledgers.iter().zip(&rates) {
                self.report.ratio(
                    &format!(
                        "email msgs/s, N={n}, concurrency {concurrency}, ledger on {name} vs off"
                    ),
                    (rates, &off_rates, true),
                    "/s",
                    if *name == "SQLite" { 0.9 } else { 0.8 },
                );
            }
        }
        Ok(())
    }

    /// The ledger's cost for push at the default concurrency, in rounds off → SQLite → two
    /// workers on one SQLite file → PostgreSQL → off …, each against the off runs around it
    /// (and the two workers against one on SQLite).
    fn ledger_push(&mut self) -> anyhow::Result<()> {
        let n = self.options.push_n;
        let concurrency = env_usize("SUNSET_BENCH_LEDGER_CONCURRENCY")?.unwrap_or(64);
        let (url, stats) = self.runtime.block_on(start_push_sink())?;
        let postgres = format!("[ledger]\nurl = \"{POSTGRES_LEDGER}\"\n");
        let setups = [
            ("off", NO_LEDGER, 1),
            ("SQLite", SQLITE_LEDGER, 1),
            ("SQLite, two workers", SQLITE_LEDGER, 2),
            ("PostgreSQL", postgres.as_str(), 1),
        ];
        eprintln!(
            "== ledger: {n} pushes with the ledger off, on SQLite (one and two workers), on PostgreSQL"
        );
        let mut rates = vec![Vec::new(); setups.len()];
        for round in 0..=self.options.repeat {
            eprintln!(" round {round}");
            // Off alone first, then SQLite, two workers, PostgreSQL and off in every round.
            let order: &[usize] = if round == 0 { &[0] } else { &[1, 2, 3, 0] };
            for &i in order {
                let (name, ledger, workers) = setups[i];
                let label = format!(
                    "push-{}-{round}",
                    name.to_lowercase().replace([',', ' '], "")
                );
                rates[i].push(self.sunset_push(
                    &url,
                    &stats,
                    (n, concurrency),
                    &label,
                    ledger,
                    workers,
                )?);
            }
        }
        for (i, goal) in [(1, 0.9), (3, 0.8)] {
            self.report.ratio(
                &format!(
                    "push req/s, N={n}, concurrency 64, ledger on {} vs off",
                    setups[i].0
                ),
                (&rates[i], &rates[0], true),
                "/s",
                goal,
            );
        }
        self.report.ratio(
            &format!("push req/s, N={n}, two workers vs one on one SQLite file"),
            (&rates[2], &rates[1], false),
            "/s",
            1.0,
        );
        Ok(())
    }

    /// One push run of `n` notices by `workers` workers on `ledger`: the sink's rate.
    fn sunset_push(
        &mut self,
        url: &str,
        stats: &PushStats,
        (n, concurrency): (usize, usize),
        label: &str,
        ledger: &str,
        workers: usize,
    ) -> anyhow::Result<f64> {
        let work = Workdir::new(
            self.runtime.handle(),
            self.options.keep,
            &format!("concurrency = {concurrency}\n"),
            &format!("[push]\ntransport = \"http\"\nurl = \"{url}\"\n{UNLIMITED}{ledger}"),
        )?;
        work.audience("audience.csv", n)?;
        let campaign = format!("{label}-{:08x}", fastrand::u32(..));
        if ledger.contains(POSTGRES_LEDGER) {
            self.postgres_campaigns.push(campaign.clone());
        }
        work.enqueue(&campaign, "audience.csv", "push", false)?;
        stats.reset();
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..workers)
                .map(|i| {
                    let work = &work;
                    scope.spawn(move || work.worker(&format!("{label}-w{i}")))
                })
                .collect();
            runs.into_iter().try_for_each(|run| {
                run.join()
                    .map_err(|_| anyhow!("{label}: a worker thread panicked"))?
                    .map(|_| ())
            })
        })?;
        let span = stats.window(n, Duration::from_secs(60))?;
        ensure!(
            stats.count.load(Ordering::SeqCst) == n as u64,
            "{label}: the push sink got more than {n}"
        );
        ensure!(work.dead_letters()? == 0, "{label}: dead letters");
        let sink_rate = rate(n - 1, span);
        eprintln!(
            "  {label}: {n} pushes, sink window {:.2}s = {sink_rate:.0}/s",
            span.as_secs_f64()
        );
        Ok(sink_rate)
    }

    /// `sunset status` on ledgers of 1 and 10 million recipients (SQLite) and 1 million
    /// (PostgreSQL), rows written straight into the tables: the whole command's wall time, and
    /// the SQLite file's bytes per recipient.
    fn ledger_scale(&mut self) -> anyhow::Result<()> {
        let sizes = env_list("SUNSET_BENCH_SCALE")?.unwrap_or_else(|| vec![1_000_000, 10_000_000]);
        let runs = sizes
            .iter()
            .map(|&n| ("SQLite", n as u64))
            .chain(sizes.first().map(|&n| ("PostgreSQL", n as u64)));
        for (name, n) in runs {
            eprintln!("== ledger scale: {n} recipients on {name}");
            let campaign = format!("scale-{:08x}", fastrand::u32(..));
            let sqlite = name == "SQLite";
            let ledger = if sqlite {
                SQLITE_LEDGER.to_string()
            } else {
                self.postgres_campaigns.push(campaign.clone());
                format!("[ledger]\nurl = \"{POSTGRES_LEDGER}\"\n")
            };
            let work = Workdir::new(self.runtime.handle(), self.options.keep, "", &ledger)?;
            // The schema, as a worker makes it.
            let status = |work: &Workdir| {
                let started = Instant::now();
                let run = run(
                    work.command(&sunset_bin(), &["status", "--campaign", &campaign]),
                    work.path(),
                    "status",
                )?;
                anyhow::Ok((run, started.elapsed()))
            };
            status(&work)?;
            let fill = [
                "INSERT INTO campaigns (id, template, recipients, deadline, state, created_at) VALUES ($1, 'xiami-shutdown', $2, NULL, 'running', 0)",
                "INSERT INTO campaign_totals (campaign_id, channel, locale, total) VALUES ($1, 'email', 'en', $2)",
                "INSERT INTO campaign_counts (campaign_id, channel, locale, status, n) VALUES ($1, 'email', 'en', 'delivered', $2), ($1, 'email', 'en', 'rows', $2)",
                "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, updated_at)
                 WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $2)
                 SELECT $1, 'u-' || i, 'email', 'en', 'delivered', 1, 0 FROM s",
            ];
            let filling = Instant::now();
            if sqlite {
                let db = rusqlite::Connection::open(work.path().join("sunset-ledger.db"))?;
                db.execute_batch("BEGIN")?;
                for sql in fill {
                    // `?N` binds by number; SQLite numbers `$N` markers in order of appearance.
                    db.execute(
                        &sql.replace('$', "?"),
                        rusqlite::params![campaign, n as i64],
                    )?;
                }
                db.execute_batch("COMMIT")?;
            } else {
                self.runtime.block_on(async {
                    let pool = sqlx::PgPool::connect(POSTGRES_LEDGER).await?;
                    for sql in fill {
                        sqlx::query(sql)
                            .bind(&campaign)
                            .bind(n as i64)
                            .execute(&pool)
                            .await?;
                    }
                    pool.close().await;
                    anyhow::Ok(())
                })?;
            }
            eprintln!(
                "  {n} rows written in {:.1}s",
                filling.elapsed().as_secs_f64()
            );
            let mut times = Vec::new();
            for _ in 0..3 {
                let (run, took) = status(&work)?;
                run.expect_success("sunset status")?;
                times.push(took.as_secs_f64() * 1000.0);
            }
            let took = median(&times);
            self.report.absolute(
                &format!("status at {n} recipients on {name} (whole command)"),
                format!("{took:.0} ms"),
                "< 1000 ms".into(),
                took < 1000.0,
            );
            if sqlite {
                let bytes = std::fs::metadata(work.path().join("sunset-ledger.db"))?.len()
                    + std::fs::metadata(work.path().join("sunset-ledger.db-wal"))
                        .map_or(0, |m| m.len());
                self.report.info(
                    &format!("SQLite ledger bytes per recipient at {n}"),
                    format!("{:.0} B", bytes as f64 / n as f64),
                    "-",
                );
            }
        }
        Ok(())
    }

    /// Deletes the campaigns this bench wrote to [`POSTGRES_LEDGER`] (20,000 rows a run: a day
    /// of benchmarks had left 1.6 M rows, 463 MB, in the shared `test` database).
    fn forget_postgres_campaigns(&mut self) -> anyhow::Result<()> {
        let campaigns = std::mem::take(&mut self.postgres_campaigns);
        self.runtime
            .block_on(async {
                let pool = sqlx::PgPool::connect(POSTGRES_LEDGER).await?;
                let mut tx = pool.begin().await?;
                for sql in [
                    "DELETE FROM deliveries WHERE campaign_id = ANY($1)",
                    "DELETE FROM campaign_totals WHERE campaign_id = ANY($1)",
                    "DELETE FROM campaign_counts WHERE campaign_id = ANY($1)",
                    "DELETE FROM campaign_rates WHERE campaign_id = ANY($1)",
                    "DELETE FROM campaigns WHERE id = ANY($1)",
                ] {
                    sqlx::query(sql).bind(&campaigns).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                pool.close().await;
                anyhow::Ok(())
            })
            .with_context(|| format!("deleting the bench's campaigns from {POSTGRES_LEDGER}"))
    }

    fn push(&mut self) -> anyhow::Result<()> {
        let n = self.options.push_n;
        let wrk = tool("wrk")?;
        eprintln!("== push: {n} notices into an axum sink, against wrk");
        let (url, stats) = self.runtime.block_on(start_push_sink())?;
        let mut results = Vec::new();
        for &concurrency in &self.options.concurrencies {
            let (mut sunset_rates, mut wrk_rates, mut connections) =
                (Vec::new(), Vec::new(), 0usize);
            let (mut fastest, mut wrk_cpu): (Option<Usage>, Option<String>) = (None, None);
            // sunset, wrk, sunset, wrk, …: wrk posts the body sunset sent first.
            for round in 1..=self.options.repeat {
                eprintln!(" concurrency {concurrency}, round {round}");
                let work = self.workdir_with_worker(&url, concurrency)?;
                work.audience("audience.csv", n)?;
                work.enqueue("push", "audience.csv", "push", false)?;
                stats.reset();
                let worker = work.worker(&format!("push-{concurrency}-{round}"))?;
                let span = stats.window(n, Duration::from_secs(30))?;
                ensure!(
                    stats.count.load(Ordering::SeqCst) == n as u64,
                    "push sink got more than {n}"
                );
                ensure!(work.dead_letters()? == 0, "push: dead letters");
                let sunset = rate(n - 1, span);
                connections = lock(&stats.peers).len();
                eprintln!(
                    "  sunset worker: {n} pushes over {connections} connections, sink window {:.2}s = {sunset:.0}/s; worker wall {:.2}s; CPU {}/push; peak RSS {}",
                    span.as_secs_f64(),
                    worker.wall.as_secs_f64(),
                    worker.cpu_per(n),
                    worker.rss()
                );
                sunset_rates.push(sunset);
                if fastest.as_ref().is_none_or(|f| worker.wall < f.wall) {
                    fastest = Some(worker);
                }
                drop(work);

                let (reference, cpu) = self.wrk(&wrk, &url, &stats, connections.max(1))?;
                wrk_rates.push(reference);
                wrk_cpu = Some(cpu);
            }
            results.push((
                concurrency,
                connections,
                sunset_rates,
                wrk_rates,
                fastest,
                wrk_cpu,
            ));
        }
        for (concurrency, connections, sunset, reference, fastest, wrk_cpu) in results {
            self.report.ratio(
                &format!("push req/s, N={n}, concurrency {concurrency} ({connections} conns)"),
                (&sunset, &reference, false),
                "/s",
                0.8,
            );
            if let Some(worker) = fastest {
                self.report.info(
                    &format!(
                        "  whole worker process, fastest run (start → idle exit), concurrency {concurrency}"
                    ),
                    format!(
                        "{:.0} /s ({:.2}s)",
                        rate(n, worker.wall),
                        worker.wall.as_secs_f64()
                    ),
                    "-",
                );
                self.report.info(
                    &format!("  client CPU per request (user+sys), fastest run / last wrk, concurrency {concurrency}"),
                    worker.cpu_per(n),
                    wrk_cpu.as_deref().unwrap_or("?"),
                );
            }
        }
        Ok(())
    }

    fn workdir_with_worker(&self, url: &str, concurrency: usize) -> anyhow::Result<Workdir> {
        Workdir::new(
            self.runtime.handle(),
            self.options.keep,
            &format!("concurrency = {concurrency}\n"),
            &format!("[push]\ntransport = \"http\"\nurl = \"{url}\"\n{UNLIMITED}{NO_LEDGER}"),
        )
    }

    /// wrk posting the body sunset sent (with its headers) over `connections` connections:
    /// the sink's first → last rate, and wrk's CPU per request.
    fn wrk(
        &self,
        wrk: &Path,
        url: &str,
        stats: &PushStats,
        connections: usize,
    ) -> anyhow::Result<(f64, String)> {
        let (body, key) = lock(&stats.sample)
            .clone()
            .ok_or_else(|| anyhow!("no push body sampled"))?;
        let dir = tempfile::tempdir()?;
        let lua = format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Idempotency-Key\"] = {}\n",
            lua_string(&body),
            lua_string(key.as_bytes())
        );
        let script = dir.path().join("push.lua");
        std::fs::write(&script, lua)?;
        let threads = connections.clamp(1, 2).to_string();
        let seconds = format!("{}s", self.options.wrk_seconds);
        let connections_arg = connections.to_string();
        let mut command = Command::new(wrk);
        command.args([
            "-t",
            &threads,
            "-c",
            &connections_arg,
            "-d",
            &seconds,
            "-s",
            &script.to_string_lossy(),
            url,
        ]);
        stats.reset();
        let (finished, usage) = timed(command, dir.path(), "wrk")?;
        finished.expect_success("wrk")?;
        let count = stats.count.load(Ordering::SeqCst) as usize;
        let wrk_rate = finished
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let sink_rate = rate(count.saturating_sub(1), stats.span());
        let cpu = usage.cpu_per(count);
        eprintln!(
            "  wrk: {count} requests over {} connections, sink window {:.2}s = {sink_rate:.0}/s (wrk says {}/s); CPU {cpu}/request",
            lock(&stats.peers).len(),
            stats.span().as_secs_f64(),
            wrk_rate.map_or("?".into(), |r| format!("{r:.0}"))
        );
        Ok((sink_rate, cpu))
    }

    /// `sunset enqueue` of `enqueue_n` recipients; then (if wanted) the large RSS run drains
    /// the same queue into smtp-sink.
    fn enqueue_and_rss(&mut self, sink: Option<&SmtpSink>) -> anyhow::Result<()> {
        let n = self.options.enqueue_n;
        let large_rss = self
            .options
            .rss_n
            .iter()
            .copied()
            .max()
            .filter(|_| self.options.wants("rss"));
        if self.options.wants("enqueue") {
            eprintln!("== enqueue: {n} recipients, batches of {BATCH_SIZE}");
            let smtp = sink
                .map(|sink| Self::smtp_config(sink, UNLIMITED))
                .unwrap_or_default();
            let work = self.workdir(&smtp)?;
            work.audience("audience.csv", n)?;
            let (_, dry) = work.enqueue("enqueue", "audience.csv", "email", true)?;
            eprintln!(
                "  --dry-run (read, validate, check the template; no broker): {:.2}s = {:.0} rows/s, CPU {}/row",
                dry.wall.as_secs_f64(),
                rate(n, dry.wall),
                dry.cpu_per(n)
            );
            let (run, usage) = work.enqueue("enqueue", "audience.csv", "email", false)?;
            let wall = usage.wall;
            let summary = run
                .stdout
                .lines()
                .find(|l| l.contains("rows/s"))
                .unwrap_or_default()
                .to_string();
            let publish_rate = summary
                .rsplit_once(" rows/s")
                .and_then(|(head, _)| head.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok());
            eprintln!(
                "  {summary}\n  wall {:.2}s = {:.0} rows/s",
                wall.as_secs_f64(),
                rate(n, wall)
            );
            let wall_rate = rate(n, wall);
            self.report.absolute(
                &format!("enqueue rows/s, N={n}, whole command (validate + publish)"),
                format!("{wall_rate:.0} /s ({:.2}s)", wall.as_secs_f64()),
                "≥ 200000 /s".into(),
                wall_rate >= 200_000.0,
            );
            if let Some(publish) = publish_rate {
                self.report.absolute(
                    "  publish phase only (enqueue's own summary line)",
                    format!("{publish:.0} /s"),
                    "≥ 200000 /s".into(),
                    publish >= 200_000.0,
                );
            }
            self.report.info(
                "  validate phase only (`enqueue --dry-run`)",
                format!(
                    "{:.0} /s ({:.2}s)",
                    rate(n, dry.wall),
                    dry.wall.as_secs_f64()
                ),
                "-",
            );
            self.report.info(
                "  enqueue CPU per row (user+sys), whole / dry run",
                format!("{} / {}", usage.cpu_per(n), dry.cpu_per(n)),
                "-",
            );
            if let (Some(sink), Some(large)) = (sink, large_rss)
                && large == n
            {
                eprintln!("== worker RSS: {n} emails (the queue just enqueued)");
                let base = sink.count();
                let worker = work.worker("rss-large")?;
                sink.window(base, n, Duration::from_secs(60))?;
                ensure!(work.dead_letters()? == 0, "rss: dead letters");
                eprintln!(
                    "  wall {:.2}s = {:.0}/s",
                    worker.wall.as_secs_f64(),
                    rate(n, worker.wall)
                );
                self.rss_row(n, &worker);
                return self.small_rss(sink, Some(n));
            }
        }
        if let Some(sink) = sink {
            self.small_rss(sink, None)?;
        }
        Ok(())
    }

    fn rss_row(&mut self, n: usize, worker: &Usage) {
        match worker.peak_rss_kb {
            Some(kb) => {
                let mb = kb as f64 / 1024.0;
                self.report.absolute(
                    &format!("worker peak RSS, {n} emails"),
                    format!("{mb:.1} MB ({:.0} emails/s)", rate(n, worker.wall)),
                    "≤ 50 MB, flat".into(),
                    mb <= 50.0,
                );
            }
            None => self.report.note(format!(
                "worker peak RSS for {n}: /usr/bin/time missing (apt-get install time)"
            )),
        }
    }

    /// The RSS runs not already done.
    fn small_rss(&mut self, sink: &SmtpSink, done: Option<usize>) -> anyhow::Result<()> {
        if !self.options.wants("rss") {
            return Ok(());
        }
        let mut sizes: Vec<usize> = self
            .options
            .rss_n
            .iter()
            .copied()
            .filter(|&s| Some(s) != done)
            .collect();
        sizes.sort_unstable();
        for n in sizes {
            eprintln!("== worker RSS: {n} emails");
            let (_, worker) = self.sunset_email(sink, n, &format!("rss-{n}"), ("", ""))?;
            self.rss_row(n, &worker);
        }
        Ok(())
    }
}

fn lua_string(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!(
        "sunset campaign bench{}: binary {}, {} round(s) per pair",
        if options.quick { " (quick)" } else { "" },
        sunset_bin().display(),
        options.repeat
    );
    ensure!(
        sunset_bin().exists(),
        "no binary at {}",
        sunset_bin().display()
    );
    // RabbitMQ may still be starting or restarting on this machine: wait a little for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect_timeout(&"127.0.0.1:5672".parse()?, Duration::from_secs(2))
        .is_err()
    {
        ensure!(
            Instant::now() < deadline,
            "RabbitMQ is not listening on 127.0.0.1:5672"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut bench = Bench {
        options,
        runtime,
        postgres_campaigns: Vec::new(),
        report: Report::default(),
    };
    let started = Instant::now();
    let outcome = (|| -> anyhow::Result<()> {
        if bench.options.wants("email") {
            bench.email()?;
        }
        if bench.options.wants("push") {
            bench.push()?;
        }
        if bench.options.wants("ledger-email") {
            bench.ledger()?;
        }
        if bench.options.wants("ledger-push") {
            bench.ledger_push()?;
        }
        if bench.options.wants("ledger-scale") {
            bench.ledger_scale()?;
        }
        if bench.options.wants("shaping") {
            bench.shaping()?;
        }
        if bench.options.wants("dkim") {
            bench.dkim()?;
        }
        if !bench.postgres_campaigns.is_empty() {
            bench.forget_postgres_campaigns()?;
        }
        if bench.options.wants("enqueue") || bench.options.wants("rss") {
            let sink = if bench.options.wants("rss") {
                Some(SmtpSink::start()?)
            } else {
                None
            };
            bench.enqueue_and_rss(sink.as_ref())?;
        }
        Ok(())
    })();
    bench.report.note(format!(
        "rates are measured at the sink from the first to the last message (N-1 intervals); medians of {} sunset run(s) interleaved with reference runs; machine: {} cores, load average before the end {}",
        bench.options.repeat,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ")
    ));
    bench.report.print();
    eprintln!("bench took {:.0}s", started.elapsed().as_secs_f64());
    outcome
}
