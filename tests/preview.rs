//! `sunset preview` as a user runs it: the built binary, the shipped templates, real files.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::TestEnv;

#[test]
fn preview_of_each_locale_is_in_that_language_and_script() {
    let env = TestEnv::new();
    let cases = [
        ("en", "Xiami Music closes on"),
        ("ar", "ستتوقف خدمة شيامي ميوزك في 5 فبراير 2021"),
        ("ar-EG", "ستتوقف خدمة شيامي ميوزك في ٥ فبراير ٢٠٢١"),
        ("ar-MA", "ستتوقف خدمة شيامي ميوزك في 5 فبراير 2021"),
        ("zh", "虾米音乐将于2021年2月5日停止服务"),
        ("zh-CN", "请尽快导出您的数据"),
        ("zh-Hant", "蝦米音樂將於2021年2月5日停止服務"),
        ("zh-TW", "請儘速匯出您的資料"),
        ("zh_TW", "請儘速匯出您的資料"),
        ("yue-HK", "請儘速匯出您的資料"),
        ("cmn-Hans-CN", "请尽快导出您的数据"),
    ];
    for (locale, expected) in cases {
        let run = env
            .sunset(&[
                "preview",
                "--template",
                "xiami-shutdown",
                "--locale",
                locale,
            ])
            .expect_code(0);
        let out = run.stdout();
        assert!(out.contains(expected), "{locale}:\n{out}");
        assert!(
            out.contains("https://www.xiami.example/export"),
            "{locale}:\n{out}"
        );
        assert!(out.contains("Push title: "), "{locale}:\n{out}");
    }
}

#[test]
fn traditional_chinese_preview_has_no_simplified_characters() {
    let env = TestEnv::new();
    let out = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--locale",
            "zh-HK",
        ])
        .expect_code(0)
        .stdout();
    assert!(out.contains("zh-Hant (requested zh-HK)"), "{out}");
    // Characters whose simplified and traditional forms differ.
    for simplified in ['虾', '乐', '将', '务', '请', '数', '据', '删', '导'] {
        assert!(
            !out.contains(simplified),
            "simplified {simplified} in:\n{out}"
        );
    }
}

#[test]
fn all_locales_renders_every_locale_and_channel_push_only_the_push_parts() {
    let env = TestEnv::new();
    let out = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--all-locales",
            "--channel",
            "push",
        ])
        .expect_code(0)
        .stdout();
    for header in [
        "· ar (requested ar) · rtl",
        "· en (requested en) · ltr",
        "· zh (requested zh) · ltr",
        "· zh-Hant (requested zh-Hant) · ltr",
    ] {
        assert!(out.contains(header), "missing {header}:\n{out}");
    }
    assert!(!out.contains("Subject:"), "{out}");
    assert_eq!(out.matches("Push body:").count(), 4, "{out}");
}

#[test]
fn out_writes_html_and_text_with_lang_and_direction() {
    let env = TestEnv::new();
    env.sunset(&[
        "preview",
        "--template",
        "xiami-shutdown",
        "--all-locales",
        "--out",
        "out",
    ])
    .expect_code(0);
    let read = |file: &str| fs::read_to_string(env.path().join("out").join(file)).expect(file);
    let ar = read("ar.html");
    assert!(ar.contains(r#"<html lang="ar" dir="rtl">"#), "{ar}");
    assert!(
        ar.contains("width=device-width"),
        "readable on a phone:\n{ar}"
    );
    assert!(read("en.html").contains(r#"<html lang="en" dir="ltr">"#));
    assert!(read("zh-Hant.html").contains(r#"<html lang="zh-Hant" dir="ltr">"#));
    let text = read("zh.txt");
    assert!(
        text.contains("虾米音乐将于2021年2月5日正式停止服务"),
        "{text}"
    );
    assert!(!text.contains('<'), "the text part has no markup:\n{text}");
    let names: Vec<_> = fs::read_dir(env.path().join("out"))
        .expect("out exists")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(
        names.len(),
        8,
        "html + txt per locale, nothing half-written: {names:?}"
    );
}

#[test]
fn vars_file_overrides_the_sample_and_a_bad_one_names_the_line() {
    let env = TestEnv::new();
    env.write(
        "vars.json",
        r#"{"export_url": "https://export.example/me"}"#,
    );
    let out = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--vars",
            "vars.json",
        ])
        .expect_code(0)
        .stdout();
    assert!(out.contains("https://export.example/me"), "{out}");

    env.write("bad.json", "{\n  \"export_url\": \"x\",\n  oops\n}");
    let err = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--vars",
            "bad.json",
        ])
        .expect_code(2)
        .stderr();
    assert!(err.contains("bad.json") && err.contains("line 3"), "{err}");
}

#[test]
fn a_bad_date_variable_fails_naming_the_value() {
    let env = TestEnv::new();
    env.write("vars.json", r#"{"shutdown_at": "5 Feb"}"#);
    let err = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--vars",
            "vars.json",
        ])
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("5 Feb") && err.contains("RFC 3339 timestamp with an offset"),
        "{err}"
    );
}

