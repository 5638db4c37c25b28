//! `sunset feedback` running in the background of a test, with the addresses it listens on
//! (both bound to port 0 and read from its first line of output), and plain HTTP and SMTP
//! clients to talk to it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use super::TestEnv;
use super::worker_process::WorkerProcess;

/// The running service; killed on drop unless terminated.
pub struct FeedbackService {
    pub process: WorkerProcess,
    /// `127.0.0.1:PORT` of the SMTP listener.
    pub smtp: String,
    /// `127.0.0.1:PORT` of the HTTP listener.
    pub http: String,
}

impl FeedbackService {
    /// Starts `sunset feedback` in `env` with `env_vars`, both listeners on free ports, and
    /// waits (at most 30 s) for its line naming them.
    pub fn start(env: &TestEnv, env_vars: &[(&str, &str)]) -> FeedbackService {
        let mut vars = vec![
            ("SUNSET__FEEDBACK__SMTP_LISTEN", "127.0.0.1:0"),
            ("SUNSET__FEEDBACK__HTTP_LISTEN", "127.0.0.1:0"),
        ];
        vars.extend_from_slice(env_vars);
        let mut command = env.command(&["feedback"], &vars);
        command.stdout(Stdio::piped());
        let mut process = WorkerProcess::spawn(command);
        let stdout = process.take_stdout();
        let (lines, line) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut first);
            let _ = lines.send(first);
            // Keep draining, so the service never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let first = line
            .recv_timeout(Duration::from_secs(30))
            .expect("sunset feedback printed its addresses within 30 s");
        let addresses = first
            .trim()
            .strip_prefix("sunset feedback: smtp ")
            .and_then(|rest| rest.split_once(", http "))
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"));
        FeedbackService {
            smtp: addresses.0.to_string(),
            http: addresses.1.to_string(),
            process,
        }
    }

    /// `METHOD path` with `headers` and `body` over HTTP/1.0: the status and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.http).expect("connect to the HTTP listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.http,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).expect("write request");
        stream.write_all(body).expect("write body");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("read response");
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        (status, body.to_string())
    }

    /// One SMTP transaction: `MAIL FROM:<>`, each of `recipients`, then `message` (CRLF lines)
    /// if any recipient was taken. Returns each reply's code: EHLO, MAIL, every RCPT, and the
    /// end of DATA (when sent).
    pub fn smtp(&self, recipients: &[&str], message: &str) -> Vec<u16> {
        let stream = TcpStream::connect(&self.smtp).expect("connect to the SMTP listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        let mut reply = || -> u16 {
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("read a reply");
                assert!(line.len() >= 4, "short reply {line:?}");
                if line.as_bytes()[3] != b'-' {
                    return line[..3].parse().expect("reply code");
                }
            }
        };
        let mut codes = Vec::new();
        assert_eq!(reply(), 220, "greeting");
        let mut say = |line: &str, codes: &mut Vec<u16>, reply: &mut dyn FnMut() -> u16| {
            writer
                .write_all(format!("{line}\r\n").as_bytes())
                .expect("write");
            codes.push(reply());
        };
        say("EHLO relay.test", &mut codes, &mut reply);
        say("MAIL FROM:<>", &mut codes, &mut reply);
        for recipient in recipients {
            say(&format!("RCPT TO:<{recipient}>"), &mut codes, &mut reply);
        }
        if codes[2..].contains(&250) {
            say("DATA", &mut Vec::new(), &mut reply);
            let mut data = String::new();
            for line in message.lines() {
                if line.starts_with('.') {
                    data.push('.');
                }
                data.push_str(line);
                data.push_str("\r\n");
            }
            data.push('.');
            say(&data, &mut codes, &mut reply);
        }
        say("QUIT", &mut Vec::new(), &mut reply);
        codes
    }
}
