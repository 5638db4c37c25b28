//! Hostile input, aimed: huge batches and fields, invalid UTF-8, deep JSON, control characters
//! and markup in every field, through the batch decoder, the audience parser, the renderer and
//! the MIME writer, and end to end through a worker and `sunset enqueue`.

mod common;

use std::fs;
use std::path::Path;

use common::TestEnv;
use serde_json::{Value, json};
use sunset::Channel;
use sunset::batch::{Batch, EMAIL_MAX, MAX_RECIPIENTS, NAME_MAX, RECIPIENT_VARS_MAX, Recipient};
use sunset::broker::{Route, attempt_headers};
use sunset::enqueue::{LINE_MAX, Rejected, Row, rows};
use sunset::render::{Renderer, Sample, TemplateName, Vars};

const MB10: usize = 10 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers

fn batch(recipients: Vec<Value>) -> Value {
    json!({
        "version": 1,
        "campaign_id": "hostile",
        "batch_id": "hostile:000001",
        "template": "xiami-shutdown",
        "channels": ["email", "push"],
        "vars": sample().vars,
        "recipients": recipients,
    })
}

fn recipient(user_id: &str) -> Value {
    json!({"user_id": user_id, "email": "layla@example.com", "locale": "en", "name": "Layla"})
}

fn decode(body: &Value) -> Result<Batch, String> {
    Batch::decode(body.to_string().as_bytes()).map_err(|e| e.to_string())
}

fn templates() -> std::path::PathBuf {
    common::shipped_templates()
}

fn sample() -> Sample {
    Sample::load(&templates().join("xiami-shutdown")).expect("sample.json")
}

fn renderer() -> Renderer {
    Renderer::load(
        &templates(),
        &TemplateName::parse("xiami-shutdown").expect("name"),
        "en",
    )
    .expect("the shipped template loads")
}

/// The email a worker would send this recipient: rendered, then written by the MIME writer.
fn email_for(renderer: &Renderer, vars: &Vars, recipient: &Recipient) -> String {
    let mut notice = renderer
        .render(vars, recipient, &[Channel::Email, Channel::Push])
        .expect("renders");
    // Every header sunset can write: as if the template asked for List-Unsubscribe.
    if let Some(email) = notice.email.as_mut() {
        email.list_unsubscribe = true;
    }
    let email = common::compose_with_tokens("hostile", recipient, &notice).expect("composes");
    String::from_utf8(email.bytes).expect("an email is ASCII")
}

/// The header names of an email, in order (folded lines joined to theirs).
fn header_names(email: &str) -> Vec<String> {
    let head = email.split("\r\n\r\n").next().expect("head");
    head.split("\r\n")
        .filter(|line| !line.starts_with(' ') && !line.starts_with('\t'))
        .map(|line| line.split(':').next().unwrap_or_default().to_string())
        .collect()
}

/// Every line of the head is a known header or a fold, each header once, and no line holds a
/// bare CR, LF or NUL.
fn assert_headers_intact(email: &str) {
    assert_eq!(header_names(email), common::TOKEN_EMAIL_HEADERS, "{email}");
    let head = email.split("\r\n\r\n").next().expect("head");
    for line in head.split("\r\n") {
        assert!(
            !line.contains(['\r', '\n', '\0']),
            "a control character in a header line: {line:?}"
        );
        assert!(line.len() <= 998, "header line over 998 characters");
    }
}

/// The rows of an audience file, parsed as `sunset enqueue` does.
fn parse_audience(path: &Path) -> Vec<Result<Row, Rejected>> {
    rows(path).expect("opens").collect()
}

