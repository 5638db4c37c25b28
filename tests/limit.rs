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

/// Sends per second between the first and the last of `times`.
fn measured_rate(mut times: Vec<Instant>) -> f64 {
    times.sort();
    let span = times[times.len() - 1].duration_since(times[0]);
    (times.len() - 1) as f64 / span.as_secs_f64()
}

/// The current rate of `domain` in `limits.domain_rates()`, if it is slowed down.
fn rate_of(limits: &Limits, domain: &str) -> Option<f64> {
    limits
        .domain_rates()
        .into_iter()
        .find(|(slowed, _)| slowed == domain)
        .map(|(_, per_sec)| per_sec)
}

#[tokio::test]
async fn a_throttled_domain_is_paced_at_half_its_rate_while_others_keep_theirs() {
    // Arrange
    let limits = Limits::new(&rates(0, 0, 20, &[]));

    // Act
    limits.throttled(Channel::Email, Some("Slow.Example."));
    let (slow, fast) = tokio::join!(
        acquire_all(&limits, Channel::Email, &["slow.example"; 21]),
        acquire_all(&limits, Channel::Email, &["fast.example"; 21]),
    );

    // Assert
    let (slow, fast) = (measured_rate(slow), measured_rate(fast));
    eprintln!("21 sends each, default 20/s: throttled {slow:.2}/s, other {fast:.2}/s");
    assert!((9.0..=10.6).contains(&slow), "throttled domain at {slow}/s");
    assert!((18.0..=21.5).contains(&fast), "other domain at {fast}/s");
    assert_eq!(limits.domain_rates(), [("slow.example".to_string(), 10.0)]);
    assert_eq!(limits.push_rate(), None);
}

#[tokio::test]
async fn repeated_throttles_halve_the_rate_down_to_one_a_minute() {
    // A quiet period of 3 s: signals more than 100 ms apart are separate episodes.
    let limits = Limits::with_recovery(&rates(0, 0, 50, &[]), Duration::from_secs(3));
    let mut seen = Vec::new();

    for _ in 0..14 {
        limits.throttled(Channel::Email, Some("qq.com"));
        seen.push(rate_of(&limits, "qq.com").expect("slowed down"));
        tokio::time::sleep(Duration::from_millis(120)).await;
    }

    eprintln!("rates after each throttle: {seen:?}");
    let mut expected: Vec<f64> = (1..=11).map(|n| 50.0 / f64::from(1 << n)).collect();
    expected.extend([1.0 / 60.0; 3]);
    assert_eq!(seen, expected);
    // At the floor, a second send waits a minute.
    acquire_all(&limits, Channel::Email, &["qq.com"]).await;
    let second = tokio::time::timeout(
        Duration::from_millis(500),
        limits.acquire(Channel::Email, Some("qq.com")),
    )
    .await;
    assert!(second.is_err(), "a second send within 500 ms at 1/min");
}

#[tokio::test]
async fn a_burst_of_throttle_signals_halves_the_rate_once() {
    // Replies to sends that were in flight at the old rate arrive together: one episode.
    let limits = Limits::with_recovery(&rates(0, 0, 20, &[]), Duration::from_secs(3));

    for _ in 0..50 {
        limits.throttled(Channel::Email, Some("163.com"));
    }
    let after_burst = rate_of(&limits, "163.com");
    tokio::time::sleep(Duration::from_millis(150)).await;
    limits.throttled(Channel::Email, Some("163.com"));

    assert_eq!(after_burst, Some(10.0));
    assert_eq!(rate_of(&limits, "163.com"), Some(5.0));
}

