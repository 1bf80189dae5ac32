#!/usr/bin/env bash
# Peak RSS of a bundle export (`ferry bundle export`'s library path) for one layer of
# 256 MiB and one of 2 GiB: memory must stay flat whatever the size.
#
#   bash scripts/bench-bundle.sh                  # 256 MiB and 2048 MiB, release profile
#   BENCH_SIZES="64 512" bash scripts/bench-bundle.sh
#   BENCH_PROFILE=dev bash scripts/bench-bundle.sh   # without a release build
#
# Each size runs in its own process: an embedded registry on loopback (in the process) gets
# the layer, then the export streams it into a bundle tar in a temporary directory
# (BENCH_DIR, default the system temp dir; it needs room for the layer twice). The figure is
# the kernel's high-water mark of the process, reset just before the export; /usr/bin/time's
# figure (the whole process, setup included) is printed beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
profile="${BENCH_PROFILE:-release}"
sizes="${BENCH_SIZES:-256 2048}"
cargo build --profile "$profile" -p ferry-dev --example bench_bundle >&2
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
bin="target/$dir/examples/bench_bundle"
work="${BENCH_DIR:-${TMPDIR:-/tmp}}"
printf '| layer MiB | export s | export peak RSS MiB | whole process peak RSS MiB |\n|---:|---:|---:|---:|\n'
for mib in $sizes; do
  out=$(mktemp)
  /usr/bin/time -f '%M' -o "$out.time" "$bin" "$mib" "$work" >"$out"
  python3 - "$out" "$out.time" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
whole = int(open(sys.argv[2]).read().split()[-1]) // 1024
print(f"| {r['layer_mib']} | {r['export_s']} | {r['export_peak_rss_mib']} | {whole} |")
PY
  rm -f "$out" "$out.time"
done
