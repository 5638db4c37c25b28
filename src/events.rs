//! Named events of the worker: each writes its log line and counts its Prometheus metric from
//! the same place (STYLE.md item 8). Without an exporter (`metrics.listen = ""`) the metric
//! half does nothing.

use std::fmt;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::batch::{Batch, UserId};
use crate::channel::{Channel, Outcome};
use crate::dead_letter::DeadLetterKind;
use crate::logging::MaskedText;

/// Counter: sends tried, by `channel`, `locale` (the template locale) and `outcome`
/// (`suppressed` counts sends not made to a suppressed address).
pub const SENDS: &str = "sunset_sends_total";
/// Histogram: time one send took (SMTP transaction or HTTP request), by `channel`.
pub const SEND_SECONDS: &str = "sunset_send_seconds";
/// Histogram: time a send waited for the rate limits (channel and domain), by `channel`.
pub const RATE_LIMIT_WAIT_SECONDS: &str = "sunset_rate_limit_wait_seconds";
/// Counter: batches settled, by `verdict`.
pub const BATCHES: &str = "sunset_batches_total";
/// Gauge: sends in flight now (at most `worker.concurrency`).
pub const INFLIGHT_SENDS: &str = "sunset_inflight_sends";
/// Gauge: the send rate of a configured or slowed-down email domain, per second (0 = unlimited).
pub const DOMAIN_RATE: &str = "sunset_domain_rate";
/// Gauge: 1 while an email domain is suspended by a shaping rule, by `domain`.
pub const DOMAIN_SUSPENDED: &str = "sunset_domain_suspended";
/// Counter: shaping decisions (a slowing or a suspension), by the `rule` that fired.
pub const SHAPING_RULE_FIRED: &str = "sunset_shaping_rule_fired_total";
/// Counter: recipient × channel pairs dead-lettered, by `reason` kind.
pub const DEAD_LETTERS: &str = "sunset_dead_letters_total";
/// Gauge: 1 while a channel's breaker is open (its transport unreachable, its sends held), by
/// `channel`.
pub const BREAKER_OPEN: &str = "sunset_channel_breaker_open";

/// Upper bounds of the [`SEND_SECONDS`] buckets: an SMTP or HTTP round trip on a LAN, up to
/// the default timeouts (5 s push, 10 s email).
pub const SEND_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the [`RATE_LIMIT_WAIT_SECONDS`] buckets: from no wait to a domain slowed
/// down to its floor of one send a minute (several sends queued behind each other).
pub const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Registers the help text of every metric with the installed recorder, and shows each
/// channel's breaker closed before any send.
pub fn describe() {
    describe_counter!(
        SENDS,
        "Sends tried, by channel, template locale and outcome (delivered, transient, permanent; suppressed: not sent to a suppressed address)."
    );
    describe_histogram!(
        SEND_SECONDS,
        metrics::Unit::Seconds,
        "Time one send took, by channel."
    );
    describe_histogram!(
        RATE_LIMIT_WAIT_SECONDS,
        metrics::Unit::Seconds,
        "Time a send waited for the channel and domain rate limits, by channel."
    );
    describe_counter!(BATCHES, "Batches settled, by verdict.");
    describe_gauge!(INFLIGHT_SENDS, "Sends in flight now.");
    describe_gauge!(
        DOMAIN_RATE,
        "Email send rate per second of each configured or slowed-down domain (0 = unlimited)."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Recipient x channel pairs dead-lettered, by reason kind."
    );
    describe_gauge!(
        DOMAIN_SUSPENDED,
        "1 while an email domain is suspended by a shaping rule."
    );
    describe_counter!(
        SHAPING_RULE_FIRED,
        "Shaping decisions (a domain slowed or suspended), by the rule that fired."
    );
    describe_gauge!(
        BREAKER_OPEN,
        "1 while a channel's transport is unreachable and its sends are held, by channel."
    );
    for channel in Channel::ALL {
        gauge!(BREAKER_OPEN, "channel" => channel.as_str()).set(0.0);
    }
}

