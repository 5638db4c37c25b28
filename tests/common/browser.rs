//! A headless Chromium driven through chromedriver, for tests that look at pages as a browser
//! lays them out.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// chromedriver on a free port, killed when dropped.
pub struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    /// Starts chromedriver on a port no other driver of this process was given, and checks
    /// that the driver answering there is this one: tests run side by side, and a port freed
    /// by one can be picked by the next, whose chromedriver then fails to bind while the
    /// other's answers in its place until that one is killed.
    pub fn start() -> ChromeDriver {
        let started = Instant::now();
        loop {
            let port = unused_port();
            let mut child = Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "chromedriver is needed: install Debian's chromium and chromium-driver (scripts/test does)",
                );
            while TcpStream::connect(("127.0.0.1", port)).is_err()
                && child.try_wait().is_ok_and(|exited| exited.is_none())
            {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "chromedriver did not listen"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().is_ok_and(|exited| exited.is_none()) {
                return ChromeDriver { child, port };
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver exited on every port tried"
            );
        }
    }

    pub async fn browser(&self) -> Client {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                         "--window-size=1600,1100"]
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port not handed to another chromedriver of this process.
fn unused_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .expect("Chromium is needed: install Debian's chromium (scripts/test does)")
}

/// Evaluates `script` (a function body that returns a value) in the current frame.
pub async fn js(browser: &Client, script: &str) -> serde_json::Value {
    browser
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Polls `script` until it returns true; the time it took.
pub async fn until(browser: &Client, script: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if js(browser, script).await == json!(true) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not true within {limit:?}: {script}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
