//! A `sunset` process running in the background of a test: stopped with SIGTERM by the test,
//! or killed when the test ends without stopping it (a failed assertion), so none outlives it.

use std::process::{Child, Command, ExitStatus};

/// The running process; killed on drop unless [`WorkerProcess::terminate`] was awaited.
pub struct WorkerProcess(Option<Child>);

impl WorkerProcess {
    /// Starts `command`.
    pub fn spawn(mut command: Command) -> WorkerProcess {
        WorkerProcess(Some(command.spawn().expect("start sunset")))
    }

    /// The child's piped standard output, for the caller to read.
    pub fn take_stdout(&mut self) -> std::process::ChildStdout {
        self.0
            .as_mut()
            .and_then(|child| child.stdout.take())
            .expect("stdout piped")
    }

    /// Sends `signal` (`-STOP`, `-CONT`) and returns at once.
    pub fn signal(&self, signal: &str) {
        let child = self.0.as_ref().expect("still running");
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal}");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> ExitStatus {
        signal(self.0.take().expect("still running"), "-TERM").await
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("still running");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait")
    }
}

/// Sends `signal` (`-KILL`, `-TERM`) to a child and waits for it.
pub async fn signal(mut child: Child, signal: &str) -> ExitStatus {
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait")
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
