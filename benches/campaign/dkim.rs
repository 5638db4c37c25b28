//! `dkim`: what DKIM signing costs. The email run of `email` with signing off and with an
//! RSA-2048 key, interleaved (off, on, off, …), into the same `smtp-sink`; one pair at the
//! default rate limits (200 emails a second), where signing should not show; and the raw cost
//! of one signature over one of the shipped notice's emails, in this process.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use sunset::TokenKey;
use sunset::batch::{CampaignId, EmailAddress, Recipient, UserId};
use sunset::channel::email::{Composer, compose, dkim_signer};
use sunset::channel::{Channel, Delivery};
use sunset::config::{DkimConfig, EmailConfig};
use sunset::render::{Renderer, Sample, TemplateName, template_dir};

use crate::process::tool;
use crate::sinks::SmtpSink;
use crate::{Bench, NO_LEDGER};

/// Signatures timed for the raw cost.
const SIGNATURES: usize = 2000;

/// Emails per run at the default rate limits: ten seconds at 200 a second.
const AT_DEFAULT_LIMITS: usize = 2000;

/// An owner-only RSA-2048 key made with openssl in `dir`.
fn rsa_key(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("dkim.pem");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .status()
        .context("run openssl")?;
    ensure!(status.success(), "openssl genpkey failed");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// Microseconds per signature of one shipped Arabic email (the body hash and RSA signature).
fn signing_micros(key: &Path) -> anyhow::Result<f64> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let name = TemplateName::parse("xiami-shutdown")?;
    let renderer = Renderer::load(&dir, &name, "en")?;
    let sample = Sample::load(&template_dir(&dir, &name)?)?;
    let recipient = Recipient {
        user_id: UserId::parse("u-1")?,
        email: Some(EmailAddress::parse("layla@example.com")?),
        locale: Some("ar".into()),
        name: Some("ليلى".into()),
        vars: Default::default(),
    };
    let notice = renderer.render(&sample.vars, &recipient, &[Channel::Email])?;
    let config = EmailConfig {
        dkim: DkimConfig {
            key_file: key.to_owned(),
            ..DkimConfig::default()
        },
        ..EmailConfig::default()
    };
    // With a key the signed email carries List-Unsubscribe, as a template asking for it does.
    let composer = Composer::new(config.from.parse()?).with_tokens(
        TokenKey::from_bytes(b"a bench key of more than sixteen bytes"),
        "https://notices.xiami.example",
        Some("bounces.xiami.example"),
    )?;
    let email = compose(
        &composer,
        Delivery {
            campaign_id: &CampaignId::parse("bench")?,
            recipient: &recipient,
            notice: &notice,
        },
    )?;
    let signer = dkim_signer(&config)?.context("a key is configured")?;
    let started = Instant::now();
    for _ in 0..SIGNATURES {
        signer.sign(&email.bytes, 0)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / SIGNATURES as f64)
}

impl Bench {
    pub(super) fn dkim(&mut self) -> anyhow::Result<()> {
        let n = self.options.n;
        eprintln!("== dkim: {n} notices, signing off and RSA-2048, into smtp-sink");
        tool("smtp-sink")?;
        let keys = tempfile::tempdir()?;
        let key = rsa_key(keys.path())?;
        let micros = signing_micros(&key)?;
        eprintln!("  one RSA-2048 signature of a shipped email: {micros:.0} µs");
        let sink = SmtpSink::start()?;
        let signed = format!(
            "{NO_LEDGER}[email.dkim]\nkey_file = \"{}\"\n",
            key.display()
        );
        let (mut on, mut off) = (Vec::new(), Vec::new());
        off.push(
            self.sunset_email(&sink, n, "dkim-off-0", ("", NO_LEDGER))?
                .0,
        );
        for round in 1..=self.options.repeat {
            eprintln!(" round {round}");
            on.push(
                self.sunset_email(&sink, n, &format!("dkim-on-{round}"), ("", &signed))?
                    .0,
            );
            off.push(
                self.sunset_email(&sink, n, &format!("dkim-off-{round}"), ("", NO_LEDGER))?
                    .0,
            );
        }
        self.report.ratio(
            &format!("email msgs/s, N={n}, DKIM RSA-2048 on vs off"),
            (&on, &off, true),
            "/s",
            0.5,
        );
        self.report.info(
            "DKIM RSA-2048: one signature of a shipped email (body hash + RSA), this process",
            format!("{micros:.0} µs"),
            "-",
        );
        self.dkim_at_default_limits(&sink, &signed)
    }

    /// One run signing off, then one on, with the default `[rate]` (200 emails a second).
    fn dkim_at_default_limits(&mut self, sink: &SmtpSink, signed: &str) -> anyhow::Result<()> {
        let n = AT_DEFAULT_LIMITS.min(self.options.n);
        eprintln!(" at the default rate limits: {n} notices");
        let run = |bench: &mut Bench, label: &str, config: &str| {
            bench.sunset_email_at(sink, n, label, ("", config), "")
        };
        let (off, off_usage) = run(self, "dkim-limited-off", NO_LEDGER)?;
        let (on, on_usage) = run(self, "dkim-limited-on", signed)?;
        self.report.ratio(
            &format!("email msgs/s, N={n}, default rate limits, DKIM RSA-2048 on vs off"),
            (&[on], &[off], true),
            "/s",
            0.95,
        );
        self.report.info(
            "same: worker CPU per email, DKIM on / off",
            format!("{} / {}", on_usage.cpu_per(n), off_usage.cpu_per(n)),
            "-",
        );
        Ok(())
    }
}