#[test]
fn unknown_template_exits_2_naming_it_and_the_templates_there() {
    let env = TestEnv::new();
    let err = env
        .sunset(&["preview", "--template", "xiami-shutdwn"])
        .expect_code(2)
        .stderr();
    assert!(err.contains("unknown template `xiami-shutdwn`"), "{err}");
    assert!(err.contains("xiami-shutdown"), "lists what exists: {err}");
    let err = env
        .sunset(&["preview", "--template", "../etc"])
        .expect_code(2)
        .stderr();
    assert!(err.contains("not a folder name"), "{err}");
}

#[test]
fn unknown_locale_falls_back_to_the_default_and_garbage_is_refused() {
    let env = TestEnv::new();
    let out = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--locale",
            "fr-FR",
        ])
        .expect_code(0)
        .stdout();
    assert!(out.contains("· en (requested fr-FR)"), "{out}");
    let err = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--locale",
            "not a tag!",
        ])
        .expect_code(2)
        .stderr();
    assert!(err.contains("not a tag!"), "{err}");
}

#[test]
fn out_with_push_only_is_a_usage_error() {
    let env = TestEnv::new();
    let err = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--channel",
            "push",
            "--out",
            "o",
        ])
        .expect_code(2)
        .stderr();
    assert!(err.contains("--out"), "{err}");
    assert!(!env.path().join("o").exists());
}

#[test]
fn check_passes_on_the_shipped_templates() {
    let env = TestEnv::new();
    let out = env.sunset(&["preview", "--check"]).expect_code(0).stdout();
    assert!(out.starts_with("ok"), "{out}");
    env.sunset(&["preview", "--check", "--template", "xiami-shutdown"])
        .expect_code(0);
}

/// Breaks the copy with `edit`, runs `--check`, and returns its stderr (after asserting exit 2).
fn check_after(edit: impl FnOnce(&TestEnv)) -> String {
    let env = TestEnv::new();
    edit(&env);
    env.sunset(&["preview", "--check"]).expect_code(2).stderr()
}

#[test]
fn check_fails_on_a_missing_file() {
    let err =
        check_after(|env| fs::remove_file(env.template_file("zh/push_body.hbs")).expect("rm"));
    assert!(
        err.contains("xiami-shutdown/zh/push_body.hbs: missing"),
        "{err}"
    );
}

#[test]
fn check_fails_on_a_syntax_error_naming_file_and_line() {
    let err = check_after(|env| {
        fs::write(
            env.template_file("ar/email.txt.hbs"),
            "سطر\n{{#if name}}غير مغلق\n",
        )
        .expect("write")
    });
    assert!(
        err.contains("xiami-shutdown/ar/email.txt.hbs:2:1: `{{#if name}}` is never closed: add `{{/if}}` where it ends"),
        "{err}"
    );
}

