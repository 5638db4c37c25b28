//! `sunset enqueue` streams its audience: the peak RSS of a dry run, measured by the kernel
//! (`wait4`'s `ru_maxrss`), does not grow with the row count beyond the duplicate check's Bloom
//! filter, which is sized by the file and never passes 16 MiB.

mod common;

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::process::Stdio;

use common::TestEnv;

/// The duplicate check's largest filter (`enqueue::repeats::FILTER_BITS_MAX` bits). Holding
/// the rows, or a hash per user id, would grow with them: a parsed row is over 200 bytes, a
/// hash-table entry about 17.
const FILTER_MAX_BYTES: u64 = (1 << 27) / 8;
/// Memory a run may take besides that whatever its size (allocator and page noise).
const SLACK: u64 = 4 * 1024 * 1024;

/// Writes an audience of `rows` users and returns its file name.
fn audience(env: &TestEnv, rows: usize) -> String {
    let name = format!("audience-{rows}.csv");
    let file = File::create(env.path().join(&name)).expect("create");
    let mut out = BufWriter::new(file);
    let locales = ["ar-EG", "zh-CN", "zh-TW", "en-US", "fr"];
    writeln!(out, "user_id,email,locale,name").expect("write");
    for i in 0..rows {
        writeln!(
            out,
            "user-{i:08},user{i}@mail{}.example,{},User number {i}",
            i % 97,
            locales[i % locales.len()]
        )
        .expect("write");
    }
    out.flush().expect("flush");
    name
}

/// The peak resident set of `sunset enqueue --dry-run` over the audience, in bytes.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also reports its peak RSS"
)]
fn dry_run_peak_rss(env: &TestEnv, audience: &str) -> u64 {
    let stderr = File::create(env.path().join("stderr.txt")).expect("stderr file");
    let child = env
        .command(
            &common::notice_args("enqueue", "memory", &["--audience", audience, "--dry-run"]),
            &[],
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn sunset");
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own unwaited child; both pointers are to live locals.
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, child.id() as libc::pid_t, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the dry run failed: {}",
        std::fs::read_to_string(env.path().join("stderr.txt")).unwrap_or_default()
    );
    // Linux reports ru_maxrss in KiB.
    u64::try_from(usage.ru_maxrss).expect("non-negative") * 1024
}

/// Measures both sizes and asserts the larger run takes at most the largest filter more.
fn assert_streams(small: usize, large: usize) {
    let env = TestEnv::new();
    let (small_file, large_file) = (audience(&env, small), audience(&env, large));
    let small_rss = dry_run_peak_rss(&env, &small_file);
    let large_rss = dry_run_peak_rss(&env, &large_file);
    eprintln!(
        "peak RSS: {small} rows {:.1} MiB, {large} rows {:.1} MiB",
        small_rss as f64 / 1048576.0,
        large_rss as f64 / 1048576.0
    );
    assert!(
        large_rss <= small_rss + FILTER_MAX_BYTES + SLACK,
        "{large} rows took {large_rss} bytes, {small} rows {small_rss}: more than the \
         duplicate check's largest filter ({FILTER_MAX_BYTES} bytes) in addition"
    );
}

/// A hash per user id would take some 50 MiB more for the million (measured before the
/// filter: 27 MiB at 100,000 rows, 74 MiB at 1,000,000).
#[test]
fn enqueue_streams_an_audience_of_a_million_rows_in_memory_that_does_not_grow_with_it() {
    assert_streams(100_000, 1_000_000);
}

/// Three million rows (about a minute in a debug build):
/// `cargo test --release --test audience_memory -- --ignored --nocapture`.
#[test]
#[ignore = "a million and three million rows: run with --ignored"]
fn enqueue_streams_an_audience_of_millions_of_rows_in_memory_that_does_not_grow_with_it() {
    assert_streams(1_000_000, 3_000_000);
}
