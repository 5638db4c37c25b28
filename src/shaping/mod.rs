//! Shaping by evidence: the pure decisions behind a domain's (or the push gateway's) pace —
//! replies in, rate changes out, with time passed in so every rule is testable without waiting.

mod rules;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use rules::{Action, DEFAULT_SUSPENSION, Rule, Rules, RulesError, Scope};

/// The lowest rate slowing goes down to, in sends per second: one a minute.
pub const FLOOR_PER_SEC: f64 = 1.0 / 60.0;

/// The step of a `slow` rule without its own `factor`, and of replies no rule matched, while
/// there is no measure of what the domain accepts: a bounded step (30 %), so one episode of
/// evidence cannot collapse a domain.
pub const DEFAULT_STEP: f64 = 0.7;

/// The deepest single step of a `slow` rule whose own step is gentler: when most attempts are
/// refused, the rate drops by the refused share, or to what the domain accepted, but never
/// below half at once.
pub const DEEPEST_STEP: f64 = 0.5;

/// How long a rate runs before it is judged on what the domain accepted at it, and the least
/// time from a lowering or a raise to the next lowering: just after a change, the replies answer sends paced by the old
/// rate and meet a provider's bucket emptied by it, so they say little about the new rate;
/// half a second outlasts them on a loaded machine and bounds what a too-high rate costs.
pub const HOLD_OFF: Duration = Duration::from_millis(500);

/// A measured lowering sets the rate to this share of what the domain accepted, and at least
/// this far below the current rate: the margin lets the provider's bucket refill, so the next
/// refusals come from probing, not from running at its very limit.
pub const BACKOFF: f64 = 0.9;

/// Each quiet period (`rate.shaping_recover_ms`) near a recent lowering adds this share of the
/// rate the domain was lowered to: a linear probe back up to the provider's limit, so the rate
/// settles just under it instead of overshooting by a growing factor.
pub const PROBE: f64 = 0.1;

/// Each quiet period once a whole window has passed without evidence multiplies the rate by
/// this instead: the limit found earlier no longer holds, and even the floor is back at 50/s
/// in about 40 quiet periods.
pub const RAISE: f64 = 1.25;

/// Evidence needed in the window before a domain slows, whatever the share: two replies are
/// not a trend.
pub const MIN_EVIDENCE: usize = 3;

/// Attempts at the current rate needed before it is judged again: the first replies after a
/// change meet a provider whose own bucket is still empty from the old rate.
pub const MIN_ATTEMPTS: usize = 10;

/// A domain that sends fewer attempts than this in a window is judged on its last this many
/// attempts instead, so a slow domain still gathers enough to decide.
const KEEP_LAST: usize = 20;

/// The rule name of replies no rule matched that say we are too fast (SMTP) or HTTP 429.
pub const RATE_WORDING: &str = "rate-wording";

/// `[rate]`'s shaping settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How far back evidence counts.
    pub window: Duration,
    /// The share of a domain's attempts in the window that, as throttle evidence, slows it.
    pub threshold: f64,
    /// Quiet (no evidence, no change) before each raise.
    pub recover_every: Duration,
}

/// What a lowered rate applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// The whole push gateway.
    Push,
    /// One recipient email domain, normalized.
    Domain(String),
}

/// One attempt's result, as far as pace is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// Anything but a transient failure: delivered, permanent, unknown.
    Attempt,
    /// A transient failure: "CODE TEXT" of the reply, whether the channel read it as "too
    /// fast", and the wait it asked for.
    Deferred {
        text: &'a str,
        throttled: bool,
        retry_after: Option<Duration>,
    },
}

/// A change of pace, for the limiter, the gauge and the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Slowed to this many sends per second.
    Lowered(f64),
    /// Raised to this many, still below the ceiling.
    Raised(f64),
    /// Back at the ceiling: no longer slowed.
    Recovered,
    /// No sends until then.
    Suspended(Instant),
    /// A suspension ended; the rate is what it was (see [`Shaper::pace`]).
    Resumed,
}

/// A change and the rule behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The rule that fired (or [`RATE_WORDING`]); for raises, the one that last slowed it.
    pub rule: String,
    /// What changed.
    pub change: Change,
}

/// The pace of one domain (or the gateway) as the shaper sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Sends per second now; below the ceiling while slowed.
    pub per_sec: f64,
    /// Whether it is below its ceiling.
    pub slowed: bool,
    /// No sends before this.
    pub suspended_until: Option<Instant>,
}

/// Decides, from the evidence of replies, when a domain slows, for how long it is suspended,
/// and when it recovers. Pure: callers pass the time.
#[derive(Debug)]
pub struct Shaper {
    rules: Rules,
    settings: Settings,
    domains: HashMap<Key, State>,
}

