#!/usr/bin/env bash
# Checks of the deployable stacks (template.yaml, infra/): cfn-lint, the static policy tests
# and the customer stack in moto's CloudFormation (tests/deploy), and `sam validate --lint`
# when the SAM CLI is installed. Offline; moto listens on a free loopback port.
# Needs: pip install cfn-lint 'moto[server]' pytest   (optional: aws-sam-cli)
# Exits non-zero when any check fails, and prints a summary.
set -uo pipefail
cd "$(dirname "$0")/.."

export PYTHONDONTWRITEBYTECODE=1
PYTHON="${PYTHON:-python3}"
SAM_VENV="${FERRY_SAM_VENV:-$HOME/.cache/ferry/sam-venv}"
if [ -z "${SAM:-}" ] && [ -x "$SAM_VENV/bin/sam" ]; then SAM="$SAM_VENV/bin/sam"; fi
SAM="${SAM:-sam}"
declare -a summary=()
failed=0

step() {
    local name="$1"
    shift
    echo "== $name: $*"
    if "$@"; then
        summary+=("ok    $name")
    else
        summary+=("FAIL  $name")
        failed=1
    fi
}

step cfn-lint cfn-lint template.yaml infra/*.yaml
step pytest "$PYTHON" -m pytest -q -p no:cacheprovider tests/deploy
if command -v "$SAM" >/dev/null 2>&1; then
    step "sam validate --lint" env SAM_CLI_TELEMETRY=0 "$SAM" validate --lint -t template.yaml
else
    summary+=("skip  sam validate --lint ($SAM not installed: pip install aws-sam-cli)")
fi

echo
echo "== check-deploy summary"
printf '   %s\n' "${summary[@]}"
exit "$failed"
