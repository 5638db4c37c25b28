//! Rendering through the library: escaping, header safety, strict variables, CLDR dates.

mod common;

use std::fs;
use std::sync::Arc;

use common::{TestEnv, shipped_templates};
use serde_json::json;
use sunset::Channel;
use sunset::batch::{EmailAddress, Recipient, UserId};
use sunset::render::{BatchCache, Renderer, Sample, TemplateName, Vars, template_dir};

fn xiami() -> TemplateName {
    TemplateName::parse("xiami-shutdown").expect("valid name")
}

fn shipped() -> (Renderer, Sample) {
    let dir = shipped_templates();
    let renderer = Renderer::load(&dir, &xiami(), "en").expect("shipped templates load");
    let sample = Sample::load(&template_dir(&dir, &xiami()).expect("exists")).expect("sample");
    (renderer, sample)
}

fn recipient(locale: &str, name: &str) -> Recipient {
    Recipient {
        user_id: UserId::parse("u-1").expect("valid id"),
        email: Some(EmailAddress::parse("u1@example.com").expect("valid address")),
        locale: Some(locale.into()),
        name: Some(name.into()),
        vars: Vars::new(),
    }
}

#[test]
fn html_part_escapes_markup_in_a_recipient_name() {
    let (renderer, sample) = shipped();
    let notice = renderer
        .render(
            &sample.vars,
            &recipient("en", "<script>alert(1)</script>"),
            &[Channel::Email],
        )
        .expect("renders");
    let email = notice.email.expect("email asked for");
    assert!(!email.html.contains("<script>"), "{}", email.html);
    assert!(
        email.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        email.html
    );
    // The text part is plain text: it shows the name as written.
    assert!(
        email
            .text
            .contains("Hi \u{2068}<script>alert(1)</script>\u{2069},"),
        "{}",
        email.text
    );
}

#[test]
fn text_part_keeps_ampersands_and_arabic_as_written() {
    let (renderer, sample) = shipped();
    let notice = renderer
        .render(
            &sample.vars,
            &recipient("ar-EG", "ليلى & سارة"),
            &Channel::ALL,
        )
        .expect("renders");
    let email = notice.email.expect("email");
    // The name is isolated; the Arabic text part opens each line with RLM.
    assert!(
        email
            .text
            .starts_with("\u{200F}مرحبًا \u{2068}ليلى & سارة\u{2069}،"),
        "{}",
        email.text
    );
    assert!(
        email
            .html
            .contains("<bdi>\u{2068}ليلى &amp; سارة\u{2069}</bdi>"),
        "{}",
        email.html
    );
    assert_eq!(notice.locale, "ar");
    assert_eq!(notice.dir.as_str(), "rtl");
}

#[test]
fn values_from_recipients_are_data_not_template_source() {
    let (renderer, sample) = shipped();
    let notice = renderer
        .render(
            &sample.vars,
            &recipient("en", "{{export_url}}"),
            &[Channel::Email],
        )
        .expect("renders");
    assert!(
        notice
            .email
            .expect("email")
            .text
            .contains("Hi \u{2068}{{export_url}}\u{2069},")
    );
}

#[test]
fn subject_with_line_breaks_in_a_recipient_value_renders_on_one_line() {
    let env = TestEnv::new();
    for locale in ["en", "ar", "zh", "zh-Hant"] {
        fs::write(
            env.template_file(&format!("{locale}/subject.hbs")),
            "Notice for {{name}}\n",
        )
        .expect("write");
    }
    let renderer = Renderer::load(&env.templates(), &xiami(), "en").expect("loads");
    let sample = Sample::load(&env.template_file("")).expect("sample");
    let notice = renderer
        .render(
            &sample.vars,
            &recipient("en", "Eve\r\nBcc: all@example.com\n"),
            &Channel::ALL,
        )
        .expect("renders");
    let subject = notice.email.expect("email").subject;
    assert!(!subject.contains(['\r', '\n']), "{subject:?}");
    assert_eq!(subject, "Notice for Eve  Bcc: all@example.com");
    let title = notice.push.expect("push").title;
    assert!(!title.contains(['\r', '\n']), "{title:?}");
}

#[test]
fn a_missing_variable_is_an_error_naming_it_and_the_template_never_a_blank() {
    let (renderer, mut sample) = shipped();
    sample.vars.remove("export_url");
    let err = renderer
        .render(&sample.vars, &recipient("zh-TW", "陳"), &[Channel::Email])
        .expect_err("export_url is used by every locale");
    let message = err.to_string();
    assert!(message.contains("`export_url`"), "{message}");
    assert!(
        message.starts_with("xiami-shutdown/zh-Hant/email.txt.hbs"),
        "{message}"
    );
}

