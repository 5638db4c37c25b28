//! `sunset preview --serve` as a comms team uses it: the built binary on a free loopback port,
//! read over raw HTTP and in a real headless Chromium driven through chromedriver.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::TestEnv;
use common::browser::{ChromeDriver, js, until};
use fantoccini::Locator;
use serde_json::json;

/// Each locale's subject with the shipped sample.
const SUBJECTS: [(&str, &str); 4] = [
    (
        "ar",
        "ستتوقف خدمة شيامي ميوزك في 5 فبراير 2021: احفظ بياناتك الآن",
    ),
    ("zh", "虾米音乐将于2021年2月5日停止服务，请尽快导出您的数据"),
    (
        "zh-Hant",
        "蝦米音樂將於2021年2月5日停止服務，請儘速匯出您的資料",
    ),
    (
        "en",
        "Xiami Music closes on February 5, 2021: save your data now",
    ),
];

/// A running `sunset preview --serve` on a port the OS chose; killed when dropped.
struct PreviewServer {
    child: Child,
    address: SocketAddr,
    /// The page it says to open.
    start: String,
}

impl PreviewServer {
    fn start(env: &TestEnv, extra: &[&str]) -> PreviewServer {
        let mut args = vec!["preview", "--serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = env
            .command(&args, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sunset preview --serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut line)
            .expect("read the address line");
        let url = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let (address, path) = url.split_at(url.find('/').expect("a path after the address"));
        PreviewServer {
            address: address.parse().expect("a socket address"),
            start: path.to_string(),
            child,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.request(&format!("GET {path} HTTP/1.1\r\n"), "")
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        self.request(
            &format!(
                "POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ),
            body,
        )
    }

    /// One request as written (so `..` reaches the server unnormalised), naming the server
    /// by its address; status and body.
    fn request(&self, head: &str, body: &str) -> (u16, String) {
        self.raw(&format!("{head}host: {}\r\n", self.address), body)
    }

    /// A POST of a valid sample with `headers` (each ending in CRLF) and no `Host` of its own.
    fn post_sample(&self, headers: &str) -> (u16, String) {
        let body =
            fs::read_to_string(common::shipped_templates().join("xiami-shutdown/sample.json"))
                .expect("the shipped sample");
        self.raw(
            &format!(
                "POST /t/xiami-shutdown/grid HTTP/1.1\r\ncontent-length: {}\r\n{headers}",
                body.len()
            ),
            &body,
        )
    }

    /// One request with exactly the head given (its own `Host`, or none); status and body.
    fn raw(&self, head: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.address).expect("connect to the preview");
        write!(stream, "{head}connection: close\r\n\r\n{body}").expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for PreviewServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `<section>` of one locale's column in a grid page.
fn column<'a>(page: &'a str, tag: &str) -> &'a str {
    let start = page
        .find(&format!("<section class=\"column\" data-locale=\"{tag}\""))
        .unwrap_or_else(|| panic!("no {tag} column in:\n{page}"));
    let end = page[start..]
        .find("</section>")
        .map_or(page.len(), |end| start + end);
    &page[start..end]
}

#[test]
fn index_lists_the_template_with_its_four_locales_and_its_check_result() {
    let env = TestEnv::new();
    let server = PreviewServer::start(&env, &[]);
    assert_eq!(server.start, "/");

    let (status, page) = server.get("/");

    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<a href=\"/t/xiami-shutdown\">"), "{page}");
    for tag in ["ar", "en", "zh", "zh-Hant"] {
        assert!(
            page.contains(&format!("<span class=\"locale\">{tag}</span>")),
            "{tag}:\n{page}"
        );
    }
    assert!(page.contains("check: ok"), "{page}");
}

#[test]
fn index_says_why_when_the_templates_folder_cannot_be_read() {
    let env = TestEnv::new();
    env.write_config("[templates]\ndir = \"nowhere\"\n");
    let server = PreviewServer::start(&env, &[]);

    let (status, page) = server.get("/");

    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("cannot read the templates folder: No such file or directory"),
        "{page}"
    );
}

