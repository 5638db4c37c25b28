//! `Rabbitmqctl`: the one way the tests run `rabbitmqctl`, on the shared node or on a node of a
//! test's own, with the operator's actions the tests take through it.

use std::ffi::OsString;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// `rabbitmqctl` pointed at one node.
pub struct Rabbitmqctl {
    /// The CLI script to run.
    program: &'static str,
    /// The node's name (`-n NODE`); none for the shared node, the CLI's default.
    node: Option<String>,
    /// What the CLI needs to reach the node (its home, holding the Erlang cookie, and the rest).
    env: Vec<(&'static str, OsString)>,
}

impl Rabbitmqctl {
    /// The shared node on 127.0.0.1:5672, through the `rabbitmqctl` on the `PATH`.
    pub fn shared() -> Rabbitmqctl {
        Rabbitmqctl {
            program: "rabbitmqctl",
            node: None,
            env: Vec::new(),
        }
    }

    /// The node `name`, through `program` with `env`.
    pub fn node(
        program: &'static str,
        name: &str,
        env: Vec<(&'static str, OsString)>,
    ) -> Rabbitmqctl {
        Rabbitmqctl {
            program,
            node: Some(name.to_string()),
            env,
        }
    }

    /// `rabbitmqctl [-n NODE] ARGS`, for the caller to run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.program);
        command.envs(self.env.iter().map(|(key, value)| (*key, value)));
        if let Some(node) = &self.node {
            command.arg("-n").arg(node);
        }
        command.args(args);
        command
    }

    /// Runs `rabbitmqctl ARGS`, asserts it succeeded and returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        self.run_with_input(args, b"")
    }

    /// As [`Rabbitmqctl::run`], with `input` on the command's stdin (`import_definitions`).
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> String {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program));
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(input)
            .expect("write rabbitmqctl's input");
        let output = child.wait_with_output().expect("rabbitmqctl ends");
        assert!(
            output.status.success(),
            "rabbitmqctl {:?} {args:?}: {}{}",
            self.node,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Closes, from the broker side, every connection whose client named it `name` (sunset
    /// names its connections `sunset <queue>`), as an operator's `close_connection` would.
    /// Retries the listing for up to 10 s: a worker may be between connections, and a busy
    /// node sometimes answers `list_connections` with nothing.
    pub fn close_connections_named(&self, name: &str) {
        let quoted = format!("\"{name}\"");
        let mut listing = String::new();
        for _ in 0..20 {
            let output = self
                .command(&[
                    "list_connections",
                    "-q",
                    "--no-table-headers",
                    "pid",
                    "client_properties",
                ])
                .output()
                .expect("rabbitmqctl");
            listing = String::from_utf8_lossy(&output.stdout).into_owned();
            if listing.contains(&quoted) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let mut closed = 0;
        for line in listing.lines().filter(|line| line.contains(&quoted)) {
            let pid = line.split('\t').next().expect("pid column");
            self.run(&["close_connection", pid, "closed by a test"]);
            closed += 1;
        }
        assert!(closed > 0, "no connection named {name:?} in:\n{listing}");
    }
}
