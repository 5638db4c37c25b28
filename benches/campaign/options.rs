//! The bench's command line (`--quick`, the measurements to run) and its knobs from the
//! environment.

use anyhow::{Context as _, ensure};

pub(super) struct Options {
    pub(super) quick: bool,
    pub(super) only: Vec<String>,
    pub(super) n: usize,
    /// Push notices: more than emails, since 20,000 pushes take a quarter second.
    pub(super) push_n: usize,
    pub(super) enqueue_n: usize,
    pub(super) rss_n: Vec<usize>,
    pub(super) concurrencies: Vec<usize>,
    pub(super) repeat: usize,
    pub(super) keep: bool,
    pub(super) wrk_seconds: u64,
}

pub(super) fn env_usize(key: &str) -> anyhow::Result<Option<usize>> {
    match std::env::var(key) {
        Ok(v) => Ok(Some(
            v.trim()
                .replace('_', "")
                .parse()
                .with_context(|| format!("{key}={v}"))?,
        )),
        Err(_) => Ok(None),
    }
}

pub(super) fn env_list(key: &str) -> anyhow::Result<Option<Vec<usize>>> {
    match std::env::var(key) {
        Ok(v) => Ok(Some(
            v.split(',')
                .map(|s| {
                    s.trim()
                        .replace('_', "")
                        .parse()
                        .with_context(|| format!("{key}={v}"))
                })
                .collect::<anyhow::Result<_>>()?,
        )),
        Err(_) => Ok(None),
    }
}

impl Options {
    pub(super) fn parse() -> anyhow::Result<Options> {
        // `cargo bench` passes `--bench`; anything starting with `-` we do not know is ignored.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("SUNSET_BENCH_QUICK").is_ok_and(|v| v != "0");
        let only: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .cloned()
            .collect();
        for name in &only {
            ensure!(
                [
                    "email",
                    "push",
                    "enqueue",
                    "rss",
                    "ledger",
                    "ledger-email",
                    "ledger-push",
                    "ledger-scale",
                    "shaping",
                    "dkim"
                ]
                .contains(&name.as_str()),
                "unknown measurement `{name}` (email, push, enqueue, rss, ledger, ledger-email, ledger-push, ledger-scale, shaping, dkim)"
            );
        }
        let (n, push_n, enqueue_n, rss_n, concurrencies, repeat, wrk_seconds) = if quick {
            (2_000, 2_000, 20_000, vec![1_000, 5_000], vec![64], 1, 2)
        } else {
            (
                20_000,
                100_000,
                200_000,
                vec![10_000, 200_000],
                vec![16, 64, 256],
                3,
                3,
            )
        };
        Ok(Options {
            quick,
            only,
            n: env_usize("SUNSET_BENCH_N")?.unwrap_or(n),
            push_n: env_usize("SUNSET_BENCH_PUSH_N")?.unwrap_or(push_n),
            enqueue_n: env_usize("SUNSET_BENCH_ENQUEUE_N")?.unwrap_or(enqueue_n),
            rss_n: env_list("SUNSET_BENCH_RSS_N")?.unwrap_or(rss_n),
            concurrencies: env_list("SUNSET_BENCH_CONCURRENCY")?.unwrap_or(concurrencies),
            repeat: env_usize("SUNSET_BENCH_REPEAT")?.unwrap_or(repeat).max(1),
            keep: std::env::var("SUNSET_BENCH_KEEP").is_ok_and(|v| v != "0"),
            wrk_seconds,
        })
    }

    pub(super) fn wants(&self, name: &str) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|o| o == name || (o == "ledger" && name.starts_with("ledger-")))
    }
}
