//! Whom a returned message was about, read from the copy of it (or of its header) that a
//! bounce or complaint report carries: the VERP token of its `Return-Path` and the campaign and
//! user its `Message-ID` names.

use mail_parser::{Message, MessageParser, MimeHeaders as _, PartType};

use crate::batch::{CampaignId, UserId};
use crate::token::{BOUNCE_PREFIX, Token};

/// What survives of the original message in a report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Original {
    /// The token of a VERP `Return-Path: <b-<token>@…>`.
    pub token: Option<Token>,
    /// The campaign and user of a sunset `Message-ID`.
    pub message: Option<(CampaignId, UserId)>,
}

impl Original {
    /// The original attached to `report` as `message/rfc822` (`message/global`) or
    /// `text/rfc822-headers`; empty when neither is there. Only a `Message-ID` on
    /// `message_domain` (`email.from`'s domain) is sunset's.
    pub fn in_report(report: &Message<'_>, message_domain: &str) -> Original {
        for part in &report.parts {
            let Some(content_type) = part.content_type() else {
                continue;
            };
            let kind = (
                content_type.ctype().to_ascii_lowercase(),
                content_type
                    .subtype()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
            );
            match (&part.body, kind.0.as_str(), kind.1.as_str()) {
                (PartType::Message(original), _, _) => {
                    return Original::of(original, message_domain);
                }
                (_, "text", "rfc822-headers") => {
                    if let Some(original) = MessageParser::new().parse_headers(part.contents()) {
                        return Original::of(&original, message_domain);
                    }
                }
                _ => {}
            }
        }
        Original::default()
    }

    fn of(original: &Message<'_>, message_domain: &str) -> Original {
        Original {
            token: original
                .return_address()
                .and_then(|address| address.split_once('@'))
                .and_then(|(local, _)| Token::from_local_part(local, BOUNCE_PREFIX)),
            message: original
                .message_id()
                .and_then(|id| campaign_and_user(id, message_domain)),
        }
    }
}

/// The campaign and user of a `Message-ID` that `channel::email::message_id` wrote
/// (`<campaign.user@domain>`, angle brackets optional) on `domain`: the campaign is
/// percent-encoded with only word characters left as they are, so the first dot ends it; the
/// user follows, with percent-encoding undone.
pub fn campaign_and_user(message_id: &str, domain: &str) -> Option<(CampaignId, UserId)> {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let (local, id_domain) = id.rsplit_once('@')?;
    if !id_domain.eq_ignore_ascii_case(domain) {
        return None;
    }
    let (campaign, user) = local.split_once('.')?;
    let campaign = CampaignId::parse(&percent_decode(campaign)?).ok()?;
    let user = UserId::parse(&percent_decode(user)?).ok()?;
    Some((campaign, user))
}

/// `%XX` sequences back to bytes, read as UTF-8; `None` for a broken sequence.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::email::message_id;

    #[test]
    fn every_message_id_sunset_writes_reads_back_to_its_campaign_and_user() {
        for (campaign, user) in [
            ("xiami:2021.a", "u-1001"),
            ("c", "a.b"),
            ("c-1_x", ".a..b."),
            ("xiami", "名 <x>"),
            ("x.y.z", "100%"),
        ] {
            let campaign = CampaignId::parse(campaign).expect("campaign");
            let user = UserId::parse(user).expect("user");
            let id = message_id(&campaign, &user, "xiami.example");
            assert_eq!(
                campaign_and_user(&id, "XIAMI.example"),
                Some((campaign.clone(), user.clone())),
                "{id}"
            );
        }
        for foreign in [
            "<abc@example.com>",
            "<a.%ZZ@example.com>",
            "no-at-sign",
            "<a.b@elsewhere.example>",
        ] {
            assert_eq!(campaign_and_user(foreign, "example.com"), None, "{foreign}");
        }
    }
}