#[test]
fn a_recipient_without_a_name_gets_the_generic_greeting() {
    let (renderer, sample) = shipped();
    let mut anonymous = recipient("en", "");
    anonymous.name = None;
    let notice = renderer
        .render(&sample.vars, &anonymous, &[Channel::Email])
        .expect("renders");
    assert!(notice.email.expect("email").text.starts_with("Hello,\n"));
}

#[test]
fn per_recipient_vars_override_campaign_vars() {
    let (renderer, sample) = shipped();
    let mut r = recipient("en", "Ann");
    r.vars
        .insert("export_url".into(), json!("https://export.example/ann"));
    let notice = renderer
        .render(&sample.vars, &r, &[Channel::Email])
        .expect("renders");
    assert!(
        notice
            .email
            .expect("email")
            .text
            .contains("https://export.example/ann")
    );
}

#[test]
fn dates_and_the_deadline_follow_the_recipients_region_in_the_templates_language() {
    let (renderer, sample) = shipped();
    // (recipient, push title, the deadline as the text part writes it)
    let cases = [
        (
            "en-GB",
            "Xiami Music closes on 5 February 2021",
            "5 February 2021 at 00:00 China Standard Time (GMT+8)",
        ),
        (
            "en-US",
            "Xiami Music closes on February 5, 2021",
            "February 5, 2021 at 12:00\u{202F}AM China Standard Time (GMT+8)",
        ),
        (
            "ar-EG",
            "ستتوقف شيامي ميوزك في ٥ فبراير ٢٠٢١",
            "٥ فبراير ٢٠٢١ في ١٢:٠٠ ص توقيت الصين الرسمي (غرينتش\u{61C}+٨)",
        ),
        (
            "ar-MA",
            "ستتوقف شيامي ميوزك في 5 فبراير 2021",
            "5 فبراير 2021 في 00:00 توقيت الصين الرسمي (غرينتش\u{200E}+8)",
        ),
        (
            "zh-CN",
            "虾米音乐将于2021年2月5日停止服务",
            "2021年2月5日 中国标准时间 00:00（GMT+8）",
        ),
        (
            "zh-TW",
            "蝦米音樂將於2021年2月5日停止服務",
            "2021年2月5日 凌晨12:00 中國標準時間（GMT+8）",
        ),
    ];
    for (locale, title, deadline) in cases {
        let notice = renderer
            .render(&sample.vars, &recipient(locale, "x"), &Channel::ALL)
            .expect("renders");
        assert_eq!(notice.push.expect("push").title, title, "{locale}");
        let email = notice.email.expect("email");
        assert!(email.text.contains(deadline), "{locale}:\n{}", email.text);
        assert!(email.html.contains(deadline), "{locale}:\n{}", email.html);
    }
}

#[test]
fn a_recipient_asking_for_latin_digits_gets_them() {
    let (renderer, sample) = shipped();
    let notice = renderer
        .render(
            &sample.vars,
            &recipient("ar-EG-u-nu-latn", "x"),
            &[Channel::Push],
        )
        .expect("renders");
    assert_eq!(
        notice.push.expect("push").title,
        "ستتوقف شيامي ميوزك في 5 فبراير 2021"
    );
}

#[test]
fn a_deadline_without_offset_or_in_a_zone_it_is_not_in_is_an_error_naming_it() {
    let (renderer, sample) = shipped();
    for (at, zone, expected) in [
        ("2021-02-05T00:00:00", "Asia/Shanghai", "with an offset"),
        (
            "2021-02-05T00:00:00+08:00",
            "Europe/Paris",
            "zone `Europe/Paris`",
        ),
        (
            "2021-02-05T00:00:00+08:00",
            "Asia/Shangai",
            "zone `Asia/Shangai`",
        ),
    ] {
        let mut vars = sample.vars.clone();
        vars.insert("shutdown_at".into(), json!(at));
        vars.insert("shutdown_zone".into(), json!(zone));
        let err = renderer
            .render(&vars, &recipient("en", "x"), &[Channel::Email])
            .expect_err(at);
        let message = err.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains(at), "{message}");
    }
}

#[test]
fn only_the_parts_of_the_asked_channels_are_rendered() {
    let (renderer, sample) = shipped();
    let push_only = renderer
        .render(&sample.vars, &recipient("en", "x"), &[Channel::Push])
        .expect("renders");
    assert!(push_only.email.is_none() && push_only.push.is_some());
    let email_only = renderer
        .render(&sample.vars, &recipient("en", "x"), &[Channel::Email])
        .expect("renders");
    assert!(email_only.email.is_some() && email_only.push.is_none());
}

