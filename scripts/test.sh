#!/usr/bin/env bash
# The whole test suite (the README's second set-up command). Tests start their own peers
# (docker-registry, skopeo, token issuers) on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
