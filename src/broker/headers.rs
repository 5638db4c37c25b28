//! The headers sunset puts on its messages: the attempt number every batch carries, and the
//! reason and failure kinds a dead letter carries.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// Header counting deliveries of a recipient set, 1-based; absent means 1.
pub const ATTEMPT_HEADER: &str = "x-sunset-attempt";
/// Header of a dead letter: the short reason.
pub const ERROR_HEADER: &str = "x-sunset-error";
/// Header of a worker's dead letter: why each entry of the body's `failures` failed, in the
/// same order (`rejected`, `exhausted`, `unknown`, …); `sunset dlq replay` leaves `unknown`
/// ones unless asked.
pub const KINDS_HEADER: &str = "x-sunset-kinds";

/// Headers carrying the attempt number.
pub fn attempt_headers(attempt: u32) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempt));
    headers
}

/// The attempt number of a delivery: `x-sunset-attempt`, 1 when absent.
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(ATTEMPT_HEADER))
        .and_then(|value| match value {
            AMQPValue::LongUInt(n) => Some(*n),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
            AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
            _ => None,
        })
        .unwrap_or(1)
}
