//! `Postfix`: a Postfix instance of the test's own (Debian's `postfix` package, its own
//! config, queue and data folders in a temp dir, its own port on 127.0.0.1) relaying
//! `users.test` to a sink, failing `nobody@users.test` permanently after accepting it (so it
//! bounces), and routing the bounce domain to `sunset feedback`. Stopped on drop; a system
//! instance is never touched.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The address Postfix accepts and then bounces (`error:` transport, 5.1.1).
pub const UNKNOWN: &str = "nobody@users.test";

/// The running instance.
pub struct Postfix {
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT` of its SMTP listener.
    pub address: String,
}

/// The daemons an instance needs, none chrooted (the queue folder is a plain temp dir).
const MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

impl Postfix {
    /// Starts an instance relaying `users.test` to `sink` and `bounce_domain` to `feedback`
    /// (both `127.0.0.1:PORT`); waits (at most 15 s) until it answers.
    pub fn start(sink: &str, bounce_domain: &str, feedback: &str) -> Postfix {
        let dir = tempfile::tempdir().expect("temp dir");
        // Postfix's daemons run as the `postfix` user: they must reach their folders.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let etc = dir.path().join("etc");
        let spool = dir.path().join("spool");
        let data = dir.path().join("data");
        for folder in [&etc, &spool, &data] {
            fs::create_dir(folder).expect("mkdir");
        }
        let chown = Command::new("chown")
            .args(["postfix", &data.display().to_string()])
            .status()
            .expect("chown");
        assert!(chown.success(), "chown postfix {}", data.display());
        let address = super::scrape::free_address();
        let root = dir.path().display();
        fs::write(
            etc.join("transport"),
            format!(
                "{UNKNOWN} error:5.1.1 user unknown\nusers.test smtp:[127.0.0.1]:{}\n{bounce_domain} smtp:[127.0.0.1]:{}\n",
                port(sink),
                port(feedback)
            ),
        )
        .expect("transport");
        fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.users.test
mydomain = users.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains = users.test
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_reject_unlisted_recipient = no
transport_maps = texthash:{root}/etc/transport
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
biff = no
"
            ),
        )
        .expect("main.cf");
        fs::write(
            etc.join("master.cf"),
            format!("{address} inet n - n - - smtpd\n{MASTER_CF}"),
        )
        .expect("master.cf");
        let postfix = Postfix { dir, address };
        let started = postfix.postfix("start");
        assert!(started, "postfix start failed:\n{}", postfix.log());
        let since = Instant::now();
        while std::net::TcpStream::connect(&postfix.address).is_err() {
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "postfix did not listen on {} within 15 s:\n{}",
                postfix.address,
                postfix.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        postfix
    }

    /// `smtp://127.0.0.1:PORT` for `email.url`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.address)
    }

    /// Its mail log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn postfix(&self, verb: &str) -> bool {
        Command::new("postfix")
            .arg("-c")
            .arg(self.config_dir())
            .arg(verb)
            .status()
            .is_ok_and(|status| status.success())
    }
}

fn port(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(_, port)| port)
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // `abort`: no waiting for deliveries in flight; the queue is thrown away with the dir.
        if !self.postfix("abort") {
            let _ = self.postfix("stop");
        }
    }
}
