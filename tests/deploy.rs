//! deploy/ checked offline (every file parses, every config key and `SUNSET_*` variable exists,
//! the Kubernetes and Compose numbers fit together) and against a live broker
//! (`deploy/rabbitmq/definitions.json` is what `sunset topology` declares). Importing
//! definitions reconfigures a broker: that test has a RabbitMQ node of its own.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser as _;
use common::TestEnv;
use common::rabbit_node::RabbitNode;
use common::rabbitmqctl::Rabbitmqctl;
use serde::Deserialize as _;
use serde_json::{Value, json};
use sunset::Config;
use sunset::channel::email::PASSWORD_ENV;
use sunset::channel::push::TOKEN_ENV;
use sunset::{Cli, Command as SunsetCommand};

/// The work queue name definitions.json is written for: the default `broker.queue`.
const DEFAULT_QUEUE: &str = "sunset.batches";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every file under deploy/ whose name ends in one of `extensions`, sorted.
fn files(extensions: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read deploy/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    walk(&deploy(), &mut all);
    all.retain(|path| {
        path.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
    });
    all.sort();
    all
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a YAML file, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .collect()
}

fn json_file(rel: &str) -> Value {
    let path = deploy().join(rel);
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// The one Kubernetes object of `kind` under deploy/k8s.
fn k8s(kind: &str) -> Value {
    let mut found: Vec<Value> = files(&["yaml"])
        .iter()
        .filter(|path| path.starts_with(deploy().join("k8s")))
        .flat_map(|path| yaml_documents(path))
        .filter(|object| object["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} under deploy/k8s");
    found.remove(0)
}

fn compose() -> Value {
    yaml_documents(&deploy().join("compose.yaml")).remove(0)
}

fn load(rel: &str) -> Config {
    let path = deploy().join(rel);
    Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"))
}

/// Every `SUNSET_…` name in `text`.
fn sunset_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("SUNSET_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Whether `SUNSET__SECTION__KEY` names a key of the config schema (as the loader maps it:
/// lower-cased, `__` between levels).
fn is_config_key(variable: &str) -> bool {
    let Some(path) = variable.strip_prefix("SUNSET__") else {
        return false;
    };
    let schema = serde_json::to_value(Config::default()).expect("the config serializes");
    let mut at = &schema;
    let mut walked = Vec::new();
    for part in path.split("__").map(str::to_lowercase) {
        if walked == ["rate", "per_domain_per_sec"] {
            // Any domain is a key of its own there.
            return true;
        }
        match at.get(&part) {
            Some(next) => at = next,
            None => return false,
        }
        walked.push(part);
    }
    !at.is_object()
}

/// `${NAME:-default}` as Compose reads it with `NAME` unset; other text unchanged.
fn compose_default(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("closing brace");
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, default)| default));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Runs `sunset --config CONFIG preview --check` with `env` and the shipped templates: exit 0
/// means the file and the variables load (unknown keys and bad values exit 2).
fn assert_loads_with_env(config: &Path, env: &[(String, String)]) {
    let sandbox = TestEnv::new();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let templates = sandbox.templates();
    let templates = templates.to_str().expect("UTF-8 path");
    env.push(("SUNSET__TEMPLATES__DIR", templates));
    let config = config.to_str().expect("UTF-8 path");
    sandbox
        .sunset_with_env(&["--config", config, "preview", "--check"], &env)
        .expect_code(0);
}

/// The host of a URL such as `amqp://user:pass@rabbitmq:5672/%2f`.
fn host(url: &str) -> &str {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split(['/', '?']).next().expect("authority");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.split(':').next().expect("host")
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let yamls = files(&["yaml", "yml"]);
    assert!(
        yamls.len() >= 7,
        "compose.yaml and the k8s files: {yamls:?}"
    );
    for path in &yamls {
        let documents = yaml_documents(path);
        assert!(
            !documents.is_empty() && documents.iter().all(Value::is_object),
            "{}: every document is a mapping",
            path.display()
        );
    }
    let jsons = files(&["json"]);
    assert!(
        jsons.len() >= 2,
        "definitions and the demo's access: {jsons:?}"
    );
    for path in &jsons {
        let parsed: Result<Value, _> = serde_json::from_str(&read(path));
        assert!(parsed.is_ok(), "{}: {:?}", path.display(), parsed.err());
    }
}

#[test]
fn every_sunset_toml_under_deploy_loads_with_the_config_schema() {
    let tomls = files(&["toml"]);
    assert!(
        tomls.len() >= 3,
        "image, Compose and k8s configs: {tomls:?}"
    );
    for path in &tomls {
        if let Err(e) = Config::load(Some(path)) {
            panic!("{}: {e}", path.display());
        }
    }
    // The ConfigMap is generated from a file this test has just loaded.
    let kustomization = yaml_documents(&deploy().join("k8s/kustomization.yaml")).remove(0);
    for generator in kustomization["configMapGenerator"]
        .as_array()
        .expect("a ConfigMap generator")
    {
        for file in generator["files"].as_array().expect("files") {
            assert!(tomls.contains(&deploy().join("k8s").join(text(file))));
        }
    }
}

#[test]
fn every_sunset_variable_named_in_deploy_is_a_config_key_or_a_secret() {
    let mut checked = 0;
    for path in files(&["yaml", "toml", "json", "md", "conf", "py"])
        .into_iter()
        .chain([deploy().join("Dockerfile")])
    {
        for name in sunset_variables(&read(&path)) {
            assert!(
                is_config_key(&name) || name == PASSWORD_ENV || name == TOKEN_ENV,
                "{}: {name} is neither a config key (SUNSET__SECTION__KEY) nor {PASSWORD_ENV} \
                 or {TOKEN_ENV}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "found only {checked} names");
    assert!(
        !is_config_key("SUNSET__EMAIL__PASSWORD"),
        "the check itself"
    );
}

#[test]
fn the_compose_workers_environment_loads_with_their_config() {
    let compose = compose();
    let worker = &compose["services"]["worker"];
    let env: Vec<(String, String)> = worker["environment"]
        .as_object()
        .expect("environment as a mapping")
        .iter()
        .map(|(name, value)| (name.clone(), compose_default(text(value))))
        .collect();
    assert!(env.iter().any(|(name, _)| name == "SUNSET__BROKER__URL"));
    assert_loads_with_env(&deploy().join("compose/sunset.toml"), &env);
}

#[test]
fn the_kubernetes_workers_environment_loads_with_their_config() {
    let secret = k8s("Secret");
    let deployment = k8s("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|var| {
            let value = match var.get("value") {
                Some(value) => text(value).to_string(),
                None => {
                    let reference = &var["valueFrom"]["secretKeyRef"];
                    assert_eq!(reference["name"], secret["metadata"]["name"]);
                    let value = &secret["stringData"][text(&reference["key"])];
                    text(value).to_string()
                }
            };
            (text(&var["name"]).to_string(), value)
        })
        .collect();
    let names: BTreeSet<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
    for needed in [
        "SUNSET__BROKER__URL",
        "SUNSET__LEDGER__URL",
        PASSWORD_ENV,
        TOKEN_ENV,
    ] {
        assert!(names.contains(needed), "the Deployment sets {needed}");
    }
    assert_loads_with_env(&deploy().join("k8s/sunset.toml"), &env);
}

#[test]
fn the_kubernetes_worker_drains_within_its_termination_grace_period() {
    let config = load("k8s/sunset.toml");
    let Ok(Cli {
        command: SunsetCommand::Enqueue(args),
        ..
    }) = Cli::try_parse_from([
        "sunset",
        "enqueue",
        "--campaign-id",
        "c",
        "--template",
        "t",
        "--audience",
        "a.csv",
    ])
    else {
        panic!("enqueue parses");
    };
    // SIGTERM waits for every batch the worker holds; at worst each send runs to its timeouts
    // (an email's commands, then its final reply), `worker.concurrency` at a time.
    let held = u64::from(config.broker.prefetch) * args.batch_size as u64;
    let worst_ms = held
        * (config.email.timeout_ms + config.email.final_reply_timeout_ms + config.push.timeout_ms)
        / config.worker.concurrency as u64;
    let pod = &k8s("Deployment")["spec"]["template"]["spec"];
    let grace_s = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace_s * 1000 > worst_ms,
        "terminationGracePeriodSeconds {grace_s} s < worst drain {worst_ms} ms"
    );

    // Probes and scraping go to the port sunset listens on.
    let port: u64 = config
        .metrics
        .listen
        .as_deref()
        .and_then(|listen| listen.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .expect("metrics.listen has a port");
    let container = &pod["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], port);
    let port_name = &container["ports"][0]["name"];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], *port_name);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], *port_name);
    let service = k8s("Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], *port_name);
    let pod_labels = &k8s("Deployment")["spec"]["template"]["metadata"]["labels"];
    assert_eq!(service["spec"]["selector"], *pod_labels);
    let monitor = k8s("ServiceMonitor");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], *pod_labels);
    assert_eq!(
        k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        *pod_labels
    );
}

