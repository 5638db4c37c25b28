//! The ledger's rules, on SQLite files and (where a server answers on 127.0.0.1:5432) on
//! PostgreSQL: claims, fencing, leases, counters and the upgrade of a file an earlier release
//! wrote.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Instant;

use sqlx::migrate::Migrator;

use super::claim::CLAIM_EXPIRES;
use super::store::migrator;
use super::*;
use crate::batch::UserId;
use crate::channel::Channel;

pub(super) fn pair(user: &str, channel: Channel) -> Pair {
    Pair {
        user_id: UserId::parse(user).expect("user id"),
        channel,
        locale: "en".into(),
        address: None,
    }
}

fn entry(campaign: &CampaignId, user: &str, channel: Channel, mark: Mark) -> Entry {
    Entry {
        campaign: campaign.clone(),
        pair: pair(user, channel),
        mark,
        error: None,
    }
}

fn key(user: &str, channel: Channel) -> (UserId, Channel) {
    (UserId::parse(user).expect("id"), channel)
}

pub(super) fn campaign(name: &str) -> CampaignId {
    CampaignId::parse(&format!("{name}-{}", fastrand::u64(..))).expect("id")
}

pub(super) async fn sqlite() -> (tempfile::TempDir, String, Arc<Ledger>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let ledger = Ledger::open(&url).expect("open");
    (dir, url, ledger)
}

pub(super) const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Pretends `ledger` has watched `other`'s beat stand still for `CLAIM_EXPIRES`.
fn watched_long_ago(ledger: &Ledger, other: &Ledger, beat: i64) {
    let since = Instant::now()
        .checked_sub(CLAIM_EXPIRES)
        .expect("monotonic clock past CLAIM_EXPIRES");
    ledger.watch.seen_since(&other.lease.owner(), beat, since);
}

#[tokio::test]
async fn campaign_state_changes_are_checked_and_a_cancelled_campaign_stays_cancelled() {
    let (_dir, _url, ledger) = sqlite().await;
    let campaign = CampaignId::parse("c").expect("id");
    assert!(matches!(
        ledger.set_state(&campaign, CampaignState::Paused).await,
        Err(LedgerError::UnknownCampaign(_))
    ));
    ledger
        .record_campaign(&Campaign {
            id: campaign.clone(),
            template: "t".into(),
            recipients: 2,
            deadline: None,
            totals: HashMap::from([((Channel::Email, "en".to_string()), 2)]),
        })
        .await
        .expect("record");
    ledger
        .set_state(&campaign, CampaignState::Cancelled)
        .await
        .expect("cancel");
    assert!(matches!(
        ledger.set_state(&campaign, CampaignState::Running).await,
        Err(LedgerError::Cancelled(_))
    ));
    let status = ledger.status(&campaign).await.expect("status");
    assert_eq!(
        status.recorded,
        Some(("t".to_string(), CampaignState::Cancelled, 2))
    );
    assert_eq!(status.total().pending(), 2);
}

#[tokio::test]
async fn a_campaign_first_seen_in_a_batch_is_recorded_so_status_and_pause_work_for_it() {
    let (_dir, _url, ledger) = sqlite().await;
    let campaign = campaign("direct");
    assert_eq!(
        ledger.state(&campaign, "xiami").await.expect("state"),
        CampaignState::Running
    );
    ledger
        .set_state(&campaign, CampaignState::Paused)
        .await
        .expect("pause works for it");
    let claims = ledger
        .claim(&campaign, &[pair("a", Channel::Push)])
        .await
        .expect("claim");
    ledger
        .record(
            &claims,
            entry(&campaign, "a", Channel::Push, Mark::Delivered),
        )
        .await
        .expect("record");
    let status = ledger.status(&campaign).await.expect("status");
    assert!(!status.planned);
    assert_eq!(status.total().total, 1);
    assert_eq!(status.total().delivered, 1);
    assert!(
        status.to_string().contains("first seen in a batch"),
        "{status}"
    );
}

