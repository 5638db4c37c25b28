#!/usr/bin/env bash
# Peak RSS of one `sunset worker` (docs/benchmarks.md): `batches` drains 4 × 10,000-recipient
# batches (email and push to the file outboxes) with prefetch 4; `oversized` drains four 50 MB
# bodies that are not batches. Needs RabbitMQ on 127.0.0.1:5672, /usr/bin/time, amqp-publish
# (amqp-tools). SUNSET_BIN picks the binary (default: a release build of this tree), PREFETCH the
# prefetch (default 4).
# Usage: scripts/worker-rss.sh batches|oversized
set -euo pipefail
scenario="${1:?batches or oversized}"
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${SUNSET_BIN:-}" ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin sunset
  SUNSET_BIN="$root/target/release/sunset"
fi
work="$(mktemp -d)"
queue="sunset.rss.$RANDOM$RANDOM"
prefetch="${PREFETCH:-4}"
cleanup() {
  for q in "$queue" "$queue.dlq" "$queue.retry.1"; do
    rabbitmqctl -q delete_queue "$q" > /dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
ln -s "$root/templates" templates
cat > sunset.toml <<TOML
[broker]
queue = "$queue"
prefetch = $prefetch
[worker]
retry_delays_ms = [1000]
[templates]
dir = "templates"
[metrics]
listen = ""
[email]
transport = "file"
[push]
transport = "file"
outbox = "outbox/push.jsonl"
[rate]
email_per_sec = 0
push_per_sec = 0
[rate.per_domain_per_sec]
default = 0
TOML
case "$scenario" in
  batches)
    {
      echo "user_id,email,locale,name"
      for i in $(seq 1 40000); do echo "u-$i,user$i@example.com,en-US,User $i"; done
    } > audience.csv
    "$SUNSET_BIN" enqueue --campaign "rss-$RANDOM" --template xiami-shutdown \
      --audience audience.csv --channels email,push --batch-size 10000 > /dev/null 2>&1
    label="4 x 10,000-recipient batches, prefetch $prefetch"
    ;;
  oversized)
    "$SUNSET_BIN" topology > /dev/null 2>&1
    head -c 50000000 /dev/zero | tr '\0' 'x' > body
    for _ in 1 2 3 4; do
      amqp-publish -u "amqp://guest:guest@127.0.0.1:5672/%2f" -r "$queue" -p < body
    done
    label="four 50 MB bodies that are not batches, prefetch $prefetch"
    ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
/usr/bin/time -f "$label: peak RSS %M KB, wall %e s" \
  "$SUNSET_BIN" worker --exit-when-idle 2>&1 >/dev/null | grep -v '^{'
