//! A circuit breaker per channel: after `worker.breaker_after` sends in a row find the relay
//! or gateway unreachable (connect refused or timed out, TLS handshake failed, no greeting),
//! the channel's sends are held rather than tried, and one send every
//! `worker.breaker_probe_ms` probes the transport; the first answer of any kind closes it.
//! Only the transport's silence counts: a reply, even a refusal, is an answer.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::channel::{Channel, Outcome};
use crate::config::{ConfigError, WorkerConfig};
use crate::events;

/// How often an open breaker says again that its transport is still unreachable.
const REMIND_EVERY: Duration = Duration::from_secs(30);

/// When a breaker opens and how often it probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Unreachable sends in a row that open the breaker; 0 never opens it.
    pub after: u32,
    /// The least time between two probes of an open breaker.
    pub probe_every: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            after: 5,
            probe_every: Duration::from_secs(5),
        }
    }
}

impl BreakerPolicy {
    /// `worker.breaker_after` and `worker.breaker_probe_ms`.
    pub fn from_config(config: &WorkerConfig) -> Result<BreakerPolicy, ConfigError> {
        if config.breaker_probe_ms == 0 {
            return Err(ConfigError::Invalid(
                "  key `worker.breaker_probe_ms`: must be at least 1 (default 5000)".into(),
            ));
        }
        Ok(BreakerPolicy {
            after: config.breaker_after,
            probe_every: Duration::from_millis(config.breaker_probe_ms),
        })
    }
}

/// An open breaker, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBreaker {
    /// The channel whose sends are held.
    pub channel: Channel,
    /// The last unreachable send's reason.
    pub cause: String,
    /// How long it has been open.
    pub open_for: Duration,
}

/// The breakers of both channels. Shared by every batch of a process.
#[derive(Debug)]
pub struct Breakers {
    policy: BreakerPolicy,
    states: Mutex<[State; 2]>,
}

#[derive(Debug)]
enum State {
    Closed { unreachable: u32 },
    Open(Open),
}

#[derive(Debug)]
struct Open {
    since: Instant,
    cause: String,
    next_probe: Instant,
    /// The probe in flight, by number.
    probe: Option<u64>,
    probes: u64,
    reminded: Instant,
}

/// Whether a send may start.
pub(super) enum Gate<'a> {
    /// Yes; as the probe of an open breaker when there is one.
    Go(Option<Probe<'a>>),
    /// No: the breaker is open; the reason names its cause.
    Hold(String),
}

/// The one send that probes an open breaker; dropped without an answer (held by the ledger,
/// past the deadline), it lets the next send probe.
pub(super) struct Probe<'a> {
    breakers: &'a Breakers,
    channel: Channel,
    number: u64,
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let mut states = self.breakers.lock();
        if let State::Open(open) = &mut states[index(self.channel)]
            && open.probe == Some(self.number)
        {
            open.probe = None;
        }
    }
}

impl Breakers {
    /// Closed breakers that open and probe as `policy` says.
    pub fn new(policy: BreakerPolicy) -> Breakers {
        Breakers {
            policy,
            states: Mutex::new([
                State::Closed { unreachable: 0 },
                State::Closed { unreachable: 0 },
            ]),
        }
    }

    /// Whether breakers never open (`worker.breaker_after = 0`).
    pub(super) fn off(&self) -> bool {
        self.policy.after == 0
    }

    /// The breakers open now.
    pub fn open(&self) -> Vec<OpenBreaker> {
        let states = self.lock();
        Channel::ALL
            .into_iter()
            .filter_map(|channel| match &states[index(channel)] {
                State::Open(open) => Some(OpenBreaker {
                    channel,
                    cause: open.cause.clone(),
                    open_for: open.since.elapsed(),
                }),
                State::Closed { .. } => None,
            })
            .collect()
    }

