//! Feedback on both databases: the recipient a token names, reports and the suppressions they
//! make, the check a batch makes, and the complaint pause.

use std::collections::HashMap;

use super::tests::{POSTGRES, campaign, pair, sqlite};
use super::*;
use crate::batch::{EmailAddress, UserId};
use crate::config::{FeedbackConfig, UnsubscribeScope};
use crate::suppression::{About, Reason, Report, Source};
use crate::token::{Token, TokenKey};

const KEY: &[u8] = b"a feedback key for the ledger tests";

fn address(raw: &str) -> EmailAddress {
    EmailAddress::parse(raw).expect("address")
}

fn email(user: &str) -> Pair {
    Pair {
        address: Some(address(&format!("{user}@Example.COM"))),
        ..pair(user, Channel::Email)
    }
}

fn report(reason: Reason, about: About) -> Report {
    Report {
        reason,
        about,
        source: Source::Dsn,
        detail: "5.1.1 user unknown".into(),
    }
}

fn policy() -> FeedbackConfig {
    FeedbackConfig {
        soft_bounces_to_suppress: 3,
        soft_bounce_window_ms: 3_600_000,
        pause_complaint_rate: 0.003,
        unsubscribe_scope: UnsubscribeScope::Global,
        ..FeedbackConfig::default()
    }
}

fn token(campaign: &CampaignId, user: &str) -> Token {
    TokenKey::from_bytes(KEY).token(
        campaign,
        &UserId::parse(user).expect("user"),
        Channel::Email,
    )
}

/// Claims and delivers `users`' emails (and `a`'s push) in `campaign`.
async fn delivered(ledger: &Ledger, campaign: &CampaignId, users: &[String]) {
    let mut pairs: Vec<Pair> = users.iter().map(|u| email(u)).collect();
    pairs.push(pair("a", Channel::Push));
    let claims = ledger.claim(campaign, &pairs).await.expect("claim");
    let entries = pairs
        .into_iter()
        .map(|p| Entry {
            campaign: campaign.clone(),
            pair: p,
            mark: Mark::Delivered,
            error: None,
        })
        .collect();
    ledger.record_all(&claims, entries).await.expect("record");
    ledger.finished(claims.token);
}

async fn tokens_name_their_recipient(ledger: &Ledger) {
    ledger.use_token_key(TokenKey::from_bytes(KEY));
    let campaign = campaign("tokens");
    delivered(ledger, &campaign, &["a".into(), "b".into()]).await;
    let found = ledger
        .recipient_of(&token(&campaign, "a"))
        .await
        .expect("lookup")
        .expect("a's token is known");
    assert_eq!(
        found,
        TokenRecipient {
            campaign: campaign.clone(),
            user: UserId::parse("a").expect("id"),
            address: address("a@example.com"),
            locale: "en".into(),
        }
    );
    let unknown = token(&campaign, "nobody");
    assert_eq!(ledger.recipient_of(&unknown).await.expect("lookup"), None);
    assert_eq!(
        ledger
            .record_report(
                &report(Reason::HardBounce, About::Token(unknown)),
                &policy()
            )
            .await
            .expect("report"),
        ReportEffect::UnknownRecipient
    );
    let no_email = About::Message {
        campaign: campaign.clone(),
        user: UserId::parse("nobody").expect("id"),
    };
    assert_eq!(
        ledger
            .record_report(&report(Reason::HardBounce, no_email), &policy())
            .await
            .expect("report"),
        ReportEffect::UnknownRecipient
    );
}

#[tokio::test]
async fn a_claimed_emails_token_names_its_recipient_and_an_unknown_one_nobody_on_sqlite() {
    let (_dir, _url, ledger) = sqlite().await;
    tokens_name_their_recipient(&ledger).await;
}

#[tokio::test]
async fn a_claimed_emails_token_names_its_recipient_and_an_unknown_one_nobody_on_postgres() {
    let ledger = Ledger::open(POSTGRES).expect("open");
    tokens_name_their_recipient(&ledger).await;
}

