//! Send-rate limits of one worker process: a budget per channel and one per recipient email
//! domain, so a throttled domain waits alone while the others go on; a domain (or the push
//! gateway) that says "too fast" is slowed down, then recovers step by step.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channel::Channel;
use crate::config::RateConfig;
use crate::events;

/// How long a slowed-down domain (or push gateway) must go without a throttle signal before its
/// rate doubles; each further quiet period doubles it again, up to the configured rate.
pub const QUIET_PERIOD: Duration = Duration::from_secs(30);

/// The lowest rate back-off goes down to, in sends per second: one a minute.
pub const FLOOR_PER_SEC: f64 = 1.0 / 60.0;

/// Where back-off starts, in sends per second, for a domain that is unlimited (its rate and
/// `rate.email_per_sec` are 0): we do not know how fast it was going, and this is the shipped
/// `default` per-domain rate, a fair guess at what one domain takes.
pub const UNLIMITED_DOMAIN_START_PER_SEC: f64 = 50.0;

/// Where back-off starts, in sends per second, for an unlimited push gateway (`push_per_sec`
/// 0): the shipped `push_per_sec`.
pub const UNLIMITED_PUSH_START_PER_SEC: f64 = 1000.0;

/// Throttle signals less than this fraction of the quiet period after a lowering (1 s of the
/// default 30 s) are the same episode, not a new one: they are the replies to sends already in
/// flight at the old rate, and must not halve the rate once each.
const SETTLE_DIVISOR: u32 = 30;

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
/// Adaptive back-off: [`Limits::throttled`] halves the rate of a domain (or of push) that said
/// we are too fast, down to [`FLOOR_PER_SEC`]; after each [`QUIET_PERIOD`] without another such
/// signal the rate doubles, until it is back at the configured rate. governor quotas cannot
/// change, so a slowed-down domain gets an extra limiter at its current rate, waited for before
/// its usual one; only slowed-down domains have one, and only until they have recovered.
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
    /// Lowered rates of slowed-down domains and push; empty when nothing is slowed down.
    overrides: RwLock<Overrides>,
    /// How long without a throttle signal before a lowered rate doubles.
    quiet: Duration,
    /// The configuration: the rates back-off recovers to, and `Debug`.
    rates: RateConfig,
}

impl Limits {
    /// Builds one limiter per non-zero rate of `rates`; lowered rates recover after
    /// [`QUIET_PERIOD`].
    pub fn new(rates: &RateConfig) -> Limits {
        Limits::with_recovery(rates, QUIET_PERIOD)
    }

