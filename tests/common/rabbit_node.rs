//! `RabbitNode`: a RabbitMQ node of a test's own, on free ports in a temporary folder, for the
//! tests that stop, restart or reconfigure their broker — the shared node on 127.0.0.1:5672
//! serves every other test and other work on the machine, and stays as it is.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::rabbitmqctl::Rabbitmqctl;

/// The server and CLI scripts themselves: `/usr/sbin/rabbitmq-server` and its siblings change
/// to /var/lib/rabbitmq and switch to the `rabbitmq` user, whose cookie and home are the shared
/// node's.
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// How long a node may take to start and listen (about 5 s on an idle machine; a test suite
/// building and running beside it makes that several times longer).
const START_LIMIT: Duration = Duration::from_secs(90);

/// How long `rabbitmqctl stop` may take before the node's VM is killed instead (a node that
/// does not answer keeps the CLI waiting for minutes).
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Starts tried: a node whose port another process took between its choice and the node's
/// listen fails its boot and exits, and the next try uses other ports.
const START_TRIES: usize = 3;

/// The ports `rabbitmqctl` and the other CLI tools listen on for their own Erlang
/// distribution (`RABBITMQ_CTL_DIST_PORT_MIN`…`MAX`): a node's ports keep out of them.
const CLI_DIST_PORTS: std::ops::RangeInclusive<u16> = 35672..=35682;

/// A running RabbitMQ node (management plugin off, user guest/guest allowed from anywhere),
/// stopped and its folder deleted when dropped.
pub struct RabbitNode {
    dir: tempfile::TempDir,
    name: String,
    port: u16,
    /// The `rabbitmq-server` script, parent of the Erlang VM.
    server: Child,
}

impl RabbitNode {
    /// Starts a node and returns once it accepts AMQP connections; panics with the end of the
    /// node's log if it does not within `START_LIMIT`. Blocks for several seconds: call it from
    /// `block_in_place` in an async test.
    pub fn start() -> RabbitNode {
        let mut failures = String::new();
        for _ in 0..START_TRIES {
            match RabbitNode::try_start() {
                Ok(node) => return node,
                Err(failure) => failures.push_str(&failure),
            }
        }
        panic!("no RabbitMQ node of the test's own started in {START_TRIES} tries:\n{failures}");
    }

    /// One start; `Err` with the node's log when its server exits before the node is up.
    fn try_start() -> Result<RabbitNode, String> {
        let dir = tempfile::Builder::new()
            .prefix("sunset-rabbit-")
            .tempdir()
            .expect("create the node's folder");
        let [port, dist_port] = free_ports();
        let name = format!("sunset-t{port}@localhost");
        fs::write(dir.path().join("plugins"), "[].\n").expect("write the plugins file");
        fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .expect("write rabbitmq.conf");
        let output = fs::File::create(dir.path().join("server.out")).expect("create server.out");
        let server = Command::new(SERVER)
            .envs(node_env(dir.path(), &name, port))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone a file handle"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("start {SERVER}: {e}"));
        let mut node = RabbitNode {
            dir,
            name,
            port,
            server,
        };
        node.until_up()?;
        Ok(node)
    }