fn rejection(rows: &[Result<Row, Rejected>], line: u64) -> String {
    rows.iter()
        .find_map(|row| match row {
            Err(rejected) if rejected.line == line => Some(rejected.reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("line {line} not rejected: {rows:?}"))
}

// ---------------------------------------------------------------------------------------------
// The batch decoder

#[test]
fn a_batch_of_100000_recipients_is_refused_with_its_size_and_the_limit_is_accepted() {
    let huge = batch((0..100_000).map(|i| recipient(&format!("u-{i}"))).collect());
    let error = decode(&huge).expect_err("too many recipients");

    assert_eq!(
        error,
        format!("batch has 100000 recipients; at most {MAX_RECIPIENTS} are allowed")
    );
    let limit = batch(
        (0..MAX_RECIPIENTS)
            .map(|i| recipient(&format!("u-{i}")))
            .collect(),
    );
    assert_eq!(
        decode(&limit).expect("at the limit").recipients.len(),
        MAX_RECIPIENTS
    );
}

#[test]
fn a_ten_megabyte_field_is_refused_by_its_size_without_being_quoted() {
    let big = "x".repeat(MB10);
    let cases = [
        ("name", json!({"user_id": "u-1", "name": big})),
        (
            "email",
            json!({"user_id": "u-1", "email": format!("{big}@example.com")}),
        ),
        ("vars", json!({"user_id": "u-1", "vars": {"note": big}})),
        ("user_id", json!({"user_id": big})),
    ];
    for (field, row) in cases {
        let error = decode(&batch(vec![row])).expect_err(field);
        assert!(error.contains(field), "{field}: {error}");
        assert!(error.len() < 500, "{field}: the error quotes the value");
    }
    // A locale is no reason to refuse a recipient: one that is no tag is dropped.
    let locale = decode(&batch(vec![json!({"user_id": "u-1", "locale": big})]));
    assert_eq!(locale.expect("decodes").recipients[0].locale, None);
    let mut campaign_vars = batch(vec![recipient("u-1")]);
    campaign_vars["vars"]["export_url"] = json!(big);
    let error = decode(&campaign_vars).expect_err("campaign vars");
    assert!(error.starts_with("campaign vars is 104"), "{error}");
    let error = decode(&json!({"version": big, "campaign_id": "c"})).expect_err("version");
    assert!(
        error.starts_with("invalid batch: invalid type"),
        "{error:.100}"
    );
    assert!(error.chars().count() < 500, "the error quotes the value");
}

#[test]
fn each_field_limit_is_inclusive() {
    let at_limit = json!({
        "user_id": "u-1",
        "email": format!(
            "{}@{}.{}.{}.example",
            "a".repeat(64),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(EMAIL_MAX - 64 - 1 - 64 - 64 - 8)
        ),
        "name": "名".repeat(NAME_MAX / 3),
        "vars": {"v": "x".repeat(RECIPIENT_VARS_MAX - 8)},
    });
    decode(&batch(vec![at_limit.clone()])).expect("every field at its limit");
    for (field, over) in [
        ("name", json!("n".repeat(NAME_MAX + 1))),
        ("vars", json!({"v": "x".repeat(RECIPIENT_VARS_MAX - 7)})),
    ] {
        let mut row = at_limit.clone();
        row[field] = over;
        let error = decode(&batch(vec![row])).expect_err(field);
        assert!(
            error.contains(&format!("{field} is ")) && error.contains("at most"),
            "{error}"
        );
    }
}

#[test]
fn invalid_utf8_anywhere_is_refused_with_a_reason() {
    let body = batch(vec![recipient("u-1")]).to_string();
    for at in [
        body.find("Layla").expect("name"),
        body.find("hostile").expect("id"),
        0,
    ] {
        let mut bytes = body.clone().into_bytes();
        bytes.insert(at, 0xff);
        let error = Batch::decode(&bytes)
            .expect_err("invalid UTF-8")
            .to_string();
        assert!(error.starts_with("invalid batch: "), "{error}");
        assert!(error.contains("line 1"), "{error}");
    }
}

#[test]
fn deep_json_nesting_is_refused_by_the_recursion_limit_without_overflowing_the_stack() {
    // A worker decodes on a tokio thread; 2 MiB is tokio's default stack.
    let decoded = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let deep = |depth: usize| {
                format!(
                    r#"{{"version":1,"campaign_id":"c","template":"t","recipients":[],"vars":{{"v":{}{}}}}}"#,
                    "[".repeat(depth),
                    "]".repeat(depth)
                )
            };
            let shallow = Batch::decode(deep(100).as_bytes()).map(|_| ());
            let refused = Batch::decode(deep(1_000_000).as_bytes())
                .map(|_| ())
                .map_err(|e| e.to_string());
            (shallow.is_ok(), refused)
        })
        .expect("spawn")
        .join()
        .expect("no stack overflow");
    assert!(decoded.0, "100 levels are fine");
    let error = decoded.1.expect_err("a million levels");
    assert!(error.contains("recursion limit exceeded"), "{error}");
}

