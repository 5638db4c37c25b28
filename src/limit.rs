//! Send-rate limits of one worker process: a budget per channel and one per recipient email
//! domain, so a throttled domain waits alone while the others go on; a domain (or the push
//! gateway) that says "too fast" is slowed down, then recovers step by step.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channel::{Channel, Outcome};
use crate::config::{ConfigError, RateConfig};
use crate::events;
use crate::shaping::{Change, Decision, Key, Pace, Rules, Seen, Settings, Shaper, normalize};

/// Where slowing starts, in sends per second, for a domain that is unlimited (its rate and
/// `rate.email_per_sec` are 0): we do not know how fast it was going, and this is the shipped
/// `default` per-domain rate, a fair guess at what one domain takes.
pub const UNLIMITED_DOMAIN_START_PER_SEC: f64 = 50.0;

/// Where slowing starts, in sends per second, for an unlimited push gateway (`push_per_sec`
/// 0): the shipped `push_per_sec`.
pub const UNLIMITED_PUSH_START_PER_SEC: f64 = 1000.0;

/// A sensible period for [`Limits::spawn_pruner`]: long enough to cost nothing, short enough
/// that a campaign over millions of domains cannot grow the keyed state without bound.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The burst allowed on top of a rate of `per_sec` sends per second: a tenth of the rate, at
/// least 1 (0 for an unlimited rate).
///
/// Any window of one second then holds at most `per_sec + burst_for(per_sec)` sends: a full
/// bucket at the start, then one send per `1/per_sec` seconds.
pub const fn burst_for(per_sec: u32) -> u32 {
    if per_sec == 0 {
        0
    } else if per_sec / 10 > 1 {
        per_sec / 10
    } else {
        1
    }
}

/// The rate limits of a worker process, built from `[rate]`; share it behind an `Arc`.
///
/// Each limit is a GCRA bucket (governor) refilled at its configured rate per second, with a
/// burst of [`burst_for`] the rate; a rate of 0 builds no limiter at all (unlimited).
/// Email waits for its recipient domain's budget first, then for the email channel's, so a
/// send held up by its domain does not use channel budget other domains could spend.
///
/// Shaping by evidence: every attempt's result goes to [`Limits::observed`], and a
/// [`Shaper`] decides from the share of throttle evidence among a domain's recent attempts
/// (and from the rules) when it slows, is suspended, or recovers (see docs/shaping.md).
/// governor quotas cannot change, so a slowed-down domain gets an extra limiter at its current
/// rate, waited for before its usual one; only slowed-down domains have one.
pub struct Limits {
    /// `rate.email_per_sec`; `None` = unlimited.
    email: Option<DefaultDirectRateLimiter>,
    /// `rate.push_per_sec`; `None` = unlimited.
    push: Option<DefaultDirectRateLimiter>,
    /// Domains of `rate.per_domain_per_sec` with their own budget, lower-case; a `None` value
    /// means that domain is unlimited (it does not fall back to `default`).
    listed: HashMap<String, Option<DefaultDirectRateLimiter>>,
    /// Every other domain, one bucket each at the `default` rate; `None` = unlimited.
    unlisted: Option<DefaultKeyedRateLimiter<String>>,
    /// The shaper and the limiters of the rates it lowered.
    shaping: Mutex<Shaping>,
    /// The configuration: the rates shaping recovers to, and `Debug`.
    rates: RateConfig,
    /// How often a send waiting on a lowered rate looks whether it changed.
    recheck: Duration,
}

/// Sends waiting on a lowered rate look at it again this many times per quiet period.
const RECHECK_DIVISOR: u32 = 4;

/// The shaper's decisions, and a limiter for each rate below its ceiling.
struct Shaping {
    shaper: Shaper,
    lowered: HashMap<Key, Arc<DefaultDirectRateLimiter>>,
}

