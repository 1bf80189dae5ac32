#!/usr/bin/env bash
# The first set-up command: runs the whole Ferry system on this machine (`ferry dev`).
# Installs buildah (for docker-build components) if it is missing and apt is available, as
# root or through sudo; without it those builds fail with a clear message and the rest syncs.
# Usage: scripts/dev.sh [--installs 3] [--state-dir .ferry/dev] [--exit-when-synced] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v buildah >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
    fi
    if [ "$sudo" = "none" ]; then
      echo "buildah is missing and neither root nor sudo is available; docker-build components will fail (install buildah to build them)" >&2
    else
      echo "installing buildah (apt) for docker-build components…" >&2
      export DEBIAN_FRONTEND=noninteractive
      $sudo apt-get update -qq || true
      $sudo apt-get install -y -qq buildah >/dev/null \
        || echo "could not install buildah; docker-build components will fail" >&2
    fi
  else
    echo "buildah is missing and apt is not available; docker-build components will fail (install buildah to build them)" >&2
  fi
fi

exec cargo run -q -p ferry-cli -- dev "$@"
