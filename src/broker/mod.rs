//! RabbitMQ: connect (timeout, auto-recovery), declare the topology, publish with confirms,
//! consume, and hold a queue's messages; and the in-process queue `send` runs on when there
//! is no RabbitMQ.

mod address;
mod carrier;
mod headers;
mod hold;
mod in_process;
mod park;
mod publish;
mod queue;
mod reach;
mod tls;
pub mod topology;

use std::time::Duration;

use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, DefaultConnectionBuilder};

use address::parse_url;
pub use address::{FALLBACK_URL_ENV, check_url, url};
pub use carrier::{Carrier, carrier, refuse_in_process, require_rabbitmq};
pub use headers::{ATTEMPT_HEADER, ERROR_HEADER, KINDS_HEADER, attempt_headers, attempt_of};
pub use hold::{Hold, MAX_HELD};
pub use in_process::{InProcess, InProcessReceipt, Inbox};
pub use park::{NOT_BEFORE_HEADER, not_before_of};
pub use publish::{KEPT_OF_OVERSIZED, Route};
pub use queue::{Message, Queue, WorkQueue};
pub use reach::ConnectError;
pub use topology::{EXCHANGE, QueueNames};

use crate::config::{BrokerConfig, ConfigError};
use crate::secret::redact;

/// Something went wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection: why, and what to try.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The AMQP client reported an error.
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused (nack) a message it was sent.
    #[error("RabbitMQ refused the message for `{0}` (nack)")]
    Nacked(String),
    /// The broker ended the consumer (queue deleted, or the channel closed).
    #[error("RabbitMQ ended the consumer")]
    ConsumerEnded,
    /// `broker.url` is not an AMQP URL, or `broker.ca_file` cannot be read or holds no certificate.
    #[error("invalid broker configuration")]
    Config(#[source] ConfigError),
    /// The message could not be routed to any queue (returned).
    #[error("RabbitMQ returned the message for `{0}`: no queue bound (run `sunset topology`)")]
    Returned(String),
    /// An operation got no answer: the connection is gone or stuck while lapin recovers it.
    #[error("RabbitMQ did not answer {0} within {REPLY_TIMEOUT:?}")]
    NoReply(&'static str),
    /// lapin has been recovering the connection for longer than its grace; start anew.
    #[error("RabbitMQ connection still not recovered after {0:?}")]
    RecoveryStalled(Duration),
    /// The in-process queue could not write a dead letter to `broker.dead_letter_file`.
    #[error("cannot write dead letter to {path} (broker.dead_letter_file): {source}")]
    DeadLetterFile {
        /// The file.
        path: std::path::PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// The longest any single broker operation (a publish and its confirm, a cancel, a close, an
/// ack) may take: a connection that breaks while lapin recovers it can leave them unanswered.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// `operation`, or [`BrokerError::NoReply`] after [`REPLY_TIMEOUT`].
pub async fn within<T, E>(
    what: &'static str,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, BrokerError>
where
    BrokerError: From<E>,
{
    match tokio::time::timeout(REPLY_TIMEOUT, operation).await {
        Ok(result) => result.map_err(BrokerError::from),
        Err(_) => Err(BrokerError::NoReply(what)),
    }
}

/// A connection with one confirm-mode channel for publishing, and the queue names.
pub struct Broker {
    connection: Connection,
    publisher: Channel,
    names: QueueNames,
    /// `broker.max_message_bytes`.
    max_message_bytes: u64,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// A consumer and the channel it lives on (acks go through that channel).
pub struct Subscription {
    channel: Channel,
    /// The stream of deliveries.
    pub consumer: Consumer,
}

impl Subscription {
    /// Stops new deliveries; those already received can still be acked.
    pub async fn cancel(&self) -> Result<(), BrokerError> {
        within(
            "basic.cancel",
            self.channel
                .basic_cancel(self.consumer.tag(), BasicCancelOptions::default()),
        )
        .await
    }

    /// Closes the channel: unacked deliveries go back to the queue.
    pub async fn close(&self) {
        if self.channel.status().connected() {
            let _ = within("channel.close", self.channel.close(200, "done".into())).await;
        }
    }
}

impl Broker {
    /// Connects (giving up after a timeout, and at once when the broker refuses, a certificate
    /// is not trusted or the credentials are wrong), enables lapin's auto-recovery, opens a
    /// confirm-mode channel and declares the topology.
    pub async fn connect(config: &BrokerConfig, names: QueueNames) -> Result<Broker, BrokerError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("sunset {}", names.work).into())
            .enable_auto_recover();
        let url = url(config);
        check_url(&url).map_err(BrokerError::Config)?;
        let tls = tls::config(config).map_err(BrokerError::Config)?;
        // A URL that does not parse is left for lapin to report.
        let uri = parse_url(&url);
        if let Some(uri) = &uri {
            reach::reach(uri, &tls).await?;
        }
        let connector = DefaultConnectionBuilder::new()?;
        let connector = match &uri {
            Some(uri) => connector.with_uri(uri.clone()),
            None => connector.with_uri_str(url.clone()),
        }
        .with_properties(properties)
        .with_tls_config(tls);
        let connection =
            match tokio::time::timeout(reach::CONNECT_TIMEOUT, connector.connect()).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    return Err(uri
                        .as_ref()
                        .and_then(|uri| reach::refusal(&error, uri))
                        .map_or(BrokerError::Amqp(error), BrokerError::Connect));
                }
                Err(_) => {
                    return Err(ConnectError::Handshake {
                        address: uri.as_ref().map_or_else(|| redact(&url), reach::address),
                        seconds: reach::CONNECT_TIMEOUT.as_secs(),
                    }
                    .into());
                }
            };
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology::declare(&publisher, &names).await?;
        Ok(Broker {
            connection,
            publisher,
            names,
            max_message_bytes: config.max_message_bytes,
        })
    }

    /// The queue names.
    pub fn names(&self) -> &QueueNames {
        &self.names
    }

    /// A new channel on the connection, without publisher confirms (for `basic.get` and acks).
    pub async fn open_channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.connection.create_channel().await?)
    }

    /// Whether lapin's auto-recovery is re-establishing the connection.
    pub fn is_recovering(&self) -> bool {
        let status = self.connection.status();
        status.reconnecting() || status.connecting()
    }

    /// Whether the connection is up (false while lapin recovers or after it gave up).
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// A consumer of the work queue on its own channel, at most `prefetch` unacked batches.
    pub async fn subscribe(&self, prefetch: u16) -> Result<Subscription, BrokerError> {
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.names.work.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Subscription { channel, consumer })
    }

    /// Ready messages in a queue (not those delivered and unacked).
    pub async fn ready_count(&self, queue: &str) -> Result<u32, BrokerError> {
        let queue = within(
            "queue.declare",
            self.publisher.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(queue.message_count())
    }

    /// Deletes every queue of the topology (tests, and tearing down a finished deployment).
    pub async fn delete_queues(&self) -> Result<(), BrokerError> {
        for queue in self.names.all() {
            self.publisher
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Closes the connection cleanly (and stops a recovery under way); call before the runtime
    /// ends. A connection that is already gone has nothing to close.
    /// A connection lapin is still recovering cannot be closed (`close` needs it connected) and
    /// would come back on its own, its consumer taking a prefetch of batches nobody reads: wait
    /// (at most `CLOSE_WAIT`) until the recovery ends, then close what it gave.
    pub async fn close(&self) {
        let waited = std::time::Instant::now();
        while self.is_recovering() && waited.elapsed() < CLOSE_WAIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.connection.status().connected() {
            let _ = within("connection.close", self.connection.close(200, "bye".into())).await;
        } else if self.is_recovering() {
            tracing::warn!("RabbitMQ connection still recovering after {CLOSE_WAIT:?}; leaving it");
        }
    }
}

/// How long `close` waits for a recovering connection to come back (so it can be closed).
const CLOSE_WAIT: Duration = Duration::from_secs(20);