impl Limits {
    /// Builds one limiter per non-zero rate of `rates`, shaping with `rules` (none: only replies
    /// the channels read as "too fast" slow a domain) and the `rate.shaping_*` settings.
    pub fn new(rates: &RateConfig, rules: Rules) -> Limits {
        let domains = &rates.per_domain_per_sec;
        let settings = Settings {
            window: Duration::from_millis(rates.shaping_window_ms.max(1)),
            threshold: rates.shaping_threshold,
            recover_every: Duration::from_millis(rates.shaping_recover_ms.max(1)),
        };
        let limits = Limits {
            email: quota(rates.email_per_sec).map(DefaultDirectRateLimiter::direct),
            push: quota(rates.push_per_sec).map(DefaultDirectRateLimiter::direct),
            listed: domains
                .domains
                .iter()
                .map(|(domain, &per_sec)| {
                    let limiter = quota(per_sec).map(DefaultDirectRateLimiter::direct);
                    (normalize(domain), limiter)
                })
                .collect(),
            unlisted: quota(domains.default).map(DefaultKeyedRateLimiter::keyed),
            shaping: Mutex::new(Shaping {
                shaper: Shaper::new(rules, settings),
                lowered: HashMap::new(),
            }),
            rates: rates.clone(),
            recheck: settings.recover_every / RECHECK_DIVISOR,
        };
        for domain in limits.listed.keys() {
            events::domain_rate(domain, limits.configured_domain_rate(domain));
        }
        // No listed domain is named "" (nor "default"): this is the rate of the unlisted ones.
        events::domain_rate("default", limits.configured_domain_rate(""));
        limits
    }

    /// [`Limits::new`] with the shipped rules and those of `rate.shaping_file`, after checking
    /// the `rate.shaping_*` settings: a bad rule or setting is a configuration error naming
    /// the file and line, or the key.
    pub fn from_config(rates: &RateConfig) -> Result<Limits, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid(format!("  {message}"));
        if !(rates.shaping_threshold > 0.0 && rates.shaping_threshold < 1.0) {
            return Err(invalid(format!(
                "key `rate.shaping_threshold`: {} is not a share between 0 and 1 (e.g. 0.05)",
                rates.shaping_threshold
            )));
        }
        for (key, ms) in [
            ("shaping_window_ms", rates.shaping_window_ms),
            ("shaping_recover_ms", rates.shaping_recover_ms),
        ] {
            if ms == 0 {
                return Err(invalid(format!("key `rate.{key}`: must be at least 1")));
            }
        }
        let file = Some(rates.shaping_file.as_path()).filter(|p| !p.as_os_str().is_empty());
        let rules = Rules::load(file).map_err(|e| invalid(format!("rate.shaping_file: {e}")))?;
        Ok(Limits::new(rates, rules))
    }

    /// Waits until one send by `channel` is within budget. For email, `domain` (the
    /// recipient's, any case) is waited for first; it is ignored for push.
    ///
    /// A suspended domain waits out its suspension; a lowered rate is waited for before the
    /// channel's budget, and — if it changed while this send was already waiting — once more
    /// at the end, so sends queued before a slowing are paced by the lowered rate too.
    ///
    /// Cancel-safe: dropping the future before it resolves spends no budget it has not taken.
    pub async fn acquire(&self, channel: Channel, domain: Option<&str>) {
        let key = key(channel, domain);
        if let (Channel::Email, Some(Key::Domain(domain))) = (channel, &key) {
            // This domain's configured bucket only, so other domains are never held up by it.
            match self.listed.get(domain) {
                Some(Some(limiter)) => limiter.until_ready().await,
                Some(None) => {}
                None => {
                    if let Some(unlisted) = &self.unlisted {
                        unlisted.until_key_ready(domain).await;
                    }
                }
            }
        }
        let lowered_before = match &key {
            Some(key) => self.paced(key).await,
            None => None,
        };
        let limiter = match channel {
            Channel::Email => &self.email,
            Channel::Push => &self.push,
        };
        if let Some(limiter) = limiter {
            limiter.until_ready().await;
        }
        if let Some(key) = &key
            && let Some(lowered) = self.shaped(key).await
            && !lowered_before.is_some_and(|before| Arc::ptr_eq(&before, &lowered))
        {
            self.paced(key).await;
        }
    }

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

    /// Forgets unlisted domains whose bucket is full again (governor never forgets keys by
    /// itself), and domains the shaper has nothing to remember of. Call it every minute or so,
    /// or let [`Limits::spawn_pruner`] do it. It also carries out raises and ends of
    /// suspensions that are due, so domains that no longer send recover too.
    pub fn prune(&self) {
        let mut shaping = self.lock();
        for (key, decision) in shaping.shaper.prune(Instant::now()) {
            self.apply(&mut shaping, &key, decision);
        }
        drop(shaping);
        if let Some(unlisted) = &self.unlisted {
            unlisted.retain_recent();
            unlisted.shrink_to_fit();
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
    async fn paced(&self, key: &Key) -> Option<Arc<DefaultDirectRateLimiter>> {
        loop {
            let lowered = self.shaped(key).await?;
            tokio::select! {
                () = lowered.until_ready() => return Some(lowered),
                () = tokio::time::sleep(self.recheck) => {}
            }
        }
    }

    /// The limiter of `key`'s lowered rate, if it has one, once any suspension is over.
    async fn shaped(&self, key: &Key) -> Option<Arc<DefaultDirectRateLimiter>> {
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
    fn configured_domain_rate(&self, key: &str) -> f64 {
        [self.own_rate(key), self.rates.email_per_sec]
            .into_iter()
            .filter(|&per_sec| per_sec > 0)
            .min()
            .map_or(0.0, f64::from)
    }

    fn lock(&self) -> MutexGuard<'_, Shaping> {
        self.shaping.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Unlisted domains currently remembered (a gauge for metrics; an estimate under load).
    pub fn tracked_domains(&self) -> usize {
        self.unlisted.as_ref().map_or(0, |unlisted| unlisted.len())
    }

    /// Runs [`Limits::prune`] every `every` (at least 1 ms) until `shutdown` is cancelled or
    /// the last other `Arc` to these limits is dropped.
    pub fn spawn_pruner(
        self: &Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        // A weak reference: the pruner must not keep the limits alive on its own.
        let limits: Weak<Limits> = Arc::downgrade(self);
        let every = every.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => match limits.upgrade() {
                        Some(limits) => limits.prune(),
                        None => return,
                    },
                }
            }
        })
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("rates", &self.rates)
            .field("tracked_domains", &self.tracked_domains())
            .field("slowed", &self.lock().lowered.len())
            .finish_non_exhaustive()
    }
}

