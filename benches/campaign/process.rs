//! Running a process of the bench: the `sunset` binary, a run to its end with its output kept
//! in the work folder, what it took (`/usr/bin/time -v`), and the reference tools.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};

/// The longest any one step may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(900);

/// The `sunset` binary: cargo builds it (bench profile = release settings, `target/release/`)
/// for this bench and tells us where.
pub(super) fn sunset_bin() -> PathBuf {
    std::env::var_os("SUNSET_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_sunset")),
        PathBuf::from,
    )
}

/// What a process took: wall time, and from `/usr/bin/time -v` (when installed) its peak RSS
/// and CPU time (user + system).
pub(super) struct Usage {
    pub(super) wall: Duration,
    pub(super) peak_rss_kb: Option<u64>,
    pub(super) cpu: Option<Duration>,
}

impl Usage {
    pub(super) fn rss(&self) -> String {
        self.peak_rss_kb
            .map_or("?".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0))
    }

    /// CPU microseconds per item.
    pub(super) fn cpu_per(&self, n: usize) -> String {
        self.cpu.map_or("?".into(), |cpu| {
            let micros = cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
            if micros < 10.0 {
                format!("{micros:.2} µs")
            } else {
                format!("{micros:.0} µs")
            }
        })
    }
}

/// Runs `command` under `/usr/bin/time -v` (same arguments, folder and environment) if it is
/// installed, else as it is.
pub(super) fn timed(
    command: Command,
    dir: &Path,
    label: &str,
) -> anyhow::Result<(Finished, Usage)> {
    let time = Path::new("/usr/bin/time");
    let report = dir.join(format!("{label}.time"));
    let mut actual = if time.exists() {
        let mut wrapped = Command::new(time);
        wrapped
            .arg("-v")
            .arg("-o")
            .arg(&report)
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(cwd) = command.get_current_dir() {
            wrapped.current_dir(cwd);
        }
        wrapped
    } else {
        command
    };
    let _ = std::fs::remove_file(&report);
    let started = Instant::now();
    let finished = run(
        std::mem::replace(&mut actual, Command::new("true")),
        dir,
        label,
    )?;
    let wall = started.elapsed();
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let cpu = match (
        field("User time (seconds):"),
        field("System time (seconds):"),
    ) {
        (Some(user), Some(system)) => Some(Duration::from_secs_f64(user + system)),
        _ => None,
    };
    let usage = Usage {
        wall,
        peak_rss_kb: field("Maximum resident set size (kbytes):").map(|kb| kb as u64),
        cpu,
    };
    Ok((finished, usage))
}

/// A finished process: status and its output, which is also kept in the work folder.
pub(super) struct Finished {
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Finished {
    pub(super) fn expect_success(&self, what: &str) -> anyhow::Result<()> {
        ensure!(
            self.status.success(),
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr (last 3000 bytes)\n{}",
            self.status,
            self.stdout,
            tail(&self.stderr, 3000)
        );
        Ok(())
    }
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Runs a command to the end, output to files `<label>.out`/`.err` in `dir` (no pipes to fill).
pub(super) fn run(mut command: Command, dir: &Path, label: &str) -> anyhow::Result<Finished> {
    let (out, err) = (
        dir.join(format!("{label}.out")),
        dir.join(format!("{label}.err")),
    );
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?);
    let mut child = command
        .spawn()
        .with_context(|| format!("start {:?}", command.get_program()))?;
    let status = wait_timeout(&mut child, STEP_TIMEOUT)?;
    Ok(Finished {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    })
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("gave up after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(super) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A reference tool, or how to install it.
pub(super) fn tool(name: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    let package = match name {
        "smtp-sink" | "smtp-source" => "postfix",
        other => other,
    };
    Err(anyhow!(
        "`{name}` not found: install it with `DEBIAN_FRONTEND=noninteractive apt-get install -y {package}`"
    ))
}
