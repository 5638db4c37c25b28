//! The order a batch's sends go in: one lane per rate limit a send waits on (the push gateway,
//! or an email domain), each lane waiting for its limits one send at a time. A throttled domain
//! holds up its own lane only, and a batch keeps one waiting send per lane and its sends in
//! flight — not a waiting send per recipient × channel.

use std::collections::HashMap;
use std::future::Future;

use futures::stream::{self, StreamExt};

use super::plan::Item;
use crate::batch::Batch;
use crate::channel::Channel;

/// The batch's `items` by lane: lanes in the order they first appear, items in batch order.
/// Email lanes go by the domain as written; two spellings of one domain make two lanes that
/// wait on the same limit, which costs one more waiting send, nothing else.
pub(super) fn lanes(batch: &Batch, items: impl IntoIterator<Item = Item>) -> Vec<Vec<Item>> {
    let mut lane_of: HashMap<(Channel, &str), usize> = HashMap::new();
    let mut lanes: Vec<Vec<Item>> = Vec::new();
    for (index, channel) in items {
        let domain = match channel {
            Channel::Email => batch.recipients[index]
                .email
                .as_ref()
                .map_or("", |email| email.domain()),
            Channel::Push => "",
        };
        let lane = *lane_of.entry((channel, domain)).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push((index, channel));
    }
    lanes
}

/// Runs every item of `lanes`: `wait` (the limits and a slot) one item at a time per lane, all
/// lanes at once; then `send` with what the wait gave, at most `bound` sends at once. A wait
/// starts only when a send may start, so nothing waits for a slot it could not use.
pub(super) async fn drive<W, S>(
    lanes: Vec<Vec<Item>>,
    bound: usize,
    wait: impl Fn(Item) -> W,
    send: impl Fn(Item, W::Output) -> S,
) -> Vec<S::Output>
where
    W: Future,
    S: Future,
{
    let wait = &wait;
    let waiting = lanes.into_iter().map(|lane| {
        Box::pin(stream::iter(lane).then(move |item| {
            let waited = wait(item);
            async move { (item, waited.await) }
        }))
    });
    stream::select_all(waiting)
        .map(|(item, waited)| send(item, waited))
        .buffer_unordered(bound.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn items_go_by_channel_and_domain_in_batch_order() {
        let batch = Batch::decode(
            br#"{"version":1,"campaign_id":"c","batch_id":"c:000001","template":"t",
                "channels":["email","push"],
                "recipients":[{"user_id":"a","email":"a@x.test"},{"user_id":"b","email":"b@y.test"},
                              {"user_id":"c","email":"c@x.test"},{"user_id":"d"}]}"#,
        )
        .expect("a batch");
        let items = [
            (0, Channel::Email),
            (0, Channel::Push),
            (1, Channel::Email),
            (1, Channel::Push),
            (2, Channel::Email),
            (3, Channel::Push),
        ];
        assert_eq!(
            lanes(&batch, items),
            vec![
                vec![(0, Channel::Email), (2, Channel::Email)],
                vec![(0, Channel::Push), (1, Channel::Push), (3, Channel::Push)],
                vec![(1, Channel::Email)],
            ]
        );
    }

    #[tokio::test]
    async fn a_lane_stuck_waiting_holds_up_no_other_and_each_lane_waits_one_at_a_time() {
        let pushes = 998;
        let lanes = vec![
            vec![(0, Channel::Email), (1, Channel::Email)],
            (2..2 + pushes).map(|i| (i, Channel::Push)).collect(),
        ];
        let (waiting, most_waiting) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (sent, pushes_sent) = (
            std::sync::Mutex::new(Vec::new()),
            tokio::sync::Notify::new(),
        );
        let wait = |(index, _): Item| {
            let (waiting, most_waiting, pushes_sent) = (&waiting, &most_waiting, &pushes_sent);
            async move {
                let now = waiting.fetch_add(1, Ordering::SeqCst) + 1;
                most_waiting.fetch_max(now, Ordering::SeqCst);
                if index == 0 {
                    pushes_sent.notified().await;
                }
                tokio::task::yield_now().await;
                waiting.fetch_sub(1, Ordering::SeqCst);
            }
        };
        let send = |(index, _): Item, ()| {
            let (sent, pushes_sent) = (&sent, &pushes_sent);
            async move {
                let mut sent = sent.lock().expect("not poisoned");
                sent.push(index);
                if sent.len() == pushes {
                    pushes_sent.notify_one();
                }
            }
        };
        drive(lanes, 4, wait, send).await;
        let sent = sent.into_inner().expect("not poisoned");
        assert_eq!(sent.len(), pushes + 2);
        assert_eq!(&sent[pushes..], [0, 1], "the stuck lane went last");
        assert_eq!(
            most_waiting.load(Ordering::SeqCst),
            2,
            "one waiting send per lane"
        );
    }
}
