//! `sunset feedback`: what comes back from recipients and their mail systems — bounces,
//! complaints, unsubscribes — received by SMTP on `feedback.smtp_listen` and by HTTP on
//! `feedback.http_listen`, and recorded in the ledger as reports.

mod arf;
mod desk;
mod dsn;
mod events;
mod http;
mod inbound;
mod original;
mod page;
mod postmark;
mod refusal;
mod report_fields;
#[cfg(test)]
mod samples;
mod sendgrid;
mod ses;
mod smtp;

use std::sync::Arc;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::exporter::check_host_port;
use crate::invalid_input::InvalidInput;
use crate::ledger::Ledger;
use crate::token::TokenKey;

/// Serves both listeners, recording into `ledger`, until `shutdown` is cancelled. Prints the
/// addresses listened on once both are bound.
pub async fn run(
    config: &Config,
    ledger: Arc<Ledger>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let feedback = &config.feedback;
    let message_domain = config
        .email
        .from
        .parse::<lettre::message::Mailbox>()
        .map(|from| from.email.domain().to_string())
        .map_err(|e| InvalidInput(format!("email.from `{}`: {e}", config.email.from)))?;
    let tokens = if feedback.secret_file.as_os_str().is_empty() {
        tracing::warn!(
            "feedback.secret_file is empty: /u/<token> answers 404 (unsubscribe links and \
             VERP tokens need the key the worker signs them with)"
        );
        false
    } else {
        TokenKey::load(&feedback.secret_file)?;
        true
    };
    let bounce_domain = feedback.bounce_domain.trim().to_ascii_lowercase();
    if bounce_domain.is_empty() {
        tracing::warn!(
            "feedback.bounce_domain is empty: the SMTP listener refuses every recipient"
        );
    }
    let ses = ses::Verifier::load(&feedback.webhooks, &message_domain)?;
    let sendgrid = sendgrid::Verifier::load(&feedback.webhooks, &message_domain)?;
    let postmark = postmark::Credentials::load(&feedback.webhooks)?;
    let smtp_listener = bind("feedback.smtp_listen", &feedback.smtp_listen).await?;
    let http_listener = bind("feedback.http_listen", &feedback.http_listen).await?;
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("Failed to install the metrics recorder")?;
    events::describe();

    let desk = Arc::new(desk::Desk::new(ledger, feedback.clone()));
    let inbox = Arc::new(smtp::Inbox {
        desk: desk.clone(),
        bounce_domain,
        message_domain,
    });
    let site = Arc::new(http::Site {
        desk,
        tokens,
        metrics,
        ses,
        sendgrid,
        postmark,
    });
    let smtp_address = smtp_listener.local_addr()?;
    let http_address = http_listener.local_addr()?;
    tracing::info!(smtp = %smtp_address, http = %http_address, "sunset feedback listening");
    crate::say!("sunset feedback: smtp {smtp_address}, http {http_address}")?;
    let smtp = tokio::spawn(smtp::serve(smtp_listener, inbox, shutdown.clone()));
    let served = axum::serve(http_listener, http::router(site))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("The feedback HTTP listener failed");
    shutdown.cancel();
    let _ = smtp.await;
    served
}

/// Binds `listen`, the value of the config key `key`: not `host:port` is a usage error, an
/// address that cannot be bound a runtime error, both naming the key.
async fn bind(key: &str, listen: &str) -> anyhow::Result<TcpListener> {
    let listen = listen.trim();
    check_host_port(key, listen)?;
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("Failed to listen on {listen} ({key})"))
}