#[test]
fn the_fleet_at_max_replicas_stays_within_the_provider_quotas() {
    let config = load("k8s/sunset.toml");
    let scaled = k8s("ScaledObject");
    let replicas = scaled["spec"]["maxReplicaCount"]
        .as_u64()
        .expect("maxReplicaCount");
    let quota = |what: &str| -> u64 {
        let key = format!("sunset.example/provider-{what}-per-sec");
        text(&scaled["metadata"]["annotations"][&key])
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let rate = &config.rate;
    let mut limits = vec![
        ("email", u64::from(rate.email_per_sec)),
        ("push", u64::from(rate.push_per_sec)),
    ];
    for (domain, per_sec) in &rate.per_domain_per_sec.domains {
        limits.push((domain.as_str(), u64::from(*per_sec)));
    }
    for (what, per_worker) in limits {
        assert!(
            per_worker > 0,
            "{what}: an unlimited worker has no fleet bound"
        );
        assert!(
            replicas * per_worker <= quota(what),
            "{what}: {replicas} workers × {per_worker}/s > the provider's {}/s",
            quota(what)
        );
    }

    // KEDA watches the queue the workers consume, with the broker URL they use.
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "rabbitmq");
    assert_eq!(trigger["metadata"]["mode"], "QueueLength");
    assert_eq!(
        trigger["metadata"]["queueName"],
        config.broker.queue.as_str()
    );
    let auth = k8s("TriggerAuthentication");
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    assert_eq!(
        auth["spec"]["secretTargetRef"][0]["key"],
        "SUNSET__BROKER__URL"
    );
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        k8s("Deployment")["metadata"]["name"]
    );
}