/// What the shaper remembers of one key.
#[derive(Debug)]
struct State {
    /// The rate it recovers to.
    ceiling: f64,
    /// The rate now.
    per_sec: f64,
    /// The rate of the last lowering: what the domain was last seen to take; the unit of the
    /// linear probe.
    taken: f64,
    /// Recent attempts and whether each was throttle evidence.
    seen: VecDeque<(Instant, bool)>,
    /// The last throttle evidence.
    last_evidence: Option<Instant>,
    /// The last lowering or raise: no lowering within [`HOLD_OFF`] of it.
    changed_at: Option<Instant>,
    /// Since when (the last change, or the first reply), and how many replies were not
    /// evidence, whatever rate paced their sends: they all took the domain's capacity.
    accepted: Option<(Instant, usize)>,
    /// A `set_rate` rule's hold: no raise before.
    hold_until: Option<Instant>,
    suspended_until: Option<Instant>,
    /// The rule that last slowed or suspended it.
    rule: String,
}

impl Shaper {
    /// A shaper with these rules and settings.
    pub fn new(rules: Rules, settings: Settings) -> Shaper {
        Shaper {
            rules,
            settings,
            domains: HashMap::new(),
        }
    }

    /// Takes the result, at `now`, of one attempt for `key` (whose unslowed rate is `ceiling`)
    /// that `started` then; returns the change it causes, if any. An attempt started before the
    /// last change of rate is ignored: it judges the old rate, which is already changed, and
    /// counting the replies to sends in flight would lower the rate again for the same cause.
    pub fn observe(
        &mut self,
        key: &Key,
        ceiling: f64,
        seen: Seen<'_>,
        started: Instant,
        now: Instant,
    ) -> Option<Decision> {
        let fired = match seen {
            Seen::Attempt => None,
            Seen::Deferred {
                text,
                throttled,
                retry_after,
            } => self.judge(key, text, throttled, retry_after),
        };
        let settings = self.settings;
        let state = self
            .domains
            .entry(key.clone())
            .or_insert_with(|| State::new(ceiling));
        let (_, accepted) = state.accepted.get_or_insert((now, 0));
        *accepted += usize::from(fired.is_none());
        let stale = state.changed_at.is_some_and(|at| started < at);
        if stale && !matches!(fired, Some((_, Action::Suspend { .. }, _))) {
            return None;
        }
        state.seen.push_back((now, fired.is_some()));
        state.forget(now, settings.window);
        let (rule, action, wait) = fired?;
        state.last_evidence = Some(now);
        match action {
            Action::None => None,
            Action::Suspend { hold } => {
                let until = now + hold.or(wait).unwrap_or(DEFAULT_SUSPENSION);
                if state
                    .suspended_until
                    .is_some_and(|current| current >= until)
                {
                    return None;
                }
                state.suspended_until = Some(until);
                state.rule.clone_from(&rule);
                Some(Decision {
                    rule,
                    change: Change::Suspended(until),
                })
            }
            Action::Slow { .. } | Action::SetRate { .. } => {
                // A raise is judged like a lowering: its first replies meet sends paced by the
                // old rate, and are no measure of the new one.
                if state
                    .changed_at
                    .is_some_and(|at| now.saturating_duration_since(at) < HOLD_OFF)
                {
                    return None;
                }
                let share = state.evidence_share(settings.threshold)?;
                let lowered = match action {
                    Action::SetRate { per_sec, hold } => {
                        state.hold_until = Some(now + hold);
                        state.per_sec.min(per_sec)
                    }
                    Action::Slow { factor } => {
                        let deepest = factor.min(DEEPEST_STEP);
                        match state.accepted_per_sec(now) {
                            Some(accepted) => (accepted * BACKOFF)
                                .clamp(state.per_sec * deepest, state.per_sec * BACKOFF),
                            // Too soon to measure: the accepted share is a better guess of
                            // the pace than one fixed step.
                            None => state.per_sec * (1.0 - share).clamp(deepest, factor),
                        }
                    }
                    Action::None | Action::Suspend { .. } => state.per_sec,
                }
                .max(FLOOR_PER_SEC);
                // Fresh evidence, at the new rate, decides the next step.
                state.seen.clear();
                state.changed_at = Some(now);
                state.accepted = Some((now, 0));
                if lowered >= state.per_sec {
                    return None;
                }
                state.per_sec = lowered;
                state.taken = lowered;
                state.rule.clone_from(&rule);
                Some(Decision {
                    rule,
                    change: Change::Lowered(lowered),
                })
            }
        }
    }

    /// The pace of `key` at `now`, after any raise or end of suspension that is due (returned).
    pub fn pace(&mut self, key: &Key, now: Instant) -> (Option<Pace>, Option<Decision>) {
        let settings = self.settings;
        let Some(state) = self.domains.get_mut(key) else {
            return (None, None);
        };
        let decision = state.recover(now, settings);
        (Some(state.pace()), decision)
    }

