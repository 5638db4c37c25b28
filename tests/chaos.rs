//! The chaos run: three workers on one PostgreSQL ledger while workers are SIGKILLed and
//! restarted, one is stopped for 20 s, the broker closes every connection and restarts, the SMTP server refuses with 451
//! and 550 and the push gateway answers 503 — then everyone is counted at the sinks and the DLQ.
//! CI runs 5,000 recipients; `scripts/chaos.sh` runs the full size (100,000) in release.
//! The broker is a RabbitMQ node of the test's own, so nothing else sees it go down.

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::rabbit_node::RabbitNode;
use common::smtp_sink::SmtpSink;
use common::{
    POSTGRES, TestEnv, campaign_args, emails_per_address, exit_by, pushes_per_user, sinks_config,
    unique,
};
use serde_json::Value;
use sunset::batch::Batch;
use sunset::channel::Channel;

/// Recipients in CI; `SUNSET_CHAOS_RECIPIENTS` sets another size.
const CI_RECIPIENTS: usize = 5_000;
/// Worker processes.
const WORKERS: usize = 3;
/// `worker.concurrency`: a SIGKILL can leave at most this many sends of that worker sent but
/// not recorded, which another worker then sends again.
const CONCURRENCY: usize = 16;

/// How long workers may take to finish after SIGTERM: in-flight sends, acks and the broker
/// close (which waits up to 20 s for a connection lapin is recovering).
const STOP_LIMIT: Duration = Duration::from_secs(90);

/// How long a stalled worker stays stopped.
const STALL: Duration = Duration::from_secs(20);

/// What happens, in order, each once the SMTP sink has seen that share of the recipients.
const SCHEDULE: [(f64, Fault); 8] = [
    (0.05, Fault::KillWorker),
    (0.15, Fault::KillWorker),
    (0.25, Fault::CloseConnections),
    (0.35, Fault::KillWorker),
    (0.42, Fault::StallWorker),
    (0.50, Fault::RestartBroker),
    (0.60, Fault::KillWorker),
    (0.75, Fault::KillWorker),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL a random worker and start a new one in its place.
    KillWorker,
    /// SIGSTOP a random worker for `STALL`, then SIGCONT: its lease runs out meanwhile.
    StallWorker,
    /// `rabbitmqctl close_connection` on every sunset connection of the run.
    CloseConnections,
    /// `rabbitmqctl stop_app`, two seconds, `start_app`.
    RestartBroker,
}

/// The worker processes of the run; killed when dropped.
struct Fleet<'a> {
    env: &'a TestEnv,
    workers: Vec<Child>,
    started: usize,
}

