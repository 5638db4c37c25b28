//! Slowing by evidence: what each attempt said goes to the shaper, and its decisions become a
//! limiter at the lowered rate (or a suspension) that sends wait for besides the configured ones.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};

use super::{Limits, burst_for, key};
use crate::channel::{Channel, Outcome};
use crate::events;
use crate::shaping::{Change, Decision, Key, Pace, Rules, Seen, Settings, Shaper, normalize};

/// Where slowing starts, in sends per second, for a domain that is unlimited (its rate and
/// `rate.email_per_sec` are 0): we do not know how fast it was going, and this is the shipped
/// `default` per-domain rate, a fair guess at what one domain takes.
pub const UNLIMITED_DOMAIN_START_PER_SEC: f64 = 50.0;

/// Where slowing starts, in sends per second, for an unlimited push gateway (`push_per_sec`
/// 0): the shipped `push_per_sec`.
pub const UNLIMITED_PUSH_START_PER_SEC: f64 = 1000.0;

/// Sends waiting on a lowered rate look at it again this many times per quiet period.
const RECHECK_DIVISOR: u32 = 4;

/// The shaper's decisions, and a limiter for each rate below its ceiling.
pub(super) struct Shaping {
    shaper: Shaper,
    lowered: HashMap<Key, Arc<DefaultDirectRateLimiter>>,
}

impl Shaping {
    pub(super) fn new(rules: Rules, settings: Settings) -> Shaping {
        Shaping {
            shaper: Shaper::new(rules, settings),
            lowered: HashMap::new(),
        }
    }
}

/// How often a send waiting on a lowered rate looks whether it changed.
pub(super) fn recheck_every(settings: &Settings) -> Duration {
    settings.recover_every / RECHECK_DIVISOR
}

impl Limits {
    /// Reports what became of one send by `channel` to `domain`, started at `started`: every
    /// attempt counts toward the share, and a transient reply is judged by the rules (see
    /// [`Shaper::observe`]). Email without a domain is ignored.
    pub fn observed(
        &self,
        channel: Channel,
        domain: Option<&str>,
        outcome: &Outcome,
        started: Instant,
    ) {
        let Some(key) = key(channel, domain) else {
            return;
        };
        let seen = match outcome {
            Outcome::Transient {
                reason,
                retry_after,
                throttled,
            } => Seen::Deferred {
                text: reason,
                throttled: *throttled,
                retry_after: *retry_after,
            },
            Outcome::Delivered | Outcome::Permanent { .. } | Outcome::Unknown { .. } => {
                Seen::Attempt
            }
            // The relay or gateway did not answer: no word from the domain (the channel's
            // breaker deals with it).
            Outcome::Unreachable { .. } => return,
        };
        let ceiling = self.ceiling(&key);
        let mut shaping = self.lock();
        let now = Instant::now();
        if let Some(decision) = shaping.shaper.observe(&key, ceiling, seen, started, now) {
            self.apply(&mut shaping, &key, decision);
        }
    }

    /// The current rates, in sends per second, of slowed-down or suspended domains (0 while
    /// suspended), by domain; domains at their configured rate are not listed. Carries out due
    /// raises first.
    pub fn domain_rates(&self) -> Vec<(String, f64)> {
        self.prune();
        let mut rates: Vec<(String, f64)> = self
            .lock()
            .shaper
            .slowed()
            .into_iter()
            .filter_map(|(key, pace)| match key {
                Key::Domain(domain) => Some((domain, rate_now(pace))),
                Key::Push => None,
            })
            .collect();
        rates.sort_by(|a, b| a.0.cmp(&b.0));
        rates
    }

    /// The push gateway's current rate, in sends per second, while it is slowed down; `None`
    /// at its configured rate.
    pub fn push_rate(&self) -> Option<f64> {
        self.prune();
        self.lock()
            .shaper
            .slowed()
            .into_iter()
            .find_map(|(key, pace)| (key == Key::Push).then(|| rate_now(pace)))
    }