    /// Like [`Limits::new`], with lowered rates doubling after every `quiet` (at least 1 ms)
    /// without a throttle signal instead of [`QUIET_PERIOD`]; for tests.
    pub fn with_recovery(rates: &RateConfig, quiet: Duration) -> Limits {
        let domains = &rates.per_domain_per_sec;
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
            overrides: RwLock::default(),
            quiet: quiet.max(Duration::from_millis(1)),
            rates: rates.clone(),
        };
        for domain in limits.listed.keys() {
            events::domain_rate(domain, limits.configured_domain_rate(domain));
        }
        // No listed domain is named "" (nor "default"): this is the rate of the unlisted ones.
        events::domain_rate("default", limits.configured_domain_rate(""));
        limits
    }

    /// Waits until one send by `channel` is within budget. For email, `domain` (the
    /// recipient's, any case) is waited for first; it is ignored for push.
    ///
    /// A lowered (throttled) rate is waited for before the channel's budget, and — if the
    /// throttle arrived while this send was already waiting — once more at the end, so sends
    /// queued before a throttling reply are paced by the lowered rate too.
    ///
    /// Cancel-safe: dropping the future before it resolves spends no budget it has not taken.
    pub async fn acquire(&self, channel: Channel, domain: Option<&str>) {
        let key = domain.map(normalize);
        let target = match (channel, &key) {
            (Channel::Email, Some(key)) => Some(Target::Domain(key)),
            (Channel::Email, None) => None,
            (Channel::Push, _) => Some(Target::Push),
        };
        if let (Channel::Email, Some(key)) = (channel, &key) {
            // This domain's configured bucket only, so other domains are never held up by it.
            match self.listed.get(key) {
                Some(Some(limiter)) => limiter.until_ready().await,
                Some(None) => {}
                None => {
                    if let Some(unlisted) = &self.unlisted {
                        unlisted.until_key_ready(key).await;
                    }
                }
            }
        }
        let lowered_before = target.and_then(|t| self.lowered(t));
        if let Some(lowered) = &lowered_before {
            lowered.until_ready().await;
        }
        let limiter = match channel {
            Channel::Email => &self.email,
            Channel::Push => &self.push,
        };
        if let Some(limiter) = limiter {
            limiter.until_ready().await;
        }
        let lowered_after = target.and_then(|t| self.lowered(t));
        if let Some(lowered) = lowered_after
            && !lowered_before.is_some_and(|before| Arc::ptr_eq(&before, &lowered))
        {
            lowered.until_ready().await;
        }
    }

    /// Forgets unlisted domains whose bucket is full again (governor never forgets keys by
    /// itself). Call it every minute or so, or let [`Limits::spawn_pruner`] do it.
    ///
    /// It also raises lowered rates whose quiet period is over, so domains that no longer send
    /// leave the back-off map too.
    pub fn prune(&self) {
        self.recover_all();
        if let Some(unlisted) = &self.unlisted {
            unlisted.retain_recent();
            unlisted.shrink_to_fit();
        }
    }

    /// Reports that a send by `channel` to `domain` was told to slow down (an
    /// [`Outcome::Transient`](crate::channel::Outcome::Transient) with `throttled`).
    ///
    /// For email, that domain's rate halves (from its lowered rate, or else from its configured
    /// one, listed or `default`, capped by `rate.email_per_sec`; from
    /// [`UNLIMITED_DOMAIN_START_PER_SEC`] when all are unlimited), down to [`FLOOR_PER_SEC`];
    /// other domains keep their pace. For push, the whole gateway's rate halves the same way
    /// (from `push_per_sec`, or [`UNLIMITED_PUSH_START_PER_SEC`]). Email without a domain is
    /// ignored. Signals within a thirtieth of the quiet period after a lowering are replies to
    /// sends made before it, and do not lower again. Every signal restarts the quiet period.
    pub fn throttled(&self, channel: Channel, domain: Option<&str>) {
        let key;
        let target = match (channel, domain) {
            (Channel::Push, _) => Target::Push,
            (Channel::Email, Some(domain)) => {
                key = normalize(domain);
                Target::Domain(&key)
            }
            (Channel::Email, None) => return,
        };
        let now = Instant::now();
        let mut overrides = self.write_overrides();
        self.recover(&mut overrides, target, now);
        let lowered = match overrides.get_mut(target) {
            Some(current) => {
                current.quiet_since = now;
                let settling =
                    now.saturating_duration_since(current.lowered_at) < self.quiet / SETTLE_DIVISOR;
                if settling || current.per_sec <= FLOOR_PER_SEC {
                    return;
                }
                current.set_rate((current.per_sec / 2.0).max(FLOOR_PER_SEC));
                current.lowered_at = now;
                current.per_sec
            }
            None => {
                let ceiling = self.ceiling(target);
                let lowered = Override::new((ceiling / 2.0).max(FLOOR_PER_SEC), ceiling, now);
                let per_sec = lowered.per_sec;
                overrides.insert(target, lowered);
                per_sec
            }
        };
        drop(overrides);
        self.changed(target, lowered, Change::Lowered);
    }

    /// The current rates, in sends per second, of the domains slowed down by
    /// [`Limits::throttled`], by domain; domains at their configured rate are not listed.
    /// Raises rates whose quiet period is over first.
    pub fn domain_rates(&self) -> Vec<(String, f64)> {
        self.recover_all();
        let overrides = self.read_overrides();
        let mut rates: Vec<(String, f64)> = overrides
            .domains
            .iter()
            .map(|(domain, lowered)| (domain.clone(), lowered.per_sec))
            .collect();
        rates.sort_by(|a, b| a.0.cmp(&b.0));
        rates
    }

    /// The push gateway's current rate, in sends per second, while it is slowed down by
    /// [`Limits::throttled`]; `None` at its configured rate.
    pub fn push_rate(&self) -> Option<f64> {
        self.recover_all();
        self.read_overrides()
            .push
            .as_ref()
            .map(|lowered| lowered.per_sec)
    }

    /// The limiter of `target`'s lowered rate, if it has one, after raising it for any quiet
    /// periods that have passed.
    fn lowered(&self, target: Target<'_>) -> Option<Arc<DefaultDirectRateLimiter>> {
        let now = Instant::now();
        {
            // The common case (nothing due) takes only the shared lock.
            let overrides = self.read_overrides();
            let current = overrides.get(target)?;
            if current.due_steps(now, self.quiet) == 0 {
                return Some(Arc::clone(&current.limiter));
            }
        }
        let mut overrides = self.write_overrides();
        self.recover(&mut overrides, target, now);
        overrides
            .get(target)
            .map(|current| Arc::clone(&current.limiter))
    }

    /// Doubles `target`'s lowered rate once per quiet period passed since its last throttle
    /// signal or raise; forgets it once back at its ceiling (never above it).
    fn recover(&self, overrides: &mut Overrides, target: Target<'_>, now: Instant) {
        let Some(current) = overrides.get_mut(target) else {
            return;
        };
        let steps = current.due_steps(now, self.quiet);
        if steps == 0 {
            return;
        }
        let raised = current.per_sec * 2f64.powi(steps.min(64) as i32);
        if raised >= current.ceiling {
            let ceiling = current.ceiling;
            overrides.remove(target);
            self.changed(target, ceiling, Change::Recovered);
        } else {
            current.set_rate(raised);
            current.quiet_since += self.quiet * steps;
            self.changed(target, raised, Change::Raised);
        }
    }

    /// [`Limits::recover`] for every lowered rate.
    fn recover_all(&self) {
        let now = Instant::now();
        let mut overrides = self.write_overrides();
        let domains: Vec<String> = overrides.domains.keys().cloned().collect();
        for domain in &domains {
            self.recover(&mut overrides, Target::Domain(domain), now);
        }
        self.recover(&mut overrides, Target::Push, now);
    }

    /// The rate `target` runs at when not slowed down, in sends per second; where back-off
    /// starts and where recovery ends.
    fn ceiling(&self, target: Target<'_>) -> f64 {
        let configured = match target {
            Target::Push => [self.rates.push_per_sec, 0],
            // A domain never went faster than the whole email channel.
            Target::Domain(key) => [self.own_rate(key), self.rates.email_per_sec],
        };
        let unlimited = match target {
            Target::Push => UNLIMITED_PUSH_START_PER_SEC,
            Target::Domain(_) => UNLIMITED_DOMAIN_START_PER_SEC,
        };
        configured
            .into_iter()
            .filter(|&per_sec| per_sec > 0)
            .min()
            .map_or(unlimited, f64::from)
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

    /// Logs a rate change and, for a domain, sets its `sunset_domain_rate` gauge (back to its
    /// configured rate once recovered).
    fn changed(&self, target: Target<'_>, per_sec: f64, change: Change) {
        log_change(target, per_sec, change);
        if let Target::Domain(domain) = target {
            let now = match change {
                Change::Recovered => self.configured_domain_rate(domain),
                Change::Lowered | Change::Raised => per_sec,
            };
            events::domain_rate(domain, now);
        }
    }

    fn read_overrides(&self) -> std::sync::RwLockReadGuard<'_, Overrides> {
        self.overrides
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_overrides(&self) -> std::sync::RwLockWriteGuard<'_, Overrides> {
        self.overrides
            .write()
            .unwrap_or_else(PoisonError::into_inner)
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
            .field("slowed_domains", &self.read_overrides().domains.len())
            .finish_non_exhaustive()
    }
}