    /// Waits until the node listens and has finished booting; `Err` if its server exits first.
    fn until_up(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let address = format!("127.0.0.1:{}", self.port);
        loop {
            if let Some(status) = self.server.try_wait().expect("poll the node's server") {
                return Err(format!(
                    "{} exited ({status}):\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            let left = START_LIMIT.saturating_sub(started.elapsed());
            assert!(
                !left.is_zero(),
                "{} not up on {address} after {START_LIMIT:?}:\n{}",
                self.name,
                self.log_tail()
            );
            // The port answers from the end of the boot on; `await_startup` then tells whether
            // it is this node's. A node that lost its port to another process fails its boot
            // and exits, and the next round sees that.
            if TcpStream::connect(&address).is_ok() && self.booted_within(left) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `rabbitmqctl await_startup`: false at once if the node is not (yet) known to epmd.
    fn booted_within(&self, limit: Duration) -> bool {
        self.rabbitmqctl()
            .command(&[
                "await_startup",
                "--timeout",
                &limit.as_secs().max(1).to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// The URL sunset and lapin connect to, as guest.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rabbitmqctl -n NODE`, with the node's home (its Erlang cookie) and environment.
    pub fn rabbitmqctl(&self) -> Rabbitmqctl {
        Rabbitmqctl::node(
            CTL,
            &self.name,
            node_env(self.dir.path(), &self.name, self.port),
        )
    }

    /// Stops the RabbitMQ application (every client loses its connection); the Erlang node
    /// stays up for `start_app`.
    pub fn stop_app(&self) {
        self.rabbitmqctl().run(&["stop_app"]);
    }

    /// Starts the application again and returns once it has booted and listens.
    pub fn start_app(&self) {
        let rabbitmqctl = self.rabbitmqctl();
        rabbitmqctl.run(&["start_app"]);
        rabbitmqctl.run(&["await_startup"]);
    }

    /// The last lines of the node's log and of its server's output.
    fn log_tail(&self) -> String {
        let mut tail = String::new();
        for file in [
            self.dir
                .path()
                .join("log")
                .join(format!("{}.log", self.name)),
            self.dir.path().join("server.out"),
        ] {
            let text = fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(30).collect();
            let _ = writeln!(tail, "== {}", file.display());
            for line in lines.into_iter().rev() {
                let _ = writeln!(tail, "{line}");
            }
        }
        tail
    }

    /// The Erlang VM's process id, while that process is still this node's VM (the pid file
    /// outlives the process, whose id may then be another's).
    fn vm_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let command_line = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let home = self.dir.path().to_string_lossy().into_owned();
        command_line
            .split(|byte| *byte == 0)
            .any(|arg| arg == home.as_bytes())
            .then_some(pid)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("pid")
    }
}

impl Drop for RabbitNode {
    /// Stops the node (`rabbitmqctl stop` waits for the VM to exit), kills the VM if it is still
    /// there after `STOP_LIMIT`, reaps the server script; the folder goes with `dir`.
    fn drop(&mut self) {
        if matches!(self.server.try_wait(), Ok(None)) {
            let pid_file = self.pid_file();
            let stop = self
                .rabbitmqctl()
                .command(&["stop", &pid_file.to_string_lossy()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(mut stop) = stop {
                let asked = Instant::now();
                while matches!(stop.try_wait(), Ok(None)) && asked.elapsed() < STOP_LIMIT {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = stop.kill();
                let _ = stop.wait();
            }
        }
        if let Some(pid) = self.vm_pid() {
            // SAFETY: kill(2) with a pid checked above to be this node's VM.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// What points a server or CLI command at the node in `dir`: its own home (Erlang cookie),
/// node name, port, database, logs, pid file, config and plugins.
fn node_env(dir: &Path, name: &str, port: u16) -> Vec<(&'static str, OsString)> {
    vec![
        ("HOME", dir.into()),
        ("RABBITMQ_NODENAME", name.into()),
        ("RABBITMQ_NODE_PORT", port.to_string().into()),
        ("RABBITMQ_MNESIA_BASE", dir.join("mnesia").into()),
        ("RABBITMQ_LOG_BASE", dir.join("log").into()),
        ("RABBITMQ_PID_FILE", dir.join("pid").into()),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins").into()),
        ("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq").into()),
    ]
}

/// Two distinct ports free now on 127.0.0.1, outside the CLI tools' distribution ports.
fn free_ports() -> [u16; 2] {
    let mut held = Vec::new();
    while held.len() < 2 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("a bound address").port();
        if !CLI_DIST_PORTS.contains(&port) {
            held.push((port, listener));
        }
    }
    [held[0].0, held[1].0]
}