    /// Waits for `key`'s lowered rate, if it has one, and returns its limiter. The wait looks
    /// at the pace again every [`RECHECK_DIVISOR`]th of the quiet period, so sends queued
    /// behind a lowered rate move on as soon as it rises, rather than at the pace they found.
    pub(super) async fn paced(&self, key: &Key) -> Option<Arc<DefaultDirectRateLimiter>> {
        loop {
            let lowered = self.shaped(key).await?;
            tokio::select! {
                () = lowered.until_ready() => return Some(lowered),
                () = tokio::time::sleep(self.recheck) => {}
            }
        }
    }

    /// The limiter of `key`'s lowered rate, if it has one, once any suspension is over.
    pub(super) async fn shaped(&self, key: &Key) -> Option<Arc<DefaultDirectRateLimiter>> {
        loop {
            let now = Instant::now();
            let suspended_until = {
                let mut shaping = self.lock();
                let (pace, decision) = shaping.shaper.pace(key, now);
                if let Some(decision) = decision {
                    self.apply(&mut shaping, key, decision);
                }
                match pace?.suspended_until {
                    Some(until) if until > now => until,
                    _ => return shaping.lowered.get(key).cloned(),
                }
            };
            tokio::time::sleep_until(suspended_until.into()).await;
        }
    }

    /// Carries out the raises and ends of suspensions that are due, and forgets what the shaper
    /// has nothing to remember of.
    pub(super) fn recover_due(&self) {
        let mut shaping = self.lock();
        for (key, decision) in shaping.shaper.prune(Instant::now()) {
            self.apply(&mut shaping, &key, decision);
        }
    }

    /// Keys running below their configured rate (for `Debug`).
    pub(super) fn slowed_count(&self) -> usize {
        self.lock().lowered.len()
    }

    /// Carries out one decision: the limiter of the new rate, the gauge, the counter of the
    /// rule that fired, the log.
    fn apply(&self, shaping: &mut Shaping, key: &Key, decision: Decision) {
        let gauge = match decision.change {
            Change::Suspended(_) | Change::Resumed => {
                if let Key::Domain(domain) = key {
                    events::domain_suspended(domain, decision.change != Change::Resumed);
                }
                None
            }
            Change::Lowered(per_sec) | Change::Raised(per_sec) => {
                let quota = fractional_quota(per_sec);
                let limiter = DefaultDirectRateLimiter::direct(quota);
                // A new rate starts with its bucket empty: a burst of the sends queued behind
                // the old one would reach the domain at once, the way that got us slowed.
                let _ = limiter.check_n(quota.burst_size());
                shaping.lowered.insert(key.clone(), Arc::new(limiter));
                Some(per_sec)
            }
            Change::Recovered => {
                shaping.lowered.remove(key);
                Some(self.configured(key))
            }
        };
        if matches!(decision.change, Change::Lowered(_) | Change::Suspended(_)) {
            events::shaping_rule_fired(&decision.rule);
        }
        if let (Key::Domain(domain), Some(per_sec)) = (key, gauge) {
            events::domain_rate(domain, per_sec);
        }
        log_change(key, gauge, &decision);
    }

    /// The rate `key` runs at when not slowed down, in sends per second; where slowing starts
    /// and where recovery ends.
    fn ceiling(&self, key: &Key) -> f64 {
        let configured = match key {
            Key::Push => [self.rates.push_per_sec, 0],
            // A domain never went faster than the whole email channel.
            Key::Domain(domain) => [self.own_rate(domain), self.rates.email_per_sec],
        };
        let unlimited = match key {
            Key::Push => UNLIMITED_PUSH_START_PER_SEC,
            Key::Domain(_) => UNLIMITED_DOMAIN_START_PER_SEC,
        };
        configured
            .into_iter()
            .filter(|&per_sec| per_sec > 0)
            .min()
            .map_or(unlimited, f64::from)
    }

    /// The configured rate of `key` for the gauge (0 = unlimited).
    fn configured(&self, key: &Key) -> f64 {
        match key {
            Key::Domain(domain) => self.configured_domain_rate(domain),
            Key::Push => f64::from(self.rates.push_per_sec),
        }
    }