#[test]
fn control_characters_in_every_field_are_refused_or_never_reach_a_header() {
    let renderer = renderer();
    for bad in [
        "\r",
        "\n",
        "\r\nBcc: victim@example.org\r\n",
        "\0",
        "\u{85}",
    ] {
        let with = |field: &str| {
            let mut row = recipient("u-1");
            match field {
                "user_id" | "email" | "locale" | "name" => {
                    let old = row[field].as_str().expect("string").to_string();
                    row[field] = json!(format!("{old}{bad}x"));
                }
                _ => row["vars"] = json!({"export_url": format!("https://x.example/{bad}")}),
            }
            batch(vec![row])
        };
        for field in ["user_id", "email", "name"] {
            let error = decode(&with(field)).expect_err(field);
            assert!(
                error.contains(field) || error.contains("address"),
                "{field}: {error}"
            );
        }
        // The locale is negotiated (an unparsable one gets the default) and recipient vars are
        // data: both decode, and neither may add a header.
        for field in ["locale", "vars"] {
            let batch = Batch::decode(with(field).to_string().as_bytes()).expect(field);
            let email = email_for(&renderer, &batch.vars, &batch.recipients[0]);
            assert_headers_intact(&email);
            assert!(!email.contains("Bcc"), "{email}");
        }
        for top in ["campaign_id", "template"] {
            let mut body = batch(vec![recipient("u-1")]);
            body[top] = json!(format!("x{bad}"));
            decode(&body).expect_err(top);
        }
    }
}

/// The MIME writer alone, for a recipient no validation vetted (a name with a line break and a
/// header after it): the name is folded into the `To:` header, never onto a line of its own.
#[test]
fn the_mime_writer_keeps_a_name_with_line_breaks_inside_the_to_header() {
    let renderer = renderer();
    let vars = sample().vars;
    for name in [
        "Eve\r\nBcc: victim@example.org",
        "Eve\nBcc: victim@example.org",
        "Eve\0\r\n\r\n<html>",
        "=?utf-8?b?QmNjOiB4?=",
        &"长".repeat(300),
    ] {
        let mut recipient = sample().recipient;
        recipient.name = Some(name.to_string());
        recipient.locale = Some("zh".into());
        let email = email_for(&renderer, &vars, &recipient);
        assert_headers_intact(&email);
    }
}

#[test]
fn html_and_handlebars_in_recipient_values_are_escaped_data_never_template_source() {
    let renderer = renderer();
    let vars = sample().vars;
    let name = r#"<script>alert(1)</script> {{user_id}} {{#each this}}{{@key}}{{/each}} {{{export_url}}} {{> layout}} "'=`"#;
    let mut recipient = sample().recipient;
    recipient.locale = Some("en".into());
    recipient.name = Some(name.to_string());
    recipient.vars = serde_json::from_value(json!({
        "export_url": "https://x.example/\"><script>alert(2)</script>",
    }))
    .expect("vars");
    let decoded = Batch::decode(
        batch(vec![serde_json::to_value(&recipient).expect("json")])
            .to_string()
            .as_bytes(),
    )
    .expect("markup is valid data");

    let notice = renderer
        .render(
            &vars,
            &decoded.recipients[0],
            &[Channel::Email, Channel::Push],
        )
        .expect("renders");

    let email = notice.email.expect("email parts");
    // Text parts: the value as it is, braces and all, never evaluated.
    assert!(
        email.text.contains(&format!("Hi \u{2068}{name}\u{2069},")),
        "{}",
        email.text
    );
    assert!(!email.text.contains("u-1001"), "{{user_id}} was evaluated");
    // HTML: escaped, including the quote that would end the href attribute.
    assert!(!email.html.contains("<script>"), "{}", email.html);
    assert!(
        email
            .html
            .contains("&lt;script&gt;alert(1)&lt;&#x2F;script&gt;")
            || email.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        email.html
    );
    assert!(email.html.contains("{{user_id}}"), "{}", email.html);
    assert!(!email.html.contains("\"><script"), "{}", email.html);
    assert!(
        email.html.contains("&quot;&gt;&lt;script&gt;alert(2)"),
        "{}",
        email.html
    );
}

