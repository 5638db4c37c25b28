//! The broker's URL: which one (`broker.url`, or the default address when it is unset),
//! checked and parsed with sunset's frame size.

use lapin::uri::AMQPUri;

use crate::config::{BrokerConfig, ConfigError, DEFAULT_BROKER_URL};
use crate::secret::redact;

/// Names the address probed and used when `broker.url` is unset, instead of
/// [`DEFAULT_BROKER_URL`] (tests point it where nothing listens).
pub const FALLBACK_URL_ENV: &str = "SUNSET_BROKER_FALLBACK_URL";

/// The URL of RabbitMQ: `broker.url`, or the default address when it is unset.
pub fn url(config: &BrokerConfig) -> String {
    config.url.clone().unwrap_or_else(|| {
        std::env::var(FALLBACK_URL_ENV).unwrap_or_else(|_| DEFAULT_BROKER_URL.to_string())
    })
}

/// Whether `url` is an AMQP URL (`amqp://` or `amqps://`); the error names `broker.url`.
pub fn check_url(url: &str) -> Result<(), ConfigError> {
    url.parse::<lapin::uri::AMQPUri>()
        .map(drop)
        .map_err(|problem| {
            ConfigError::Invalid(format!(
                "  key `broker.url`: `{}` is not an AMQP URL ({problem}); \
                 expected amqp://user:password@host:5672/vhost or amqps://…",
                redact(url)
            ))
        })
}

/// The largest AMQP frame a connection asks for unless `broker.url` sets `frame_max`. lapin
/// keeps 32 frames of buffer each way per connection: at RabbitMQ's default of 128 KiB a frame
/// that is 8 MiB a worker touches once batches flow, at 16 KiB it is 1 MiB.
const FRAME_MAX: u32 = 16 * 1024;

/// `url` parsed, with [`FRAME_MAX`] unless it sets `frame_max`.
pub(super) fn parse_url(url: &str) -> Option<AMQPUri> {
    let mut uri = url.parse::<AMQPUri>().ok()?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Some(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_16_kib_unless_the_url_says() {
        let frame_max = |url: &str| parse_url(url).and_then(|uri| uri.query.frame_max);
        assert_eq!(frame_max("amqp://127.0.0.1:5672/%2f"), Some(16 * 1024));
        assert_eq!(
            frame_max("amqp://127.0.0.1:5672/%2f?frame_max=131072"),
            Some(131_072)
        );
        assert_eq!(frame_max("http://127.0.0.1"), None, "not an AMQP URL");
    }
}
