//! Send-rate limits of one worker process: a budget per channel and one per recipient email
//! domain, so a throttled domain waits alone while the others go on; a domain (or the push
//! gateway) that says "too fast" is slowed down, then recovers step by step.

mod slowing;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channel::Channel;
use crate::config::{ConfigError, RateConfig};
use crate::events;
use crate::shaping::{Key, Rules, Settings, normalize};
use slowing::Shaping;

pub use slowing::{UNLIMITED_DOMAIN_START_PER_SEC, UNLIMITED_PUSH_START_PER_SEC};

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
/// [`Shaper`](crate::shaping::Shaper) decides from the share of throttle evidence among a domain's recent attempts
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
            shaping: Mutex::new(Shaping::new(rules, settings)),
            rates: rates.clone(),
            recheck: slowing::recheck_every(&settings),
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

    /// Forgets unlisted domains whose bucket is full again (governor never forgets keys by
    /// itself), and domains the shaper has nothing to remember of. Call it every minute or so,
    /// or let [`Limits::spawn_pruner`] do it. It also carries out raises and ends of
    /// suspensions that are due, so domains that no longer send recover too.
    pub fn prune(&self) {
        self.recover_due();
        if let Some(unlisted) = &self.unlisted {
            unlisted.retain_recent();
            unlisted.shrink_to_fit();
        }
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
            .field("slowed", &self.slowed_count())
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

/// The quota for `per_sec` with the burst of [`burst_for`]; `None` for 0 (unlimited).
fn quota(per_sec: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst_for(per_sec))?;
    Some(Quota::per_second(rate).allow_burst(burst))
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
