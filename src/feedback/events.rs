//! Named events of `sunset feedback`: each writes its log line and counts its Prometheus
//! metric from the same place. Log lines name sources, reasons and causes, never an address or
//! a token.

use metrics::{counter, describe_counter};

use crate::suppression::Report;

/// Counter: reports recorded, by `source`, `reason` and `effect` (suppressed, counted,
/// unknown-recipient).
pub const REPORTS: &str = "sunset_feedback_reports_total";
/// Counter: messages to the bounce domain that report nothing, by `why`.
pub const IGNORED: &str = "sunset_feedback_ignored_total";
/// Counter: SMTP commands and HTTP requests refused, by `listener` and `why`.
pub const REFUSED: &str = "sunset_feedback_refused_total";

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    describe_counter!(
        REPORTS,
        "Bounces, complaints and unsubscribes recorded, by source, reason and effect."
    );
    describe_counter!(
        IGNORED,
        "Messages to the bounce domain that report nothing (auto-replies, deliveries), by why."
    );
    describe_counter!(
        REFUSED,
        "SMTP commands and HTTP requests refused, by listener and why."
    );
}

/// A report was recorded with `effect`.
pub fn recorded(report: &Report, effect: &'static str) {
    tracing::info!(
        source = report.source.as_str(),
        reason = report.reason.as_str(),
        effect,
        detail = %report.detail,
        "report recorded"
    );
    counter!(
        REPORTS,
        "source" => report.source.as_str(),
        "reason" => report.reason.as_str(),
        "effect" => effect
    )
    .increment(1);
}

/// A message to the bounce domain reports nothing.
pub fn ignored(why: &'static str) {
    tracing::info!(why, "message ignored");
    counter!(IGNORED, "why" => why).increment(1);
}

/// A command or request was refused.
pub fn refused(listener: &'static str, why: &'static str) {
    tracing::warn!(listener, why, "refused");
    counter!(REFUSED, "listener" => listener, "why" => why).increment(1);
}
