//! DKIM signing off the runtime's thread: the worker and `send` drive every send from one
//! thread, and an RSA-2048 signature costs a millisecond of CPU, so each email is signed on
//! tokio's blocking pool, at most one signature per core at a time.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinError;

use super::Email;
use super::dkim::{DkimSigner, SignError};

/// Why an email could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key refused to sign: the same for every email, so permanent.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The signing thread panicked or the runtime is shutting down: the email may go later.
    #[error("the DKIM signing thread stopped: {0}")]
    Stopped(#[from] JoinError),
}

/// Signs composed emails on the blocking pool, as many at once as there are cores.
#[derive(Debug)]
pub struct Sealer {
    signer: Arc<DkimSigner>,
    /// One permit per core: signatures of many emails in flight run in parallel, yet never
    /// take more threads than the machine has (the pool would grow to 512), so the runtime's
    /// thread keeps a core's share.
    cores: Arc<Semaphore>,
}

impl Sealer {
    /// Signs with `signer`, one signature per available core at a time.
    pub fn new(signer: DkimSigner) -> Sealer {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Sealer {
            signer: Arc::new(signer),
            cores: Arc::new(Semaphore::new(cores)),
        }
    }

    /// `email` with its `DKIM-Signature` field(s) written above its first field; `t=` is the
    /// time of signing. The bytes move to the signing thread and back.
    pub async fn seal(&self, email: Email) -> Result<Email, SealError> {
        let Email { envelope, bytes } = email;
        // The semaphore is never closed, so acquiring only waits and `None` never occurs.
        let permit = Arc::clone(&self.cores).acquire_owned().await.ok();
        let signer = Arc::clone(&self.signer);
        let bytes = tokio::task::spawn_blocking(move || {
            // Held until the signature is made, even when the send awaiting it is dropped.
            let _permit = permit;
            let mut signed = signer.sign(&bytes, chrono::Utc::now().timestamp())?;
            signed.extend_from_slice(&bytes);
            Ok::<_, SignError>(signed)
        })
        .await??;
        Ok(Email { envelope, bytes })
    }
}
