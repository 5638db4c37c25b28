//! `sunset enqueue`: validation before anything is published, and what is published.

mod common;

use std::fmt::Write as _;

use common::TestEnv;
use lapin::options::BasicGetOptions;
use sunset::batch::Batch;
use sunset::broker::attempt_of;

/// `enqueue` of campaign `c1`; `extra` names the audience file.
fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    common::notice_args("enqueue", "c1", extra)
}

/// Takes every message off the work queue: (batch, attempt header).
async fn work_queue(env: &TestEnv) -> Vec<(Batch, u32)> {
    env.broker().await.close().await; // declares the queues in case nothing was published
    let connection =
        lapin::Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Default::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut batches = Vec::new();
    while let Some(message) = channel
        .basic_get(
            env.names().work.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        let batch = Batch::decode(&message.delivery.data).expect("a batch");
        batches.push((batch, attempt_of(&message.delivery.properties)));
    }
    let _ = connection.close(200, "bye".into()).await;
    batches
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_have_deterministic_ids_the_deadline_and_the_campaign_vars() {
    let env = TestEnv::with_broker("");
    let mut csv = String::from("user_id,email,locale,name\n");
    for i in 1..=12 {
        let _ = writeln!(csv, "u{i},u{i}@example.com,zh-TW,");
    }
    env.write("audience.csv", &csv);
    env.write("vars.json", r#"{"shutdown_at": "2021-02-05T00:00:00+08:00", "shutdown_zone": "Asia/Shanghai", "help_url": "https://h.example/", "export_url": "https://x.example/e", "successor_url": "https://c.example"}"#);
    let run = env
        .sunset_async(&args(&[
            "--audience",
            "audience.csv",
            "--batch-size",
            "5",
            "--vars",
            "vars.json",
            "--deadline",
            "2099-02-05T00:00:00+08:00",
            "--channels",
            "push",
        ]))
        .await
        .expect_code(0);
    assert!(
        run.stdout()
            .contains("12 recipients in 3 batches, 0 rejected"),
        "{}",
        run.stdout()
    );
    let batches = work_queue(&env).await;
    let ids: Vec<&str> = batches.iter().map(|(b, _)| b.batch_id.as_str()).collect();
    assert_eq!(ids, ["c1:000001", "c1:000002", "c1:000003"]);
    let sizes: Vec<usize> = batches.iter().map(|(b, _)| b.recipients.len()).collect();
    assert_eq!(sizes, [5, 5, 2]);
    let (first, attempt) = &batches[0];
    assert_eq!(*attempt, 1);
    assert_eq!(
        first.deadline.map(|d| d.to_rfc3339()).as_deref(),
        Some("2099-02-05T00:00:00+08:00")
    );
    assert_eq!(first.vars["export_url"], "https://x.example/e");
    assert_eq!(first.channels, [sunset::Channel::Push]);
    assert_eq!(first.recipients[0].locale.as_deref(), Some("zh-TW"));
    assert_eq!(
        first.recipients[0].name, None,
        "an empty CSV cell is no value"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jsonl_rows_are_checked_with_their_line_numbers() {
    let env = TestEnv::with_broker("");
    env.write(
        "audience.jsonl",
        "{\"user_id\": \"a\", \"email\": \"a@example.com\"}\n\n{\"user_id\": \"b\", \"email\": 5}\n{not json}\n{\"user_id\": \"c\", \"phone\": \"1\"}\n",
    );
    let err = env
        .sunset_async(&args(&["--audience", "audience.jsonl"]))
        .await
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("audience.jsonl: line 3: invalid JSON"),
        "{err}"
    );
    assert!(
        err.contains("audience.jsonl: line 4: invalid JSON"),
        "{err}"
    );
    assert!(
        err.contains("audience.jsonl: line 5: invalid JSON: unknown field `phone`"),
        "{err}"
    );
    assert!(work_queue(&env).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_invalid_publishes_the_good_rows_and_still_lists_the_bad() {
    let env = TestEnv::with_broker("");
    env.write(
        "audience.csv",
        "user_id,email\nu1,a@example.com\nu2,broken@\nu3,\n",
    );
    let run = env
        .sunset_async(&args(&["--audience", "audience.csv", "--skip-invalid"]))
        .await
        .expect_code(0);
    assert!(
        run.stderr()
            .contains("line 3: `broken@` is not an email address"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stdout()
            .contains("2 recipients in 1 batches, 1 rejected"),
        "{}",
        run.stdout()
    );
    let batches = work_queue(&env).await;
    let users: Vec<&str> = batches[0]
        .0
        .recipients
        .iter()
        .map(|r| r.user_id.as_str())
        .collect();
    assert_eq!(users, ["u1", "u3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn more_than_twenty_bad_rows_prints_twenty_and_a_count() {
    let env = TestEnv::with_broker("");
    let mut csv = String::from("user_id,email\n");
    for i in 0..25 {
        let _ = writeln!(csv, "u{i},bad-{i}");
    }
    env.write("audience.csv", &csv);
    let err = env
        .sunset_async(&args(&["--audience", "audience.csv"]))
        .await
        .expect_code(2)
        .stderr();
    assert_eq!(err.matches("is not an email address").count(), 20, "{err}");
    assert!(err.contains("… and 5 more rejected rows"), "{err}");
    assert!(
        err.contains("25 invalid row(s); nothing was published"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_validates_and_counts_but_publishes_nothing() {
    let env = TestEnv::with_broker("");
    env.write("audience.csv", "user_id\nu1\nu2\nu3\n");
    let run = env
        .sunset_async(&args(&[
            "--audience",
            "audience.csv",
            "--batch-size",
            "2",
            "--dry-run",
        ]))
        .await
        .expect_code(0);
    assert!(
        run.stdout().contains("would be 3 recipients in 2 batches"),
        "{}",
        run.stdout()
    );
    assert!(work_queue(&env).await.is_empty());
}

#[test]
fn bad_arguments_exit_2_with_the_reason() {
    let env = TestEnv::new();
    env.write("audience.csv", "user_id\nu1\n");
    env.write("audience.txt", "u1\n");
    env.write("bad-date.json", r#"{"shutdown_at": "5 Feb"}"#);
    let cases: [(&[&str], &str); 8] = [
        (
            &["--audience", "audience.txt"],
            "must be a .csv or .jsonl file",
        ),
        (
            &["--audience", "audience.csv", "--deadline", "tomorrow"],
            "--deadline `tomorrow`: not RFC 3339",
        ),
        (
            &["--audience", "audience.csv", "--batch-size", "0"],
            "--batch-size must be at least 1",
        ),
        (
            &["--audience", "audience.csv", "--vars", "bad-date.json"],
            "the campaign variables do not render",
        ),
        (
            &["--audience", "audience.csv", "--channels", "fax"],
            "unknown channel `fax`",
        ),
        (&["--audience", "missing.csv"], "missing.csv"),
        (
            &["--audience", "audience.csv", "--delimiter", ":"],
            "`:` is not a delimiter",
        ),
        (
            &["--audience", "audience.txt", "--delimiter", ";"],
            "must be a .csv or .jsonl file",
        ),
    ];
    for (extra, expected) in cases {
        let run = env.sunset(&args(extra));
        let err = run.stderr();
        assert!(
            err.contains(expected),
            "{extra:?}: missing {expected:?} in:\n{err}"
        );
        assert_eq!(run.code(), 2, "{extra:?}: {err}");
    }
    let err = env
        .sunset(&common::campaign_args("enqueue", "has space", &[]))
        .expect_code(2)
        .stderr();
    assert!(err.contains("--campaign: "), "{err}");
}

#[test]
fn a_csv_with_an_unknown_column_is_refused_at_line_1() {
    let env = TestEnv::new();
    env.write("audience.csv", "user_id,phone\nu1,123\n");
    let err = env
        .sunset(&args(&["--audience", "audience.csv"]))
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("audience.csv: line 1: unknown column `phone`"),
        "{err}"
    );
}

#[test]
fn a_template_that_fails_the_check_is_refused_before_reading_the_audience() {
    let env = TestEnv::new();
    std::fs::remove_file(env.template_file("ar/push_body.hbs")).expect("rm");
    env.write("audience.csv", "user_id\nu1\n");
    let err = env
        .sunset(&args(&["--audience", "audience.csv"]))
        .expect_code(2)
        .stderr();
    assert!(err.contains("fails `sunset preview --check`"), "{err}");
    assert!(
        err.contains("xiami-shutdown/ar/push_body.hbs: missing"),
        "{err}"
    );
}

#[test]
fn an_unreachable_broker_is_a_runtime_error_that_hides_the_password() {
    let env = TestEnv::new();
    env.write_config("[templates]\ndir = \"templates\"\n[broker]\nurl = \"amqp://guest:hunter2@127.0.0.1:1/%2f\"\n");
    env.write("audience.csv", "user_id\nu1\n");
    let err = env
        .sunset(&args(&["--audience", "audience.csv"]))
        .expect_code(1)
        .stderr();
    assert!(
        err.contains("Failed to connect to RabbitMQ at amqp://guest:***@127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// The users and locales of every published batch, in order.
fn published_locales(batches: &[(Batch, u32)]) -> Vec<(String, Option<String>)> {
    batches
        .iter()
        .flat_map(|(b, _)| &b.recipients)
        .map(|r| (r.user_id.to_string(), r.locale.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn locale_tags_as_systems_export_them_are_normalised_and_never_reject_a_row() {
    let env = TestEnv::with_broker("");
    let tags = [
        "zh_TW",
        "en_US.UTF-8",
        "sr@latin",
        "yue-HK",
        "yue-Hant-HK",
        "cmn-TW",
        "cmn-Hans-CN",
        "not a tag!",
        "fr_FR",
        "fr-FR",
    ];
    let mut csv = String::from("user_id,locale\n");
    for (i, tag) in tags.iter().enumerate() {
        let _ = writeln!(csv, "u{i},{tag}");
    }
    env.write("audience.csv", &csv);

    let run = env
        .sunset_async(&args(&["--audience", "audience.csv", "--channels", "push"]))
        .await
        .expect_code(0);

    let err = run.stderr();
    assert!(
        err.contains(
            "4 recipient(s) get the default locale `en`: their locale tag matches no locale of xiami-shutdown: `fr-FR` ×2, `not a tag!` ×1, `sr-Latn` ×1"
        ),
        "{err}"
    );
    let expected: Vec<(String, Option<String>)> = [
        Some("zh-TW"),
        Some("en-US"),
        Some("sr-Latn"),
        Some("yue-HK"),
        Some("yue-Hant-HK"),
        Some("cmn-TW"),
        Some("cmn-Hans-CN"),
        None,
        Some("fr-FR"),
        Some("fr-FR"),
    ]
    .iter()
    .enumerate()
    .map(|(i, tag)| (format!("u{i}"), tag.map(str::to_string)))
    .collect();
    assert_eq!(published_locales(&work_queue(&env).await), expected);
}

#[test]
fn the_fallback_list_is_bounded_with_a_count_of_the_rest() {
    let env = TestEnv::new();
    let mut csv = String::from("user_id,locale\n");
    for i in 0..30 {
        let _ = writeln!(csv, "u{i},x{i:02}-bad!");
    }
    env.write("audience.csv", &csv);
    let err = env
        .sunset(&args(&["--audience", "audience.csv", "--dry-run"]))
        .expect_code(0)
        .stderr();
    assert!(
        err.contains("30 recipient(s) get the default locale `en`"),
        "{err}"
    );
    assert!(
        err.contains("`x00-bad!` ×1") && err.contains("`x09-bad!` ×1"),
        "{err}"
    );
    assert!(
        !err.contains("x10-bad!"),
        "more than ten tags listed: {err}"
    );
    assert!(err.contains("… and 20 more"), "{err}");
}

#[test]
fn a_crlf_csv_reports_each_bad_row_at_its_own_line() {
    let env = TestEnv::new();
    // Line 3's quoted name spans two lines (and is refused for its line break).
    let rows = "user_id,email,name\n,a@example.com,A\nu2,b@example.com,\"Two\nLines\"\nu3,broken@,C\nu4,also-broken,D\nu5,e@example.com,E\n";
    for (file, text) in [
        ("lf.csv", rows.to_string()),
        ("crlf.csv", rows.replace('\n', "\r\n")),
    ] {
        env.write(file, &text);
        let err = env
            .sunset(&args(&["--audience", file, "--dry-run"]))
            .expect_code(2)
            .stderr();
        for expected in [
            format!("{file}: line 2: user_id is missing"),
            format!("{file}: line 3: name `Two\\nLines` holds control characters"),
            format!("{file}: line 5: `broken@` is not an email address"),
            format!("{file}: line 6: `also-broken` is not an email address"),
        ] {
            assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_excel_csv_with_a_bom_semicolons_and_capitalised_headers_is_read() {
    let env = TestEnv::with_broker("");
    env.write(
        "audience.csv",
        "\u{feff} User_ID ;E-mail;LOCALE\r\nu1;a@example.com;zh_TW\r\nu2;b@example.com;\r\n",
    );
    let err = env
        .sunset(&args(&["--audience", "audience.csv", "--dry-run"]))
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("audience.csv: line 1: unknown column `E-mail`"),
        "{err}"
    );

    env.write(
        "audience.csv",
        "\u{feff} User_ID ;Email;LOCALE\r\nu1;a@example.com;zh_TW\r\nu2;b@example.com;\r\n",
    );
    env.sunset_async(&args(&[
        "--audience",
        "audience.csv",
        "--channels",
        "email",
    ]))
    .await
    .expect_code(0);
    let batches = work_queue(&env).await;
    let recipients = &batches[0].0.recipients;
    assert_eq!(recipients.len(), 2);
    assert_eq!(recipients[0].user_id.as_str(), "u1");
    assert_eq!(
        recipients[0].email.as_ref().map(|e| e.as_str()),
        Some("a@example.com")
    );
    assert_eq!(recipients[0].locale.as_deref(), Some("zh-TW"));
}

#[test]
fn an_ambiguous_header_asks_for_the_delimiter_and_the_flag_settles_it() {
    let env = TestEnv::new();
    env.write("audience.csv", "user_id;name,full\nu1;Ann,Lee\n");
    let err = env
        .sunset(&args(&["--audience", "audience.csv", "--dry-run"]))
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("audience.csv: line 1: cannot tell the delimiter: the header has `,` and `;`; say which with --delimiter"),
        "{err}"
    );
    env.write("audience.csv", "user_id;name\nu1;Lee, Ann\n");
    let out = env
        .sunset(&args(&["--audience", "audience.csv", "--dry-run"]))
        .expect_code(0)
        .stdout();
    assert!(out.contains("would be 1 recipients"), "{out}");
    env.write("audience.csv", "user_id|name\nu1|Lee; Ann\nu2|Bo\n");
    let out = env
        .sunset(&args(&[
            "--audience",
            "audience.csv",
            "--delimiter",
            "|",
            "--dry-run",
        ]))
        .expect_code(0)
        .stdout();
    assert!(out.contains("would be 2 recipients"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vars_merge_over_the_sample_vars_in_preview_and_enqueue_alike() {
    let env = TestEnv::with_broker("");
    env.write(
        "vars.json",
        r#"{"export_url": "https://export.example/me"}"#,
    );
    env.write("audience.csv", "user_id\nu1\n");
    let preview = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--vars",
            "vars.json",
        ])
        .expect_code(0)
        .stdout();
    env.sunset_async(&args(&[
        "--audience",
        "audience.csv",
        "--vars",
        "vars.json",
    ]))
    .await
    .expect_code(0);
    let batches = work_queue(&env).await;

    let sample: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.path().join("templates/xiami-shutdown/sample.json"))
            .expect("sample.json"),
    )
    .expect("JSON");
    let mut expected = sample["vars"].as_object().expect("vars").clone();
    expected.insert("export_url".into(), "https://export.example/me".into());
    assert_eq!(batches[0].0.vars, expected);
    assert!(preview.contains("https://export.example/me"), "{preview}");
    assert!(
        preview.contains("February 5, 2021") && preview.contains("https://music.conch.example/"),
        "the sample's other vars stay: {preview}"
    );
}

#[test]
fn a_jsonl_with_a_bom_is_read_and_a_csv_column_named_twice_is_refused() {
    let env = TestEnv::new();
    env.write(
        "audience.jsonl",
        "\u{feff}{\"user_id\": \"u1\", \"locale\": \"zh_TW\"}\n",
    );
    let out = env
        .sunset(&args(&["--audience", "audience.jsonl", "--dry-run"]))
        .expect_code(0)
        .stdout();
    assert!(out.contains("would be 1 recipients"), "{out}");
    env.write(
        "audience.csv",
        "user_id,Email, email \nu1,a@example.com,b@example.com\n",
    );
    let err = env
        .sunset(&args(&["--audience", "audience.csv", "--dry-run"]))
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("audience.csv: line 1: column `email` appears twice"),
        "{err}"
    );
}
