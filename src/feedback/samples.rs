//! Real-world shaped DSNs and ARF reports (tests/fixtures/feedback/) read into reports.

use super::inbound::{Finding, Ignored, findings};
use crate::batch::{CampaignId, EmailAddress, UserId};
use crate::suppression::{About, Reason, Source};
use crate::token::Token;

const TOKEN: &str = "0123456789abcdef01234567";

/// The domain of the `Message-ID`s sunset writes in the samples.
const DOMAIN: &str = "xiami.example";

fn sample(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/feedback")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn token() -> About {
    About::Token(Token::parse(TOKEN).expect("token"))
}

#[test]
fn a_postfix_dsn_to_the_verp_address_is_a_hard_bounce_of_its_token() {
    let found =
        findings(&sample("postfix-dsn.eml"), &[format!("b-{TOKEN}")], DOMAIN).expect("report");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].reason, Reason::HardBounce);
    assert_eq!(found[0].candidates[0], token());
    assert_eq!(found[0].source, Source::Dsn);
    assert_eq!(found[0].detail, "5.1.1 user unknown");
}

#[test]
fn a_dsn_names_its_recipient_every_way_it_can_token_first() {
    let found =
        findings(&sample("postfix-dsn.eml"), &[format!("b-{TOKEN}")], DOMAIN).expect("report");
    let Finding { candidates, .. } = &found[0];
    assert_eq!(
        candidates,
        &[
            token(),
            About::Message {
                campaign: CampaignId::parse("xiami-2026").expect("campaign"),
                user: UserId::parse("u-1001").expect("user"),
            },
            About::Address(EmailAddress::parse("nobody@users.test").expect("address")),
        ]
    );
}

#[test]
fn without_a_verp_token_the_returned_headers_give_it_back() {
    // The Return-Path of the returned headers carries the token.
    let found =
        findings(&sample("postfix-dsn.eml"), &["postmaster".into()], DOMAIN).expect("report");
    assert_eq!(found[0].candidates[0], token());
}

#[test]
fn an_exchange_ndr_without_a_token_is_mapped_by_the_original_message_id() {
    let found =
        findings(&sample("exchange-dsn.eml"), &["postmaster".into()], DOMAIN).expect("report");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].reason, Reason::HardBounce);
    assert_eq!(
        found[0].candidates[0],
        About::Message {
            campaign: CampaignId::parse("xiami:2021.a").expect("campaign"),
            user: UserId::parse("a.b").expect("user"),
        }
    );
    assert!(
        found[0]
            .detail
            .starts_with("5.1.10 550 5.1.10 RESOLVER.ADR.RecipientNotFound")
    );
    assert!(!found[0].detail.contains('@'), "{}", found[0].detail);
}

#[test]
fn a_gmail_delay_notice_is_a_soft_bounce_of_its_final_recipient() {
    let found =
        findings(&sample("gmail-delayed.eml"), &["postmaster".into()], DOMAIN).expect("report");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].reason, Reason::SoftBounce);
    assert_eq!(
        found[0].candidates[0],
        About::Address(EmailAddress::parse("slow.person@gmail.example").expect("address"))
    );
    assert!(
        found[0].detail.starts_with("4.2.2 452-4.2.2"),
        "{}",
        found[0].detail
    );
}

#[test]
fn an_rfc_5965_abuse_report_is_a_complaint_of_its_original_mail_from_token() {
    let found = findings(&sample("arf-abuse.eml"), &["abuse".into()], DOMAIN).expect("report");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].reason, Reason::Complaint);
    assert_eq!(found[0].source, Source::Arf);
    assert_eq!(found[0].candidates[0], token());
    assert_eq!(found[0].detail, "abuse");
}

#[test]
fn an_abuse_report_without_a_token_names_the_original_recipient() {
    let text = String::from_utf8(sample("arf-abuse.eml")).expect("utf-8");
    let text = text.replace(&format!("b-{TOKEN}@bounces.test"), "noreply@xiami.example");
    let found = findings(text.as_bytes(), &["abuse".into()], DOMAIN).expect("report");
    assert_eq!(
        found[0].candidates[0],
        About::Address(EmailAddress::parse("user@example.com").expect("address"))
    );
    let not_spam = text.replace("Feedback-Type: abuse", "Feedback-Type: not-spam");
    assert_eq!(
        findings(not_spam.as_bytes(), &["abuse".into()], DOMAIN),
        Err(Ignored::NoFailure)
    );
}

#[test]
fn a_mail_to_the_unsubscribe_address_unsubscribes_its_token() {
    let found = findings(
        &sample("auto-reply.eml"),
        &[format!("U-{}", TOKEN.to_uppercase())],
        DOMAIN,
    )
    .expect("report");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].reason, Reason::Unsubscribe);
    assert_eq!(found[0].source, Source::Unsubscribe);
    assert_eq!(found[0].candidates[0], token());
}

#[test]
fn auto_replies_deliveries_and_garbage_are_ignored() {
    assert_eq!(
        findings(&sample("auto-reply.eml"), &[format!("b-{TOKEN}")], DOMAIN),
        Err(Ignored::NotAReport)
    );
    let text = String::from_utf8(sample("postfix-dsn.eml")).expect("utf-8");
    let delivered = text
        .replace("Action: failed", "Action: delivered")
        .replace("Status: 5.1.1", "Status: 2.0.0");
    assert_eq!(
        findings(delivered.as_bytes(), &[format!("b-{TOKEN}")], DOMAIN),
        Err(Ignored::NoFailure)
    );
    for garbage in [
        &b""[..],
        b"\x00\xff\xfe garbage",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n:::\r\n--x",
    ] {
        assert!(findings(garbage, &["postmaster".into()], DOMAIN).is_err());
    }
}