    /// Forgets keys at their ceiling, not suspended, with nothing seen in the window; returns
    /// the decisions due meanwhile (raises, ends of suspensions).
    pub fn prune(&mut self, now: Instant) -> Vec<(Key, Decision)> {
        let settings = self.settings;
        let mut decisions = Vec::new();
        self.domains.retain(|key, state| {
            if let Some(decision) = state.recover(now, settings) {
                decisions.push((key.clone(), decision));
            }
            state.forget(now, settings.window);
            let idle = state
                .seen
                .back()
                .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= settings.window);
            state.per_sec < state.ceiling || state.suspended_until.is_some() || !idle
        });
        decisions
    }

    /// Keys remembered (slowed, suspended or recently seen).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.domains.len()
    }

    /// Slowed or suspended keys with their pace.
    pub fn slowed(&self) -> Vec<(Key, Pace)> {
        self.domains
            .iter()
            .map(|(key, state)| (key.clone(), state.pace()))
            .filter(|(_, pace)| pace.slowed || pace.suspended_until.is_some())
            .collect()
    }

    /// Which rule a transient reply falls under, if it is domain evidence or a rule matched:
    /// (rule name, action, the wait the reply asked for).
    fn judge(
        &self,
        key: &Key,
        text: &str,
        throttled: bool,
        retry_after: Option<Duration>,
    ) -> Option<(String, Action, Option<Duration>)> {
        let rule = match key {
            Key::Domain(domain) => self.rules.find(domain, text),
            Key::Push => None,
        };
        match rule {
            Some(rule) if rule.scope == Scope::Recipient => None,
            Some(rule) => Some((rule.name.clone(), rule.action, retry_after)),
            None if throttled => Some((
                RATE_WORDING.to_string(),
                Action::Slow {
                    factor: DEFAULT_STEP,
                },
                retry_after,
            )),
            None => None,
        }
    }
}

impl State {
    fn new(ceiling: f64) -> State {
        State {
            ceiling,
            per_sec: ceiling,
            taken: ceiling,
            seen: VecDeque::new(),
            last_evidence: None,
            changed_at: None,
            accepted: None,
            hold_until: None,
            suspended_until: None,
            rule: String::new(),
        }
    }

    fn pace(&self) -> Pace {
        Pace {
            per_sec: self.per_sec,
            slowed: self.per_sec < self.ceiling,
            suspended_until: self.suspended_until,
        }
    }

    /// Drops attempts older than the window, keeping the last [`KEEP_LAST`] whatever their age.
    fn forget(&mut self, now: Instant, window: Duration) {
        while self.seen.len() > KEEP_LAST
            && self
                .seen
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > window)
        {
            self.seen.pop_front();
        }
    }

    /// The share of throttle evidence among the attempts seen, if it is past `threshold`, with
    /// at least [`MIN_EVIDENCE`] among at least [`MIN_ATTEMPTS`].
    fn evidence_share(&self, threshold: f64) -> Option<f64> {
        let evidence = self.seen.iter().filter(|(_, evidence)| *evidence).count();
        let share = evidence as f64 / self.seen.len().max(1) as f64;
        (evidence >= MIN_EVIDENCE && self.seen.len() >= MIN_ATTEMPTS && share > threshold)
            .then_some(share)
    }

    /// What the domain accepted per second since the last change (or its first reply), once
    /// that is [`HOLD_OFF`] ago. Replies to sends paced by the old rate count too: they took
    /// the domain's capacity like any other, and while the evidence lasts the domain is busy,
    /// so what it accepts is what it takes.
    fn accepted_per_sec(&self, now: Instant) -> Option<f64> {
        let (since, accepted) = self.accepted?;
        let span = now.saturating_duration_since(since);
        (span >= HOLD_OFF).then(|| accepted as f64 / span.as_secs_f64())
    }

    /// Ends a suspension whose time has come, or raises the rate for each whole quiet period
    /// since the last evidence and change (and after any hold): by [`PROBE`] of the rate it
    /// was lowered to, or by [`RAISE`] once a whole window has passed without evidence.
    fn recover(&mut self, now: Instant, settings: Settings) -> Option<Decision> {
        if let Some(until) = self.suspended_until {
            if now < until {
                return None;
            }
            self.suspended_until = None;
            return Some(self.decision(Change::Resumed));
        }
        if self.per_sec >= self.ceiling || self.hold_until.is_some_and(|until| now < until) {
            return None;
        }
        let since = [self.last_evidence, self.changed_at, self.hold_until]
            .into_iter()
            .flatten()
            .max()?;
        let every = settings.recover_every;
        // At most 64 raises per call bound its work; the rest are due at the next call.
        let steps = (now.saturating_duration_since(since).as_nanos() / every.as_nanos().max(1))
            .min(64) as u32;
        if steps == 0 {
            return None;
        }
        let raised = (1..=steps).fold(self.per_sec, |rate, step| {
            let at = since + every * step;
            let calm = self
                .last_evidence
                .is_none_or(|evidence| at.saturating_duration_since(evidence) >= settings.window);
            if calm {
                rate * RAISE
            } else {
                rate + PROBE * self.taken
            }
        });
        self.changed_at = Some(since + every * steps);
        self.accepted = self.changed_at.map(|at| (at, 0));
        if raised >= self.ceiling {
            self.per_sec = self.ceiling;
            self.hold_until = None;
            Some(self.decision(Change::Recovered))
        } else {
            self.per_sec = raised;
            Some(self.decision(Change::Raised(raised)))
        }
    }

    fn decision(&self, change: Change) -> Decision {
        Decision {
            rule: self.rule.clone(),
            change,
        }
    }
}

/// Domains compare without case and without a trailing root dot.
pub fn normalize(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
