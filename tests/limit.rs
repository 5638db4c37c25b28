//! Rate limits measured on the wall clock: per channel, per domain, and unlimited at 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use sunset::Channel;
use sunset::config::{PerDomainRates, RateConfig};
use sunset::limit::{Limits, burst_for};
use tokio_util::sync::CancellationToken;

fn rates(email: u32, push: u32, default: u32, domains: &[(&str, u32)]) -> RateConfig {
    RateConfig {
        email_per_sec: email,
        push_per_sec: push,
        per_domain_per_sec: PerDomainRates {
            default,
            domains: domains
                .iter()
                .map(|&(domain, rate)| (domain.to_string(), rate))
                .collect::<BTreeMap<_, _>>(),
        },
    }
}

/// Acquires once per domain in `domains`, all at once, and returns when each was let through.
async fn acquire_all(limits: &Limits, channel: Channel, domains: &[&str]) -> Vec<Instant> {
    join_all(domains.iter().map(|&domain| async move {
        limits.acquire(channel, Some(domain)).await;
        Instant::now()
    }))
    .await
}

/// The most instants within any closed window of one second.
fn busiest_second(mut times: Vec<Instant>) -> usize {
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| t.duration_since(times[i]) <= Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn email_sends_stay_within_the_rate_plus_burst_in_every_second() {
    let limits = Limits::new(&rates(20, 0, 0, &[]));
    let started = Instant::now();

    let times = acquire_all(&limits, Channel::Email, &["example.com"; 60]).await;

    let elapsed = started.elapsed();
    let busiest = busiest_second(times);
    let bound = 20 + burst_for(20) as usize;
    eprintln!("60 sends at 20/s: {elapsed:?}, busiest second {busiest} (bound {bound})");
    assert!(
        busiest <= bound,
        "{busiest} sends in one second, bound {bound}"
    );
    // 60 sends, 2 of them burst, then one per 50 ms: 2.9 s; not much slower either.
    assert!(elapsed >= Duration::from_millis(2_800), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(4_000), "{elapsed:?}");
}

#[tokio::test]
async fn push_sends_stay_within_their_own_rate() {
    let limits = Limits::new(&rates(0, 50, 0, &[]));

    let times = acquire_all(&limits, Channel::Push, &["ignored.example"; 100]).await;

    let busiest = busiest_second(times);
    assert!(busiest <= 50 + burst_for(50) as usize, "{busiest}");
}

#[tokio::test]
async fn a_throttled_listed_domain_does_not_slow_other_domains() {
    let limits = Limits::new(&rates(1_000, 0, 50, &[("slow.example", 1)]));
    let started = Instant::now();

    let (slow, fast) = tokio::join!(
        acquire_all(&limits, Channel::Email, &["slow.example"; 3]),
        acquire_all(&limits, Channel::Email, &["fast.example"; 20]),
    );

    let slow_done = slow
        .iter()
        .max()
        .expect("slow sends")
        .duration_since(started);
    let fast_done = fast
        .iter()
        .max()
        .expect("fast sends")
        .duration_since(started);
    eprintln!("slow.example 3 at 1/s: {slow_done:?}; fast.example 20 at 50/s: {fast_done:?}");
    assert!(slow_done >= Duration::from_millis(1_900), "{slow_done:?}");
    assert!(fast_done < Duration::from_millis(1_000), "{fast_done:?}");
}

#[tokio::test]
async fn unlisted_domains_each_have_their_own_budget() {
    let limits = Limits::new(&rates(0, 0, 2, &[]));
    let started = Instant::now();

    // Shared, 9 sends at 2/s would take 4 s; one budget per domain, 1 s.
    let domains = ["a.example", "b.example", "c.example"].repeat(3);
    let times = acquire_all(&limits, Channel::Email, &domains).await;

    let done = times.iter().max().expect("sends").duration_since(started);
    eprintln!("3 domains x 3 sends at 2/s each: {done:?}");
    assert!(done >= Duration::from_millis(900), "{done:?}");
    assert!(done < Duration::from_millis(2_000), "{done:?}");
    assert_eq!(limits.tracked_domains(), 3);
}

#[tokio::test]
async fn listed_domains_match_without_case() {
    let limits = Limits::new(&rates(0, 0, 0, &[("Slow.Example", 5)]));
    let started = Instant::now();

    acquire_all(&limits, Channel::Email, &["SLOW.example", "slow.example"]).await;

    // Same bucket: the second waits one interval of 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn zero_means_unlimited() {
    let limits = Limits::new(&rates(0, 0, 0, &[]));
    let started = Instant::now();

    acquire_all(&limits, Channel::Email, &["example.com"; 10_000]).await;
    acquire_all(&limits, Channel::Push, &["example.com"; 10_000]).await;

    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(limits.tracked_domains(), 0);
}

#[tokio::test]
async fn a_listed_domain_at_zero_is_unlimited_whatever_the_default() {
    let limits = Limits::new(&rates(0, 0, 1, &[("free.example", 0)]));
    let started = Instant::now();

    acquire_all(&limits, Channel::Email, &["free.example"; 1_000]).await;

    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn push_ignores_the_domain() {
    let limits = Limits::new(&rates(0, 0, 1, &[("slow.example", 1)]));
    let started = Instant::now();

    acquire_all(&limits, Channel::Push, &["slow.example"; 100]).await;

    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(limits.tracked_domains(), 0);
}

#[tokio::test]
async fn the_pruner_forgets_idle_domains_and_stops_on_shutdown() {
    let limits = Arc::new(Limits::new(&rates(0, 0, 100, &[])));
    let domains: Vec<String> = (0..50).map(|n| format!("d{n}.example")).collect();
    let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
    acquire_all(&limits, Channel::Email, &domains).await;
    assert_eq!(limits.tracked_domains(), 50);
    let shutdown = CancellationToken::new();

    let pruner = limits.spawn_pruner(Duration::from_millis(20), shutdown.clone());

    let deadline = Instant::now() + Duration::from_secs(2);
    while limits.tracked_domains() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(limits.tracked_domains(), 0);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), pruner)
        .await
        .expect("pruner stops on shutdown")
        .expect("pruner did not panic");
}

#[tokio::test]
async fn the_pruner_stops_when_the_limits_are_dropped() {
    let limits = Arc::new(Limits::new(&rates(0, 0, 100, &[])));
    let pruner = limits.spawn_pruner(Duration::from_millis(10), CancellationToken::new());

    drop(limits);

    tokio::time::timeout(Duration::from_secs(1), pruner)
        .await
        .expect("pruner stops once the limits are gone")
        .expect("pruner did not panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acquiring_works_from_spawned_tasks() {
    let limits = Arc::new(Limits::new(&rates(100, 100, 50, &[("qq.com", 20)])));

    let tasks: Vec<_> = ["qq.com", "163.com", "gmail.com"]
        .into_iter()
        .map(|domain| {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move {
                limits.acquire(Channel::Email, Some(domain)).await;
                limits.acquire(Channel::Push, None).await;
            })
        })
        .collect();

    for task in tasks {
        task.await.expect("task finished");
    }
    assert_eq!(limits.tracked_domains(), 2);
}
