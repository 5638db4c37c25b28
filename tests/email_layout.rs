//! The shipped notice's HTML as mail clients get it: direction inside `<body>`, a table layout
//! Outlook keeps, a readable button, and what makes it trustworthy (preheader, fallback, footer).

mod common;

use common::{notice_html, shipped_notice};

fn html_for(locale: &str) -> String {
    let (renderer, sample) = shipped_notice();
    notice_html(&renderer, &sample, locale, "DJ K.")
}

/// The text after `<body …>`: what webmail keeps.
fn body(html: &str) -> &str {
    let start = html.find("<body").expect("has a body");
    &html[start + html[start..].find('>').expect("tag ends") + 1..]
}

/// WCAG 2 contrast ratio of two `#rrggbb` colours.
fn contrast(a: &str, b: &str) -> f64 {
    let luminance = |hex: &str| {
        let channel = |i: usize| {
            let c = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5)
    };
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

/// The value of a CSS property in the first `style` attribute after `marker`.
fn style_after<'a>(html: &'a str, marker: &str, property: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in html"));
    let rest = &html[at..];
    // Preceded by `"` or `;`, so `color` is not found inside `background-color`.
    let start = [format!("\"{property}:"), format!(";{property}:")]
        .iter()
        .filter_map(|p| rest.find(p.as_str()))
        .min()
        .expect("property")
        + property.len()
        + 2;
    let end = rest[start..].find([';', '"']).expect("value ends");
    &rest[start..start + end]
}

#[test]
fn direction_and_language_are_set_inside_the_body_for_every_locale() {
    for (locale, tag, dir, align) in [
        ("ar", "ar", "rtl", "right"),
        ("en", "en", "ltr", "left"),
        ("zh", "zh", "ltr", "left"),
        ("zh-TW", "zh-Hant", "ltr", "left"),
    ] {
        let html = html_for(locale);
        let body = body(&html);
        assert!(
            body.contains(&format!(r#"dir="{dir}" lang="{tag}""#)),
            "{locale}"
        );
        assert!(
            body.contains(&format!("direction:{dir};text-align:{align};")),
            "{locale}"
        );
    }
}

#[test]
fn the_layout_is_a_600px_presentation_table_with_a_table_cell_button() {
    let html = html_for("en");
    assert!(html.contains(r#"<table role="presentation" width="600""#));
    assert!(!html.contains("<div style=\"max-width"), "no div layout");
    let button = &html[html.find(r#"class="button""#).expect("button cell")..];
    assert!(button.starts_with(r#"class="button" align="center" bgcolor="#));
    assert!(
        button[..button.find("</td>").expect("cell ends")]
            .contains(r#"<a href="https://www.xiami.example/export""#)
    );
}

#[test]
fn the_button_and_links_meet_wcag_aa_contrast() {
    let html = html_for("en");
    let background = style_after(&html, r#"class="button""#, "background-color");
    let text = style_after(&html, r#"class="button""#, "color");
    assert!(contrast(text, background) >= 4.5, "{text} on {background}");
    let link = style_after(&html, r#"href="https://music.conch.example/""#, "color");
    assert!(contrast(link, "#ffffff") >= 4.5, "{link} on white");
    let footer = style_after(&html, r#"class="footer""#, "color");
    assert!(contrast(footer, "#f3f4f6") >= 4.5, "{footer} on grey");
}

#[test]
fn call_to_action_comes_before_the_signature_with_a_visible_fallback_address() {
    for (locale, signature) in [
        ("en", "The Xiami Music team"),
        ("ar", "فريق شيامي ميوزك"),
        ("zh", "虾米音乐团队"),
        ("zh-Hant", "蝦米音樂團隊"),
    ] {
        let html = html_for(locale);
        let button = html.find(r#"class="button""#).expect("button");
        let fallback = html
            .find(r#">https://www.xiami.example/export</a>"#)
            .expect("fallback address shown as text");
        let signed = html.find(signature).expect("signature");
        assert!(button < fallback && fallback < signed, "{locale}");
    }
}

#[test]
fn preheader_footer_and_font_stacks_are_per_locale() {
    for (locale, preheader, help, font) in [
        (
            "en",
            "Download your playlists",
            "help centre",
            "font-family:-apple-system",
        ),
        (
            "ar",
            "نزّل قوائم التشغيل",
            "مركز المساعدة",
            "font-family:'Noto Naskh Arabic'",
        ),
        (
            "zh",
            "请在虾米音乐停止服务前",
            "帮助中心",
            "font-family:'PingFang SC'",
        ),
        (
            "zh-Hant",
            "請在蝦米音樂停止服務前",
            "說明中心",
            "font-family:'PingFang TC'",
        ),
    ] {
        let html = html_for(locale);
        let body = body(&html);
        let hidden = body.find("display:none").expect("hidden preheader");
        let shown = body.find(preheader).expect("preheader text");
        assert!(hidden < shown && Some(shown) < body.find("<h1"), "{locale}");
        let footer = &html[html.find(r#"class="footer""#).expect("footer")..];
        assert!(footer.contains(help), "{locale}");
        assert!(
            footer.contains(r#"href="https://help.xiami.example/""#),
            "{locale}"
        );
        assert!(html.contains(font), "{locale}");
    }
}