#[test]
fn one_renderer_is_shared_across_threads() {
    let (renderer, sample) = shipped();
    let renderer = Arc::new(renderer);
    let vars = Arc::new(sample.vars);
    let handles: Vec<_> = ["en", "ar", "zh", "zh-Hant"]
        .into_iter()
        .map(|locale| {
            let (renderer, vars) = (Arc::clone(&renderer), Arc::clone(&vars));
            std::thread::spawn(move || {
                renderer
                    .render(&vars, &recipient(locale, "x"), &Channel::ALL)
                    .expect("renders")
                    .locale
            })
        })
        .collect();
    let locales: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert_eq!(locales, ["en", "ar", "zh", "zh-Hant"]);
}

#[test]
fn a_default_locale_without_a_folder_is_refused_at_load() {
    let err = Renderer::load(&shipped_templates(), &xiami(), "fr").expect_err("no fr folder");
    assert!(err.to_string().contains("`fr`"), "{err}");
}

/// Renders every recipient with one [`BatchCache`], as the worker does a batch, and each on its
/// own: the notices must be the same.
fn assert_cache_changes_nothing(renderer: &Renderer, vars: &Vars, recipients: &[Recipient]) {
    let mut cache = BatchCache::default();
    for r in recipients {
        let cached = renderer
            .render_cached(vars, r, &Channel::ALL, &mut cache)
            .expect("renders");
        let alone = renderer.render(vars, r, &Channel::ALL).expect("renders");
        assert_eq!(cached, alone, "{r:?}");
    }
}

#[test]
fn a_batch_cache_shares_only_what_every_recipient_would_get_anyway() {
    let (renderer, sample) = shipped();
    let mut overriding = recipient("en-GB", "Cy");
    overriding
        .vars
        .insert("shutdown_at".into(), json!("2030-12-31T00:00:00+08:00"));
    let recipients = [
        recipient("en", "Ann"),
        recipient("zh-TW", "陳"),
        recipient("en-US", "Bo"),
        overriding,
        recipient("ar", "ليلى"),
        recipient("zh-Hant", "林"),
        recipient("fr", "Zoé"),
    ];
    assert_cache_changes_nothing(&renderer, &sample.vars, &recipients);
    // The push title reads only a campaign date: the same for Ann and Bo, not for Cy, who
    // sets that date herself.
    let mut cache = BatchCache::default();
    let title = |r: &Recipient, cache: &mut BatchCache| {
        renderer
            .render_cached(&sample.vars, r, &[Channel::Push], cache)
            .expect("renders")
            .push
            .expect("push")
            .title
    };
    let ann = title(&recipients[0], &mut cache);
    assert_eq!(ann, title(&recipients[2], &mut cache));
    assert_ne!(ann, title(&recipients[3], &mut cache));
}

#[test]
fn a_part_with_a_partial_or_a_recipient_field_is_rendered_for_each_recipient() {
    let env = TestEnv::new();
    env.write(
        "templates/xiami-shutdown/partials/greeting.hbs",
        "Hi {{name}}",
    );
    fs::write(env.template_file("en/push_body.hbs"), "{{> greeting}}").expect("write");
    fs::write(env.template_file("en/push_title.hbs"), "For {{user_id}}").expect("write");
    let renderer = Renderer::load(&env.templates(), &xiami(), "en").expect("loads");
    let sample = Sample::load(&env.template_file("")).expect("sample");
    let mut bo = recipient("en", "Bo");
    bo.user_id = UserId::parse("u-2").expect("valid id");
    assert_cache_changes_nothing(&renderer, &sample.vars, &[recipient("en", "Ann"), bo]);
}

#[test]
fn tags_as_systems_export_them_render_in_the_matching_template_locale() {
    let (renderer, sample) = shipped();
    let cases = [
        ("zh_TW", "zh-Hant"),
        ("zh_CN.UTF-8", "zh"),
        ("en_US.UTF-8", "en"),
        ("sr@latin", "en"),
        ("yue-HK", "zh-Hant"),
        ("yue-Hant-HK", "zh-Hant"),
        ("cmn-TW", "zh-Hant"),
        ("cmn-Hans-CN", "zh"),
        ("ar_EG", "ar"),
        ("garbage!", "en"),
    ];
    let recipients: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, (tag, _))| json!({"user_id": format!("u-{i}"), "locale": tag}))
        .collect();
    let body = json!({"version": 1, "campaign_id": "c", "template": "xiami-shutdown", "recipients": recipients});
    // Through the worker's decoder, as a batch from any producer arrives.
    let batch = sunset::batch::Batch::decode(body.to_string().as_bytes()).expect("decodes");
    for ((tag, expected), recipient) in cases.iter().zip(&batch.recipients) {
        let notice = renderer
            .render(&sample.vars, recipient, &[Channel::Push])
            .expect("renders");
        assert_eq!(notice.locale, *expected, "{tag}");
    }
}
