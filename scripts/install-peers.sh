#!/usr/bin/env bash
# Installs the real peers the tests run against, if missing:
#   Debian: docker-registry (the CNCF distribution registry), skopeo, buildah, curl, openssl,
#           containerd (ctr: a real node runtime pulling with an install's node identity),
#           chromium + chromium-driver (the console's browser test)
#   PyPI:   moto[server] (AWS APIs), cfn-lint, pytest, cargo-lambda (brings zig), helm-python-sdk (helm pull), selenium
# Needs root (or sudo) for apt-get.
set -euo pipefail
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v buildah >/dev/null || need+=(buildah)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v ctr >/dev/null || need+=(containerd)
# The console's browser test: headless Chromium and its WebDriver, without the desktop
# packages Chromium recommends (installed apart below, to keep CI's download small).
browser=()
command -v chromium >/dev/null || browser+=(chromium)
command -v chromedriver >/dev/null || browser+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing test peers (apt): ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ${#browser[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing test peers (apt): ${browser[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  [ ${#need[@]} -gt 0 ] || $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${browser[@]}" >/dev/null
fi

py=()
command -v moto_server >/dev/null || py+=("moto[server]")
command -v cfn-lint >/dev/null || py+=(cfn-lint)
python3 -c 'import pytest' 2>/dev/null || py+=(pytest)
command -v cargo-lambda >/dev/null || py+=(cargo-lambda)
python3 -c 'import helm_python.registry' 2>/dev/null || py+=(helm-python-sdk)
python3 -c 'import selenium' 2>/dev/null || py+=(selenium)
if [ ${#py[@]} -gt 0 ]; then
  echo "installing test peers (pip): ${py[*]}" >&2
  python3 -m pip install -q --disable-pip-version-check "${py[@]}"
fi

# The SAM CLI lives in its own virtualenv: its boto pins conflict with moto's.
SAM_VENV="${FERRY_SAM_VENV:-$HOME/.cache/ferry/sam-venv}"
if [ ! -x "$SAM_VENV/bin/sam" ]; then
  echo "installing test peers (pip, own venv): aws-sam-cli" >&2
  python3 -m venv "$SAM_VENV"
  "$SAM_VENV/bin/python" -m pip install -q --disable-pip-version-check aws-sam-cli
fi
