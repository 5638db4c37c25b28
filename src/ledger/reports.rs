//! What the ledger does with a bounce, complaint or unsubscribe: the recipient a token names,
//! what recording a report did, and the suppression policy as pure decisions the two databases
//! share.

use super::LedgerError;
use crate::batch::{CampaignId, EmailAddress, UserId};
use crate::config::{FeedbackConfig, UnsubscribeScope};
use crate::suppression::Reason;

/// Emails a campaign must have delivered before its complaint rate can pause it: one complaint
/// among the first ten sends says nothing about the campaign.
pub const PAUSE_MIN_DELIVERED: u64 = 1000;

/// The `scope` of a suppression that holds for every campaign.
pub(super) const GLOBAL: &str = "";

/// What recording a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportEffect {
    /// The address is now suppressed (or already was) for this reason.
    Suppressed {
        /// The address, normalised.
        address: EmailAddress,
        /// Why.
        reason: Reason,
    },
    /// Recorded and counted, not (yet) suppressing: a soft bounce under the threshold.
    Counted {
        /// The address, normalised.
        address: EmailAddress,
    },
    /// The token, Message-ID or address names no recipient this ledger knows.
    UnknownRecipient,
}

/// The recipient a token was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecipient {
    /// The campaign of the email.
    pub campaign: CampaignId,
    /// The user.
    pub user: UserId,
    /// The address the email went to.
    pub address: EmailAddress,
    /// The template locale the email was sent in.
    pub locale: String,
}

/// The scope a report's suppression takes at once (`None`: a soft bounce, which suppresses
/// only once enough of them are counted). An unsubscribe in campaign scope that names no
/// campaign (an address-only report) holds for every campaign.
pub(super) fn scope(
    reason: Reason,
    policy: &FeedbackConfig,
    campaign: Option<&CampaignId>,
) -> Option<String> {
    match (reason, policy.unsubscribe_scope, campaign) {
        (Reason::SoftBounce, _, _) => None,
        (Reason::Unsubscribe, UnsubscribeScope::Campaign, Some(campaign)) => {
            Some(campaign.as_str().to_string())
        }
        _ => Some(GLOBAL.to_string()),
    }
}

/// Whether `counted` soft bounces within the window suppress the address.
pub(super) fn soft_bounces_suppress(counted: i64, policy: &FeedbackConfig) -> bool {
    policy.soft_bounces_to_suppress > 0 && counted >= i64::from(policy.soft_bounces_to_suppress)
}

/// The start of the soft-bounce window that ends at `now` (Unix ms).
pub(super) fn soft_window_start(now: i64, policy: &FeedbackConfig) -> i64 {
    now.saturating_sub(i64::try_from(policy.soft_bounce_window_ms).unwrap_or(i64::MAX))
}

/// A campaign's complaints as the pause judges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Complaints {
    /// First complaints recorded for the campaign.
    pub(super) complaints: i64,
    /// Complaints it had when it was last resumed (or paused by hand).
    pub(super) at_resume: i64,
    /// Emails delivered.
    pub(super) delivered: i64,
}

impl Complaints {
    /// Complaints per delivered email.
    pub(super) fn rate(&self) -> f64 {
        if self.delivered <= 0 {
            0.0
        } else {
            self.complaints as f64 / self.delivered as f64
        }
    }

    /// Whether a running campaign is paused: the rate passes a non-zero threshold, enough
    /// emails were delivered to judge it, and a complaint came since the last resume.
    pub(super) fn pause(&self, policy: &FeedbackConfig) -> bool {
        policy.pause_complaint_rate > 0.0
            && self.delivered >= PAUSE_MIN_DELIVERED as i64
            && self.complaints > self.at_resume
            && self.rate() > policy.pause_complaint_rate
    }

    /// The reason `status` shows for the pause.
    pub(super) fn paused_reason(&self, policy: &FeedbackConfig) -> String {
        format!(
            "complaint rate {:.2}% ({} of {} delivered emails) passed feedback.pause_complaint_rate {:.2}%",
            self.rate() * 100.0,
            self.complaints,
            self.delivered,
            policy.pause_complaint_rate * 100.0
        )
    }
}

