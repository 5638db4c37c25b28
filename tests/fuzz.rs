//! Property tests (proptest, in the normal suite) of the two parsers hostile input reaches: the
//! batch decoder a worker runs on every message body, and the audience parser `sunset enqueue`
//! runs on every row. Neither panics, every rejection says why (and where), and whatever they
//! accept meets the field limits and renders into an email whose headers are intact.

mod common;

use std::io::Write as _;
use std::sync::OnceLock;

use icu::locale::Locale;
use proptest::prelude::*;
use serde_json::{Value, json};
use sunset::Channel;
use sunset::batch::{Batch, MAX_RECIPIENTS, Recipient};
use sunset::enqueue::rows;
use sunset::render::{Renderer, TemplateName, Vars};

/// Strings that have broken parsers and writers before: line breaks, NUL, template and markup
/// syntax, encoded-word look-alikes, right-to-left text, and lengths at and around the limits.
fn hostile_string() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "\r",
        "\n",
        "\r\n",
        "\0",
        "\t",
        "\u{85}",
        "\u{2028}",
        "{{",
        "}}",
        "{{user_id}}",
        "{{#each this}}",
        "{{> layout}}",
        "<script>",
        "\"",
        "'",
        ",",
        ";",
        "@",
        "a@b.example",
        "=?utf-8?b?QQ==?=",
        "Bcc: x@y.example",
        "名",
        "ليلى",
        "\u{202e}",
        "en",
        "zh-TW",
        "ar-EG",
        "-",
        " ",
        "\\",
        "\u{feff}",
        "😀",
        "x",
    ]);
    prop_oneof![
        4 => prop::collection::vec(pieces, 0..12).prop_map(|p| p.concat()),
        2 => any::<String>(),
        1 => (prop::sample::select(vec![
            0usize, 1, 63, 64, 65, 253, 254, 255, 256, 257, 1023, 1024, 1025, 4096, 70_000,
        ]), prop::sample::select(vec!["x", "名", "\n"]))
            .prop_map(|(n, s)| s.repeat(n)),
    ]
}

/// Any JSON value, a few levels deep, with hostile strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        hostile_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(hostile_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field value: mostly a string (hostile or plausible), sometimes another JSON type.
fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => hostile_string().prop_map(Value::from),
        2 => prop::sample::select(vec!["u-1", "layla@example.com", "ar-EG", "Layla", "zh-Hant"])
            .prop_map(Value::from),
        1 => json_value(),
    ]
}

/// A recipient whose fields are hostile, with a deliverable address most of the time (so that
/// what gets through is rendered and written into an email).
fn recipient_json() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map(
            prop::sample::select(vec!["user_id", "locale", "name", "name", "vars", "extra"]),
            field(),
            0..5,
        ),
        prop_oneof![3 => Just(json!("layla@example.com")), 1 => field()],
    )
        .prop_map(|(fields, email)| {
            let mut object: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            object.entry("user_id").or_insert_with(|| json!("u-1"));
            object.insert("email".into(), email);
            Value::Object(object)
        })
}

/// A batch whose every field may be replaced by a hostile value.
fn batch_json() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(recipient_json(), 0..4),
        prop::collection::btree_map(
            prop::sample::select(vec![
                "version",
                "campaign_id",
                "batch_id",
                "template",
                "channels",
                "deadline",
                "vars",
                "failures",
            ]),
            field(),
            0..3,
        ),
    )
        .prop_map(|(recipients, replaced)| {
            let mut batch = json!({
                "version": 1,
                "campaign_id": "fuzz",
                "batch_id": "fuzz:000001",
                "template": "xiami-shutdown",
                "channels": ["email", "push"],
                "vars": {"shutdown_at": "2021-02-05T00:00:00+08:00", "shutdown_zone": "Asia/Shanghai", "help_url": "https://h.example/", "export_url": "https://x.example/",
                         "successor_url": "https://y.example/"},
                "recipients": recipients,
            });
            for (key, value) in replaced {
                batch[key] = value;
            }
            batch
        })
}

