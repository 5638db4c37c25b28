//! A run's work folder: the shipped templates, a `sunset.toml` with a queue of its own, the
//! audience, and `sunset enqueue` / `sunset worker` run in it; its queues are deleted after.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sunset::broker::{Broker, QueueNames};
use sunset::config::BrokerConfig;

use crate::process::{Finished, Usage, sunset_bin, timed};

/// Retry delays of the bench queues (only their names matter: nothing fails).
const RETRY_DELAYS: [u64; 2] = [1000, 2000];
/// Recipients per batch, `enqueue`'s default.
pub(super) const BATCH_SIZE: usize = 500;

/// A temp folder with `templates/` (a symlink to the shipped ones), a `sunset.toml` with its own
/// random queue `sunset.bench.<random>`, and the queues deleted when dropped.
pub(super) struct Workdir {
    dir: tempfile::TempDir,
    queue: String,
    runtime: tokio::runtime::Handle,
    keep: bool,
}

impl Workdir {
    /// `worker` goes into the `[worker]` table, `extra` after every other table.
    pub(super) fn new(
        runtime: &tokio::runtime::Handle,
        keep: bool,
        worker: &str,
        extra: &str,
    ) -> anyhow::Result<Workdir> {
        let dir = tempfile::Builder::new().prefix("sunset-bench-").tempdir()?;
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        std::os::unix::fs::symlink(&templates, dir.path().join("templates"))?;
        let queue = format!("sunset.bench.{:016x}", fastrand::u64(..));
        let delays: Vec<String> = RETRY_DELAYS.iter().map(u64::to_string).collect();
        let config = format!(
            "[broker]\nqueue = \"{queue}\"\n[worker]\nretry_delays_ms = [{}]\n{worker}\
             [templates]\ndir = \"templates\"\n[metrics]\nlisten = \"\"\n{extra}",
            delays.join(", ")
        );
        std::fs::write(dir.path().join("sunset.toml"), config)?;
        Ok(Workdir {
            dir,
            queue,
            runtime: runtime.clone(),
            keep,
        })
    }

    pub(super) fn path(&self) -> &Path {
        self.dir.path()
    }

    fn names(&self) -> QueueNames {
        QueueNames::new(&self.queue, &RETRY_DELAYS)
    }

    fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            queue: self.queue.clone(),
            ..BrokerConfig::default()
        }
    }

    /// Messages ready in the dead-letter queue.
    pub(super) fn dead_letters(&self) -> anyhow::Result<u32> {
        let (config, names) = (self.broker_config(), self.names());
        self.runtime.block_on(async move {
            let broker = Broker::connect(&config, names.clone()).await?;
            let count = broker.ready_count(&names.dlq).await;
            broker.close().await;
            Ok(count?)
        })
    }

    /// `sunset ARGS` in this folder, without `SUNSET*` variables from outside.
    pub(super) fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args).current_dir(self.path());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SUNSET")) {
            command.env_remove(key);
        }
        command
    }

    /// Writes an audience CSV of `n` users; locales and domains cycle.
    pub(super) fn audience(&self, name: &str, n: usize) -> anyhow::Result<PathBuf> {
        let locales = ["ar-EG", "zh-CN", "zh-TW", "en-US"];
        let domains = [
            "example.com",
            "example.net",
            "qq.com",
            "163.com",
            "gmail.com",
        ];
        let mut csv = String::with_capacity(n * 48 + 32);
        csv.push_str("user_id,email,locale,name\n");
        for i in 1..=n {
            let _ = writeln!(
                csv,
                "u-{i:07},user{i}@{},{},User {i}",
                domains[i % domains.len()],
                locales[i % locales.len()]
            );
        }
        let path = self.path().join(name);
        std::fs::write(&path, csv)?;
        Ok(path)
    }

    /// `sunset enqueue` of the audience for `channels`; returns the run and its wall time.
    pub(super) fn enqueue(
        &self,
        campaign: &str,
        audience: &str,
        channels: &str,
        dry_run: bool,
    ) -> anyhow::Result<(Finished, Usage)> {
        let batch = BATCH_SIZE.to_string();
        let mut args = vec![
            "enqueue",
            "--campaign",
            campaign,
            "--template",
            "xiami-shutdown",
            "--audience",
            audience,
            "--channels",
            channels,
            "--batch-size",
            &batch,
        ];
        if dry_run {
            args.push("--dry-run");
        }
        let label = if dry_run {
            "enqueue-dry-run"
        } else {
            "enqueue"
        };
        let (run, usage) = timed(self.command(&sunset_bin(), &args), self.path(), label)?;
        run.expect_success("sunset enqueue")?;
        Ok((run, usage))
    }

    /// `sunset worker --exit-when-idle` under `/usr/bin/time -v`: wall time and peak RSS.
    pub(super) fn worker(&self, label: &str) -> anyhow::Result<Usage> {
        let mut command = self.command(&sunset_bin(), &["worker", "--exit-when-idle"]);
        command.env(
            "RUST_LOG",
            std::env::var("SUNSET_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let (finished, usage) = timed(command, self.path(), label)?;
        finished.expect_success("sunset worker")?;
        Ok(usage)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let (config, names) = (self.broker_config(), self.names());
        let deleted = self.runtime.block_on(async move {
            let broker = Broker::connect(&config, names).await?;
            let deleted = broker.delete_queues().await;
            broker.close().await;
            deleted
        });
        if let Err(e) = deleted {
            eprintln!("warning: could not delete queues of {}: {e}", self.queue);
        }
        if self.keep {
            let path =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!("kept {}", path.display());
        }
    }
}
