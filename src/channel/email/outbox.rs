//! The file transport: each email written as `{campaign}.{user}.eml` in the outbox folder,
//! replaced atomically on a rerun.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Composer, escape, is_word_char, signed_email};
use crate::batch::{CampaignId, UserId};
use crate::channel::{Delivery, Outcome, Sender};

/// Longest `.eml` file name before it is shortened with a hash (file systems allow 255 bytes).
const FILE_NAME_MAX: usize = 200;

/// Writes each email as `{campaign}.{user}.eml` in a folder; a rerun rewrites the same file.
#[derive(Debug)]
pub struct EmlOutbox {
    /// The folder, created on first write.
    dir: PathBuf,
    /// Addresses and signs each email.
    composer: Composer,
}

impl EmlOutbox {
    /// An outbox in `dir`, writing the emails `composer` makes.
    pub fn new(dir: impl Into<PathBuf>, composer: Composer) -> EmlOutbox {
        EmlOutbox {
            dir: dir.into(),
            composer,
        }
    }

    /// Where the email for this campaign and user is written.
    pub fn path_for(&self, campaign: &CampaignId, user: &UserId) -> PathBuf {
        self.dir.join(eml_file_name(campaign, user))
    }
}

impl Sender for EmlOutbox {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        let email = match signed_email(&self.composer, delivery).await {
            Ok(email) => email,
            Err(outcome) => return outcome,
        };
        let path = self.path_for(delivery.campaign_id, &delivery.recipient.user_id);
        // A mailbox stores the envelope sender as `Return-Path`; with VERP it is the bounce
        // address a relay would use.
        let bytes = match email.envelope.from() {
            Some(sender) if self.composer.uses_verp() => {
                let mut bytes = format!("Return-Path: <{sender}>\r\n").into_bytes();
                bytes.extend_from_slice(&email.bytes);
                bytes
            }
            _ => email.bytes,
        };
        let written = tokio::task::spawn_blocking(move || write_replacing(&path, &bytes)).await;
        match written {
            Ok(Ok(())) => Outcome::Delivered,
            Ok(Err(e)) => Outcome::transient(format!("cannot write to the email outbox: {e}")),
            Err(e) => Outcome::transient(format!("email outbox writer failed: {e}")),
        }
    }
}

/// `{campaign}.{user}.eml` with unsafe characters percent-encoded (the campaign's dots too, so
/// names never collide); names too long for a file system are cut and end in a hash.
fn eml_file_name(campaign: &CampaignId, user: &UserId) -> String {
    let name = format!(
        "{}.{}",
        escape(campaign.as_str(), is_word_char),
        escape(user.as_str(), |c| is_word_char(c) || c == '.')
    );
    if name.len() <= FILE_NAME_MAX {
        return format!("{name}.eml");
    }
    // The name is ASCII, so any byte index is a character boundary; `~` never occurs in an
    // escaped name, so a shortened name cannot equal a whole one.
    format!(
        "{}~{:016x}.eml",
        &name[..FILE_NAME_MAX - 17],
        fnv1a(name.as_bytes())
    )
}

/// FNV-1a, 64 bits: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes a temporary file next to `path`, then renames it over `path`: readers see the old
/// file or the new one, never half of one, and a rerun replaces rather than adds.
fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let result = std::fs::write(&temp, bytes).and_then(|()| std::fs::rename(&temp, path));
    if result.is_err() {
        // Best effort: the temp file is garbage either way.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eml_file_names_are_safe_distinct_and_short() {
        let name = |campaign: &str, user: &str| {
            eml_file_name(
                &CampaignId::parse(campaign).expect("valid"),
                &UserId::parse(user).expect("valid"),
            )
        };
        assert_eq!(
            name("c", "../../etc/passwd"),
            "c...%2F..%2Fetc%2Fpasswd.eml"
        );
        assert_ne!(name("a.b", "c"), name("a", "b.c"));
        let long = "名".repeat(256);
        let shortened = name("c", &long);
        assert!(
            shortened.len() <= 255 && shortened.ends_with(".eml"),
            "{shortened}"
        );
        assert_eq!(shortened, name("c", &long));
        assert_ne!(shortened, name("c", &"名".repeat(255)));
    }
}