#[tokio::test]
async fn a_lowered_rate_doubles_after_each_quiet_period_back_to_the_configured_one() {
    // Arrange: qq.com listed at 20/s, lowered three times to 2.5/s.
    let quiet = Duration::from_millis(400);
    let limits = Limits::with_recovery(&rates(0, 0, 50, &[("qq.com", 20)]), quiet);
    for _ in 0..3 {
        limits.throttled(Channel::Email, Some("qq.com"));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let quiet_since = Instant::now() - Duration::from_millis(30);
    assert_eq!(rate_of(&limits, "qq.com"), Some(2.5));

    // Act and assert: one doubling per quiet period, then out of the map.
    let mut seen = Vec::new();
    for periods in [0.5, 1.5, 2.5, 3.5] {
        tokio::time::sleep_until((quiet_since + quiet.mul_f64(periods)).into()).await;
        seen.push(rate_of(&limits, "qq.com"));
    }
    eprintln!("qq.com at 0.5, 1.5, 2.5, 3.5 quiet periods: {seen:?}");
    assert_eq!(seen, [Some(2.5), Some(5.0), Some(10.0), None]);
    assert!(limits.domain_rates().is_empty());
    let times = acquire_all(&limits, Channel::Email, &["qq.com"; 21]).await;
    let rate = measured_rate(times);
    eprintln!("qq.com recovered: {rate:.2}/s");
    assert!((18.0..=21.5).contains(&rate), "{rate}/s");
}

#[tokio::test]
async fn recovery_from_the_floor_never_goes_above_the_configured_rate() {
    // Arrange: 20/s lowered to the floor (12 halvings), quiet periods of 150 ms.
    let limits = Limits::with_recovery(&rates(0, 0, 20, &[]), Duration::from_millis(150));
    for _ in 0..12 {
        limits.throttled(Channel::Email, Some("slow.example"));
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    assert_eq!(rate_of(&limits, "slow.example"), Some(1.0 / 60.0));

    // Act: watch it recover.
    let mut seen = vec![1.0 / 60.0];
    let deadline = Instant::now() + Duration::from_secs(4);
    while let Some(rate) = rate_of(&limits, "slow.example") {
        if seen.last() != Some(&rate) {
            seen.push(rate);
        }
        assert!(Instant::now() < deadline, "still slowed down: {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Assert: each step doubles, none reaches 20/s, then the domain leaves the map.
    eprintln!("recovery steps (per second): {seen:?}");
    assert_eq!(seen.len(), 11, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[1] == 2.0 * w[0]), "{seen:?}");
    assert!(seen.iter().all(|&rate| rate < 20.0), "{seen:?}");
    assert!(limits.domain_rates().is_empty());
}

#[tokio::test]
async fn push_throttling_lowers_the_push_rate_but_not_email() {
    let limits = Limits::new(&rates(0, 20, 20, &[]));

    limits.throttled(Channel::Push, None);
    let (push, email) = tokio::join!(
        acquire_all(&limits, Channel::Push, &["ignored.example"; 21]),
        acquire_all(&limits, Channel::Email, &["example.com"; 21]),
    );

    let (push, email) = (measured_rate(push), measured_rate(email));
    eprintln!("push 20/s throttled: {push:.2}/s; email 20/s: {email:.2}/s");
    assert_eq!(limits.push_rate(), Some(10.0));
    assert!(limits.domain_rates().is_empty());
    assert!((9.0..=10.6).contains(&push), "push at {push}/s");
    assert!((18.0..=21.5).contains(&email), "email at {email}/s");
}

#[tokio::test]
async fn back_off_starts_from_the_domain_rate_capped_by_the_channel_or_fifty_if_unlimited() {
    let unlimited = Limits::new(&rates(0, 0, 0, &[("free.example", 0)]));
    let capped = Limits::new(&rates(30, 0, 50, &[("qq.com", 20)]));
    let push_unlimited = Limits::new(&rates(0, 0, 0, &[]));

    unlimited.throttled(Channel::Email, Some("free.example"));
    unlimited.throttled(Channel::Email, Some("any.example"));
    capped.throttled(Channel::Email, Some("qq.com"));
    capped.throttled(Channel::Email, Some("gmail.com"));
    push_unlimited.throttled(Channel::Push, None);
    push_unlimited.throttled(Channel::Email, None);

    assert_eq!(
        unlimited.domain_rates(),
        [
            ("any.example".to_string(), 25.0),
            ("free.example".to_string(), 25.0)
        ]
    );
    assert_eq!(
        capped.domain_rates(),
        [
            ("gmail.com".to_string(), 15.0),
            ("qq.com".to_string(), 10.0)
        ]
    );
    assert_eq!(push_unlimited.push_rate(), Some(500.0));
    assert!(push_unlimited.domain_rates().is_empty());
}
