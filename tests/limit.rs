//! Rate limits measured on the wall clock: per channel, per domain, and unlimited at 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use sunset::Channel;
use sunset::channel::Outcome;
use sunset::config::{PerDomainRates, RateConfig};
use sunset::limit::{Limits, burst_for};
use sunset::shaping::Rules;
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
        ..RateConfig::default()
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
    let limits = Limits::new(&rates(20, 0, 0, &[]), Rules::default());
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
    let limits = Limits::new(&rates(0, 50, 0, &[]), Rules::default());

    let times = acquire_all(&limits, Channel::Push, &["ignored.example"; 100]).await;

    let busiest = busiest_second(times);
    assert!(busiest <= 50 + burst_for(50) as usize, "{busiest}");
}

#[tokio::test]
async fn a_throttled_listed_domain_does_not_slow_other_domains() {
    let limits = Limits::new(
        &rates(1_000, 0, 50, &[("slow.example", 1)]),
        Rules::default(),
    );
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
    let limits = Limits::new(&rates(0, 0, 2, &[]), Rules::default());
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
    let limits = Limits::new(&rates(0, 0, 0, &[("Slow.Example", 5)]), Rules::default());
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
    let limits = Limits::new(&rates(0, 0, 0, &[]), Rules::default());
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
    let limits = Limits::new(&rates(0, 0, 1, &[("free.example", 0)]), Rules::default());
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
    let limits = Limits::new(&rates(0, 0, 1, &[("slow.example", 1)]), Rules::default());
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
    let limits = Arc::new(Limits::new(&rates(0, 0, 100, &[]), Rules::default()));
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
    let limits = Arc::new(Limits::new(&rates(0, 0, 100, &[]), Rules::default()));
    let pruner = limits.spawn_pruner(Duration::from_millis(10), CancellationToken::new());

    drop(limits);

    tokio::time::timeout(Duration::from_secs(1), pruner)
        .await
        .expect("pruner stops once the limits are gone")
        .expect("pruner did not panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acquiring_works_from_spawned_tasks() {
    let limits = Arc::new(Limits::new(
        &rates(100, 100, 50, &[("qq.com", 20)]),
        Rules::default(),
    ));

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

fn deferred(text: &str, throttled: bool) -> Outcome {
    Outcome::Transient {
        reason: text.into(),
        retry_after: None,
        throttled,
    }
}

/// One episode of throttle evidence: ten "too fast" replies in a row, past any threshold;
/// every attempt refused, so the rate halves (the deepest step).
fn throttle(limits: &Limits, channel: Channel, domain: Option<&str>) {
    for _ in 0..10 {
        limits.observed(
            channel,
            domain,
            &deferred("421 4.7.0 Too many messages, slow down", true),
            Instant::now(),
        );
    }
}

fn shaped(rates: RateConfig, rules: &str) -> Limits {
    Limits::new(&rates, Rules::parse(rules, "test rules").expect("rules"))
}

#[tokio::test]
async fn a_throttled_domain_is_paced_at_its_lowered_rate_while_others_keep_theirs() {
    // Arrange
    let limits = Limits::new(&rates(0, 0, 20, &[]), Rules::default());

    // Act
    throttle(&limits, Channel::Email, Some("Slow.Example."));
    let (slow, fast) = tokio::join!(
        // 16 sends at 10/s: done before the first quiet period (2 s) raises the rate.
        acquire_all(&limits, Channel::Email, &["slow.example"; 16]),
        acquire_all(&limits, Channel::Email, &["fast.example"; 21]),
    );

    // Assert
    let (slow, fast) = (measured_rate(slow), measured_rate(fast));
    eprintln!("default 20/s: throttled {slow:.2}/s, other {fast:.2}/s");
    assert!((7.5..=10.6).contains(&slow), "throttled domain at {slow}/s");
    assert!((15.0..=21.5).contains(&fast), "other domain at {fast}/s");
    assert_eq!(limits.domain_rates(), [("slow.example".to_string(), 10.0)]);
    assert_eq!(limits.push_rate(), None);
}

#[tokio::test]
async fn one_too_fast_reply_or_any_number_of_recipient_deferrals_leave_the_pace_alone() {
    let limits = Limits::new(&rates(0, 0, 20, &[]), Rules::default());

    limits.observed(
        Channel::Email,
        Some("once.example"),
        &deferred("421 4.7.0 Too many messages, slow down", true),
        Instant::now(),
    );
    for _ in 0..100 {
        limits.observed(
            Channel::Email,
            Some("greylisting.example"),
            &deferred("451 4.7.1 Try again later", false),
            Instant::now(),
        );
    }

    assert!(limits.domain_rates().is_empty());
}

#[tokio::test]
async fn a_suspending_rule_holds_the_domain_for_its_duration_and_no_other() {
    // Arrange
    let limits = shaped(
        rates(0, 0, 0, &[]),
        "[[rule]]\nname = \"pause\"\npattern = \"4\\\\.7\\\\.999\"\nscope = \"domain\"\n\
         action = \"suspend\"\nduration_secs = 1\n",
    );
    limits.observed(
        Channel::Email,
        Some("paused.example"),
        &deferred("451 4.7.999 come back later", false),
        Instant::now(),
    );
    let started = Instant::now();

    // Act
    let (paused, other) = tokio::join!(
        acquire_all(&limits, Channel::Email, &["paused.example"]),
        acquire_all(&limits, Channel::Email, &["other.example"]),
    );

    // Assert
    let (paused, other) = (paused[0] - started, other[0] - started);
    eprintln!("paused.example waited {paused:?}, other.example {other:?}");
    assert!(paused >= Duration::from_millis(950), "{paused:?}");
    assert!(other < Duration::from_millis(200), "{other:?}");
    assert!(limits.domain_rates().is_empty(), "not slowed once resumed");
}

#[tokio::test]
async fn a_lowered_rate_recovers_once_the_evidence_stops() {
    // Arrange: quiet periods of 100 ms; 20/s halved (every attempt refused) to 10/s.
    let mut config = rates(0, 0, 20, &[]);
    config.shaping_recover_ms = 100;
    let limits = Limits::new(&config, Rules::default());
    throttle(&limits, Channel::Email, Some("qq.com"));
    assert_eq!(rate_of(&limits, "qq.com"), Some(10.0));

    // Act: wait, with a deadline, for it to leave the map.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = vec![10.0];
    while let Some(rate) = rate_of(&limits, "qq.com") {
        if seen.last() != Some(&rate) {
            seen.push(rate);
        }
        assert!(Instant::now() < deadline, "still slowed: {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Assert: a raise by a tenth of the lowered rate per quiet period, then back at the
    // configured rate.
    eprintln!("recovery steps (per second): {seen:?}");
    let steps: Vec<f64> = (10..20).map(f64::from).collect();
    assert_eq!(seen, steps);
    let times = acquire_all(&limits, Channel::Email, &["qq.com"; 21]).await;
    let rate = measured_rate(times);
    assert!((18.0..=21.5).contains(&rate), "{rate}/s");
}

#[tokio::test]
async fn push_throttling_lowers_the_push_rate_but_not_email() {
    let limits = Limits::new(&rates(0, 20, 20, &[]), Rules::default());

    throttle(&limits, Channel::Push, None);
    let (push, email) = tokio::join!(
        acquire_all(&limits, Channel::Push, &["ignored.example"; 16]),
        acquire_all(&limits, Channel::Email, &["example.com"; 21]),
    );

    let (push, email) = (measured_rate(push), measured_rate(email));
    eprintln!("push 20/s throttled: {push:.2}/s; email 20/s: {email:.2}/s");
    assert_eq!(limits.push_rate(), Some(10.0));
    assert!(limits.domain_rates().is_empty());
    assert!((7.5..=10.6).contains(&push), "push at {push}/s");
    assert!((15.0..=21.5).contains(&email), "email at {email}/s");
}

#[tokio::test]
async fn slowing_starts_from_the_domain_rate_capped_by_the_channel_or_fifty_if_unlimited() {
    let unlimited = Limits::new(&rates(0, 0, 0, &[("free.example", 0)]), Rules::default());
    let capped = Limits::new(&rates(30, 0, 50, &[("qq.com", 20)]), Rules::default());
    let push_unlimited = Limits::new(&rates(0, 0, 0, &[]), Rules::default());

    throttle(&unlimited, Channel::Email, Some("free.example"));
    throttle(&unlimited, Channel::Email, Some("any.example"));
    throttle(&capped, Channel::Email, Some("qq.com"));
    throttle(&capped, Channel::Email, Some("gmail.com"));
    throttle(&push_unlimited, Channel::Push, None);
    throttle(&push_unlimited, Channel::Email, None);

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
