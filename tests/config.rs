//! The shipped `sunset.toml` and docs/config.md document exactly the built-in defaults: every
//! key, each with its default value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;
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

/// Every leaf key of `value` as `section.key` (a key holding a dot quoted, as TOML writes it),
/// with its value.
fn leaves(prefix: &str, value: &serde_json::Value, into: &mut BTreeMap<String, serde_json::Value>) {
    match value {
        serde_json::Value::Object(table) => {
            for (key, value) in table {
                let key = if key.contains('.') {
                    format!("\"{key}\"")
                } else {
                    key.clone()
                };
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, value, into);
            }
        }
        leaf => {
            into.insert(prefix.to_string(), leaf.clone());
        }
    }
}

/// The built-in defaults, key by key (an unset key is `null`).
fn default_keys() -> BTreeMap<String, serde_json::Value> {
    let mut keys = BTreeMap::new();
    let defaults = serde_json::to_value(Config::default()).expect("the defaults serialize");
    leaves("", &defaults, &mut keys);
    keys
}

/// The keys sunset.toml lists, a commented-out `# key = value` line (a key unset by default)
/// included.
fn shipped_keys() -> BTreeSet<String> {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("sunset.toml"))
            .expect("read sunset.toml");
    let unset = Regex::new(r"(?m)^#\s*([a-z_]+\s*=)").expect("regex");
    let uncommented = unset.replace_all(&shipped, "$1");
    let table: toml::Table = toml::from_str(&uncommented).expect("sunset.toml is TOML");
    let mut keys = BTreeMap::new();
    leaves(
        "",
        &serde_json::to_value(table).expect("TOML to JSON"),
        &mut keys,
    );
    keys.into_keys().collect()
}

/// The rows of docs/config.md's tables: `| `section.key` | default | meaning |`, the default
/// as a TOML value in backticks or the word `unset`.
fn documented_keys() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md"))
        .expect("read docs/config.md");
    let row = Regex::new(r"(?m)^\| `([^`]+)` \| (`[^|]*`|unset) \|").expect("regex");
    row.captures_iter(&doc)
        .map(|c| (c[1].to_string(), c[2].trim_matches('`').to_string()))
        .collect()
}

#[test]
fn sunset_toml_lists_every_key_and_docs_config_md_documents_each_with_its_default() {
    let defaults = default_keys();
    let shipped = shipped_keys();
    let documented = documented_keys();
    let known: BTreeSet<String> = defaults.keys().cloned().collect();
    let listed: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        shipped.symmetric_difference(&known).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "keys in sunset.toml but not in Config, or the other way round"
    );
    assert_eq!(
        shipped.symmetric_difference(&listed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "keys in sunset.toml but not in docs/config.md, or the other way round"
    );
    for (key, default) in &documented {
        let value = if default == "unset" {
            serde_json::Value::Null
        } else {
            let parsed: toml::Table = toml::from_str(&format!("v = {default}"))
                .unwrap_or_else(|e| panic!("docs/config.md: {key}: default {default}: {e}"));
            serde_json::to_value(&parsed["v"]).expect("TOML to JSON")
        };
        assert_eq!(
            Some(&value),
            defaults.get(key),
            "docs/config.md: {key}: documented default {default}"
        );
    }
}