async fn claims_and_fencing(ledger: &Arc<Ledger>, other: &Arc<Ledger>) {
    let campaign = campaign("fence");
    // Each pair once, however often the batch lists it.
    let pairs = [
        pair("a", Channel::Email),
        pair("a", Channel::Email),
        pair("b", Channel::Email),
        pair(" b", Channel::Email),
    ];
    let first = ledger.claim(&campaign, &pairs).await.expect("claim");
    assert!(first.all_ours());
    assert!(ledger.may_send(&first));
    assert_eq!(
        ledger
            .record(
                &first,
                entry(&campaign, "a", Channel::Email, Mark::Delivered)
            )
            .await
            .expect("record"),
        Recorded::Written
    );
    // `b` is still claimed by a live worker: another may not send it.
    let second = other.claim(&campaign, &pairs).await.expect("claim");
    assert!(second.delivered.contains(&key("a", Channel::Email)));
    assert!(second.held.contains(&key("b", Channel::Email)));
    other.finished(second.token);
    // The first worker stalls: its beat stands still, and the other takes `b` over.
    watched_long_ago(other, ledger, 0);
    let taken = other.claim(&campaign, &pairs).await.expect("claim");
    assert!(taken.held.is_empty(), "{taken:?}");
    // The stalled worker wakes: its outcome no longer reaches the row, and its next renewal
    // finds its name gone: claims under it never start a send again.
    assert_eq!(
        ledger
            .record(
                &first,
                entry(&campaign, "b", Channel::Email, Mark::Delivered)
            )
            .await
            .expect("record"),
        Recorded::FencedOut
    );
    ledger.beat().await;
    assert!(!ledger.may_send(&first));
    assert_ne!(ledger.lease.owner(), first.owner, "a new name");
    assert_eq!(
        other
            .record(&taken, entry(&campaign, "b", Channel::Email, Mark::Failed))
            .await
            .expect("record"),
        Recorded::Written
    );
    let status = ledger.status(&campaign).await.expect("status");
    assert_eq!(
        (status.total().delivered, status.total().failed),
        (1, 1),
        "{status}"
    );
    ledger.finished(first.token);
    other.finished(taken.token);
    // A failed pair is free to claim again, and leaves the failed count as it is claimed.
    let retry = ledger.claim(&campaign, &pairs).await.expect("claim");
    assert_eq!(retry.delivered.len(), 1);
    assert!(retry.held.is_empty());
    let status = ledger.status(&campaign).await.expect("status");
    assert_eq!((status.total().failed, status.total().pending()), (0, 1));
}

#[tokio::test]
async fn outcomes_are_written_only_by_the_claims_holder_and_a_stalled_worker_loses_its_lease_on_sqlite()
 {
    let (_dir, url, ledger) = sqlite().await;
    let other = Ledger::open(&url).expect("open");
    claims_and_fencing(&ledger, &other).await;
}

#[tokio::test]
async fn outcomes_are_written_only_by_the_claims_holder_and_a_stalled_worker_loses_its_lease_on_postgres()
 {
    let ledger = Ledger::open(POSTGRES).expect("open");
    let other = Ledger::open(POSTGRES).expect("open");
    claims_and_fencing(&ledger, &other).await;
}

#[tokio::test]
async fn a_closed_ledger_leaves_no_worker_behind() {
    let (_dir, url, ledger) = sqlite().await;
    let campaign = campaign("close");
    ledger
        .claim(&campaign, &[pair("a", Channel::Push)])
        .await
        .expect("claim");
    let other = Ledger::open(&url).expect("open");
    let held = other
        .claim(&campaign, &[pair("a", Channel::Push)])
        .await
        .expect("claim");
    assert_eq!(
        held.held.len(),
        1,
        "the first process is registered and beating"
    );
    other.finished(held.token);
    ledger.close().await;
    let taken = other
        .claim(&campaign, &[pair("a", Channel::Push)])
        .await
        .expect("claim");
    assert!(
        taken.all_ours(),
        "a closed process holds nothing: {taken:?}"
    );
}

#[tokio::test]
async fn rows_this_worker_left_sending_are_held_while_their_batch_runs_then_taken_back() {
    let (_dir, _url, ledger) = sqlite().await;
    let campaign = campaign("own");
    let pairs = [pair("a", Channel::Email)];
    let first = ledger.claim(&campaign, &pairs).await.expect("claim");
    let while_running = ledger.claim(&campaign, &pairs).await.expect("claim");
    assert_eq!(while_running.held.len(), 1, "the first batch is on it");
    ledger.finished(while_running.token);
    ledger.finished(first.token);
    let after = ledger.claim(&campaign, &pairs).await.expect("claim");
    assert!(after.all_ours(), "{after:?}");
}

#[tokio::test]
async fn a_beat_that_moves_keeps_the_rows_of_its_worker_and_a_clean_stop_frees_them_at_once() {
    let (_dir, url, ledger) = sqlite().await;
    let other = Ledger::open(&url).expect("open");
    let campaign = campaign("beats");
    let pairs = [pair("a", Channel::Push)];
    ledger.claim(&campaign, &pairs).await.expect("claim");
    watched_long_ago(&other, &ledger, 0);
    ledger.beat().await;
    let held = other.claim(&campaign, &pairs).await.expect("claim");
    assert_eq!(held.held.len(), 1, "it beat since it was watched");
    other.finished(held.token);
    ledger
        .store
        .retire(&ledger.lease.owner())
        .await
        .expect("retire");
    let taken = other.claim(&campaign, &pairs).await.expect("claim");
    assert!(taken.all_ours(), "a worker that stopped holds nothing");
}

