//! Parking a batch on a delay queue, and the `x-sunset-not-before` header that lets a wait the
//! peer asked for outlast every configured delay: a batch that comes back too early is parked
//! again, attempt unchanged, until the time has passed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use super::{Broker, BrokerError, Route, attempt_headers};

/// Header of a retry: the time (milliseconds since the Unix epoch) before which it is not sent.
pub const NOT_BEFORE_HEADER: &str = "x-sunset-not-before";

impl Broker {
    /// Publishes `body` to delay queue `queue` (0-based; the longest when out of range) with
    /// its attempt number and not-before time.
    pub(super) async fn park(
        &self,
        body: &[u8],
        queue: usize,
        attempt: u32,
        not_before: Option<SystemTime>,
    ) -> Result<(), BrokerError> {
        let name = self
            .names
            .retry
            .get(queue)
            .or(self.names.retry.last())
            .map(|(name, _)| name.as_str())
            .ok_or_else(|| BrokerError::Returned("retry queue (none configured)".into()))?;
        let mut headers = attempt_headers(attempt);
        if let Some(not_before) = not_before {
            headers.insert(
                NOT_BEFORE_HEADER.into(),
                AMQPValue::LongLongInt(epoch_ms(not_before)),
            );
        }
        self.publish(Route::Queue(name), body, headers).await
    }

    /// Parks a delivery that came back before its not-before time again, as it came: on the
    /// shortest delay queue that outlasts the time left, else the longest.
    pub async fn repark(
        &self,
        body: &[u8],
        attempt: u32,
        not_before: SystemTime,
    ) -> Result<(), BrokerError> {
        let left = not_before
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let queue = self
            .names
            .retry
            .iter()
            .position(|(_, delay_ms)| Duration::from_millis(*delay_ms) >= left)
            .unwrap_or(usize::MAX);
        self.park(body, queue, attempt, Some(not_before)).await
    }
}

fn epoch_ms(time: SystemTime) -> i64 {
    let ms = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The not-before time of a delivery, if it has one still to come.
pub fn not_before_of(properties: &BasicProperties) -> Option<SystemTime> {
    let ms = match properties
        .headers()
        .as_ref()?
        .inner()
        .get(NOT_BEFORE_HEADER)?
    {
        AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok()?,
        AMQPValue::LongUInt(ms) => u64::from(*ms),
        AMQPValue::Timestamp(ms) => *ms,
        _ => return None,
    };
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
    (at > SystemTime::now()).then_some(at)
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldTable;

    use super::*;

    #[test]
    fn only_a_not_before_still_to_come_counts() {
        let with = |value: AMQPValue| {
            let mut headers = FieldTable::default();
            headers.insert(NOT_BEFORE_HEADER.into(), value);
            BasicProperties::default().with_headers(headers)
        };
        let later = SystemTime::now() + Duration::from_secs(60);
        let read = not_before_of(&with(AMQPValue::LongLongInt(epoch_ms(later))));
        assert_eq!(read.map(epoch_ms), Some(epoch_ms(later)));
        assert_eq!(not_before_of(&with(AMQPValue::LongLongInt(1_000))), None);
        assert_eq!(not_before_of(&with(AMQPValue::Boolean(true))), None);
        assert_eq!(not_before_of(&BasicProperties::default()), None);
    }
}