#[test]
fn grid_shows_each_locale_subject_in_its_own_language_and_direction() {
    let env = TestEnv::new();
    let server = PreviewServer::start(&env, &["--template", "xiami-shutdown"]);
    assert_eq!(server.start, "/t/xiami-shutdown");

    let (status, page) = server.get("/t/xiami-shutdown");

    assert_eq!(status, 200, "{page}");
    let mut positions = Vec::new();
    for (tag, subject) in SUBJECTS {
        let column = column(&page, tag);
        let dir = if tag == "ar" { "rtl" } else { "ltr" };
        assert!(
            column.contains(&format!("lang=\"{tag}\" dir=\"{dir}\"")),
            "{column}"
        );
        assert!(column.contains(subject), "{tag}:\n{column}");
        assert!(
            column.contains("<iframe class=\"email\" sandbox=\"\""),
            "{column}"
        );
        assert!(column.contains("class=\"push-title\""), "{column}");
        positions.push(page.find(column).expect("the column is in the page"));
    }
    assert!(
        positions.is_sorted(),
        "columns ar, zh, zh-Hant, en in order"
    );
}

#[test]
fn a_broken_locale_shows_its_error_inline_and_the_other_locales_still_render() {
    let env = TestEnv::new();
    env.write(
        "templates/xiami-shutdown/ar/subject.hbs",
        "{{#if shutdown_at}}unclosed",
    );
    env.write("templates/xiami-shutdown/zh/push_title.hbs", "{{app_nmae}}");
    fs::remove_file(env.template_file("zh-Hant/email.txt.hbs")).expect("remove a file");
    let server = PreviewServer::start(&env, &[]);

    let (status, page) = server.get("/t/xiami-shutdown");

    assert_eq!(status, 200, "{page}");
    let cases = [
        (
            "ar",
            "ar/subject.hbs:1:1: `{{#if shutdown_at}}` is never closed",
        ),
        (
            "zh",
            "xiami-shutdown/zh/push_title.hbs: variable `app_nmae` is not defined",
        ),
        ("zh-Hant", "zh-Hant/email.txt.hbs"),
    ];
    for (tag, error) in cases {
        let column = column(&page, tag);
        assert!(column.contains("Not rendered"), "{tag}:\n{column}");
        assert!(column.contains(error), "{tag}:\n{column}");
        // Nothing of the notice is shown as if it were fine.
        assert!(!column.contains("class=\"subject\""), "{tag}:\n{column}");
        assert!(!column.contains("<iframe"), "{tag}:\n{column}");
    }
    let english = column(&page, "en");
    assert!(english.contains(SUBJECTS[3].1), "{english}");
    assert!(!english.contains("Not rendered"), "{english}");
    let (_, index) = server.get("/");
    assert!(index.contains("problem(s)"), "{index}");
    assert!(!index.contains("check: ok"), "{index}");
}

#[test]
fn paths_outside_the_templates_folder_are_refused() {
    let env = TestEnv::new();
    let server = PreviewServer::start(&env, &[]);

    for (path, expected) in [
        ("/t/../../etc", 404),
        ("/t/..%2F..%2Fetc", 400),
        ("/t/%2Fetc%2Fpasswd", 400),
        ("/t/..", 400),
        ("/t/.hidden", 400),
        ("/t/nowhere", 404),
        ("/t/..%2F..%2Fetc/grid", 405),
    ] {
        let (status, body) = server.get(path);
        assert_eq!(status, expected, "{path}: {body}");
        assert!(!body.contains("root:"), "{path}: {body}");
    }
    let (status, body) = server.post("/t/..%2F..%2Fetc/grid", "{}");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn a_posted_sample_re_renders_with_recipient_values_escaped_and_bad_json_is_refused() {
    let env = TestEnv::new();
    let server = PreviewServer::start(&env, &[]);
    let sample = json!({
        "vars": {
            "shutdown_at": "2021-03-01T00:00:00+08:00",
            "shutdown_zone": "Asia/Shanghai",
            "help_url": "https://help.xiami.example/",
            "export_url": "https://www.xiami.example/export",
            "successor_url": "https://music.conch.example/"
        },
        "recipient": { "user_id": "u-1", "email": "a@example.com", "locale": "en",
                       "name": "<script>alert(1)</script>", "vars": {} }
    });

    let (status, grid) = server.post("/t/xiami-shutdown/grid", &sample.to_string());

    assert_eq!(status, 200, "{grid}");
    assert!(
        column(&grid, "en").contains("Xiami Music closes on March 1, 2021"),
        "{grid}"
    );
    assert!(!grid.contains("<script>"), "{grid}");
    // Escaped once by the HTML registry, once more into the iframe's srcdoc attribute.
    assert!(grid.contains("&amp;lt;script&amp;gt;alert(1)"), "{grid}");

    let (status, body) = server.post("/t/xiami-shutdown/grid", "{\"vars\": ");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("line 1 column"), "{body}");
    let (status, body) = server.post("/t/xiami-shutdown/grid", "{\"vars\": {}, \"extra\": 1}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown field `extra`"), "{body}");
}