/// `cases` per property (each property runs in a few seconds in a debug build); a failure
/// prints its minimal input rather than writing a regressions file into the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn renderer() -> &'static Renderer {
    static RENDERER: OnceLock<Renderer> = OnceLock::new();
    RENDERER.get_or_init(|| {
        Renderer::load(
            &common::shipped_templates(),
            &TemplateName::parse("xiami-shutdown").expect("name"),
            "en",
        )
        .expect("the shipped template loads")
    })
}

/// Renders and writes the email of an accepted recipient; its head must hold exactly the
/// headers sunset writes, each on its own (folded) line, with no control characters (names and
/// subjects are ASCII encoded words; an internationalized address is written as it is).
fn assert_renders_safely(vars: &Vars, recipient: &Recipient) -> Result<(), TestCaseError> {
    if recipient.email.is_none() {
        return Ok(());
    }
    // Campaign vars that do not render are a permanent failure, not an injection.
    let Ok(mut notice) = renderer().render(vars, recipient, &[Channel::Email]) else {
        return Ok(());
    };
    // Every header sunset can write: as if the template asked for List-Unsubscribe.
    if let Some(email) = notice.email.as_mut() {
        email.list_unsubscribe = true;
    }
    let email = common::compose_with_tokens("fuzz", recipient, &notice)
        .map_err(|e| TestCaseError::fail(format!("compose: {e}")))?;
    let head = email
        .bytes
        .split(|&b| b == b'\n')
        .take_while(|line| *line != b"\r")
        .collect::<Vec<_>>();
    let names: Vec<String> = head
        .iter()
        .filter(|line| !line.starts_with(b" "))
        .map(|line| {
            String::from_utf8_lossy(line)
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    prop_assert_eq!(names, common::TOKEN_EMAIL_HEADERS);
    for line in head {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // UTF-8 only in an internationalized address (RFC 6531); never a control character.
        let text = std::str::from_utf8(line);
        prop_assert!(
            text.is_ok_and(|t| !t.chars().any(char::is_control)),
            "header line with a control character: {:?}",
            String::from_utf8_lossy(line)
        );
    }
    Ok(())
}

/// What every accepted recipient satisfies, whichever parser accepted it.
fn assert_acceptable(recipient: &Recipient) -> Result<(), TestCaseError> {
    prop_assert!(recipient.check().is_ok(), "{:?}", recipient.check());
    prop_assert!(!recipient.user_id.as_str().chars().any(char::is_control));
    if let Some(email) = &recipient.email {
        prop_assert!(!email.as_str().chars().any(char::is_control));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder_and_every_rejection_says_why(
        body in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        if let Err(error) = Batch::decode(&body) {
            prop_assert!(!error.to_string().trim().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(config(3_000))]

    #[test]
    fn hostile_batches_decode_to_acceptable_recipients_or_say_which_field(batch in batch_json()) {
        match Batch::decode(batch.to_string().as_bytes()) {
            Ok(decoded) => {
                prop_assert!(decoded.recipients.len() <= MAX_RECIPIENTS);
                for recipient in &decoded.recipients {
                    assert_acceptable(recipient)?;
                    assert_renders_safely(&decoded.vars, recipient)?;
                }
            }
            Err(error) => {
                let error = error.to_string();
                let located = (error.starts_with("invalid batch: ") && error.contains(" line "))
                    || error.starts_with("unknown batch version")
                    || error.starts_with("campaign vars is ")
                    || error.starts_with("batch has an empty `channels` list")
                    || (error.starts_with("recipient ") && error.contains("user_id"));
                prop_assert!(located, "a rejection that says neither where nor what: {}", error);
                prop_assert!(error.chars().count() <= 700, "a long rejection: {}", error);
            }
        }
    }
}

/// Writes `text` as an audience file of the given extension and parses it as enqueue does:
/// each rejection has a reason and a line in the file; each accepted row is acceptable and
/// renders safely; no user id is accepted twice.
fn check_audience(extension: &str, text: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("audience.{extension}"));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text))
        .expect("write");
    let lines = text.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let rows = match rows(&path) {
        Ok(rows) => rows,
        Err(error) => {
            // Only the CSV header can stop the whole file, and it is line 1.
            let error = error.to_string();
            prop_assert!(
                error.contains("line 1") || error.contains("CSV header"),
                "{}",
                error
            );
            return Ok(());
        }
    };
    let mut seen = std::collections::HashSet::new();
    let sample_vars: Vars = serde_json::from_value(json!({
        "shutdown_at": "2021-02-05T00:00:00+08:00", "shutdown_zone": "Asia/Shanghai", "help_url": "https://h.example/", "export_url": "https://x.example/",
        "successor_url": "https://y.example/"
    }))
    .expect("vars");
    for row in rows {
        match row {
            Ok(row) => {
                prop_assert!((1..=lines).contains(&row.line));
                assert_acceptable(&row.recipient)?;
                if let Some(tag) = &row.recipient.locale {
                    prop_assert!(Locale::try_from_str(tag).is_ok(), "{}", tag);
                }
                prop_assert!(
                    seen.insert(row.recipient.user_id.clone()),
                    "duplicate accepted"
                );
                assert_renders_safely(&sample_vars, &row.recipient)?;
            }
            Err(rejected) => {
                prop_assert!(
                    !rejected.reason.trim().is_empty(),
                    "line {}: no reason",
                    rejected.line
                );
                prop_assert!(
                    (1..=lines).contains(&rejected.line),
                    "line {} of {}",
                    rejected.line,
                    lines
                );
                prop_assert!(
                    rejected.reason.chars().count() <= 700,
                    "{}",
                    rejected.reason
                );
            }
        }
    }
    Ok(())
}

fn csv_field() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => hostile_string(),
        1 => prop::sample::select(vec!["u-1", "u-2", "layla@example.com", "ar-EG", "Layla", ""])
            .prop_map(str::to_string),
    ]
}