#[test]
fn preview_names_a_syntax_error_by_file_line_and_column_in_plain_words() {
    let env = TestEnv::new();
    fs::write(
        env.template_file("en/push_title.hbs"),
        "Xiami\n{{#each songs}}{{title}}{{/if}}",
    )
    .expect("write");
    let err = env
        .sunset(&["preview", "--template", "xiami-shutdown"])
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("en/push_title.hbs:2:25: `{{/if}}` closes the `{{#each}}` opened at line 2, column 1; close that with `{{/each}}` first"),
        "{err}"
    );
    assert!(!err.contains("expected"), "parser jargon: {err}");
}

#[test]
fn check_fails_on_a_variable_missing_under_strict_mode() {
    let err = check_after(|env| {
        for locale in ["en", "ar", "zh", "zh-Hant"] {
            let path = env.template_file(&format!("{locale}/subject.hbs"));
            let subject = fs::read_to_string(&path).expect("read");
            fs::write(&path, format!("{} {{{{coupon_code}}}}", subject.trim())).expect("write");
        }
    });
    assert!(err.contains("xiami-shutdown/ar/subject.hbs:1:"), "{err}");
    assert!(
        err.contains("`coupon_code` is not a variable (sample.json and the recipient fields define no such name)"),
        "{err}"
    );
}

#[test]
fn check_reports_a_variable_typo_once_where_it_is() {
    let err = check_after(|env| {
        let path = env.template_file("ar/subject.hbs");
        let subject = fs::read_to_string(&path)
            .expect("read")
            .replace("shutdown_at", "shutdwn_at");
        fs::write(&path, subject).expect("write");
    });
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("xiami-shutdown/"))
        .collect();
    assert_eq!(
        problems,
        [
            "xiami-shutdown/ar/subject.hbs:1:28: `shutdwn_at` is not a variable (sample.json and the recipient fields define no such name); did you mean `shutdown_at`?"
        ],
        "{err}"
    );
    assert!(!err.contains("out of step"), "{err}");
}

