//! The push channel against a recording HTTP gateway and a temporary outbox file.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use serde_json::json;
use sunset::Direction;
use sunset::batch::{CampaignId, Recipient, UserId};
use sunset::channel::push::{JsonlOutbox, PushGateway, PushSender, PushToken};
use sunset::channel::{Delivery, Outcome, Sender};
use sunset::config::{PushConfig, PushTransport};
use sunset::render::{Notice, PushNotice};

const TIMEOUT: Duration = Duration::from_secs(5);

/// What one push delivery borrows from.
struct Fixture {
    campaign_id: CampaignId,
    recipient: Recipient,
    notice: Notice,
}

impl Fixture {
    /// A notice for `user_id` in Arabic (right to left).
    fn arabic(user_id: &str) -> Fixture {
        Fixture {
            campaign_id: CampaignId::parse("xiami-shutdown-2021").expect("campaign id"),
            recipient: Recipient {
                user_id: UserId::parse(user_id).expect("user id"),
                email: None,
                locale: Some("ar-EG".into()),
                name: Some("ليلى".into()),
                vars: Default::default(),
            },
            notice: Notice {
                locale: "ar".into(),
                dir: Direction::Rtl,
                email: None,
                push: Some(PushNotice {
                    title: "شيامي تغلق أبوابها".into(),
                    body: "صدّري قوائمك قبل 5 فبراير".into(),
                }),
            },
        }
    }

    fn delivery(&self) -> Delivery<'_> {
        Delivery {
            campaign_id: &self.campaign_id,
            recipient: &self.recipient,
            notice: &self.notice,
        }
    }
}

fn gateway(url: &str, token: Option<&str>) -> PushGateway {
    PushGateway::new(url, TIMEOUT, token.map(PushToken::new)).expect("gateway")
}

fn assert_transient(outcome: &Outcome) -> (&str, Option<Duration>) {
    match outcome {
        Outcome::Transient {
            reason,
            retry_after,
            ..
        } => (reason, *retry_after),
        other => panic!("expected a transient outcome, got {other:?}"),
    }
}