// ---------------------------------------------------------------------------------------------
// The audience parser

#[test]
fn hostile_csv_rows_are_each_rejected_with_their_line_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("audience.csv");
    let big = "x".repeat(MB10);
    let mut csv = Vec::new();
    csv.extend_from_slice(b"user_id,email,locale,name\n");
    csv.extend_from_slice(format!("u-2,a@example.com,en,{big}\n").as_bytes()); // line 2
    csv.extend_from_slice(format!("u-3,a@example.com,{},x\n", "en-".repeat(3400)).as_bytes()); // 3
    csv.extend_from_slice(b"u-4,a@example.com,en,Bad \xff\xfe name\n"); // 4
    csv.extend_from_slice(b"u-5,a@example.com,en,\"Eve\r\nBcc: v@example.org\"\n"); // 5
    csv.extend_from_slice(b"u-7,a@example.com,en,Nul\0name\n"); // 7 (5 spans two lines)
    csv.extend_from_slice(b"\"u-\r\n8\",a@example.com,en,x\n"); // 8
    csv.extend_from_slice(b"u-10,\"a@example.com\nBcc: v@example.org\",en,x\n"); // 10
    csv.extend_from_slice(b"u-12,a@example.com,\"en\r\nX: y\",x\n"); // 12
    csv.extend_from_slice(b"u-14,a@example.com,en,<b>{{user_id}}</b>\n"); // 14: fine
    fs::write(&path, &csv).expect("write");

    let rows = parse_audience(&path);

    for (line, field) in [
        (2, "name is 10485760 bytes"),
        (4, "invalid UTF-8"),
        (5, "holds control characters"),
        (7, "holds control characters"),
        (8, "user_id"),
        (10, "not an email address"),
    ] {
        let reason = rejection(&rows, line);
        assert!(reason.contains(field), "line {line}: {reason}");
        assert!(reason.len() < 500, "line {line} quotes megabytes");
    }
    // A locale is never a reason to refuse a row: one that is no tag is dropped (the
    // recipient gets the default locale) and reported, escaped and cut short.
    let accepted: Vec<_> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
    let lines: Vec<u64> = accepted.iter().map(|r| r.line).collect();
    assert_eq!(lines, [3, 12, 14], "{rows:?}");
    assert_eq!(accepted[0].recipient.locale, None);
    assert_eq!(
        accepted[0].unreadable_locale.as_deref().map(str::len),
        Some(64)
    );
    assert_eq!(accepted[1].unreadable_locale.as_deref(), Some("en\\nX: y"));
    assert_eq!(accepted[2].recipient.locale.as_deref(), Some("en"));
}

#[test]
fn names_with_bidi_controls_are_rejected_at_enqueue_and_marks_and_mixed_scripts_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("audience.csv");
    let csv = "user_id,email,locale,name\n\
               u-2,a@example.com,ar,DJ \u{202E}K.\n\
               u-3,a@example.com,ar,\u{2066}ليلى\n\
               u-4,a@example.com,ar,DJ K. ليلى\u{200F}\n";
    fs::write(&path, csv).expect("write");

    let rows = parse_audience(&path);

    for (line, escaped) in [(2, "\\u{202e}"), (3, "\\u{2066}")] {
        let reason = rejection(&rows, line);
        assert!(reason.contains("bidi control characters"), "{reason}");
        assert!(
            reason.contains(escaped),
            "the control is shown escaped: {reason}"
        );
    }
    let accepted: Vec<_> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(accepted.len(), 1, "{rows:?}");
    assert_eq!(accepted[0].line, 4);
}