/// A send was tried and came to `outcome`: counted; a failure is logged (the reason masked,
/// since server replies often quote the address).
pub fn sent(user: &UserId, channel: Channel, locale: &str, outcome: &Outcome) {
    let label = match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Transient { .. } => "transient",
        Outcome::Permanent { .. } => "permanent",
        Outcome::Unknown { .. } => "unknown",
        Outcome::Unreachable { .. } => "unreachable",
    };
    counter!(SENDS, "channel" => channel.as_str(), "locale" => locale.to_string(), "outcome" => label)
        .increment(1);
    match outcome {
        Outcome::Delivered => {}
        Outcome::Transient { reason, .. } => tracing::warn!(
            event = "send_failed",
            %user,
            %channel,
            outcome = label,
            reason = %MaskedText(reason),
            "send failed, will retry"
        ),
        Outcome::Permanent { reason } => tracing::warn!(
            event = "send_failed",
            %user,
            %channel,
            outcome = label,
            reason = %MaskedText(reason),
            "send failed for good"
        ),
        Outcome::Unknown { reason } => tracing::warn!(
            event = "send_unknown",
            %user,
            %channel,
            outcome = label,
            reason = %MaskedText(reason),
            "sent, and no answer came back: delivered or not is unknown"
        ),
        // The channel's breaker says it once for all of them.
        Outcome::Unreachable { reason } => tracing::debug!(
            event = "send_held",
            %user,
            %channel,
            outcome = label,
            reason = %MaskedText(reason),
            "transport unreachable; the send is held"
        ),
    }
}

/// A send was not made because the address is on the suppression list: counted under
/// [`SENDS`] with `outcome="suppressed"`, logged without the address.
pub fn suppressed(user: &UserId, channel: Channel, locale: &str) {
    counter!(SENDS, "channel" => channel.as_str(), "locale" => locale.to_string(), "outcome" => "suppressed")
        .increment(1);
    tracing::info!(
        event = "send_suppressed",
        %user,
        %channel,
        outcome = "suppressed",
        "address on the suppression list; not sent"
    );
}

/// A channel's transport stopped answering: its sends are held and probed.
pub fn breaker_opened(channel: Channel, cause: &str, probe_every: Duration) {
    gauge!(BREAKER_OPEN, "channel" => channel.as_str()).set(1.0);
    tracing::error!(
        event = "breaker_opened",
        %channel,
        "{}; holding {channel} sends, probing at most every {}",
        MaskedText(cause),
        Seconds(probe_every)
    );
}

/// A channel's transport is still unreachable (said at most every 30 s).
pub fn breaker_still_open(
    channel: Channel,
    cause: &str,
    open_for: Duration,
    probe_every: Duration,
) {
    tracing::error!(
        event = "breaker_still_open",
        %channel,
        open_for_s = open_for.as_secs(),
        "{}; {channel} sends held for {}, probing at most every {}",
        MaskedText(cause),
        Seconds(open_for),
        Seconds(probe_every)
    );
}

/// A channel's transport answered a probe: its sends resume.
pub fn breaker_closed(channel: Channel, open_for: Duration) {
    gauge!(BREAKER_OPEN, "channel" => channel.as_str()).set(0.0);
    tracing::info!(
        event = "breaker_closed",
        %channel,
        open_for_s = open_for.as_secs(),
        "{channel} transport answers again after {}; sends resume",
        Seconds(open_for)
    );
}

/// A duration as seconds, one decimal below ten ("0.5 s", "5 s", "42 s").
struct Seconds(Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs_f64();
        if secs < 10.0 && self.0.subsec_millis() != 0 {
            write!(f, "{secs:.1} s")
        } else {
            write!(f, "{} s", self.0.as_secs())
        }
    }
}

/// How long one send took.
pub fn send_took(channel: Channel, took: Duration) {
    histogram!(SEND_SECONDS, "channel" => channel.as_str()).record(took.as_secs_f64());
}

/// How long one send waited for the rate limits.
pub fn rate_limit_waited(channel: Channel, waited: Duration) {
    histogram!(RATE_LIMIT_WAIT_SECONDS, "channel" => channel.as_str()).record(waited.as_secs_f64());
}

/// One send in flight, from its slot being taken until it is dropped.
pub struct InFlight(());

