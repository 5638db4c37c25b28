//! The shipped `sunset.toml` documents exactly the built-in defaults.

use std::path::Path;

use sunset::Config;

#[test]
fn the_shipped_sunset_toml_equals_the_built_in_defaults() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("sunset.toml");
    let loaded = Config::load(Some(&shipped)).expect("the shipped config loads");
    assert_eq!(loaded, Config::default());
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let config = Config::default();
    assert_eq!(config.broker.queue, "sunset.batches");
    assert_eq!(config.broker.prefetch, 4);
    assert_eq!(
        config.worker.retry_delays_ms,
        [30_000, 120_000, 600_000, 1_800_000]
    );
    assert_eq!(config.rate.per_domain_per_sec.default, 50);
    assert_eq!(config.rate.per_domain_per_sec.domains["qq.com"], 20);
    assert_eq!(config.templates.default_locale, "en");
    assert_eq!(config.metrics.listen, None);
}

#[test]
fn a_per_domain_table_replaces_the_listed_domains_and_keeps_the_default_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sunset.toml");
    std::fs::write(&path, "[rate.per_domain_per_sec]\n\"gmail.com\" = 5\n").expect("write");
    let config = Config::load(Some(&path)).expect("loads");
    assert_eq!(config.rate.per_domain_per_sec.default, 50);
    assert_eq!(config.rate.per_domain_per_sec.domains.len(), 1);
    assert_eq!(config.rate.per_domain_per_sec.domains["gmail.com"], 5);
}