#[test]
fn hostile_jsonl_rows_are_each_rejected_with_their_line_and_the_rest_still_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("audience.jsonl");
    let mut jsonl = Vec::new();
    let line = |value: Value| format!("{value}\n").into_bytes();
    jsonl.extend(line(json!({"user_id": "u-1", "name": "x".repeat(MB10)}))); // 1: over LINE_MAX
    jsonl.extend(format!("{}\n", "x".repeat(3 * MB10)).into_bytes()); // 2: a 30 MB line
    jsonl.extend(b"{\"user_id\": \"u-3\", \"name\": \"\xff\"}\n"); // 3
    jsonl.extend(
        format!(
            "{{\"user_id\": \"u-4\", \"vars\": {{\"v\": {}{}}}}}\n",
            "[".repeat(20_000),
            "]".repeat(20_000)
        )
        .into_bytes(),
    ); // 4
    jsonl.extend(line(
        json!({"user_id": "u-5", "name": "Eve\r\nBcc: v@example.org"}),
    )); // 5
    jsonl.extend(line(json!({"user_id": "u-6", "locale": "en\u{0}"}))); // 6
    jsonl.extend(line(
        json!({"user_id": "u-7", "vars": {"v": "x".repeat(5000)}}),
    )); // 7
    jsonl.extend(line(
        json!({"user_id": "u-8", "locale": "x".repeat(10 * 1024)}),
    )); // 8
    jsonl.extend(line(
        json!({"user_id": "u-9", "name": "{{#each this}}{{/each}}<script>"}),
    )); // 9
    fs::write(&path, &jsonl).expect("write");

    let rows = parse_audience(&path);

    for (line, field) in [
        (1, format!("line is 10485787 bytes; at most {LINE_MAX}")),
        (2, format!("line is {} bytes; at most {LINE_MAX}", 3 * MB10)),
        (3, "not UTF-8".to_string()),
        (4, "recursion limit exceeded".to_string()),
        (5, "holds control characters".to_string()),
        (7, "vars is 5008 bytes".to_string()),
    ] {
        let reason = rejection(&rows, line);
        assert!(reason.contains(&field), "line {line}: {reason}");
        assert!(reason.len() < 500, "line {line} quotes megabytes");
    }
    let accepted: Vec<u64> = rows
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|r| r.line))
        .collect();
    assert_eq!(
        accepted,
        [6, 8, 9],
        "an unreadable locale never refuses a row"
    );
}

