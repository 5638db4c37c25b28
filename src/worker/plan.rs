//! The pure first step of a batch: the locale of each recipient's notice, and which recipient ×
//! channel pairs are to be sent. Notices themselves are rendered one per send, when it goes.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::batch::{Batch, UserId};
use crate::channel::Channel;
use crate::ledger::Pair;
use crate::render::{BatchCache, Renderer, TemplateError};

use super::DeadLetterKind;

/// Why a notice cannot go out, whatever the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unsendable {
    /// The template did not load.
    Template(String),
    /// The notice did not render for this recipient.
    Render(String),
    /// The batch's deadline passed.
    Deadline,
}

impl Unsendable {
    pub(super) fn kind(&self) -> DeadLetterKind {
        match self {
            Unsendable::Template(_) | Unsendable::Render(_) => DeadLetterKind::Unrenderable,
            Unsendable::Deadline => DeadLetterKind::Deadline,
        }
    }
}

impl fmt::Display for Unsendable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsendable::Template(e) => write!(f, "template: {e}"),
            Unsendable::Render(e) => write!(f, "render: {e}"),
            Unsendable::Deadline => f.write_str(super::DEADLINE),
        }
    }
}

/// One recipient × channel to send: the recipient's index in the batch and the channel.
pub(super) type Item = (usize, Channel);

/// What a batch asks for.
pub(super) struct Plan {
    /// The renderer, or why no notice of the batch can be sent.
    pub(super) renderer: Result<Arc<Renderer>, Unsendable>,
    /// The locale of each recipient's notice (in batch order).
    pub(super) locales: Vec<String>,
    /// The pairs to send.
    pub(super) todo: Vec<Item>,
    /// The same pairs as the ledger claims them (empty without a ledger).
    pub(super) pairs: Vec<Pair>,
    /// Pairs this process delivered before (an earlier try of the same message).
    pub(super) delivered: Vec<Item>,
    /// Recipients with no email address, for whom the email channel is skipped.
    pub(super) no_email: u64,
}

impl Plan {
    /// The locale a pair is (to be) sent in, `-` when the batch's notices cannot be rendered.
    pub(super) fn locale(&self, recipient: usize) -> &str {
        self.locales.get(recipient).map_or("-", String::as_str)
    }
}

/// Finds the locale of each recipient's notice (nothing can be sent when `late` or without a
/// renderer) and lists the pairs to send, skipping those in `already`; `claims` says whether
/// the ledger will claim them.
pub(super) fn plan(
    batch: &Batch,
    already: &HashSet<(UserId, Channel)>,
    renderer: Result<Arc<Renderer>, TemplateError>,
    late: bool,
    claims: bool,
) -> Plan {
    let renderer = match renderer {
        _ if late => Err(Unsendable::Deadline),
        Ok(renderer) => Ok(renderer),
        Err(e) => Err(Unsendable::Template(e.to_string())),
    };
    let locales = match &renderer {
        Ok(renderer) => {
            let mut alike = BatchCache::default();
            batch
                .recipients
                .iter()
                .map(|recipient| renderer.locale_of(recipient, &mut alike))
                .collect()
        }
        Err(_) => Vec::new(),
    };
    let most = batch.recipients.len() * batch.channels.len();
    let mut plan = Plan {
        renderer,
        locales,
        todo: Vec::with_capacity(most),
        pairs: Vec::with_capacity(if claims { most } else { 0 }),
        delivered: Vec::new(),
        no_email: 0,
    };
    for (index, recipient) in batch.recipients.iter().enumerate() {
        for &channel in &batch.channels {
            if channel == Channel::Email && recipient.email.is_none() {
                plan.no_email += 1;
                continue;
            }
            if !already.is_empty() && already.contains(&(recipient.user_id.clone(), channel)) {
                plan.delivered.push((index, channel));
                continue;
            }
            plan.todo.push((index, channel));
            if claims {
                plan.pairs.push(Pair {
                    user_id: recipient.user_id.clone(),
                    channel,
                    locale: plan.locale(index).to_string(),
                    address: match channel {
                        Channel::Email => recipient.email.clone(),
                        Channel::Push => None,
                    },
                });
            }
        }
    }
    plan
}
