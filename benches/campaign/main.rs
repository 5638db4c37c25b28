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
//! 6. **shaping** (`shaping.rs`): 10 % "451 Try again later" against none, and a relay
//!    refusing above 100/s, on the tests' scripted SMTP sink.
//! 7. **dkim** (`dkim.rs`): the email run of 1. with DKIM signing (RSA-2048) against
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
//!
//! One module per measurement (`email.rs`, `push.rs`, `ledger.rs`, `enqueue.rs`, `shaping.rs`,
//! `dkim.rs`); what they share: `options.rs` (the command line and knobs), `workdir.rs` (a run's
//! folder, config and queues), `sinks.rs` (smtp-sink and the push sink), `process.rs` (running
//! and timing a process), `report.rs` (the table printed at the end).

mod dkim;
mod email;
mod enqueue;
mod ledger;
mod options;
mod process;
mod push;
mod report;
mod shaping;
mod sinks;
mod workdir;

use std::time::{Duration, Instant};

use anyhow::ensure;

use options::Options;
use process::sunset_bin;
use report::Report;
use sinks::SmtpSink;
use workdir::Workdir;

/// Rate limits off: the figures are the most sunset sends, not what a limit allows.
const UNLIMITED: &str =
    "[rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n";
/// The email measurement compares the send path with smtp-source, so it runs without the
/// delivery ledger; `ledger` measures what the ledger costs on top.
const NO_LEDGER: &str = "[ledger]\nurl = \"\"\n";
/// The ledger a user gets by default: SQLite in the working folder.
const SQLITE_LEDGER: &str = "[ledger]\nurl = \"sqlite://sunset-ledger.db\"\n";
/// The PostgreSQL ledger of the `ledger` measurement. Unlike SQLite's file in a run's work
/// folder it outlives the run: the campaigns a bench wrote there are deleted when it ends.
const POSTGRES_LEDGER: &str = "postgres://postgres@127.0.0.1:5432/test";

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
