#!/usr/bin/env bash
# Lambda sizes and cold init, linked two ways:
#   all  every function in one `cargo lambda build` command: features unify, so each links
#        every SDK client any function uses (CodeBuild, STS, ECR beside DynamoDB, SQS,
#        EventBridge, Secrets Manager) — how every function was linked before issue 12;
#   own  each function built on its own (`sam build` does this): only the clients its
#        Cargo.toml asks for (ferry-lambda's `builder`/`minter` features).
# Sizes are of the `bootstrap` cargo lambda leaves (release, symbols stripped). Cold init, from
# exec to the first Runtime API poll against a stub API on loopback
# (scripts/lambda-cold-init.py), runs each bootstrap natively, or an arm64 one on an x86_64
# host under qemu-aarch64-static (emulated: compare the two linkings with each other, not
# with Lambda's figures).
#
#   bash scripts/bench-lambda.sh                          # arm64 (what the template deploys)
#   BENCH_ARCHES="arm64 x86_64" bash scripts/bench-lambda.sh   # also native x86_64
#
# Env: BENCH_ARCHES ("arm64"), RUNS (cold starts per function, 9). Needs cargo-lambda (with
# zig, for arm64), moto_server and boto3 (scripts/install-peers.sh installs them), and on a
# non-arm64 host qemu-user-static (apt-get install qemu-user-static) for arm64 cold init.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHES=${BENCH_ARCHES:-arm64}
export RUNS=${RUNS:-9}
# Grouped by feature set, so consecutive builds share the most.
GROUPS_OWN=("release build-completed" "build-requested" "sync-requested sync-reported reconcile")
ALL="build-requested build-completed sync-requested sync-reported release reconcile"
WORK=$(mktemp -d /tmp/ferry-lambda-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

build() { # ARCH SET FUNCTION...
  local arch=$1 set=$2; shift 2
  local flag=() pkgs=()
  [ "$arch" = arm64 ] && flag=(--arm64)
  for f in "$@"; do pkgs+=(-p "$f"); done
  cargo lambda build --release "${flag[@]}" "${pkgs[@]}" >&2
  for f in "$@"; do
    mkdir -p "$WORK/$arch/$set/$f"
    cp "target/lambda/$f/bootstrap" "$WORK/$arch/$set/$f/bootstrap"
  done
}

for arch in $ARCHES; do
  echo "building ($arch): every function in one command…" >&2
  # shellcheck disable=SC2086
  build "$arch" all $ALL
  for group in "${GROUPS_OWN[@]}"; do
    echo "building ($arch): $group on its own…" >&2
    for f in $group; do build "$arch" own "$f"; done
  done
done

mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
for arch in $ARCHES; do
  echo
  echo "## $arch bootstrap sizes (release, stripped as cargo lambda leaves them)"
  printf '%-16s %12s %12s %8s\n' function "all MiB" "own MiB" "own/all"
  for f in $ALL; do
    a=$(stat -c %s "$WORK/$arch/all/$f/bootstrap"); o=$(stat -c %s "$WORK/$arch/own/$f/bootstrap")
    printf '%-16s %12s %12s %8s\n' "$f" "$(mib "$a")" "$(mib "$o")" "$(awk -v a="$a" -v o="$o" 'BEGIN { printf "%.2f", o / a }')"
  done
done

for arch in $ARCHES; do
  wrapper=""
  if [ "$arch" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
    command -v qemu-aarch64-static >/dev/null || {
      echo "bench-lambda: no qemu-aarch64-static for arm64 cold init (apt-get install qemu-user-static); sizes only" >&2
      continue
    }
    wrapper=qemu-aarch64-static
  fi
  for set in all own; do
    echo
    echo "## $arch cold init, linked '$set' ($RUNS cold starts each; exec → first Runtime API poll${wrapper:+; under $wrapper})"
    # shellcheck disable=SC2046
    COLD_INIT_WRAPPER=$wrapper python3 scripts/lambda-cold-init.py $(for f in $ALL; do echo "$WORK/$arch/$set/$f/bootstrap"; done)
  done
done
