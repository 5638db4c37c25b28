//! The ledger's promise under faults: a worker stalled for 20 s (SIGSTOP) while its batch goes
//! to another worker, the same with a clock 30 s off, a batch that lists a user twice, a
//! database locked for 40 s, and a pause in front of a slow gateway. The built binary, real
//! RabbitMQ, SQLite in the test's folder and PostgreSQL on 127.0.0.1:5432; counts are taken at
//! the push sink.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::worker_process::WorkerProcess;
use common::{
    Db, POSTGRES, TestEnv, audience_csv, campaign_args, exit_by, pushes_per_user, sample_vars,
    status_json, unique,
};
use serde_json::Value;
use sunset::batch::Batch;

/// How long a worker is stopped.
const STALL: Duration = Duration::from_secs(20);
/// How long the database is locked.
const LOCK: Duration = Duration::from_secs(40);

/// Push into `push` at `per_second` (0 = unlimited), `db`, and `[worker]` keys.
fn config(push: &PushSink, db: Db, per_second: u32, worker: &str) -> String {
    format!(
        "[push]\ntransport = \"http\"\nurl = \"{}\"\n\
         [rate]\nemail_per_sec = 0\npush_per_sec = {per_second}\n[rate.per_domain_per_sec]\ndefault = 0\n\
         {}[worker]\n{worker}",
        push.url(),
        db.section()
    )
}

async fn enqueue(env: &TestEnv, campaign: &str, batch_size: &str) {
    env.sunset_async(&campaign_args(
        "enqueue",
        campaign,
        &["--channels", "push", "--batch-size", batch_size],
    ))
    .await
    .expect_code(0);
}

