#!/usr/bin/env bash
# Peak RSS of one `sunset worker` with the default SQLite ledger, pushing N notices into the
# file outbox (docs/benchmarks.md): run it for two sizes and compare. Needs RabbitMQ on
# 127.0.0.1:5672 and /usr/bin/time.
# Usage: scripts/ledger-rss.sh [N]
set -euo pipefail
n="${1:-10000}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin sunset
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
ln -s "$root/templates" templates
{
  echo "user_id,email,locale,name"
  for i in $(seq 1 "$n"); do echo "u-$i,user$i@example.com,en-US,User $i"; done
} > audience.csv
cat > sunset.toml <<TOML
[broker]
queue = "sunset.rss.$RANDOM$RANDOM"
[worker]
retry_delays_ms = [1000]
[templates]
dir = "templates"
[metrics]
listen = ""
[push]
transport = "file"
outbox = "outbox/push.jsonl"
[rate]
email_per_sec = 0
push_per_sec = 0
[rate.per_domain_per_sec]
default = 0
TOML
"$root/target/release/sunset" enqueue --campaign "rss-$RANDOM" --template xiami-shutdown \
  --audience audience.csv --channels push > /dev/null 2>&1
/usr/bin/time -f "$n pushes: peak RSS %M KB, wall %e s" \
  "$root/target/release/sunset" worker --exit-when-idle 2>&1 >/dev/null | grep -v '^{'