    /// Whether a send on `channel` may start now: always while the breaker is closed; while it
    /// is open, one send per probe interval, as the probe.
    pub(super) fn gate(&self, channel: Channel) -> Gate<'_> {
        let mut states = self.lock();
        let State::Open(open) = &mut states[index(channel)] else {
            return Gate::Go(None);
        };
        let now = Instant::now();
        if open.probe.is_some() || now < open.next_probe {
            return Gate::Hold(format!("{channel} breaker open: {}", open.cause));
        }
        open.probes += 1;
        open.probe = Some(open.probes);
        open.next_probe = now + self.policy.probe_every;
        Gate::Go(Some(Probe {
            breakers: self,
            channel,
            number: open.probes,
        }))
    }

    /// Counts a send's outcome: unreachable ones in a row open the breaker; any answer closes it.
    pub(super) fn record(&self, channel: Channel, outcome: &Outcome) {
        if self.off() {
            return;
        }
        let mut states = self.lock();
        let slot = &mut states[index(channel)];
        let next = match (&mut *slot, outcome) {
            (State::Closed { unreachable }, Outcome::Unreachable { reason }) => {
                *unreachable += 1;
                (*unreachable >= self.policy.after).then(|| {
                    events::breaker_opened(channel, reason, self.policy.probe_every);
                    let now = Instant::now();
                    State::Open(Open {
                        since: now,
                        cause: reason.clone(),
                        next_probe: now + self.policy.probe_every,
                        probe: None,
                        probes: 0,
                        reminded: now,
                    })
                })
            }
            (State::Closed { unreachable }, _) => {
                *unreachable = 0;
                None
            }
            (State::Open(open), Outcome::Unreachable { reason }) => {
                open.cause.clone_from(reason);
                if open.reminded.elapsed() >= REMIND_EVERY {
                    open.reminded = Instant::now();
                    events::breaker_still_open(
                        channel,
                        reason,
                        open.since.elapsed(),
                        self.policy.probe_every,
                    );
                }
                None
            }
            (State::Open(open), _) => {
                events::breaker_closed(channel, open.since.elapsed());
                Some(State::Closed { unreachable: 0 })
            }
        };
        if let Some(next) = next {
            *slot = next;
        }
    }

    fn lock(&self) -> MutexGuard<'_, [State; 2]> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn index(channel: Channel) -> usize {
    match channel {
        Channel::Email => 0,
        Channel::Push => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(after: u32, probe_every: Duration) -> Breakers {
        Breakers::new(BreakerPolicy { after, probe_every })
    }

    fn refused() -> Outcome {
        Outcome::unreachable("SMTP relay 127.0.0.1:9 unreachable: connection refused")
    }

    #[test]
    fn unreachable_sends_in_a_row_open_it_and_any_answer_closes_it() {
        let breakers = breakers(3, Duration::ZERO);
        for outcome in [refused(), refused(), Outcome::permanent("550 no such user")] {
            breakers.record(Channel::Email, &outcome);
        }
        assert!(breakers.open().is_empty(), "a reply breaks the row");
        for _ in 0..3 {
            breakers.record(Channel::Email, &refused());
        }
        let open = breakers.open();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].channel, Channel::Email);
        assert!(open[0].cause.contains("connection refused"));
        assert!(matches!(breakers.gate(Channel::Push), Gate::Go(None)));
        breakers.record(Channel::Email, &Outcome::transient("451 try later"));
        assert!(breakers.open().is_empty());
    }

    #[test]
    fn an_open_breaker_lets_one_probe_through_per_interval() {
        let breakers = breakers(1, Duration::from_secs(3600));
        breakers.record(Channel::Push, &refused());
        assert!(matches!(breakers.gate(Channel::Push), Gate::Hold(_)));
        let breakers = breakers_open_now();
        let probe = breakers.gate(Channel::Email);
        assert!(matches!(probe, Gate::Go(Some(_))));
        assert!(
            matches!(breakers.gate(Channel::Email), Gate::Hold(_)),
            "one probe at a time"
        );
        drop(probe);
        assert!(
            matches!(breakers.gate(Channel::Email), Gate::Go(Some(_))),
            "a probe dropped unanswered lets the next send probe"
        );
    }

    fn breakers_open_now() -> Breakers {
        let breakers = breakers(1, Duration::ZERO);
        breakers.record(Channel::Email, &refused());
        breakers
    }

    #[test]
    fn zero_never_opens_it() {
        let breakers = breakers(0, Duration::ZERO);
        for _ in 0..100 {
            breakers.record(Channel::Email, &refused());
        }
        assert!(breakers.open().is_empty());
    }
}