#[test]
fn the_compose_demo_runs_three_workers_against_its_own_services() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let worker = &services["worker"];
    assert_eq!(worker["deploy"]["replicas"], 3);

    // Every host the workers talk to is a service of the file.
    let config = load("compose/sunset.toml");
    let env = &worker["environment"];
    for url in [
        config.email.url.clone(),
        config.push.url.clone(),
        compose_default(text(&env["SUNSET__BROKER__URL"])),
        compose_default(text(&env["SUNSET__LEDGER__URL"])),
    ] {
        assert!(services.contains_key(host(&url)), "{url}: no such service");
    }
    // The demo's SMTP and push sinks expect the secrets the workers send.
    let smtp_auth = compose_default(text(&services["mailpit"]["environment"]["MP_SMTP_AUTH"]));
    let smtp_password = compose_default(text(&env[PASSWORD_ENV]));
    assert_eq!(smtp_auth, format!("sunset:{smtp_password}"));
    assert!(config.email.url.contains("sunset@"));
    assert_eq!(
        compose_default(text(&services["push-sink"]["environment"]["PUSH_TOKEN"])),
        compose_default(text(&env[TOKEN_ENV]))
    );

    // Every file a service mounts is in the repository.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = text(volume).split(':').next().expect("source");
            if source.starts_with('.') {
                assert!(
                    deploy().join(source).exists(),
                    "{name} mounts {source}, which is not there"
                );
            }
        }
    }
}

#[test]
fn docker_compose_config_accepts_compose_yaml() {
    let available = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !available {
        eprintln!("note: no `docker compose` here; compose.yaml checked by the other tests only");
        return;
    }
    let out = Command::new("docker")
        .args(["compose", "-f"])
        .arg(deploy().join("compose.yaml"))
        .args(["config", "--quiet"])
        .output()
        .expect("run docker compose");
    assert!(
        out.status.success(),
        "docker compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubectl_kustomize_renders_every_kubernetes_object() {
    let Ok(out) = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy().join("k8s"))
        .output()
    else {
        eprintln!("note: no kubectl here; deploy/k8s checked by the other tests only");
        return;
    };
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).expect("UTF-8");
    let kinds: BTreeSet<String> = serde_yaml_ng::Deserializer::from_str(&rendered)
        .map(|document| {
            let object = Value::deserialize(document).expect("kustomize prints YAML");
            text(&object["kind"]).to_string()
        })
        .collect();
    let expected = [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "ScaledObject",
        "Service",
        "ServiceMonitor",
        "TriggerAuthentication",
    ];
    assert_eq!(kinds, BTreeSet::from(expected.map(String::from)));
}

/// The broker's definitions now, as `rabbitmqctl export_definitions` writes them.
fn live_definitions(rabbitmqctl: &Rabbitmqctl) -> Value {
    let out = rabbitmqctl.run(&["-q", "export_definitions", "-", "--format", "json"]);
    serde_json::from_str(&out).expect("definitions are JSON")
}