impl<'a> Fleet<'a> {
    fn start(env: &'a TestEnv) -> Fleet<'a> {
        let mut fleet = Fleet {
            env,
            workers: Vec::new(),
            started: 0,
        };
        for _ in 0..WORKERS {
            let worker = fleet.spawn();
            fleet.workers.push(worker);
        }
        fleet
    }

    /// A worker logging to `worker-<N>.log` in the test folder (its end is shown on failure).
    fn spawn(&mut self) -> Child {
        self.started += 1;
        let log = File::create(self.env.path().join(format!("worker-{}.log", self.started)))
            .expect("create a worker log");
        self.env
            .command(&["worker"], &[("RUST_LOG", "info")])
            .stderr(log)
            .spawn()
            .expect("start a worker")
    }

    fn kill_one(&mut self) {
        let victim = fastrand::usize(..self.workers.len());
        let mut worker = self.workers.swap_remove(victim);
        worker.kill().expect("SIGKILL a worker");
        worker.wait().expect("reap the killed worker");
        let replacement = self.spawn();
        self.workers.push(replacement);
    }

    /// Stops a random worker for `STALL`, then lets it go on.
    async fn stall_one(&self) {
        let victim = &self.workers[fastrand::usize(..self.workers.len())];
        let signal = |signal: &str| {
            let sent = Command::new("kill")
                .args([signal, &victim.id().to_string()])
                .status()
                .expect("kill");
            assert!(sent.success(), "kill {signal}");
        };
        signal("-STOP");
        tokio::time::sleep(STALL).await;
        signal("-CONT");
    }

    /// SIGTERM every worker and waits for each to finish its in-flight batches and exit 0
    /// (within `STOP_LIMIT`: a worker that hangs fails the run rather than stalling it).
    fn stop(&mut self) {
        for worker in &mut self.workers {
            let status = Command::new("kill")
                .args(["-TERM", &worker.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(status.success());
        }
        let asked = Instant::now();
        for worker in &mut self.workers {
            let id = worker.id();
            let status = exit_by(worker, asked, STOP_LIMIT).unwrap_or_else(|| {
                panic!("worker {id} still running {STOP_LIMIT:?} after SIGTERM")
            });
            assert!(status.success(), "a worker exited with {status}");
        }
        self.workers.clear();
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

/// One channel's line of the table.
#[derive(Debug)]
struct Tally {
    channel: Channel,
    recipients: usize,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    dead: usize,
}

impl Tally {
    /// `told` per user id at the sink; `dead` the user ids dead-lettered for this channel.
    fn count(
        channel: Channel,
        recipients: usize,
        told: &HashMap<String, usize>,
        dead: &HashSet<String>,
    ) -> Tally {
        Tally {
            channel,
            recipients,
            delivered: told.len(),
            lost: (1..=recipients)
                .map(|i| format!("u{i}"))
                .filter(|u| !told.contains_key(u) && !dead.contains(u))
                .count(),
            duplicated: told.values().map(|n| n.saturating_sub(1)).sum(),
            dead: dead.len(),
        }
    }
}

/// The ledger's view: `sunset status --json`.
fn ledger_status(env: &TestEnv, campaign: &str) -> Value {
    let run = env.sunset(&["status", "--campaign", campaign, "--json"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    serde_json::from_str(&run.stdout()).expect("status --json")
}

/// For a run that does not settle: the test's queues and the end of every worker's log.
fn diagnosis(env: &TestEnv, node: &RabbitNode) -> String {
    let queues = node
        .rabbitmqctl()
        .command(&[
            "list_queues",
            "-q",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let queue = env.names().work;
    let mut text: String = queues
        .lines()
        .filter(|line| line.starts_with(&queue))
        .map(|line| format!("{line}\n"))
        .collect();
    for entry in std::fs::read_dir(env.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("worker-") {
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let _ = writeln!(text, "== {name}");
            for line in tail.into_iter().rev() {
                let _ = writeln!(text, "{line}");
            }
        }
    }
    text
}

/// Every recipient of every channel delivered or dead in the ledger.
fn settled(status: &Value) -> bool {
    ["email", "push"].iter().all(|channel| {
        let counts = &status["channels"][channel];
        counts["delivered"].as_u64().unwrap_or(0) + counts["dead"].as_u64().unwrap_or(0)
            == counts["total"].as_u64().unwrap_or(1)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn under_kills_broker_restarts_and_faulty_relays_everyone_is_told_once_and_nothing_is_lost() {
    let recipients: usize = std::env::var("SUNSET_CHAOS_RECIPIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CI_RECIPIENTS);
    let node = tokio::task::block_in_place(RabbitNode::start);
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let mut csv = String::from("user_id,email,locale\n");
    let mut permanent = HashSet::new();
    for i in 1..=recipients {
        let (user, address) = (format!("u{i}"), format!("u{i}@example.com"));
        let locale = ["ar", "zh-CN", "zh-TW", "en"][i % 4];
        let _ = writeln!(csv, "{user},{address},{locale}");
        if i % 100 == 0 {
            smtp.reject(&address, 550);
            permanent.insert(user.clone());
        } else if i % 10 == 3 {
            smtp.reject_times(&address, 451, "4.4.1 Connection timed out, try again", 1);
        }
        if i % 20 == 7 {
            push.respond_times(&user, 503, None, 1);
        }
    }
    let campaign = unique("chaos");
    let env = TestEnv::with_broker_on(
        &node,
        &sinks_config(
            &smtp,
            &push,
            &format!(
                "[rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n\
                 [worker]\nconcurrency = {CONCURRENCY}\nretry_delays_ms = [500, 1000]\n\
                 [ledger]\nurl = \"{POSTGRES}\"\n"
            ),
        ),
    );
    env.write("audience.csv", &csv);
    env.sunset_async(&campaign_args(
        "enqueue",
        &campaign,
        &["--batch-size", "100"],
    ))
    .await
    .expect_code(0);

    // Act: the fleet works while the faults happen.
    let started = Instant::now();
    let mut fleet = Fleet::start(&env);
    let limit = STALL + Duration::from_secs(120 + recipients as u64 / 50);
    let queue = env.names().work;
    let (mut kills, mut stalls) = (0, 0);
    for (share, fault) in SCHEDULE {
        while (smtp.count() as f64) < share * recipients as f64 {
            assert!(started.elapsed() < limit, "stalled before {fault:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match fault {
            Fault::KillWorker => {
                fleet.kill_one();
                kills += 1;
            }
            Fault::StallWorker => {
                fleet.stall_one().await;
                stalls += 1;
            }
            Fault::CloseConnections => tokio::task::block_in_place(|| {
                node.rabbitmqctl()
                    .close_connections_named(&format!("sunset {queue}"));
            }),
            Fault::RestartBroker => tokio::task::block_in_place(|| {
                node.stop_app();
                std::thread::sleep(Duration::from_secs(2));
                node.start_app();
            }),
        }
    }
    let status = loop {
        let status = tokio::task::block_in_place(|| ledger_status(&env, &campaign));
        if settled(&status) {
            break status;
        }
        assert!(
            started.elapsed() < limit,
            "not settled in {limit:?}: {status}\n{}",
            diagnosis(&env, &node)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let broker = env.broker().await;
    for retry in &env.names().retry {
        while broker.ready_count(&retry.0).await.expect("count") > 0 {
            assert!(started.elapsed() < limit, "{} never empties", retry.0);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::task::block_in_place(|| fleet.stop());
    let elapsed = started.elapsed();

    // Assert: count at the sinks and the DLQ.
    let mut dead: HashMap<Channel, HashSet<String>> = HashMap::new();
    for (body, _) in env.dead_letters().await {
        let batch = Batch::decode(&body).expect("a dead letter is a batch");
        for failure in batch.failures {
            dead.entry(failure.channel)
                .or_default()
                .insert(failure.user_id.to_string());
        }
    }
    let emails: HashMap<String, usize> = emails_per_address(&smtp)
        .into_iter()
        .map(|(address, n)| (address.trim_end_matches("@example.com").to_string(), n))
        .collect();
    let tallies = [
        Tally::count(
            Channel::Email,
            recipients,
            &emails,
            &dead.get(&Channel::Email).cloned().unwrap_or_default(),
        ),
        Tally::count(
            Channel::Push,
            recipients,
            &pushes_per_user(&push),
            &dead.get(&Channel::Push).cloned().unwrap_or_default(),
        ),
    ];
    println!(
        "\nchaos run: {recipients} recipients, {WORKERS} workers (concurrency {CONCURRENCY}), \
         {kills} SIGKILLs, {stalls} stall of {STALL:?}, 1 connection close, 1 broker restart, 451 once to 10 %, 550 to 1 %, \
         push 503 once to 5 %; settled in {:.1} s\n",
        elapsed.as_secs_f64()
    );
    println!(
        "| channel | recipients | delivered | lost | duplicated | dead-lettered | ledger delivered / dead |"
    );
    println!("|---|---|---|---|---|---|---|");
    for tally in &tallies {
        let ledger = &status["channels"][tally.channel.as_str()];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} / {} |",
            tally.channel,
            tally.recipients,
            tally.delivered,
            tally.lost,
            tally.duplicated,
            tally.dead,
            ledger["delivered"],
            ledger["dead"]
        );
    }
    for tally in &tallies {
        let ledger = &status["channels"][tally.channel.as_str()];
        assert_eq!(tally.lost, 0, "{}: lost", tally.channel);
        assert_eq!(
            ledger["delivered"].as_u64(),
            Some(tally.delivered as u64),
            "{}: the ledger's delivered count is the sink's",
            tally.channel
        );
        assert_eq!(
            ledger["dead"].as_u64(),
            Some(tally.dead as u64),
            "{}: the ledger's dead count is the DLQ's",
            tally.channel
        );
    }
    let duplicated: usize = tallies.iter().map(|t| t.duplicated).sum();
    assert!(
        duplicated <= (kills + stalls) * CONCURRENCY,
        "{duplicated} duplicates from {kills} kills and {stalls} stalls of workers with {CONCURRENCY} sends in flight"
    );
    assert_eq!(
        dead.get(&Channel::Email).cloned().unwrap_or_default(),
        permanent,
        "the DLQ holds exactly the permanent email failures"
    );
    assert!(
        !dead.contains_key(&Channel::Push),
        "no push is dead-lettered"
    );
}