#[tokio::test]
async fn a_delivered_push_carries_the_contract_json_and_headers() {
    let sink = PushSink::start().await;
    let gateway = gateway(&sink.url(), Some("t0ken"));
    let fixture = Fixture::arabic("u-1001");

    let outcome = gateway.send(fixture.delivery()).await;

    assert_eq!(outcome, Outcome::Delivered);
    let requests = sink.wait_for(1, TIMEOUT).await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        request.body,
        json!({
            "user_id": "u-1001",
            "campaign_id": "xiami-shutdown-2021",
            "locale": "ar",
            "dir": "rtl",
            "title": "شيامي تغلق أبوابها",
            "body": "صدّري قوائمك قبل 5 فبراير",
        })
    );
    assert_eq!(
        request.header("idempotency-key"),
        Some("xiami-shutdown-2021:u-1001:push")
    );
    assert_eq!(request.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(request.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn without_a_token_no_authorization_header_is_sent() {
    let sink = PushSink::start().await;
    let fixture = Fixture::arabic("u-1");

    let outcome = gateway(&sink.url(), None).send(fixture.delivery()).await;

    assert_eq!(outcome, Outcome::Delivered);
    let requests = sink.wait_for(1, TIMEOUT).await;
    assert_eq!(requests[0].header("authorization"), None);
}

#[tokio::test]
async fn a_user_id_outside_ascii_still_makes_an_idempotency_key() {
    let sink = PushSink::start().await;
    let fixture = Fixture::arabic("ليلى-7");

    let outcome = gateway(&sink.url(), None).send(fixture.delivery()).await;

    assert_eq!(outcome, Outcome::Delivered);
    let requests = sink.wait_for(1, TIMEOUT).await;
    assert_eq!(
        requests[0].header_utf8("idempotency-key").as_deref(),
        Some("xiami-shutdown-2021:ليلى-7:push")
    );
}

#[tokio::test]
async fn sends_share_one_pooled_connection() {
    let sink = PushSink::start().await;
    let gateway = gateway(&sink.url(), None);

    for n in 0..20 {
        let fixture = Fixture::arabic(&format!("u-{n}"));
        assert_eq!(gateway.send(fixture.delivery()).await, Outcome::Delivered);
    }

    let peers: BTreeSet<_> = sink.requests().iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 1, "connections used: {peers:?}");
}

#[tokio::test]
async fn too_many_requests_with_retry_after_is_transient_with_that_delay() {
    let sink = PushSink::start().await;
    sink.respond("u-429", 429, Some(7));
    let fixture = Fixture::arabic("u-429");

    let outcome = gateway(&sink.url(), None).send(fixture.delivery()).await;

    let (reason, retry_after) = assert_transient(&outcome);
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert!(reason.contains("429"), "{reason}");
    assert!(
        matches!(
            outcome,
            Outcome::Transient {
                throttled: true,
                ..
            }
        ),
        "429 means too fast: the gateway's rate comes down"
    );
}

#[tokio::test]
async fn service_unavailable_is_transient() {
    let sink = PushSink::start().await;
    sink.respond("u-503", 503, None);
    let fixture = Fixture::arabic("u-503");

    let outcome = gateway(&sink.url(), None).send(fixture.delivery()).await;

    let (reason, retry_after) = assert_transient(&outcome);
    assert_eq!(retry_after, None);
    assert!(reason.contains("503"), "{reason}");
    assert!(matches!(
        outcome,
        Outcome::Transient {
            throttled: false,
            ..
        }
    ));
}

#[tokio::test]
async fn request_timeout_from_the_gateway_is_transient() {
    let sink = PushSink::start().await;
    sink.respond("u-408", 408, None);
    let fixture = Fixture::arabic("u-408");

    let outcome = gateway(&sink.url(), None).send(fixture.delivery()).await;

    assert_transient(&outcome);
}

#[tokio::test]
async fn bad_request_is_permanent_with_the_status_and_body() {
    let sink = PushSink::start().await;
    sink.respond("u-400", 400, None);
    let fixture = Fixture::arabic("u-400");

    let outcome = gateway(&sink.url(), None).send(fixture.delivery()).await;

    let Outcome::Permanent { reason } = outcome else {
        panic!("expected a permanent outcome, got {outcome:?}");
    };
    assert!(reason.contains("400"), "{reason}");
    assert!(reason.contains("sink answers 400"), "{reason}");
}

#[tokio::test]
async fn a_wrong_path_is_permanent() {
    let sink = PushSink::start().await;
    let url = sink.url().replace("/push", "/nowhere");
    let fixture = Fixture::arabic("u-1");

    let outcome = gateway(&url, None).send(fixture.delivery()).await;

    assert!(
        matches!(&outcome, Outcome::Permanent { reason } if reason.contains("404")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_unreachable() {
    // A port that was free a moment ago: nothing listens there now.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let fixture = Fixture::arabic("u-1");

    let outcome = gateway(&format!("http://127.0.0.1:{port}/push"), None)
        .send(fixture.delivery())
        .await;

    let Outcome::Unreachable { reason } = outcome else {
        panic!("expected unreachable, got {outcome:?}");
    };
    assert!(reason.contains("cannot connect"), "{reason}");
}

#[tokio::test]
async fn a_gateway_that_takes_the_request_and_never_answers_leaves_the_outcome_unknown() {
    let sink = PushSink::start().await;
    sink.stall("u-slow");
    let timeout = Duration::from_millis(300);
    let gateway = PushGateway::new(&sink.url(), timeout, None).expect("gateway");
    let fixture = Fixture::arabic("u-slow");

    let started = Instant::now();
    let outcome = gateway.send(fixture.delivery()).await;
    let took = started.elapsed();

    let Outcome::Unknown { reason } = outcome else {
        panic!("expected an unknown outcome, got {outcome:?}");
    };
    assert!(reason.contains("300 ms"), "{reason}");
    assert!(reason.contains("sent"), "{reason}");
    assert!(took >= timeout, "gave up early: {took:?}");
    assert!(took < timeout * 5, "took {took:?}");
    assert_eq!(sink.requests().len(), 1, "sent once");
}

#[tokio::test]
async fn a_gateway_that_reads_the_request_and_hangs_up_leaves_the_outcome_unknown() {
    // Arrange: reads one whole request (head and Content-Length body), then closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/push", listener.local_addr().expect("address"));
    let (read, requests) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .and_then(|value| value.trim().parse().ok())
                    .expect("a Content-Length");
                if seen.len() >= end + 4 + length {
                    break;
                }
            }
            match tokio::io::AsyncReadExt::read(&mut socket, &mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = read.send(seen);
    });
    let fixture = Fixture::arabic("u-1");

    // Act
    let outcome = gateway(&url, None).send(fixture.delivery()).await;

    // Assert
    let Outcome::Unknown { reason } = outcome else {
        panic!("expected an unknown outcome, got {outcome:?}");
    };
    assert!(reason.contains("before a status"), "{reason}");
    let request = requests.await.expect("the gateway read the whole request");
    assert!(
        String::from_utf8_lossy(&request).contains("idempotency-key: xiami-shutdown-2021:u-1:push"),
        "the request carried its Idempotency-Key"
    );
}

#[tokio::test]
async fn a_notice_without_a_push_part_is_permanent_and_nothing_is_sent() {
    let sink = PushSink::start().await;
    let mut fixture = Fixture::arabic("u-1");
    fixture.notice.push = None;

    let outcome = gateway(&sink.url(), None).send(fixture.delivery()).await;

    assert_eq!(outcome, Outcome::permanent("no push part rendered"));
    assert!(sink.requests().is_empty());
}

#[tokio::test]
async fn the_file_transport_appends_one_json_line_per_send_never_interleaved() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested/outbox/push.jsonl");
    let config = PushConfig {
        transport: PushTransport::File,
        outbox: path.clone(),
        ..PushConfig::default()
    };
    let sender = PushSender::from_config(&config).expect("file transport");
    // Long bodies make any interleaving of concurrent writes show.
    let fixtures: Vec<Fixture> = (0..200)
        .map(|n| {
            let mut fixture = Fixture::arabic(&format!("u-{n}"));
            if let Some(push) = &mut fixture.notice.push {
                push.body = format!("{n}:").repeat(2_000);
            }
            fixture
        })
        .collect();

    let outcomes =
        futures::future::join_all(fixtures.iter().map(|f| sender.send(f.delivery()))).await;

    assert!(
        outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{outcomes:?}"
    );
    let text = std::fs::read_to_string(&path).expect("read outbox");
    assert!(text.ends_with('\n'));
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        let user_id = value["user_id"].as_str().expect("user_id").to_string();
        let n = user_id.trim_start_matches("u-");
        assert_eq!(value["body"], json!(format!("{n}:").repeat(2_000)));
        assert_eq!(value["dir"], "rtl");
        assert_eq!(value["campaign_id"], "xiami-shutdown-2021");
        let keys: BTreeSet<_> = value.as_object().expect("object").keys().cloned().collect();
        let expected: BTreeSet<String> =
            ["user_id", "campaign_id", "locale", "dir", "title", "body"]
                .map(String::from)
                .into();
        assert_eq!(keys, expected);
        seen.insert(user_id);
    }
    assert_eq!(seen.len(), 200);
    assert_eq!(text.lines().count(), 200);
}

