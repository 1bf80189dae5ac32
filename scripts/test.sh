#!/usr/bin/env bash
# The whole test suite (the README's second set-up command). Installs the real peers if they
# are missing; the tests then start their own registries, token issuers and proxies on free
# loopback ports and stop them when they end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
cargo test --workspace --all-targets
