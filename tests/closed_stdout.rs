//! Commands whose reader has gone (`sunset … | head -1`): they finish and exit 0, no panic.

mod common;

use std::process::Stdio;

use common::TestEnv;

#[test]
fn topology_with_stdout_closed_declares_the_queues_and_exits_0() {
    let env = TestEnv::with_broker("");
    let mut child = env
        .command(&["topology"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sunset topology");
    // Closed before the first line is written.
    drop(child.stdout.take());

    let output = child.wait_with_output().expect("wait for sunset");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