#[test]
fn only_loopback_names_and_the_listen_address_are_answered_others_get_421() {
    let env = TestEnv::new();
    let server = PreviewServer::start(&env, &[]);
    let port = server.address.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = server.raw(&format!("GET / HTTP/1.1\r\nhost: {host}\r\n"), "");
        assert_eq!(status, 200, "{host}: {body}");
    }
    // A DNS-rebinding page names its own host; a wrong port or no Host at all is as foreign.
    for host in [
        format!("host: attacker.example:{port}\r\n"),
        format!("host: localhost.attacker.example:{port}\r\n"),
        format!("host: localhost:{}\r\n", port.wrapping_add(1)),
        String::new(),
    ] {
        let (status, body) = server.raw(&format!("GET /t/xiami-shutdown HTTP/1.1\r\n{host}"), "");
        assert_eq!(status, 421, "{host:?}: {body}");
        assert!(!body.contains("Xiami"), "{body}");
        assert!(body.contains("answers only to localhost"), "{body}");
    }
}

#[test]
fn posts_are_taken_only_as_json_from_the_page_itself() {
    let env = TestEnv::new();
    let server = PreviewServer::start(&env, &[]);
    let host = format!("host: localhost:{}\r\n", server.address.port());
    let own = format!("origin: http://localhost:{}\r\n", server.address.port());
    let json = "content-type: application/json\r\n";

    // The page's own fetch: same origin, as a browser marks it.
    let (status, body) =
        server.post_sample(&format!("{host}{json}{own}sec-fetch-site: same-origin\r\n"));
    assert_eq!(status, 200, "{body}");
    // A tool without browser headers (curl) is fine too.
    let (status, body) = server.post_sample(&format!(
        "{host}content-type: application/json; charset=utf-8\r\n"
    ));
    assert_eq!(status, 200, "{body}");

    for (headers, expected) in [
        // A form or text/plain needs no CORS preflight: a page elsewhere could send it.
        (format!("{host}content-type: text/plain\r\n{own}"), 415),
        (
            format!("{host}content-type: application/x-www-form-urlencoded\r\n"),
            415,
        ),
        (host.clone(), 415),
        (
            format!("{host}{json}origin: https://attacker.example\r\n"),
            403,
        ),
        (format!("{host}{json}origin: null\r\n"), 403),
        (format!("{host}{json}sec-fetch-site: cross-site\r\n"), 403),
        (
            format!("{host}{json}{own}sec-fetch-site: same-site\r\n"),
            403,
        ),
    ] {
        let (status, body) = server.post_sample(&headers);
        assert_eq!(status, expected, "{headers:?}: {body}");
        assert!(!body.contains("Xiami"), "{body}");
    }
}

#[test]
fn an_unknown_template_exits_2_and_a_taken_port_exits_1_naming_the_address() {
    let env = TestEnv::new();
    let run = env
        .sunset(&["preview", "--serve", "--template", "nope"])
        .expect_code(2);
    assert!(
        run.stderr().contains("unknown template `nope`"),
        "{}",
        run.stderr()
    );

    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("its address").to_string();
    let run = env
        .sunset(&["preview", "--serve", "--listen", &address])
        .expect_code(1);
    assert!(
        run.stderr()
            .contains(&format!("Failed to listen on {address}")),
        "{}",
        run.stderr()
    );

    let run = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--listen",
            "127.0.0.1:1",
        ])
        .expect_code(2);
    assert!(run.stderr().contains("--serve"), "{}", run.stderr());
    let run = env
        .sunset(&["preview", "--serve", "--listen", "localhost"])
        .expect_code(2);
    assert!(run.stderr().contains("--listen"), "{}", run.stderr());
}

/// Where the screenshot of the grid is kept (`target/tmp/preview-grid.png`).
fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("preview-grid.png")
}