    /// A domain's configured rate, listed or `default`, in sends per second (0 = unlimited).
    fn own_rate(&self, key: &str) -> u32 {
        let domains = &self.rates.per_domain_per_sec;
        domains
            .domains
            .iter()
            .find(|(domain, _)| normalize(domain) == key)
            .map_or(domains.default, |(_, &per_sec)| per_sec)
    }

    /// The rate a domain runs at when not slowed down: its own, capped by `rate.email_per_sec`,
    /// in sends per second; 0 = unlimited.
    pub(super) fn configured_domain_rate(&self, key: &str) -> f64 {
        [self.own_rate(key), self.rates.email_per_sec]
            .into_iter()
            .filter(|&per_sec| per_sec > 0)
            .min()
            .map_or(0.0, f64::from)
    }

    fn lock(&self) -> MutexGuard<'_, Shaping> {
        self.shaping.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The rate a pace allows now: 0 while suspended.
fn rate_now(pace: Pace) -> f64 {
    if pace.suspended_until.is_some() {
        0.0
    } else {
        pace.per_sec
    }
}

/// Logs one decision, naming the rule: one event per change, with the rate per minute.
fn log_change(key: &Key, per_sec: Option<f64>, decision: &Decision) {
    let rate_per_min = per_sec.unwrap_or_default() * 60.0;
    let rule = decision.rule.as_str();
    let domain = match key {
        Key::Domain(domain) => domain.as_str(),
        Key::Push => "push",
    };
    match decision.change {
        Change::Lowered(_) => tracing::info!(
            event = "domain_rate_lowered",
            domain,
            rate_per_min,
            rule,
            "rate lowered"
        ),
        Change::Raised(_) | Change::Recovered => tracing::info!(
            event = "domain_rate_raised",
            domain,
            rate_per_min,
            recovered = decision.change == Change::Recovered,
            rule,
            "rate raised"
        ),
        Change::Suspended(until) => tracing::warn!(
            event = "domain_suspended",
            domain,
            for_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
            rule,
            "sends suspended"
        ),
        Change::Resumed => {
            tracing::info!(event = "domain_resumed", domain, rule, "suspension over")
        }
    }
}

/// The quota for a rate of `per_sec` (may be below 1) with the burst of [`burst_for`] its
/// whole part, at least 1.
fn fractional_quota(per_sec: f64) -> Quota {
    let burst = NonZeroU32::new(burst_for(per_sec as u32)).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs_f64(1.0 / per_sec).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateConfig;
    use crate::shaping::FLOOR_PER_SEC;

    #[test]
    fn lowered_rates_below_one_a_second_get_a_limiter_of_their_own() {
        let floor = fractional_quota(FLOOR_PER_SEC);
        assert_eq!(floor.replenish_interval(), Duration::from_secs(60));
        assert_eq!(floor.burst_size().get(), 1);
        let quarter = fractional_quota(0.25);
        assert_eq!(quarter.replenish_interval(), Duration::from_secs(4));
        let half_of_fifty = fractional_quota(25.0);
        assert_eq!(
            half_of_fifty.replenish_interval(),
            Duration::from_millis(40)
        );
        assert_eq!(half_of_fifty.burst_size().get(), 2);
    }

    #[test]
    fn slowing_recovers_to_the_listed_rate_capped_by_the_channel() {
        let mut rates = RateConfig {
            email_per_sec: 30,
            push_per_sec: 0,
            ..RateConfig::default()
        };
        rates.per_domain_per_sec.default = 0;
        rates.per_domain_per_sec.domains =
            [("QQ.com".to_string(), 20), ("big.example".into(), 100)].into();
        let domain = |name: &str| Key::Domain(name.to_string());
        let limits = Limits::new(&rates, Rules::default());
        assert_eq!(limits.ceiling(&domain("qq.com")), 20.0);
        assert_eq!(limits.ceiling(&domain("big.example")), 30.0);
        assert_eq!(limits.ceiling(&domain("other.example")), 30.0);
        assert_eq!(limits.ceiling(&Key::Push), UNLIMITED_PUSH_START_PER_SEC);
        rates.email_per_sec = 0;
        let limits = Limits::new(&rates, Rules::default());
        assert_eq!(
            limits.ceiling(&domain("other.example")),
            UNLIMITED_DOMAIN_START_PER_SEC
        );
    }
}