impl InFlight {
    /// Counts a send in flight until the value is dropped.
    pub fn begin() -> InFlight {
        gauge!(INFLIGHT_SENDS).increment(1.0);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(INFLIGHT_SENDS).decrement(1.0);
    }
}

/// How a batch delivery was settled with the broker: the `verdict` label of [`BATCHES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchVerdict {
    /// Everything delivered (or skipped as delivered before); acked.
    Completed,
    /// Some pairs failed transiently and went to a delay queue; acked.
    Retried,
    /// Some pairs were held back (campaign paused, ledger away) on a delay queue; acked.
    Held,
    /// Some pairs went to the dead-letter queue; acked.
    DeadLettered,
    /// Not a batch: dead-lettered as it came; acked.
    Undecodable,
    /// A redelivery of a batch already settled before a reconnect: acked only.
    Duplicate,
    /// What it owes could not be published, or processing panicked: requeued for redelivery.
    Requeued,
    /// The ack did not reach the broker (connection lost): it will be redelivered.
    Unacked,
}

impl BatchVerdict {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchVerdict::Completed => "completed",
            BatchVerdict::Retried => "retried",
            BatchVerdict::Held => "held",
            BatchVerdict::DeadLettered => "dead_lettered",
            BatchVerdict::Undecodable => "undecodable",
            BatchVerdict::Duplicate => "duplicate",
            BatchVerdict::Requeued => "requeued",
            BatchVerdict::Unacked => "unacked",
        }
    }
}

/// A batch delivery was settled: counted and logged (inside the batch's span); `error` says
/// why one was not acked.
pub fn batch_settled(verdict: BatchVerdict, error: Option<&dyn fmt::Display>) {
    counter!(BATCHES, "verdict" => verdict.as_str()).increment(1);
    match error {
        // Requeued: the batch could not be settled at all (a panic, no publisher confirm).
        Some(error) if verdict == BatchVerdict::Requeued => tracing::error!(
            event = "batch_settled",
            verdict = verdict.as_str(),
            error = %MaskedText(&error.to_string()),
            "batch requeued; it will be redelivered"
        ),
        Some(error) => tracing::warn!(
            event = "batch_settled",
            verdict = verdict.as_str(),
            error = %MaskedText(&error.to_string()),
            "batch not acked; it will be redelivered"
        ),
        None => tracing::info!(
            event = "batch_settled",
            verdict = verdict.as_str(),
            "batch settled"
        ),
    }
}

/// The failed pairs of `batch` were published to the dead-letter queue (confirmed); `kinds[i]`
/// is why `batch.failures[i]` failed.
pub fn dead_lettered(batch: &Batch, reason: &str, kinds: &[DeadLetterKind]) {
    for kind in kinds {
        counter!(DEAD_LETTERS, "reason" => kind.as_str()).increment(1);
    }
    tracing::warn!(
        event = "dead_lettered",
        failed = batch.failures.len(),
        reason = %MaskedText(reason),
        "dead-lettered failed recipients"
    );
}

/// A message that is not a batch was published to the dead-letter queue as it came.
pub fn undecodable(error: &str) {
    counter!(DEAD_LETTERS, "reason" => DeadLetterKind::Undecodable.as_str()).increment(1);
    tracing::warn!(
        event = "undecodable",
        error = %MaskedText(error),
        "undecodable message dead-lettered"
    );
}

/// An email domain's send rate is now `per_sec` (0 = unlimited): its configured rate at start,
/// then each change shaping makes. Only configured and slowed-down domains get here, so the
/// `domain` label stays bounded.
pub fn domain_rate(domain: &str, per_sec: f64) {
    gauge!(DOMAIN_RATE, "domain" => domain.to_string()).set(per_sec);
}

/// A shaping rule suspended `domain` (`true`) or its suspension ended.
pub fn domain_suspended(domain: &str, suspended: bool) {
    gauge!(DOMAIN_SUSPENDED, "domain" => domain.to_string()).set(if suspended { 1.0 } else { 0.0 });
}

/// A shaping rule fired: it slowed or suspended a domain (or the push gateway). The log line
/// is the rate change's, which names the rule.
pub fn shaping_rule_fired(rule: &str) {
    counter!(SHAPING_RULE_FIRED, "rule" => rule.to_string()).increment(1);
}
