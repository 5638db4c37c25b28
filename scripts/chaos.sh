#!/usr/bin/env bash
# The full-size chaos run (README "Reliability"): 100,000 recipients by default, in release.
# Needs PostgreSQL on 127.0.0.1:5432 (as for `cargo test`); the test starts a RabbitMQ node of
# its own, so the broker on 127.0.0.1:5672 is left alone.
# Usage: scripts/chaos.sh [RECIPIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
SUNSET_CHAOS_RECIPIENTS="${1:-100000}" cargo test --release --test chaos -- --nocapture