async fn reports_suppress_as_the_policy_says(ledger: &Ledger) {
    ledger.use_token_key(TokenKey::from_bytes(KEY));
    let first = campaign("first");
    let second = campaign("second");
    let users: Vec<String> = ["hard", "soft", "unsub", "message"]
        .iter()
        .map(|u| format!("{u}-{}", fastrand::u64(..)))
        .collect();
    delivered(ledger, &first, &users).await;
    let [hard, soft, unsub, message] = [0, 1, 2, 3].map(|i| users[i].as_str());
    let mail = |user: &str| address(&format!("{user}@example.com"));
    let suppressed = |user: &str, reason| ReportEffect::Suppressed {
        address: mail(user),
        reason,
    };
    // A hard bounce suppresses at once, for every campaign; its repeat changes nothing.
    for _ in 0..2 {
        let effect = ledger
            .record_report(
                &report(Reason::HardBounce, About::Token(token(&first, hard))),
                &policy(),
            )
            .await
            .expect("report");
        assert_eq!(effect, suppressed(hard, Reason::HardBounce));
    }
    // Soft bounces are counted, and suppress at the threshold.
    let soft_bounce = report(Reason::SoftBounce, About::Token(token(&first, soft)));
    for _ in 0..2 {
        assert_eq!(
            ledger
                .record_report(&soft_bounce, &policy())
                .await
                .expect("report"),
            ReportEffect::Counted {
                address: mail(soft)
            }
        );
    }
    let never = FeedbackConfig {
        soft_bounces_to_suppress: 0,
        ..policy()
    };
    assert_eq!(
        ledger
            .record_report(&soft_bounce, &never)
            .await
            .expect("report"),
        ReportEffect::Counted {
            address: mail(soft)
        },
        "0 never suppresses"
    );
    assert_eq!(
        ledger
            .record_report(&soft_bounce, &policy())
            .await
            .expect("report"),
        suppressed(soft, Reason::SoftBounce),
        "the fourth within the window"
    );
    // An unsubscribe in campaign scope stops only its campaign.
    let per_campaign = FeedbackConfig {
        unsubscribe_scope: UnsubscribeScope::Campaign,
        ..policy()
    };
    assert_eq!(
        ledger
            .record_report(
                &report(Reason::Unsubscribe, About::Token(token(&first, unsub))),
                &per_campaign
            )
            .await
            .expect("report"),
        suppressed(unsub, Reason::Unsubscribe)
    );
    // A complaint found by the original Message-ID.
    let about = About::Message {
        campaign: first.clone(),
        user: UserId::parse(message).expect("id"),
    };
    assert_eq!(
        ledger
            .record_report(&report(Reason::Complaint, about), &policy())
            .await
            .expect("report"),
        suppressed(message, Reason::Complaint)
    );
    let all: Vec<EmailAddress> = users.iter().map(|u| mail(u)).collect();
    let all: Vec<&EmailAddress> = all.iter().collect();
    let in_first = ledger.suppressed(&first, &all, false).await.expect("check");
    assert_eq!(
        in_first,
        [hard, soft, unsub, message].map(mail).into_iter().collect()
    );
    let in_second = ledger
        .suppressed(&second, &all, false)
        .await
        .expect("check");
    assert_eq!(
        in_second,
        [hard, soft, message].map(mail).into_iter().collect(),
        "the unsubscribe was for the first campaign only"
    );
    let legal = ledger.suppressed(&first, &all, true).await.expect("check");
    assert!(
        !legal.contains(&mail(unsub)) && legal.contains(&mail(hard)),
        "a legal notice still goes to an unsubscribed address, not to a bounced one"
    );
    // A global unsubscribe by address alone, with the domain in any case.
    let by_address = About::Address(address(&format!("{message}@EXAMPLE.com")));
    assert_eq!(
        ledger
            .record_report(&report(Reason::Unsubscribe, by_address), &per_campaign)
            .await
            .expect("report"),
        suppressed(message, Reason::Unsubscribe)
    );
}

#[tokio::test]
async fn reports_suppress_as_the_policy_says_and_repeats_change_nothing_on_sqlite() {
    let (_dir, _url, ledger) = sqlite().await;
    reports_suppress_as_the_policy_says(&ledger).await;
}

#[tokio::test]
async fn reports_suppress_as_the_policy_says_and_repeats_change_nothing_on_postgres() {
    let ledger = Ledger::open(POSTGRES).expect("open");
    reports_suppress_as_the_policy_says(&ledger).await;
}

async fn complaints_pause_and_a_resume_forgives_them(ledger: &Ledger) {
    ledger.use_token_key(TokenKey::from_bytes(KEY));
    let campaign = campaign("complaints");
    ledger
        .record_campaign(&Campaign {
            id: campaign.clone(),
            template: "t".into(),
            recipients: 1000,
            deadline: None,
            totals: HashMap::from([((Channel::Email, "en".to_string()), 1000)]),
        })
        .await
        .expect("record");
    let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    delivered(ledger, &campaign, &users).await;
    let complain = |user: &str| report(Reason::Complaint, About::Token(token(&campaign, user)));
    for user in &users[..3] {
        ledger
            .record_report(&complain(user), &policy())
            .await
            .expect("report");
    }
    assert_eq!(
        ledger.state(&campaign, "t").await.expect("state"),
        CampaignState::Running,
        "3 in 1000 is not past 0.3%"
    );
    ledger
        .record_report(&complain(&users[3]), &policy())
        .await
        .expect("report");
    ledger
        .record_report(&complain(&users[3]), &policy())
        .await
        .expect("a repeat");
    assert_eq!(
        ledger.state(&campaign, "t").await.expect("state"),
        CampaignState::Paused
    );
    let status = ledger.status(&campaign).await.expect("status");
    assert_eq!(status.feedback.complaints, 4, "the repeat is not counted");
    assert!(
        status
            .paused_reason
            .as_deref()
            .is_some_and(|r| r.contains("0.40%")),
        "{status:?}"
    );
    ledger
        .set_state(&campaign, CampaignState::Running)
        .await
        .expect("resume");
    ledger
        .record_report(&complain(&users[3]), &policy())
        .await
        .expect("the same complaint again");
    let status = ledger.status(&campaign).await.expect("status");
    assert_eq!(status.paused_reason, None);
    assert_eq!(
        status.recorded.map(|(_, state, _)| state),
        Some(CampaignState::Running),
        "the same complaints do not pause it again"
    );
    ledger
        .record_report(&complain(&users[4]), &policy())
        .await
        .expect("a new complaint");
    let status = ledger.status(&campaign).await.expect("status");
    assert_eq!(
        status.recorded.map(|(_, state, _)| state),
        Some(CampaignState::Paused),
        "a new complaint at a rate still past the limit does"
    );
}

#[tokio::test]
async fn a_complaint_rate_past_the_limit_pauses_the_campaign_until_resumed_on_sqlite() {
    let (_dir, _url, ledger) = sqlite().await;
    complaints_pause_and_a_resume_forgives_them(&ledger).await;
}

#[tokio::test]
async fn a_complaint_rate_past_the_limit_pauses_the_campaign_until_resumed_on_postgres() {
    let ledger = Ledger::open(POSTGRES).expect("open");
    complaints_pause_and_a_resume_forgives_them(&ledger).await;
}
