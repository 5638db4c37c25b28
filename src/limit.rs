//! Send-rate limits of one worker process: a budget per channel and one per recipient email
//! domain, so a throttled domain waits alone while the others go on.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channel::Channel;
use crate::config::RateConfig;

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
/// Adaptive back-off (slowing a domain that answers "try later") belongs here later, as a
/// replacement for the fixed `listed` and `unlisted` limiters.
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
    /// The configuration, for `Debug`.
    rates: RateConfig,
}

impl Limits {
    /// Builds one limiter per non-zero rate of `rates`.
    pub fn new(rates: &RateConfig) -> Limits {
        let domains = &rates.per_domain_per_sec;
        Limits {
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
            rates: rates.clone(),
        }
    }

    /// Waits until one send by `channel` is within budget. For email, `domain` (the
    /// recipient's, any case) is waited for first; it is ignored for push.
    ///
    /// Cancel-safe: dropping the future before it resolves spends no budget it has not taken.
    pub async fn acquire(&self, channel: Channel, domain: Option<&str>) {
        let limiter = match channel {
            Channel::Email => {
                if let Some(domain) = domain {
                    self.acquire_domain(domain).await;
                }
                &self.email
            }
            Channel::Push => &self.push,
        };
        if let Some(limiter) = limiter {
            limiter.until_ready().await;
        }
    }

    /// Waits on this domain's own bucket only, so other domains are never held up by it.
    async fn acquire_domain(&self, domain: &str) {
        let key = normalize(domain);
        match self.listed.get(&key) {
            Some(Some(limiter)) => limiter.until_ready().await,
            Some(None) => {}
            None => {
                if let Some(unlisted) = &self.unlisted {
                    unlisted.until_key_ready(&key).await;
                }
            }
        }
    }

    /// Forgets unlisted domains whose bucket is full again (governor never forgets keys by
    /// itself). Call it every minute or so, or let [`Limits::spawn_pruner`] do it.
    pub fn prune(&self) {
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
            .finish_non_exhaustive()
    }
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