/// The fields of definitions.json that sunset declares, with the test's queue name mapped to
/// the default one, sorted by name.
fn comparable(objects: &[Value], fields: &[&str], queue: &str) -> Vec<Value> {
    let rename = |value: &Value| match value {
        Value::String(s) if s == queue || s.starts_with(&format!("{queue}.")) => {
            Value::String(s.replacen(queue, DEFAULT_QUEUE, 1))
        }
        other => other.clone(),
    };
    let mut out: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut kept = serde_json::Map::new();
            for field in fields {
                let value = match (object.get(*field), *field) {
                    (Some(Value::Object(arguments)), "arguments") => Value::Object(
                        arguments
                            .iter()
                            .map(|(k, v)| (k.clone(), rename(v)))
                            .collect(),
                    ),
                    (Some(value), _) => rename(value),
                    // Older exports leave `internal: false` out.
                    (None, "internal") => json!(false),
                    (None, _) => panic!("{object} has no {field}"),
                };
                kept.insert((*field).to_string(), value);
            }
            Value::Object(kept)
        })
        .collect();
    out.sort_by_key(Value::to_string);
    out
}

#[test]
fn definitions_json_equals_what_sunset_topology_declares() {
    let env = TestEnv::with_broker("");
    let queue = env.queue.clone().expect("broker test");
    env.sunset(&["topology"]).expect_code(0);

    let names = env.names();
    let ours: BTreeSet<&str> = names.all().collect();
    let live = live_definitions(&Rabbitmqctl::shared());
    let list = |value: &Value, keep: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        value
            .as_array()
            .expect("a list")
            .iter()
            .filter(|object| keep(object))
            .cloned()
            .collect()
    };
    let file = json_file("rabbitmq/definitions.json");

    let queue_fields = [
        "name",
        "vhost",
        "durable",
        "auto_delete",
        "type",
        "arguments",
    ];
    let declared = list(&live["queues"], &|q| ours.contains(text(&q["name"])));
    assert_eq!(declared.len(), ours.len(), "every queue declared");
    assert_eq!(
        comparable(&list(&file["queues"], &|_| true), &queue_fields, &queue),
        comparable(&declared, &queue_fields, &queue),
        "queues: definitions.json (left) vs the broker after `sunset topology` (right)"
    );

    let exchange_fields = [
        "name",
        "vhost",
        "type",
        "durable",
        "auto_delete",
        "internal",
        "arguments",
    ];
    let exchange = sunset::broker::EXCHANGE;
    assert_eq!(
        comparable(
            &list(&file["exchanges"], &|_| true),
            &exchange_fields,
            &queue
        ),
        comparable(
            &list(&live["exchanges"], &|e| e["name"] == exchange),
            &exchange_fields,
            &queue
        ),
        "exchanges"
    );

    let binding_fields = [
        "source",
        "vhost",
        "destination",
        "destination_type",
        "routing_key",
        "arguments",
    ];
    let bound = list(&live["bindings"], &|b| {
        b["source"] != "" && ours.contains(text(&b["destination"]))
    });
    assert_eq!(
        comparable(&list(&file["bindings"], &|_| true), &binding_fields, &queue),
        comparable(&bound, &binding_fields, &queue),
        "bindings"
    );
    let rest: Vec<&String> = file
        .as_object()
        .expect("an object")
        .keys()
        .filter(|key| !["exchanges", "queues", "bindings"].contains(&key.as_str()))
        .collect();
    assert!(
        rest.is_empty(),
        "definitions.json holds only topology: {rest:?}"
    );
}

#[test]
fn sunset_topology_accepts_a_broker_provisioned_from_definitions_json() {
    let node = RabbitNode::start();
    let env = TestEnv::with_broker_on(&node, "");
    let queue = env.queue.clone().expect("broker test");
    let definitions =
        read(&deploy().join("rabbitmq/definitions.json")).replace(DEFAULT_QUEUE, &queue);
    let rabbitmqctl = node.rabbitmqctl();
    rabbitmqctl.run_with_input(&["-q", "import_definitions"], definitions.as_bytes());
    let live = live_definitions(&rabbitmqctl);
    let imported = live["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter(|q| env.names().all().any(|name| q["name"] == name))
        .count();
    assert_eq!(imported, env.names().all().count(), "every queue imported");

    // Redeclaring a queue with other arguments fails (PRECONDITION_FAILED): exit 0 says the
    // pre-provisioned queues are exactly what sunset would have declared.
    env.sunset(&["topology"]).expect_code(0);
}

#[test]
fn rabbitmq_refuses_messages_larger_than_a_worker_takes() {
    let conf = read(&deploy().join("rabbitmq/rabbitmq.conf"));
    let size: u64 = conf
        .lines()
        .find_map(|line| line.strip_prefix("max_message_size"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .unwrap_or_else(|| panic!("no max_message_size in rabbitmq.conf:\n{conf}"))
        .trim()
        .parse()
        .expect("max_message_size is a number of bytes");
    for config in [
        "k8s/sunset.toml",
        "compose/sunset.toml",
        "sunset.container.toml",
    ] {
        assert_eq!(
            load(config).broker.max_message_bytes,
            size,
            "{config}: broker.max_message_bytes and RabbitMQ's max_message_size differ"
        );
    }
}
