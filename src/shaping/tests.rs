//! The shaper's decisions, with time passed in.

use super::*;

const SETTINGS: Settings = Settings {
    window: Duration::from_secs(10),
    threshold: 0.05,
    recover_every: Duration::from_secs(2),
};

fn shaper() -> Shaper {
    Shaper::new(Rules::load(None).expect("shipped rules"), SETTINGS)
}

fn domain(name: &str) -> Key {
    Key::Domain(name.to_string())
}

fn deferred(text: &str, throttled: bool) -> Seen<'_> {
    Seen::Deferred {
        text,
        throttled,
        retry_after: None,
    }
}

/// `seen` at `now`, of an attempt that started then too.
fn at(
    shaper: &mut Shaper,
    key: &Key,
    ceiling: f64,
    seen: Seen<'_>,
    now: Instant,
) -> Option<Decision> {
    shaper.observe(key, ceiling, seen, now, now)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn per_recipient_deferrals_never_change_the_domain_pace() {
    let mut shaper = shaper();
    let key = domain("example.com");
    let start = Instant::now();
    for i in 0..1000u64 {
        let seen = if i % 10 == 0 {
            deferred("451 4.7.1 Try again later", false)
        } else {
            Seen::Attempt
        };
        assert_eq!(at(&mut shaper, &key, 300.0, seen, start + ms(i)), None);
    }
    let (pace, _) = shaper.pace(&key, start + ms(1000));
    assert!(!pace.expect("seen").slowed);
}

#[test]
fn one_throttle_reply_is_not_enough_but_a_share_past_the_threshold_slows_by_one_step() {
    let mut shaper = shaper();
    let key = domain("example.com");
    let start = Instant::now();
    let too_fast = deferred("421 4.7.0 Too many messages, slow down", true);
    for i in 0..20 {
        at(&mut shaper, &key, 100.0, Seen::Attempt, start + ms(i));
    }
    assert_eq!(at(&mut shaper, &key, 100.0, too_fast, start + ms(20)), None);
    assert_eq!(at(&mut shaper, &key, 100.0, too_fast, start + ms(21)), None);
    let third = at(&mut shaper, &key, 100.0, too_fast, start + ms(22));
    assert_eq!(
        third,
        Some(Decision {
            rule: RATE_WORDING.into(),
            change: Change::Lowered(100.0 * DEFAULT_STEP),
        })
    );
    // Replies to sends made at the old rate do not lower it again.
    for i in 0..10 {
        let reply = shaper.observe(&key, 100.0, too_fast, start + ms(5), start + ms(30 + i));
        assert_eq!(reply, None);
    }
}

#[test]
fn evidence_below_the_threshold_share_does_not_slow() {
    let mut shaper = shaper();
    let key = domain("example.com");
    let start = Instant::now();
    let too_fast = deferred("421 4.7.0 Too many messages, slow down", true);
    for i in 0..400u64 {
        let seen = if i % 25 == 24 {
            too_fast
        } else {
            Seen::Attempt
        };
        assert_eq!(at(&mut shaper, &key, 100.0, seen, start + ms(i * 10)), None);
    }
}

#[test]
fn a_lowered_rate_rises_each_quiet_period_back_to_the_ceiling() {
    let mut shaper = shaper();
    let key = domain("example.com");
    let start = Instant::now();
    let too_fast = deferred("421 4.7.0 Too many connections, slow down", true);
    for i in 0..10 {
        at(&mut shaper, &key, 100.0, too_fast, start + ms(i));
    }
    let (pace, _) = shaper.pace(&key, start + ms(1000));
    assert_eq!(
        pace.expect("slowed").per_sec,
        50.0,
        "all refused: the deepest step"
    );
    // Near the lowering: a tenth of the lowered rate per quiet period.
    let (pace, raised) = shaper.pace(&key, start + ms(2010));
    assert_eq!(pace.expect("raised").per_sec, 55.0);
    assert_eq!(raised.expect("a raise").change, Change::Raised(55.0));
    let (pace, _) = shaper.pace(&key, start + ms(6010));
    assert_eq!(pace.expect("raised").per_sec, 65.0);
    // A window (10 s) after the last evidence: by a quarter per quiet period.
    let (pace, _) = shaper.pace(&key, start + ms(10_010));
    assert_eq!(pace.expect("raised").per_sec, 70.0 * RAISE);
    let (pace, recovered) = shaper.pace(&key, start + ms(12_010));
    assert!(!pace.expect("recovered").slowed);
    assert_eq!(recovered.expect("a decision").change, Change::Recovered);
}

#[test]
fn a_second_lowering_waits_the_hold_off_and_goes_to_what_was_accepted() {
    let mut shaper = shaper();
    let key = domain("example.com");
    let start = Instant::now();
    let too_fast = deferred("421 4.7.0 Too many messages, slow down", true);
    for i in 0..10 {
        at(&mut shaper, &key, 300.0, too_fast, start + ms(i));
    }
    let (pace, _) = shaper.pace(&key, start + ms(10));
    assert_eq!(pace.expect("slowed").per_sec, 150.0);
    // At 150/s the domain takes two sends of three: 100/s.
    let mut decisions = Vec::new();
    for i in 0..100u64 {
        let seen = if i % 3 == 2 { too_fast } else { Seen::Attempt };
        let now = start + ms(10) + Duration::from_micros(6_667 * (i + 1));
        if let Some(decision) = at(&mut shaper, &key, 300.0, seen, now) {
            decisions.push((now - start, decision.change));
        }
    }
    let [(when, Change::Lowered(rate))] = decisions[..] else {
        panic!("one lowering expected: {decisions:?}");
    };
    assert!(when >= ms(10) + HOLD_OFF, "lowered again after {when:?}");
    assert!((85.0..=95.0).contains(&rate), "lowered to {rate}/s");
}

/// A relay that takes `per_sec` with a burst of a tenth of it and refuses the rest, the way
/// the tests' SMTP sink does (`throttle_above`).
struct Relay {
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl Relay {
    fn take(&mut self, now: Instant) -> bool {
        let burst = self.per_sec / 10.0;
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.per_sec).min(burst);
        self.at = now;
        let taken = self.tokens >= 1.0;
        if taken {
            self.tokens -= 1.0;
        }
        taken
    }
}

#[test]
fn against_a_relay_taking_100_per_second_the_rate_settles_under_it_without_hammering() {
    let mut shaper = shaper();
    let key = domain("example.com");
    let start = Instant::now();
    let too_fast = deferred("421 4.7.0 Too many messages, slow down", true);
    let mut relay = Relay {
        per_sec: 100.0,
        tokens: 10.0,
        at: start,
    };
    let (mut attempts, mut accepted, mut settled) = (0u32, 0u32, 0u32);
    let mut now = start;
    while now < start + Duration::from_secs(40) {
        let (pace, _) = shaper.pace(&key, now);
        let rate = pace.map_or(300.0, |pace| pace.per_sec);
        let taken = relay.take(now);
        let seen = if taken { Seen::Attempt } else { too_fast };
        at(&mut shaper, &key, 300.0, seen, now);
        attempts += 1;
        if taken {
            accepted += 1;
            if now >= start + Duration::from_secs(10) {
                settled += 1;
            }
        }
        now += Duration::from_secs_f64(1.0 / rate);
    }
    let rate = f64::from(settled) / 30.0;
    let ratio = f64::from(attempts) / f64::from(accepted);
    println!("settled at {rate:.1}/s, {ratio:.3} attempts per message");
    assert!((70.0..=110.0).contains(&rate), "settled at {rate}/s");
    assert!(ratio <= 1.3, "{ratio} attempts per message");
}

#[test]
fn repeated_episodes_go_down_to_the_floor_and_no_further() {
    let mut shaper = shaper();
    let key = domain("example.com");
    let mut now = Instant::now();
    let too_fast = deferred("452 4.7.0 Ratelimit exceeded", true);
    for _ in 0..100 {
        for _ in 0..10 {
            at(&mut shaper, &key, 50.0, too_fast, now);
        }
        now += ms(1000);
    }
    let (pace, _) = shaper.pace(&key, now);
    assert_eq!(pace.expect("slowed").per_sec, FLOOR_PER_SEC);
}

#[test]
fn a_suspend_rule_fires_at_once_and_holds_for_its_duration() {
    let mut shaper = shaper();
    let key = domain("163.com");
    let start = Instant::now();
    let spam = deferred(
        "451 DT:SPM 163 smtp14,EsCowAA; please try again later",
        true,
    );
    let decision = at(&mut shaper, &key, 20.0, spam, start).expect("suspended");
    assert_eq!(decision.rule, "netease-spam-deferral");
    assert_eq!(
        decision.change,
        Change::Suspended(start + Duration::from_secs(120))
    );
    let (pace, _) = shaper.pace(&key, start + Duration::from_secs(119));
    assert!(pace.expect("suspended").suspended_until.is_some());
    let (pace, resumed) = shaper.pace(&key, start + Duration::from_secs(120));
    assert_eq!(pace.expect("known").suspended_until, None);
    assert_eq!(resumed.expect("resumed").change, Change::Resumed);
}

#[test]
fn a_suspension_without_a_duration_takes_the_wait_the_reply_asks_for() {
    let rules = Rules::parse(
        "[[rule]]\nname = \"pause\"\npattern = \"try again in\"\nscope = \"domain\"\naction = \"suspend\"\n",
        "t",
    )
    .expect("rules");
    let mut shaper = Shaper::new(rules, SETTINGS);
    let start = Instant::now();
    let seen = Seen::Deferred {
        text: "421 4.7.0 try again in 30 seconds",
        throttled: true,
        retry_after: Some(Duration::from_secs(30)),
    };
    let decision = at(&mut shaper, &domain("x.example"), 10.0, seen, start);
    assert_eq!(
        decision.expect("suspended").change,
        Change::Suspended(start + Duration::from_secs(30))
    );
}

#[test]
fn a_set_rate_rule_holds_its_rate_for_its_duration() {
    let rules = Rules::parse(
        "[[rule]]\nname = \"cap\"\npattern = \"4\\\\.7\\\\.999\"\nscope = \"domain\"\n\
         action = \"set_rate\"\nrate = 2.0\nduration_secs = 30\n",
        "t",
    )
    .expect("rules");
    let mut shaper = Shaper::new(rules, SETTINGS);
    let key = domain("x.example");
    let start = Instant::now();
    let mut decision = None;
    for i in 0..10 {
        decision = at(
            &mut shaper,
            &key,
            100.0,
            deferred("451 4.7.999 busy", false),
            start + ms(i),
        );
    }
    assert_eq!(decision.expect("capped").change, Change::Lowered(2.0));
    let (pace, _) = shaper.pace(&key, start + Duration::from_secs(29));
    assert_eq!(pace.expect("held").per_sec, 2.0);
    let (pace, _) = shaper.pace(&key, start + Duration::from_secs(33));
    assert!(pace.expect("rising").per_sec > 2.0);
}

#[test]
fn provider_rules_apply_to_their_domains_only() {
    let mut shaper = shaper();
    let start = Instant::now();
    let spam = deferred("451 DT:SPM 163 smtp14", false);
    assert!(at(&mut shaper, &domain("163.com"), 20.0, spam, start).is_some());
    assert!(at(&mut shaper, &domain("example.com"), 20.0, spam, start).is_none());
}

#[test]
fn pruning_forgets_quiet_domains_at_their_ceiling_only() {
    let mut shaper = shaper();
    let start = Instant::now();
    at(
        &mut shaper,
        &domain("quiet.example"),
        50.0,
        Seen::Attempt,
        start,
    );
    let too_fast = deferred("421 4.7.0 Too many connections", true);
    let later = start + Duration::from_secs(10);
    for i in 0..10 {
        at(
            &mut shaper,
            &domain("slow.example"),
            50.0,
            too_fast,
            later + ms(i),
        );
    }
    shaper.prune(later + ms(500));
    assert_eq!(shaper.tracked(), 1);
    assert_eq!(shaper.slowed()[0].0, domain("slow.example"));
}