/// A campaign the ledger paused while recording a complaint.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Paused {
    pub(super) campaign: CampaignId,
    pub(super) rate: f64,
    pub(super) reason: String,
}

/// The recipient a report names, as the ledger found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) address: EmailAddress,
    /// The campaign, when the report named one (token or Message-ID).
    pub(super) campaign: Option<CampaignId>,
}

/// An address as the ledger stores it, read back.
pub(super) fn address(stored: &str) -> Result<EmailAddress, LedgerError> {
    EmailAddress::parse(stored).map_err(|e| LedgerError::Corrupt(format!("address: {e}")))
}

/// A token's recipient from its row's campaign, user, address and locale.
pub(super) fn recipient(
    campaign: String,
    user: String,
    stored: String,
    locale: String,
) -> Result<TokenRecipient, LedgerError> {
    Ok(TokenRecipient {
        campaign: CampaignId::parse(&campaign)
            .map_err(|e| LedgerError::Corrupt(format!("campaign id: {e}")))?,
        user: UserId::parse(&user).map_err(|e| LedgerError::Corrupt(format!("user id: {e}")))?,
        address: address(&stored)?,
        locale,
    })
}

/// The effect of a report on `target`, given the scope it suppresses in (if any).
pub(super) fn effect(target: Target, reason: Reason, suppressed: bool) -> ReportEffect {
    if suppressed {
        ReportEffect::Suppressed {
            address: target.address,
            reason,
        }
    } else {
        ReportEffect::Counted {
            address: target.address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(scope: UnsubscribeScope) -> FeedbackConfig {
        FeedbackConfig {
            unsubscribe_scope: scope,
            soft_bounces_to_suppress: 3,
            pause_complaint_rate: 0.003,
            ..FeedbackConfig::default()
        }
    }

    #[test]
    fn only_an_unsubscribe_in_campaign_scope_that_names_its_campaign_is_kept_to_it() {
        let campaign = CampaignId::parse("c").expect("id");
        let per_campaign = policy(UnsubscribeScope::Campaign);
        assert_eq!(
            scope(Reason::Unsubscribe, &per_campaign, Some(&campaign)),
            Some("c".into())
        );
        assert_eq!(
            scope(Reason::Unsubscribe, &per_campaign, None),
            Some(GLOBAL.into())
        );
        assert_eq!(
            scope(Reason::Complaint, &per_campaign, Some(&campaign)),
            Some(GLOBAL.into())
        );
        let global = policy(UnsubscribeScope::Global);
        assert_eq!(
            scope(Reason::Unsubscribe, &global, Some(&campaign)),
            Some(GLOBAL.into())
        );
        assert_eq!(scope(Reason::SoftBounce, &global, Some(&campaign)), None);
    }

    #[test]
    fn soft_bounces_suppress_at_the_threshold_and_never_with_a_zero_one() {
        let mut p = policy(UnsubscribeScope::Global);
        assert!(!soft_bounces_suppress(2, &p));
        assert!(soft_bounces_suppress(3, &p));
        p.soft_bounces_to_suppress = 0;
        assert!(!soft_bounces_suppress(100, &p));
    }

    #[test]
    fn the_complaint_rate_pauses_only_past_the_minimum_and_only_for_complaints_since_a_resume() {
        let p = policy(UnsubscribeScope::Global);
        let few = Complaints {
            complaints: 1,
            at_resume: 0,
            delivered: 10,
        };
        assert!(!few.pause(&p), "ten deliveries are too few to judge");
        let many = Complaints {
            complaints: 4,
            at_resume: 0,
            delivered: 1000,
        };
        assert!(many.pause(&p));
        assert!(
            !Complaints {
                at_resume: 4,
                ..many
            }
            .pause(&p),
            "the same complaints do not pause it again"
        );
        assert!(
            !Complaints {
                complaints: 3,
                ..many
            }
            .pause(&p),
            "0.3% does not pass 0.3%"
        );
        let never = FeedbackConfig {
            pause_complaint_rate: 0.0,
            ..p.clone()
        };
        assert!(!many.pause(&never));
        assert!(many.paused_reason(&p).contains("0.40%"));
    }
}