#[tokio::test]
async fn status_reads_counters_held_and_unknown_included_and_given_up_pairs_move_to_dead() {
    let (_dir, _url, ledger) = sqlite().await;
    let campaign = campaign("counts");
    ledger
        .record_campaign(&Campaign {
            id: campaign.clone(),
            template: "t".into(),
            recipients: 5,
            deadline: None,
            totals: HashMap::from([((Channel::Email, "en".to_string()), 5)]),
        })
        .await
        .expect("record");
    let pairs: Vec<Pair> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|u| pair(u, Channel::Email))
        .collect();
    let claims = ledger.claim(&campaign, &pairs).await.expect("claim");
    let marks = [
        ("a", Mark::Delivered),
        ("b", Mark::Unknown),
        ("c", Mark::Held),
        ("d", Mark::Failed),
    ];
    for (user, mark) in marks {
        ledger
            .record(&claims, entry(&campaign, user, Channel::Email, mark))
            .await
            .expect("record");
    }
    ledger
        .give_up(vec![entry(&campaign, "d", Channel::Email, Mark::Dead)])
        .await
        .expect("give up");
    let total = ledger.status(&campaign).await.expect("status").total();
    assert_eq!(
        (
            total.delivered,
            total.unknown,
            total.held,
            total.failed,
            total.dead,
            total.pending()
        ),
        (1, 1, 1, 0, 1, 1)
    );
    let status = ledger.status(&campaign).await.expect("status");
    assert_eq!(status.last_minute, 1);
}

#[tokio::test]
async fn a_file_written_by_the_earlier_release_opens_with_its_rows_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    {
        let old = Migrator::with_migrations(migrator(true).iter().take(3).cloned().collect());
        let mut conn = sqlx::ConnectOptions::connect(
            &sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                .expect("url")
                .create_if_missing(true),
        )
        .await
        .expect("connect");
        old.run(&mut conn).await.expect("the earlier schema");
        sqlx::raw_sql(
            "INSERT INTO campaigns VALUES ('old', 't', 3, NULL, 'running', 0);
             INSERT INTO campaign_totals VALUES ('old', 'email', 'en', 3);
             INSERT INTO workers VALUES ('gone-worker', 0);
             INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, owner, updated_at, token)
             VALUES ('old', 'a', 'email', 'en', 'delivered', 1, NULL, 0, NULL),
                    ('old', 'b', 'email', 'en', 'dead', 2, NULL, 0, NULL),
                    ('old', 'c', 'email', 'en', 'sending', 0, 'gone-worker', 0, 7);",
        )
        .execute(&mut conn)
        .await
        .expect("rows as the earlier release wrote them");
    }
    let ledger = Ledger::open(&url).expect("open");
    let campaign = CampaignId::parse("old").expect("id");
    let total = ledger.status(&campaign).await.expect("status").total();
    assert_eq!(
        (total.total, total.delivered, total.dead, total.pending()),
        (3, 1, 1, 1)
    );
    // The row the earlier worker left `sending` is taken once its beat has stood still.
    let c = [pair("c", Channel::Email)];
    let held = ledger.claim(&campaign, &c).await.expect("claim");
    assert_eq!(held.held.len(), 1);
    ledger.finished(held.token);
    let since = Instant::now().checked_sub(CLAIM_EXPIRES).expect("clock");
    ledger.watch.seen_since("gone-worker", 0, since);
    let taken = ledger.claim(&campaign, &c).await.expect("claim");
    assert!(taken.all_ours(), "{taken:?}");
}

async fn concurrent_claims_of_the_same_pairs_give_each_pair_to_one(ledger: &Arc<Ledger>) {
    let campaign = campaign("race");
    let pairs: Vec<Pair> = (0..200)
        .map(|i| pair(&format!("u{i}"), Channel::Push))
        .collect();
    let claims = futures::future::try_join_all((0..8).map(|_| ledger.claim(&campaign, &pairs)))
        .await
        .expect("claims");
    let ours: usize = claims.iter().map(|c| pairs.len() - c.held.len()).sum();
    assert_eq!(ours, pairs.len(), "each pair goes to exactly one claim");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_claims_of_the_same_pairs_give_each_pair_to_one_on_sqlite() {
    let (_dir, _url, ledger) = sqlite().await;
    concurrent_claims_of_the_same_pairs_give_each_pair_to_one(&ledger).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_claims_of_the_same_pairs_give_each_pair_to_one_on_postgres() {
    let ledger = Ledger::open(POSTGRES).expect("open");
    for _ in 0..5 {
        concurrent_claims_of_the_same_pairs_give_each_pair_to_one(&ledger).await;
    }
}