#[tokio::test]
async fn in_chromium_arabic_reads_right_to_left_every_email_renders_and_edits_show_live() {
    let env = TestEnv::new();
    let server = PreviewServer::start(&env, &["--template", "xiami-shutdown"]);
    let driver = ChromeDriver::start();
    let browser = driver.browser().await;

    browser
        .goto(&server.url(&server.start))
        .await
        .expect("open the grid");
    browser
        .wait()
        .for_element(Locator::Css(".column[data-locale=\"en\"] .subject"))
        .await
        .expect("the grid rendered");

    // Arrange finished; each column reads in its own direction.
    for (tag, _) in SUBJECTS {
        let direction = js(
            &browser,
            &format!(
                "return getComputedStyle(document.querySelector('.column[data-locale=\"{tag}\"] .subject')).direction"
            ),
        )
        .await;
        let expected = if tag == "ar" { "rtl" } else { "ltr" };
        assert_eq!(direction, json!(expected), "{tag}");
    }

    // Every email iframe rendered its document, in its locale.
    let frames = browser
        .find_all(Locator::Css("iframe.email"))
        .await
        .expect("find the iframes");
    assert_eq!(frames.len(), SUBJECTS.len());
    for (frame, (tag, _)) in frames.iter().zip(SUBJECTS) {
        frame.enter_frame().await.expect("enter the iframe");
        let (lang, dir, text) = (
            js(&browser, "return document.documentElement.lang").await,
            js(&browser, "return document.documentElement.dir").await,
            js(&browser, "return document.body.innerText").await,
        );
        assert_eq!(lang, json!(tag));
        assert_eq!(dir, json!(if tag == "ar" { "rtl" } else { "ltr" }));
        let text = text.as_str().unwrap_or_default();
        assert!(text.chars().count() > 100, "{tag} iframe shows: {text:?}");
        browser
            .enter_parent_frame()
            .await
            .expect("leave the iframe");
    }

    // The webmail view of each locale: root attributes gone, the text still in its direction.
    let webmail = browser
        .find_all(Locator::Css("iframe.webmail"))
        .await
        .expect("find the webmail iframes");
    assert_eq!(webmail.len(), SUBJECTS.len());
    for (frame, (tag, _)) in webmail.iter().zip(SUBJECTS) {
        frame.enter_frame().await.expect("enter the iframe");
        let seen = js(
            &browser,
            "return [document.documentElement.dir, document.documentElement.lang,
                     getComputedStyle(document.querySelector('td.notice p')).direction]",
        )
        .await;
        let dir = if tag == "ar" { "rtl" } else { "ltr" };
        assert_eq!(seen, json!(["", "", dir]), "{tag}");
        browser
            .enter_parent_frame()
            .await
            .expect("leave the iframe");
    }

    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    fs::write(screenshot_path(), &png).expect("keep the screenshot");
    eprintln!("screenshot: {}", screenshot_path().display());

    // A subject file changed on disk shows within 2 s, without reloading the page.
    js(&browser, "window.notReloaded = true; return true").await;
    env.write(
        "templates/xiami-shutdown/en/subject.hbs",
        "Xiami Music closes on {{date shutdown_at}}: edited live",
    );
    let latency = until(
        &browser,
        "return document.querySelector('.column[data-locale=\"en\"] .subject').textContent.endsWith('edited live')",
        Duration::from_secs(2),
    )
    .await;
    eprintln!("live reload: the edited subject showed after {latency:?}");
    assert_eq!(
        js(&browser, "return window.notReloaded === true").await,
        json!(true)
    );

    // Until the sample box is edited, it follows sample.json on disk.
    let on_disk = fs::read_to_string(env.template_file("sample.json")).expect("read sample.json");
    fs::write(
        env.template_file("sample.json"),
        on_disk.replace("2021-02-05", "2021-04-01"),
    )
    .expect("edit sample.json");
    until(
        &browser,
        "return document.querySelector('.column[data-locale=\"en\"] .subject').textContent.includes('April 1, 2021') \
         && document.getElementById('sample').value.includes('2021-04-01')",
        Duration::from_secs(2),
    )
    .await;

    // The sample box: invalid JSON is shown as an error, a valid edit re-renders.
    let edit = |text: &str| {
        format!(
            "const box = document.getElementById('sample'); box.value = {}; \
             box.dispatchEvent(new Event('input')); return true",
            json!(text)
        )
    };
    js(&browser, &edit("{\"vars\": ")).await;
    until(
        &browser,
        "const e = document.getElementById('sample-error'); return !e.hidden && e.textContent.includes('not valid JSON')",
        Duration::from_secs(5),
    )
    .await;
    js(
        &browser,
        &edit(&on_disk.replace("2021-02-05", "2021-03-01")),
    )
    .await;
    until(
        &browser,
        "return document.getElementById('sample-error').hidden && document.querySelector('.column[data-locale=\"en\"] .subject').textContent.includes('March 1, 2021')",
        Duration::from_secs(5),
    )
    .await;
    let saved = fs::read_to_string(env.template_file("sample.json")).expect("read sample.json");
    assert!(
        saved.contains("2021-04-01"),
        "the box's edit was saved: {saved}"
    );

    browser.close().await.expect("close the session");
}