#[test]
fn enqueue_lists_each_hostile_row_briefly_and_publishes_nothing() {
    let env = TestEnv::new();
    let mut csv = String::from("user_id,email,locale,name\n");
    csv.push_str(&format!("u-2,a@example.com,en,{}\n", "x".repeat(MB10)));
    csv.push_str(&format!("u-3,a@example.com,{},x\n", "x".repeat(10 * 1024)));
    csv.push_str("u-4,a@example.com,en,\"a\r\nb\"\n");
    csv.push_str("u-6,a@example.com,en,<script>{{name}}</script>\n");
    env.write("audience.csv", &csv);

    let run = env
        .sunset(&common::campaign_args("enqueue", "hostile", &["--dry-run"]))
        .expect_code(2);

    let stderr = run.stderr();
    assert!(stderr.len() < 4096, "{} bytes of errors", stderr.len());
    for expected in [
        "audience.csv: line 2: name is 10485760 bytes; at most 1024 are allowed",
        "audience.csv: line 4: name `a\\nb` holds control characters",
        "2 invalid row(s); nothing was published",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
}

#[test]
fn enqueue_refuses_campaign_vars_over_their_limit() {
    let env = TestEnv::new();
    env.write("audience.csv", "user_id\nu-1\n");
    env.write(
        "vars.json",
        &json!({"shutdown_at": "2021-02-05T00:00:00+08:00", "shutdown_zone": "Asia/Shanghai", "help_url": "https://h.example/", "export_url": "x".repeat(70_000),
                "successor_url": "https://y.example/"})
        .to_string(),
    );
    let run = env
        .sunset(&common::campaign_args(
            "enqueue",
            "c",
            &["--vars", "vars.json", "--dry-run"],
        ))
        .expect_code(2);
    assert!(
        run.stderr().contains("--vars: campaign vars is 70"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_batch_size_over_the_decoders_limit_is_refused() {
    let env = TestEnv::new();
    env.write("audience.csv", "user_id\nu-1\n");
    let run = env
        .sunset(&common::campaign_args(
            "enqueue",
            "c",
            &["--batch-size", "10001", "--dry-run"],
        ))
        .expect_code(2);
    assert!(run.stderr().contains("at most 10000"), "{}", run.stderr());
}

// ---------------------------------------------------------------------------------------------
// End to end: hostile messages on the work queue

#[tokio::test]
async fn hostile_batches_on_the_work_queue_are_dead_lettered_with_a_short_reason_and_nothing_is_sent()
 {
    // Bodies up to 10 MB, past the default broker.max_message_bytes: they are to reach the parser.
    let env = TestEnv::with_broker(
        "max_message_bytes = 16777216\n[ledger]\nurl = \"\"\n[metrics]\nlisten = \"\"\n[rate]\nemail_per_sec = 0\npush_per_sec = 0\n",
    );
    let big = "x".repeat(MB10);
    let mut invalid_utf8 = batch(vec![recipient("u-1")]).to_string().into_bytes();
    invalid_utf8.insert(20, 0xff);
    let deep = format!(
        r#"{{"version":1,"campaign_id":"c","template":"xiami-shutdown","recipients":[],"vars":{{"v":{}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let bodies: Vec<(Vec<u8>, &str)> = vec![
        (
            batch((0..100_000).map(|i| recipient(&format!("u-{i}"))).collect())
                .to_string()
                .into_bytes(),
            "batch has 100000 recipients",
        ),
        (
            batch(vec![
                json!({"user_id": "u-1", "email": "a@example.com", "name": big}),
            ])
            .to_string()
            .into_bytes(),
            "name is 10485760 bytes",
        ),
        (invalid_utf8, "invalid batch"),
        (deep.into_bytes(), "recursion limit exceeded"),
        (
            batch(vec![
                json!({"user_id": "u-1", "email": "a@example.com", "name": "E\r\nBcc: v@x.org"}),
            ])
            .to_string()
            .into_bytes(),
            "holds control characters",
        ),
        (
            json!({"version": big, "campaign_id": "c"})
                .to_string()
                .into_bytes(),
            "invalid type: string",
        ),
    ];
    let broker = env.broker().await;
    for (body, _) in &bodies {
        broker
            .publish(Route::Work, body, attempt_headers(1))
            .await
            .expect("published");
    }
    broker.close().await;

    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), bodies.len());
    for (body, expected) in &bodies {
        let (_, reason) = letters
            .iter()
            .find(|(letter, _)| letter == body)
            .unwrap_or_else(|| panic!("{expected}: not dead-lettered as it came"));
        let reason = reason.clone().expect("x-sunset-error");
        assert!(reason.contains(expected), "{expected}: {reason}");
        assert!(
            reason.chars().count() < 500,
            "a long reason: {} chars",
            reason.len()
        );
    }
    for outbox in ["outbox/email", "outbox/push.jsonl"] {
        let path = env.path().join(outbox);
        let sent = fs::metadata(&path).map_or(0, |m| {
            if m.is_dir() {
                fs::read_dir(&path).map_or(0, |d| d.count() as u64)
            } else {
                m.len()
            }
        });
        assert_eq!(sent, 0, "{outbox}: something was sent");
    }
}
