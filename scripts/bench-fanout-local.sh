#!/usr/bin/env bash
# Release fan-out on the local backend (issue 12): one release of one build to N installs
# (default 1,000 then 10,000), each N in its own process: the real IMS workers (ferry-core's
# handlers over the SQLite store and queues, the real grant minter sealing each grant), and
# stand-in agents that report each job succeeded so the next step (at most 1,000 installs)
# can start. Prints the time from `release create` to every install's job enqueued and to the
# release completed, and the peak RSS of that process during the release (VmHWM, reset after
# the installs are registered) beside /usr/bin/time's figure for the whole process.
#
#   bash scripts/bench-fanout-local.sh                        # 1000 and 10000, release profile
#   BENCH_INSTALLS="100 1000" bash scripts/bench-fanout-local.sh
#   BENCH_PROFILE=dev bash scripts/bench-fanout-local.sh      # without a release build
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
profile="${BENCH_PROFILE:-release}"
sizes="${BENCH_INSTALLS:-1000 10000}"
cargo build --profile "$profile" -p ferry-local --example fanout_bench >&2
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
bin="target/$dir/examples/fanout_bench"
echo "bench-fanout-local: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD), profile $profile" >&2
printf '| installs | steps | release create s | create → first step enqueued s | create → every job enqueued s | installs/s | create → completed s | release peak RSS MiB | whole process peak RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for n in $sizes; do
  out=$(mktemp)
  /usr/bin/time -f '%M' -o "$out.time" "$bin" "$n" >"$out"
  python3 - "$out" "$out.time" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
whole = int(open(sys.argv[2]).read().split()[-1]) // 1024
print(f"| {r['installs']:,} | {r['steps']} | {r['create_s']} | {r['first_step_enqueued_s']} | {r['all_enqueued_s']} | {r['installs_per_s']} | {r['completed_s']} | {r['release_peak_rss_mib']} | {whole} |")
PY
  rm -f "$out" "$out.time"
done
