#!/usr/bin/env bash
# The whole test suite (the README's second set-up command). Installs the real peers if they
# are missing; the tests then start their own registries, token issuers, moto servers and
# proxies on free loopback ports and stop them when they end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
# The helm pull test must run, not skip: point it at the interpreter that has helm-python-sdk.
export FERRY_HELM_PYTHON="${FERRY_HELM_PYTHON:-$(command -v python3)}"
# The console's browser test must run, not skip: install-peers.sh installed the browser.
export FERRY_REQUIRE_BROWSER=1
cargo test --workspace --all-targets --no-fail-fast
# The deployable stacks: cfn-lint, static policy checks, the customer stack in moto.
bash scripts/check-deploy.sh