#[tokio::test]
async fn the_file_transport_appends_to_an_existing_outbox() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("push.jsonl");
    std::fs::write(&path, "{\"earlier\":true}\n").expect("seed outbox");
    let outbox = JsonlOutbox::open(&path).expect("outbox");
    let fixture = Fixture::arabic("u-1");

    assert_eq!(outbox.send(fixture.delivery()).await, Outcome::Delivered);

    let text = std::fs::read_to_string(&path).expect("read outbox");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], "{\"earlier\":true}");
    let value: serde_json::Value = serde_json::from_str(lines[1]).expect("JSON line");
    assert_eq!(value["user_id"], "u-1");
}

#[tokio::test]
async fn from_config_builds_an_http_gateway_for_the_configured_url() {
    let sink = PushSink::start().await;
    let config = PushConfig {
        transport: PushTransport::Http,
        url: sink.url(),
        timeout_ms: 2_000,
        ..PushConfig::default()
    };
    // Whether SUNSET_PUSH_TOKEN is set in this environment is not asserted: tests run in
    // parallel and must not change the process environment.
    let sender = PushSender::from_config(&config).expect("http transport");
    assert!(matches!(sender, PushSender::Http(_)), "{sender:?}");
    let fixture = Fixture::arabic("u-1");

    assert_eq!(sender.send(fixture.delivery()).await, Outcome::Delivered);
    assert_eq!(sink.wait_for(1, TIMEOUT).await.len(), 1);
}

#[test]
fn from_config_rejects_a_zero_timeout_and_a_bad_url() {
    let zero = PushConfig {
        transport: PushTransport::Http,
        timeout_ms: 0,
        ..PushConfig::default()
    };
    assert!(PushSender::from_config(&zero).is_err());
    let bad = PushConfig {
        transport: PushTransport::Http,
        url: "127.0.0.1:8025/push".into(),
        ..PushConfig::default()
    };
    assert!(PushSender::from_config(&bad).is_err());
}
