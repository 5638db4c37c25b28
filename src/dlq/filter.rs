//! Which dead letters a command acts on: all, or one campaign's (`--campaign ID`).

use super::letter::DeadLetter;
use crate::batch::CampaignId;
use crate::invalid_input::InvalidInput;

/// `--campaign ID` as a campaign id; an invalid one is a usage error.
pub(super) fn parse_campaign(id: &str) -> Result<CampaignId, InvalidInput> {
    CampaignId::parse(id).map_err(|e| InvalidInput(format!("--campaign: {e}")))
}

/// Which dead letters a command acts on: all, or one campaign's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter(Option<CampaignId>);

impl Filter {
    /// `--campaign ID` if given (an invalid id is a usage error), else every dead letter.
    pub fn parse(campaign: Option<&str>) -> Result<Filter, InvalidInput> {
        campaign.map(parse_campaign).transpose().map(Filter)
    }

    /// The dead letters of `campaign`.
    pub(super) fn campaign(campaign: &CampaignId) -> Filter {
        Filter(Some(campaign.clone()))
    }

    /// Whether `letter` belongs to the campaign (an undecodable one belongs to none).
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        match &self.0 {
            None => true,
            Some(campaign) => letter.campaign() == Some(campaign),
        }
    }

    /// ` of campaign ID`, or nothing.
    pub(super) fn describe(&self) -> String {
        self.0
            .as_ref()
            .map(|c| format!(" of campaign {c}"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;

    use super::*;

    #[test]
    fn a_bad_campaign_id_is_a_usage_error() {
        assert!(Filter::parse(Some("has space")).is_err());
    }

    #[test]
    fn an_undecodable_dead_letter_belongs_to_no_campaign() {
        let letter = DeadLetter::read(b"{not json", &BasicProperties::default());
        assert!(!Filter::parse(Some("c")).expect("valid").matches(&letter));
        assert!(Filter::parse(None).expect("valid").matches(&letter));
    }
}