/// Four hostile fields with a deliverable address most of the time, or any number of fields.
fn csv_record() -> impl Strategy<Value = Vec<String>> {
    let email = prop_oneof![3 => Just("layla@example.com".to_string()), 1 => csv_field()];
    prop_oneof![
        3 => (csv_field(), email, csv_field(), csv_field())
            .prop_map(|(user_id, email, locale, name)| vec![user_id, email, locale, name]),
        1 => prop::collection::vec(csv_field(), 0..6),
    ]
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn hostile_csv_audiences_never_panic_and_each_rejection_names_its_line(
        header in prop_oneof![
            4 => Just("user_id,email,locale,name".to_string()),
            1 => hostile_string(),
        ],
        records in prop::collection::vec(csv_record(), 0..8),
        quoted in any::<bool>(),
    ) {
        let mut text = format!("{header}\n").into_bytes();
        if quoted {
            let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(Vec::new());
            for record in &records {
                writer.write_record(record).expect("write record");
            }
            text.extend(writer.into_inner().expect("flush"));
        } else {
            for record in &records {
                text.extend(record.join(",").into_bytes());
                text.push(b'\n');
            }
        }
        check_audience("csv", &text)?;
    }

    #[test]
    fn hostile_jsonl_audiences_never_panic_and_each_rejection_names_its_line(
        lines in prop::collection::vec(prop_oneof![
            4 => recipient_json().prop_map(|v| v.to_string().into_bytes()),
            1 => hostile_string().prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ], 0..8),
    ) {
        let mut text = Vec::new();
        for line in lines {
            text.extend(line);
            text.push(b'\n');
        }
        check_audience("jsonl", &text)?;
    }
}