/// Waits until every one of `n` users got a push and the ledger has all `n` delivered and
/// nothing pending; fails after `limit`.
async fn until_everyone_recorded(env: &TestEnv, push: &PushSink, campaign: &str, n: usize) {
    let limit = Duration::from_secs(120);
    let started = Instant::now();
    loop {
        if pushes_per_user(push).len() == n {
            let status = status_json(env, campaign).await;
            if status["total"]["delivered"] == n && status["total"]["pending"] == 0 {
                return;
            }
        }
        assert!(
            started.elapsed() < limit,
            "not everyone told and recorded in {limit:?}: {} users at the sink, status {}",
            pushes_per_user(push).len(),
            status_json(env, campaign).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn duplicates(push: &PushSink) -> usize {
    pushes_per_user(push).values().map(|n| n - 1).sum()
}

/// Debian's libfaketime (package `faketime`), multi-threaded flavour: preloaded, it moves the
/// process's wall clock and nothing else, and the process stays one process that a signal
/// reaches. Hosts' wall clocks disagree; each host's monotonic clock is its own and is left be.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// `sunset worker` with its clocks `offset` ahead.
fn skewed_worker(env: &TestEnv, offset: &str) -> Command {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime"
    );
    env.command(
        &["worker"],
        &[
            ONE_BATCH,
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

/// One unacked batch per worker: a copy published while a worker is stopped goes to another.
const ONE_BATCH: (&str, &str) = ("SUNSET__BROKER__PREFETCH", "1");

/// Worker A sends a 300-user batch; it is stopped for 20 s while a second copy of the batch
/// goes to worker B, which takes A's claims over once A's beat has stood still long enough;
/// then A resumes. The only duplicates are the sends A had in flight when it stopped.
async fn a_stalled_worker_duplicates_at_most_its_sends_in_flight(skewed: bool) {
    const N: usize = 300;
    const CONCURRENCY: usize = 8;
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&config(
        &push,
        Db::Sqlite,
        100,
        &format!("concurrency = {CONCURRENCY}\nretry_delays_ms = [500, 2000]\n"),
    ));
    let campaign = unique("stall");
    env.write("audience.csv", &audience_csv(N, |_| "example.com".into()));
    enqueue(&env, &campaign, "300").await;
    let a = WorkerProcess::spawn(env.command(&["worker"], &[ONE_BATCH]));
    push.wait_for(50, Duration::from_secs(30)).await;

    a.signal("-STOP");
    let stopped = Instant::now();
    let at_stop = push.requests().len();
    enqueue(&env, &campaign, "300").await;
    let b = WorkerProcess::spawn(if skewed {
        skewed_worker(&env, "+30s")
    } else {
        env.command(&["worker"], &[ONE_BATCH])
    });
    tokio::time::sleep_until((stopped + STALL).into()).await;
    let taken_over = push.requests().len() - at_stop;
    a.signal("-CONT");

    until_everyone_recorded(&env, &push, &campaign, N).await;
    let duplicates = duplicates(&push);
    eprintln!(
        "skewed {skewed}: {at_stop} pushes at the stop, {taken_over} sent by B during it, {duplicates} duplicates"
    );
    assert!(
        taken_over > 0,
        "B should take the stalled worker's pairs over during the stall"
    );
    assert!(
        duplicates <= CONCURRENCY,
        "{duplicates} duplicates; at most {CONCURRENCY} sends were in flight at the stop"
    );
    if skewed {
        let workers = rusqlite::Connection::open(env.path().join("sunset-ledger.db"))
            .expect("open the ledger")
            .prepare("SELECT MAX(seen_at) FROM workers")
            .expect("prepare")
            .query_row([], |r| r.get::<_, i64>(0))
            .expect("a worker");
        let now = chrono::Utc::now().timestamp_millis();
        assert!(
            workers > now + 25_000,
            "worker B's clock should be 30 s ahead: seen_at {workers}, now {now}"
        );
    }
    a.terminate().await;
    b.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_for_20_s_duplicates_at_most_its_sends_in_flight() {
    a_stalled_worker_duplicates_at_most_its_sends_in_flight(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taker_whose_clock_is_30_s_ahead_still_waits_for_the_stalled_workers_lease() {
    a_stalled_worker_duplicates_at_most_its_sends_in_flight(true).await;
}

/// A batch published by other means than `enqueue`, listing a user twice (the second time with
/// spaces around the id) and the push channel twice.
async fn a_user_listed_twice_is_told_once_and_the_worker_exits_when_idle(db: Db) {
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&config(&push, db, 0, ""));
    let campaign = unique("repeated");
    let batch: Batch = serde_json::from_value(serde_json::json!({
        "version": 1,
        "campaign_id": campaign,
        "batch_id": format!("{campaign}:000001"),
        "template": "xiami-shutdown",
        "channels": ["push", "push"],
        "vars": sample_vars(&env),
        "recipients": [{"user_id": "u-1"}, {"user_id": " u-1 "}, {"user_id": "u-2"}],
    }))
    .expect("a batch as a producer might publish it");
    let broker = env.broker().await;
    broker.enqueue(&batch).await.expect("publish");
    broker.close().await;

    let mut worker = env
        .command(&["worker", "--exit-when-idle"], &[])
        .spawn()
        .expect("start the worker");
    let exited = tokio::task::block_in_place(|| {
        exit_by(&mut worker, Instant::now(), Duration::from_secs(60))
    });
    if exited.is_none() {
        let _ = worker.kill();
    }
    assert!(
        exited.is_some_and(|s| s.success()),
        "the worker exits when idle: {exited:?}"
    );
    let told = pushes_per_user(&push);
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(told.values().all(|n| *n == 1), "each user once: {told:?}");
    let status = status_json(&env, &campaign).await;
    assert_eq!(status["total"]["delivered"], 2, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_listed_twice_is_told_once_on_sqlite() {
    a_user_listed_twice_is_told_once_and_the_worker_exits_when_idle(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_listed_twice_is_told_once_on_postgres() {
    a_user_listed_twice_is_told_once_and_the_worker_exits_when_idle(Db::Postgres).await;
}

/// Locks the ledger's database from another connection for `LOCK`.
async fn lock_the_ledger(env: &TestEnv, db: Db) {
    match db {
        Db::Sqlite => {
            let file = env.path().join("sunset-ledger.db");
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(file).expect("open the ledger");
                conn.busy_timeout(Duration::from_secs(10)).expect("busy");
                conn.execute_batch("BEGIN EXCLUSIVE").expect("lock");
                std::thread::sleep(LOCK);
                conn.execute_batch("COMMIT").expect("unlock");
            })
            .await
            .expect("join");
        }
        Db::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(POSTGRES)
                .await
                .expect("connect");
            let mut tx = conn.begin().await.expect("begin");
            sqlx::query("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .expect("lock");
            tokio::time::sleep(LOCK).await;
            tx.commit().await.expect("unlock");
        }
    }
}

/// While another connection holds the ledger locked for 40 s, the worker starts no send it
/// could not record (beyond those in flight); once the lock goes, every outcome is written,
/// no row is left `sending`, and no one is told twice.
async fn with_the_ledger_locked_nothing_is_sent_unrecorded(db: Db) {
    const N: usize = 2000;
    const CONCURRENCY: usize = 16;
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&config(
        &push,
        db,
        200,
        &format!("concurrency = {CONCURRENCY}\nretry_delays_ms = [500, 2000]\n"),
    ));
    let campaign = unique("locked");
    env.write("audience.csv", &audience_csv(N, |_| "example.com".into()));
    enqueue(&env, &campaign, "100").await;
    let worker = WorkerProcess::spawn(env.command(&["worker"], &[]));
    push.wait_for(300, Duration::from_secs(30)).await;

    let locked = Instant::now();
    lock_the_ledger(&env, db).await;
    let unlocked = Instant::now();
    let during: Vec<_> = push
        .requests()
        .into_iter()
        .filter(|r| r.at > locked + Duration::from_secs(3) && r.at < unlocked)
        .collect();

    until_everyone_recorded(&env, &push, &campaign, N).await;
    assert!(
        during.len() <= CONCURRENCY,
        "{db:?}: {} pushes went out while the ledger was locked",
        during.len()
    );
    assert_eq!(duplicates(&push), 0, "{db:?}: no one told twice");
    assert_eq!(
        push.requests().len(),
        N,
        "{db:?}: every send made is a send recorded"
    );
    worker.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_sqlite_ledger_locked_for_40_s_nothing_is_sent_unrecorded() {
    with_the_ledger_locked_nothing_is_sent_unrecorded(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_postgres_ledger_locked_for_40_s_nothing_is_sent_unrecorded() {
    with_the_ledger_locked_nothing_is_sent_unrecorded(Db::Postgres).await;
}

/// A gateway that answers 20 requests a second, no rate limit, 64 sends in flight: once
/// `campaign pause` returns, nothing reaches the gateway more than 2 s later.
#[tokio::test(flavor = "multi_thread")]
async fn a_pause_stops_sends_within_2_s_in_front_of_a_slow_gateway() {
    const N: usize = 300;
    let push = PushSink::start().await;
    push.pace(20);
    let env = TestEnv::with_broker(&config(&push, Db::Sqlite, 0, "concurrency = 64\n"));
    let campaign = unique("pause");
    env.write("audience.csv", &audience_csv(N, |_| "example.com".into()));
    enqueue(&env, &campaign, "100").await;
    let worker = WorkerProcess::spawn(env.command(&["worker"], &[]));
    push.wait_for(59, Duration::from_secs(30)).await;

    env.sunset_async(&["campaign", "pause", &campaign])
        .await
        .expect_code(0);
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let late: Vec<Duration> = push
        .requests()
        .iter()
        .filter(|r| r.at > paused)
        .map(|r| r.at - paused)
        .collect();
    assert!(
        late.iter().all(|after| *after <= Duration::from_secs(2)),
        "sent after the pause returned: {late:?}"
    );
    let status = status_json(&env, &campaign).await;
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(
        status["total"]["failed"], 0,
        "held pairs are not failures: {status}"
    );
    assert_eq!(
        status["eta_seconds"],
        Value::Null,
        "no ETA while paused: {status}"
    );
    worker.terminate().await;
}
