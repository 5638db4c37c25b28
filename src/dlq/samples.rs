//! Dead letters for the unit tests: a batch with the failures asked for, and AMQP headers.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};

use crate::batch::{Batch, CampaignId, Failure, Recipient, UserId, VERSION};
use crate::channel::Channel;
use crate::render::{TemplateName, Vars};

fn recipient(id: &str) -> Recipient {
    Recipient {
        user_id: UserId::parse(id).expect("id"),
        email: None,
        locale: None,
        name: None,
        vars: Vars::new(),
    }
}

/// Batch `c:000007` of campaign `c` for users `a` and `b` on every channel, with a mailbox
/// failure for each (user, channel) given.
pub(super) fn batch(failures: &[(&str, Channel)]) -> Batch {
    Batch {
        version: VERSION,
        campaign_id: CampaignId::parse("c").expect("id"),
        batch_id: "c:000007".into(),
        template: TemplateName::parse("t").expect("name"),
        channels: Channel::ALL.to_vec(),
        deadline: None,
        vars: Vars::new(),
        recipients: vec![recipient("a"), recipient("b")],
        failures: failures
            .iter()
            .map(|(id, channel)| Failure {
                user_id: UserId::parse(id).expect("id"),
                channel: *channel,
                error: "550 5.1.1 Mailbox unavailable".into(),
            })
            .collect(),
    }
}

/// Message properties with these headers.
pub(super) fn properties(headers: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (key, value) in headers {
        table.insert((*key).into(), value.clone());
    }
    BasicProperties::default().with_headers(table)
}

/// A header value as RabbitMQ carries text.
pub(super) fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

/// An `x-sunset-kinds` header value: why each failure failed, in order.
pub(super) fn kinds(labels: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        labels.iter().map(|label| long(label)).collect::<Vec<_>>(),
    ))
}