/// What `channel`'s sends to `domain` are shaped as: the gateway for push, the normalized
/// domain for email (nothing without one).
fn key(channel: Channel, domain: Option<&str>) -> Option<Key> {
    match (channel, domain) {
        (Channel::Push, _) => Some(Key::Push),
        (Channel::Email, Some(domain)) => Some(Key::Domain(normalize(domain))),
        (Channel::Email, None) => None,
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

/// The quota for `per_sec` with the burst of [`burst_for`]; `None` for 0 (unlimited).
fn quota(per_sec: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst_for(per_sec))?;
    Some(Quota::per_second(rate).allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::FLOOR_PER_SEC;

    #[test]
    fn the_burst_is_a_tenth_of_the_rate_and_at_least_one() {
        assert_eq!(burst_for(0), 0);
        assert_eq!(burst_for(1), 1);
        assert_eq!(burst_for(19), 1);
        assert_eq!(burst_for(20), 2);
        assert_eq!(burst_for(1000), 100);
    }

    #[test]
    fn zero_builds_no_limiter() {
        assert!(quota(0).is_none());
        let quota = quota(20).expect("a quota");
        assert_eq!(quota.burst_size().get(), 2);
        assert_eq!(quota.replenish_interval(), Duration::from_millis(50));
    }

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

    #[test]
    fn listed_domains_are_matched_without_case() {
        let mut rates = RateConfig::default();
        rates.per_domain_per_sec.domains = [("QQ.com".to_string(), 0)].into();
        let limits = Limits::new(&rates, Rules::default());
        assert!(matches!(
            limits.listed.get(&normalize("qq.COM.")),
            Some(None)
        ));
    }
}