#[test]
fn check_fails_on_html_with_no_dir_inside_the_body() {
    let err = check_after(|env| {
        let path = env.template_file("partials/layout.hbs");
        let layout = fs::read_to_string(&path)
            .expect("read")
            .replace(r#" dir="{{dir}}""#, "");
        // Direction only on <html>, where webmail drops it.
        let layout = layout.replace("<html ", r#"<html dir="{{dir}}" "#);
        fs::write(path, layout).expect("write");
    });
    for locale in ["ar", "en", "zh", "zh-Hant"] {
        assert!(
            err.contains(&format!(
                "xiami-shutdown/{locale}/email.html.hbs: no `dir` attribute inside <body>"
            )),
            "{err}"
        );
    }
}

#[test]
fn check_fails_when_a_locale_does_not_use_a_variable_the_others_use() {
    let err = check_after(|env| {
        let path = env.template_file("zh/email.txt.hbs");
        let text = fs::read_to_string(&path)
            .expect("read")
            .replace("{{export_url}}", "https://xiami.example");
        fs::write(path, text).expect("write");
    });
    assert!(
        err.contains("xiami-shutdown/zh/email.txt.hbs: does not use `export_url`, which ar, en, zh-Hant use(s)"),
        "{err}"
    );
}

#[test]
fn check_fails_when_if_tests_a_variable_the_sample_does_not_define() {
    let err = check_after(|env| {
        for locale in ["en", "ar", "zh", "zh-Hant"] {
            let path = env.template_file(&format!("{locale}/push_body.hbs"));
            let body = fs::read_to_string(&path).expect("read");
            fs::write(
                &path,
                format!("{{{{#if vip}}}}★ {{{{/if}}}}{}", body.trim()),
            )
            .expect("write");
        }
    });
    assert!(
        err.contains("xiami-shutdown/en/push_body.hbs:1:1: `{{#if vip}}` tests `vip`, which sample.json does not define"),
        "{err}"
    );
}

#[test]
fn check_fails_on_a_push_title_over_50_characters() {
    let err = check_after(|env| {
        fs::write(
            env.template_file("en/push_title.hbs"),
            "Xiami Music closes on {{date shutdown_at}}, so please read this now",
        )
        .expect("write")
    });
    assert!(
        err.contains("xiami-shutdown/en/push_title.hbs: 63 characters"),
        "{err}"
    );
}

#[test]
fn check_fails_on_a_missing_sample_and_a_bad_locale_folder() {
    let err = check_after(|env| {
        fs::remove_file(env.template_file("sample.json")).expect("rm");
        fs::create_dir(env.template_file("not a tag")).expect("mkdir");
    });
    assert!(err.contains("sample.json"), "{err}");
    assert!(
        err.contains("xiami-shutdown/not a tag/subject.hbs: missing"),
        "{err}"
    );
}

#[test]
fn no_config_file_means_the_defaults() {
    let env = TestEnv::new();
    fs::remove_file(env.path().join("sunset.toml")).expect("rm");
    // templates.dir defaults to ./templates, which the copy provides.
    env.sunset(&["preview", "--template", "xiami-shutdown"])
        .expect_code(0);
}

#[test]
fn a_missing_config_file_named_by_flag_exits_2() {
    let env = TestEnv::new();
    let err = env
        .sunset(&[
            "--config",
            "nope.toml",
            "preview",
            "--template",
            "xiami-shutdown",
        ])
        .expect_code(2)
        .stderr();
    assert!(
        err.contains("nope.toml") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn an_unknown_config_key_exits_2_naming_key_and_file() {
    let env = TestEnv::new();
    env.write("typo.toml", "[broker]\nprefech = 8\n");
    let err = env
        .sunset(&[
            "preview",
            "--config",
            "typo.toml",
            "--template",
            "xiami-shutdown",
        ])
        .expect_code(2)
        .stderr();
    assert!(err.contains("typo.toml"), "{err}");
    assert!(err.contains("prefech"), "{err}");
    assert!(err.contains("broker"), "{err}");
}

#[test]
fn a_wrongly_typed_config_value_exits_2_naming_key_and_file() {
    let env = TestEnv::new();
    env.write_config("[templates]\ndir = \"templates\"\n[worker]\nconcurrency = \"lots\"\n");
    let err = env
        .sunset(&["preview", "--template", "xiami-shutdown"])
        .expect_code(2)
        .stderr();
    assert!(err.contains("sunset.toml"), "{err}");
    assert!(err.contains("worker.concurrency"), "{err}");
}

#[test]
fn environment_overrides_the_file_and_a_bad_value_names_the_variable() {
    let env = TestEnv::new();
    fs::rename(env.templates(), env.path().join("elsewhere")).expect("mv");
    env.sunset_with_env(
        &["preview", "--template", "xiami-shutdown"],
        &[("SUNSET__TEMPLATES__DIR", "elsewhere")],
    )
    .expect_code(0);
    let err = env
        .sunset_with_env(
            &["preview", "--template", "xiami-shutdown"],
            &[
                ("SUNSET__TEMPLATES__DIR", "elsewhere"),
                ("SUNSET__BROKER__PREFETCH", "many"),
            ],
        )
        .expect_code(2)
        .stderr();
    assert!(err.contains("SUNSET__BROKER__PREFETCH"), "{err}");
    assert!(err.contains("broker.prefetch"), "{err}");
}

#[test]
fn a_reader_that_stops_after_one_line_ends_the_output_quietly() {
    let env = TestEnv::new();
    // More than a pipe holds, so the writing goes on after the reader has gone.
    let long = format!("https://export.example/{}", "x".repeat(100_000));
    env.write("vars.json", &format!(r#"{{"export_url": "{long}"}}"#));
    let mut child = env
        .command(
            &[
                "preview",
                "--template",
                "xiami-shutdown",
                "--all-locales",
                "--vars",
                "vars.json",
            ],
            &[],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sunset preview");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .expect("read a line");
    // The reader is dropped: the pipe is closed, as `| head -1` does.
    assert!(line.contains("xiami-shutdown"), "{line}");

    let output = child.wait_with_output().expect("wait for sunset");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