/// What a lowered rate applies to.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// The whole push gateway.
    Push,
    /// One recipient email domain, normalized.
    Domain(&'a str),
}

/// The lowered rates in force.
#[derive(Default)]
struct Overrides {
    /// The push gateway's, if it is slowed down.
    push: Option<Override>,
    /// Each slowed-down domain's, by normalized domain.
    domains: HashMap<String, Override>,
}

impl Overrides {
    fn get(&self, target: Target<'_>) -> Option<&Override> {
        match target {
            Target::Push => self.push.as_ref(),
            Target::Domain(key) => self.domains.get(key),
        }
    }

    fn get_mut(&mut self, target: Target<'_>) -> Option<&mut Override> {
        match target {
            Target::Push => self.push.as_mut(),
            Target::Domain(key) => self.domains.get_mut(key),
        }
    }

    fn insert(&mut self, target: Target<'_>, lowered: Override) {
        match target {
            Target::Push => self.push = Some(lowered),
            Target::Domain(key) => {
                self.domains.insert(key.to_string(), lowered);
            }
        }
    }

    fn remove(&mut self, target: Target<'_>) {
        match target {
            Target::Push => self.push = None,
            Target::Domain(key) => {
                self.domains.remove(key);
            }
        }
    }
}

/// A rate below the configured one, with a limiter built for it (governor quotas are fixed).
struct Override {
    /// Sends per second, at least [`FLOOR_PER_SEC`], below `ceiling`.
    per_sec: f64,
    /// The rate it recovers to (see [`Limits::ceiling`]).
    ceiling: f64,
    /// Paces sends at `per_sec`; shared with sends waiting on it.
    limiter: Arc<DefaultDirectRateLimiter>,
    /// The last lowering: signals soon after it belong to the same episode.
    lowered_at: Instant,
    /// The last throttle signal or raise: recovery counts quiet periods from here.
    quiet_since: Instant,
}

