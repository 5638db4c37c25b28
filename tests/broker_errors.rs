//! A broker that cannot be used: each cause (down, silent, wrong password, unknown vhost, not
//! TLS) is told in words with what to try, exit code 1, no panic, no password.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Run, TestEnv};

/// The password every test's URL carries, to check it never shows.
const SECRET: &str = "s3cret-never-shown";

/// `sunset topology` against `url`.
fn topology_at(url: &str) -> Run {
    let env = TestEnv::new();
    env.write_config(&format!(
        "[templates]\ndir = \"templates\"\n[broker]\nurl = \"{url}\"\n"
    ));
    env.sunset(&["topology"])
}

/// Exit 1, every `wanted` piece in stderr, and neither a panic nor the password.
fn assert_told(run: Run, wanted: &[&str]) {
    let stderr = run.expect_code(1).stderr();
    for piece in wanted {
        assert!(stderr.contains(piece), "{piece:?} missing in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(SECRET), "password shown: {stderr}");
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

#[test]
fn a_closed_port_says_connection_refused_and_how_to_check_at_once() {
    let port = closed_port();
    let started = Instant::now();
    let run = topology_at(&format!("amqp://guest:{SECRET}@127.0.0.1:{port}/%2f"));
    assert_told(
        run,
        &[
            &format!("cannot reach RabbitMQ at 127.0.0.1:{port}: connection refused"),
            "is RabbitMQ running?",
            "`rabbitmq-diagnostics ping`",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for lapin's retries"
    );
}

#[test]
fn a_wrong_password_is_access_refused_naming_the_user() {
    let run = topology_at(&format!("amqp://guest:{SECRET}@127.0.0.1:5672/%2f"));
    assert_told(
        run,
        &[
            "refused user `guest`",
            "wrong user name or password (ACCESS_REFUSED)",
            "rabbitmqctl authenticate_user guest",
        ],
    );
}

#[test]
fn an_unknown_vhost_says_it_is_not_found_and_how_to_list_them() {
    let run = topology_at("amqp://guest:guest@127.0.0.1:5672/no-such-vhost-here");
    assert_told(
        run,
        &[
            "virtual host `no-such-vhost-here`",
            "not found",
            "rabbitmqctl list_vhosts",
        ],
    );
}

#[test]
fn a_listener_that_never_answers_times_out_in_the_handshake() {
    // Accepts connections (the kernel's backlog does) and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let run = topology_at(&format!("amqp://guest:{SECRET}@127.0.0.1:{port}/%2f"));
    assert_told(
        run,
        &[
            &format!("RabbitMQ at 127.0.0.1:{port} accepted the connection"),
            "did not complete the AMQP handshake within 10s",
        ],
    );
    drop(listener);
}

#[test]
fn amqps_to_a_plain_amqp_port_is_a_tls_failure_naming_the_usual_port() {
    let run = topology_at(&format!("amqps://guest:{SECRET}@127.0.0.1:5672/%2f"));
    assert_told(
        run,
        &[
            "TLS handshake with RabbitMQ at 127.0.0.1:5672 failed",
            "usually 5671",
        ],
    );
}

#[test]
fn a_worker_with_a_wrong_password_stops_at_once_instead_of_waiting() {
    let env = TestEnv::with_broker(&format!(
        "url = \"amqp://guest:{SECRET}@127.0.0.1:5672/%2f\"\ngive_up_after_ms = 60000\n"
    ));
    let started = Instant::now();
    let run = env.sunset(&["worker"]);
    assert_told(run, &["Cannot connect to RabbitMQ", "ACCESS_REFUSED"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the worker retried"
    );
}
