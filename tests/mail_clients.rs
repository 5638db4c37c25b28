//! The shipped notice in a real headless Chromium, as a desktop client shows it and as webmail
//! leaves it (root attributes and `<style>` dropped): direction, the button, isolated names and
//! regional deadlines. Screenshots of each are kept in `target/tmp/mail-clients/`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::browser::{ChromeDriver, js};
use common::{notice_html, shipped_notice};
use fantoccini::{Client, Locator};
use serde_json::json;
use sunset::webmail;

/// Writes `html` to `dir/file` and opens it.
async fn open(browser: &Client, dir: &Path, file: &str, html: &str) {
    let path = dir.join(file);
    fs::write(&path, html).expect("write the page");
    browser
        .goto(&format!("file://{}", path.display()))
        .await
        .expect("open the page");
}

/// Where the screenshots go (`target/tmp/mail-clients/`).
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mail-clients");
    fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

/// Horizontal extent of the greeting's parts: (word before the name, the name, what follows);
/// null where the name starts the greeting (Chinese).
const GREETING_BOXES: &str = "
    const p = document.querySelector('td.notice p');
    const bdi = p.querySelector('bdi');
    const box = (node) => { if (!node) return null;
                            const r = document.createRange(); r.selectNodeContents(node);
                            const b = r.getBoundingClientRect(); return [b.left, b.right]; };
    return [box(bdi.previousSibling), box(bdi), box(bdi.nextSibling)];";

/// The greeting's word before the name is on the name's start side and what follows on its end
/// side, in direction `dir` (half a pixel of rounding allowed).
async fn assert_name_in_reading_order(browser: &Client, dir: &str, what: &str) {
    let boxes: [Option<[f64; 2]>; 3] =
        serde_json::from_value(js(browser, GREETING_BOXES).await).expect("boxes");
    let [before, name, after] = boxes;
    let name = name.expect("the name is shown");
    // In RTL the start side is the right: mirror x so one comparison serves both directions.
    let start_to_end = |[left, right]: [f64; 2]| {
        if dir == "rtl" {
            [-right, -left]
        } else {
            [left, right]
        }
    };
    let name = start_to_end(name);
    if let Some(before) = before.map(start_to_end) {
        assert!(before[1] <= name[0] + 0.5, "{what}: {boxes:?}");
    }
    let after = start_to_end(after.expect("punctuation follows the name"));
    assert!(after[0] >= name[1] - 0.5, "{what}: {boxes:?}");
}

#[tokio::test]
async fn in_chromium_webmail_keeps_direction_button_and_isolated_names_per_locale() {
    let (renderer, sample) = shipped_notice();
    let pages = tempfile::tempdir().expect("temp dir");
    let driver = ChromeDriver::start();
    let browser = driver.browser().await;
    browser
        .set_window_size(680, 1400)
        .await
        .expect("window size");

    for (locale, name, dir, align) in [
        ("ar-EG", "DJ K.", "rtl", "right"),
        ("en-GB", "ليلى", "ltr", "left"),
        ("zh-CN", "DJ K. ليلى", "ltr", "left"),
        ("zh-TW", "ليلى", "ltr", "left"),
    ] {
        let full = notice_html(&renderer, &sample, locale, name);
        for (view, page) in [
            ("full", full.clone()),
            ("webmail", webmail::sanitise(&full)),
        ] {
            open(
                &browser,
                pages.path(),
                &format!("{locale}-{view}.html"),
                &page,
            )
            .await;
            let what = format!("{locale} {view}");
            if view == "webmail" {
                let root = js(
                    &browser,
                    "return document.documentElement.dir + document.body.dir",
                )
                .await;
                assert_eq!(root, json!(""), "{what}: root attributes removed");
            }
            let paragraphs = js(
                &browser,
                "return [...document.querySelectorAll('td.notice p')]
                    .map(p => getComputedStyle(p).direction + ' ' + getComputedStyle(p).textAlign)",
            )
            .await;
            let paragraphs = paragraphs.as_array().expect("array");
            assert!(paragraphs.len() >= 4, "{what}: {paragraphs:?}");
            for p in paragraphs {
                assert_eq!(p, &json!(format!("{dir} {align}")), "{what}");
            }
            let button = js(
                &browser,
                "const td = document.querySelector('td.button'); const a = td.querySelector('a');
                 return [getComputedStyle(td).display, a.href, a.getBoundingClientRect().height > 30]",
            )
            .await;
            assert_eq!(
                button,
                json!(["table-cell", "https://www.xiami.example/export", true]),
                "{what}"
            );
            // The name sits between the greeting word and the punctuation after it, in the
            // paragraph's reading order.
            assert_name_in_reading_order(&browser, dir, &what).await;
            let png = browser
                .find(Locator::Css("body > table"))
                .await
                .expect("the layout table")
                .screenshot()
                .await
                .expect("a screenshot");
            assert!(png.starts_with(b"\x89PNG"), "not a PNG");
            fs::write(screenshots().join(format!("{locale}-{view}.png")), &png)
                .expect("keep the screenshot");
        }
    }
    eprintln!("screenshots: {}", screenshots().display());
    browser.close().await.expect("close the browser");
}