impl Override {
    fn new(per_sec: f64, ceiling: f64, now: Instant) -> Override {
        Override {
            per_sec,
            ceiling,
            limiter: Arc::new(DefaultDirectRateLimiter::direct(fractional_quota(per_sec))),
            lowered_at: now,
            quiet_since: now,
        }
    }

    /// Replaces the limiter by one at `per_sec`. Sends already waiting on the old one keep
    /// its pace; there are at most `worker.concurrency` of them.
    fn set_rate(&mut self, per_sec: f64) {
        self.per_sec = per_sec;
        self.limiter = Arc::new(DefaultDirectRateLimiter::direct(fractional_quota(per_sec)));
    }

    /// Whole quiet periods since the last signal or raise.
    fn due_steps(&self, now: Instant, quiet: Duration) -> u32 {
        let quiet_for = now.saturating_duration_since(self.quiet_since);
        u32::try_from(quiet_for.as_nanos() / quiet.as_nanos().max(1)).unwrap_or(u32::MAX)
    }
}

/// How a rate changed, for the log.
#[derive(Debug, Clone, Copy)]
enum Change {
    Lowered,
    Raised,
    /// Raised back to the configured rate: no longer slowed down.
    Recovered,
}

/// Logs one rate change: one event per change, with the new rate per minute.
fn log_change(target: Target<'_>, per_sec: f64, change: Change) {
    let rate_per_min = per_sec * 60.0;
    let recovered = matches!(change, Change::Recovered);
    match (target, change) {
        (Target::Domain(domain), Change::Lowered) => tracing::info!(
            event = "domain_rate_lowered",
            domain,
            rate_per_min,
            "domain rate lowered"
        ),
        (Target::Domain(domain), Change::Raised | Change::Recovered) => tracing::info!(
            event = "domain_rate_raised",
            domain,
            rate_per_min,
            recovered,
            "domain rate raised"
        ),
        (Target::Push, Change::Lowered) => {
            tracing::info!(
                event = "push_rate_lowered",
                rate_per_min,
                "push rate lowered"
            )
        }
        (Target::Push, Change::Raised | Change::Recovered) => tracing::info!(
            event = "push_rate_raised",
            rate_per_min,
            recovered,
            "push rate raised"
        ),
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

/// Domains compare without case and without a trailing root dot.
fn normalize(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn back_off_recovers_to_the_listed_rate_capped_by_the_channel() {
        let mut rates = RateConfig {
            email_per_sec: 30,
            push_per_sec: 0,
            ..RateConfig::default()
        };
        rates.per_domain_per_sec.default = 0;
        rates.per_domain_per_sec.domains =
            [("QQ.com".to_string(), 20), ("big.example".into(), 100)].into();
        let limits = Limits::new(&rates);
        assert_eq!(limits.ceiling(Target::Domain("qq.com")), 20.0);
        assert_eq!(limits.ceiling(Target::Domain("big.example")), 30.0);
        assert_eq!(limits.ceiling(Target::Domain("other.example")), 30.0);
        assert_eq!(limits.ceiling(Target::Push), UNLIMITED_PUSH_START_PER_SEC);
        rates.email_per_sec = 0;
        let limits = Limits::new(&rates);
        assert_eq!(
            limits.ceiling(Target::Domain("other.example")),
            UNLIMITED_DOMAIN_START_PER_SEC
        );
    }

    #[test]
    fn quiet_periods_are_counted_whole() {
        let now = Instant::now();
        let lowered = Override::new(1.0, 20.0, now);
        let quiet = Duration::from_secs(30);
        assert_eq!(lowered.due_steps(now, quiet), 0);
        assert_eq!(lowered.due_steps(now + Duration::from_secs(29), quiet), 0);
        assert_eq!(lowered.due_steps(now + Duration::from_secs(30), quiet), 1);
        assert_eq!(lowered.due_steps(now + Duration::from_secs(95), quiet), 3);
    }

    #[test]
    fn listed_domains_are_matched_without_case() {
        let mut rates = RateConfig::default();
        rates.per_domain_per_sec.domains = [("QQ.com".to_string(), 0)].into();
        let limits = Limits::new(&rates);
        assert!(matches!(
            limits.listed.get(&normalize("qq.COM.")),
            Some(None)
        ));
    }
}
