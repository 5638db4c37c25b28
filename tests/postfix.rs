//! The whole bounce loop with a real relay: sunset sends through a Postfix instance of the
//! test's own with a VERP envelope sender; Postfix accepts `nobody@users.test`, fails it
//! permanently and bounces it to `b-<token>@bounces.test`, which it routes to
//! `sunset feedback`'s SMTP listener; the hard bounce suppresses the address, and the next
//! campaign to the same audience records it `suppressed` and does not send it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use common::feedback_service::FeedbackService;
use common::postfix::{Postfix, UNKNOWN};
use common::smtp_sink::SmtpSink;
use common::{TestEnv, campaign_args, unique};
use sunset::Channel;
use sunset::batch::{CampaignId, EmailAddress};
use sunset::ledger::Ledger;

const GOOD: &str = "good@users.test";

#[tokio::test(flavor = "multi_thread")]
async fn a_postfix_bounce_to_the_verp_address_suppresses_the_address_for_the_next_campaign() {
    let sink = SmtpSink::start();
    let env = TestEnv::with_broker(
        "[email]\ntransport = \"smtp\"\n[ledger]\nurl = \"sqlite://ledger.db\"\n\
         [feedback]\nbounce_domain = \"bounces.test\"\nsecret_file = \"secret\"\n",
    );
    let secret = env.write("secret", "the bounce loop's token key, long enough");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    env.write(
        "audience.csv",
        &format!("user_id,email,locale,name\nu-good,{GOOD},en,Good\nu-gone,{UNKNOWN},en,Gone\n"),
    );
    let service = FeedbackService::start(&env, &[]);
    let postfix = tokio::task::block_in_place(|| {
        Postfix::start(
            &format!("127.0.0.1:{}", sink.port()),
            "bounces.test",
            &service.smtp,
        )
    });
    let relay = [("SUNSET__EMAIL__URL", postfix.url())];
    let relay: Vec<(&str, &str)> = relay.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let first = unique("bounce-loop");
    let args = campaign_args("send", &first, &["--channels", "email"]);
    let run = tokio::task::block_in_place(|| env.sunset_with_env(&args, &relay));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout(), run.stderr());
    let delivered = sink.wait_for_async(1, Duration::from_secs(30)).await;
    let verp = &delivered[0].from;
    assert!(
        verp.starts_with("b-") && verp.ends_with("@bounces.test"),
        "VERP envelope sender: {verp}"
    );

    let ledger = Ledger::open(&format!(
        "sqlite://{}",
        env.path().join("ledger.db").display()
    ))
    .expect("ledger");
    let nobody = EmailAddress::parse(UNKNOWN).expect("address");
    let later = CampaignId::parse(&unique("later")).expect("campaign");
    let since = Instant::now();
    while !ledger
        .suppressed(&later, &[&nobody], false)
        .await
        .expect("suppressed")
        .contains(&nobody)
    {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "no suppression 30 s after the send; Postfix's log:\n{}",
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let second = unique("bounce-loop-again");
    let args = campaign_args("send", &second, &["--channels", "email"]);
    let run = tokio::task::block_in_place(|| env.sunset_with_env(&args, &relay));
    let status = ledger
        .status(&CampaignId::parse(&second).expect("campaign"))
        .await
        .expect("status");
    let email = status.channels()[&Channel::Email];
    assert_eq!(
        (email.delivered, email.suppressed),
        (1, 1),
        "{}\n{}",
        run.stdout(),
        run.stderr()
    );
    let log = postfix.log();
    assert_eq!(
        log.matches(&format!("to=<{UNKNOWN}>")).count(),
        1,
        "Postfix saw the suppressed address once:\n{log}"
    );
    assert_eq!(sink.messages_to(GOOD).len(), 2);
    ledger.close().await;
}
