//! Which queue carries a run's batches: RabbitMQ, or — for `sunset send` with `broker.url`
//! unset and nothing answering at the default address, or with `broker.url = ""` — an
//! in-process queue that lives as long as the command.

use super::address::{parse_url, url};
use super::reach::{self, ConnectError};
use super::tls;
use crate::config::BrokerConfig;
use crate::invalid_input::InvalidInput;

/// What carries the batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carrier {
    /// RabbitMQ at `broker.url` (or the default address, which answers).
    RabbitMq,
    /// The in-process queue; `why` says what chose it, for the one line `send` prints.
    InProcess {
        /// E.g. `no RabbitMQ at 127.0.0.1:5672 and broker.url unset`.
        why: String,
    },
}

/// The carrier `config` asks for: a URL that is set is RabbitMQ (reachable or not: the commands
/// wait or give up as configured); `""` is the in-process queue; unset is RabbitMQ at the default
/// address if something answers there, else the in-process queue.
pub async fn carrier(config: &BrokerConfig) -> Carrier {
    match config.url.as_deref() {
        Some("") => Carrier::InProcess {
            why: "broker.url is \"\"".into(),
        },
        Some(_) => Carrier::RabbitMq,
        None => probe(config).await,
    }
}

/// RabbitMQ if the default address answers; anything but silence there (a TLS or AMQP problem)
/// is left for the connection to report.
async fn probe(config: &BrokerConfig) -> Carrier {
    let (Some(uri), Ok(trust)) = (parse_url(&url(config)), tls::config(config)) else {
        return Carrier::RabbitMq;
    };
    match reach::reach(&uri, &trust).await {
        Err(
            ConnectError::Refused { address }
            | ConnectError::Timeout { address, .. }
            | ConnectError::Unreachable { address, .. },
        ) => Carrier::InProcess {
            why: format!("no RabbitMQ at {address} and broker.url unset"),
        },
        _ => Carrier::RabbitMq,
    }
}

/// For `command`, whose batches must outlive the process: an error naming `broker.url` when
/// only the in-process queue is there to carry them.
pub async fn require_rabbitmq(config: &BrokerConfig, command: &str) -> Result<(), InvalidInput> {
    match carrier(config).await {
        Carrier::RabbitMq => Ok(()),
        Carrier::InProcess { why } => Err(needs_rabbitmq(&why, command)),
    }
}

/// For `command`, which waits for RabbitMQ when it is away: an error naming `broker.url` when
/// it asks for the in-process queue (`""`).
pub fn refuse_in_process(config: &BrokerConfig, command: &str) -> Result<(), InvalidInput> {
    match config.url.as_deref() {
        Some("") => Err(needs_rabbitmq("broker.url is \"\"", command)),
        _ => Ok(()),
    }
}

fn needs_rabbitmq(why: &str, command: &str) -> InvalidInput {
    InvalidInput(format!(
        "{why}: `sunset {command}` needs RabbitMQ — set broker.url to its AMQP URL \
         (an in-process queue lives only as long as `sunset send`)"
    ))
}