#[tokio::test]
async fn in_chromium_a_name_with_bidi_controls_cannot_reorder_the_text_after_it() {
    let (renderer, sample) = shipped_notice();
    let pages = tempfile::tempdir().expect("temp dir");
    let driver = ChromeDriver::start();
    let browser = driver.browser().await;

    // Enqueue and the decoder refuse such names; the isolate is the second line of defence.
    for (locale, name) in [("ar", "DJ \u{202E}K."), ("en", "Eve \u{202E}evE \u{2067}x")] {
        let page = webmail::sanitise(&notice_html(&renderer, &sample, locale, name));
        open(&browser, pages.path(), "page.html", &page).await;
        let dir = if locale == "ar" { "rtl" } else { "ltr" };
        assert_name_in_reading_order(&browser, dir, locale).await;
        // The paragraph after the greeting still reads in order.
        let second = js(
            &browser,
            "return document.querySelectorAll('td.notice p')[1].innerText.slice(0, 12)",
        )
        .await;
        let expected = if locale == "ar" {
            "يؤسفنا إبلاغ"
        } else {
            "Xiami Music "
        };
        assert_eq!(second, json!(expected), "{locale}");
    }
    browser.close().await.expect("close the browser");
}

#[tokio::test]
async fn in_chromium_the_deadline_reads_as_each_region_writes_it() {
    let (renderer, sample) = shipped_notice();
    let pages = tempfile::tempdir().expect("temp dir");
    let driver = ChromeDriver::start();
    let browser = driver.browser().await;

    for (locale, deadline) in [
        ("ar-EG", "٥ فبراير ٢٠٢١ في ١٢:٠٠ ص توقيت الصين الرسمي"),
        ("ar-MA", "5 فبراير 2021 في 00:00 توقيت الصين الرسمي"),
        (
            "en-GB",
            "5 February 2021 at 00:00 China Standard Time (GMT+8)",
        ),
        (
            "en-US",
            "February 5, 2021 at 12:00\u{202F}AM China Standard Time (GMT+8)",
        ),
        ("zh-CN", "2021年2月5日 中国标准时间 00:00（GMT+8）"),
        ("zh-TW", "2021年2月5日 凌晨12:00 中國標準時間（GMT+8）"),
    ] {
        let page = webmail::sanitise(&notice_html(&renderer, &sample, locale, "x"));
        open(&browser, pages.path(), "page.html", &page).await;
        let strong = js(
            &browser,
            "return [...document.querySelectorAll('td.notice strong')].map(s => s.textContent)",
        )
        .await;
        let shown = strong.as_array().expect("array");
        assert!(
            shown
                .iter()
                .any(|s| s.as_str().is_some_and(|s| s.starts_with(deadline))),
            "{locale}: {shown:?}"
        );
    }
    browser.close().await.expect("close the browser");
}
