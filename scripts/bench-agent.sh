#!/usr/bin/env bash
# Agent memory benchmark (issue 12): the resident memory of ONE real `ferry-agent run` process
# while it syncs a large 12-layer image, and while it then idle-polls its queue (with
# heartbeats). Goal: at most 20 MiB during the copy, flat with artifact and layer size.
#
# For each size, from scratch: a synthetic OCI image (random, incompressible layers of unequal
# sizes, the largest a third of the total) is pushed to a source docker-registry; `ferry dev
# --installs 0 --releases` imports it as an `image` component into its embedded vendor
# registry; an install is registered with `ferry install add --public-key --report-key` and its
# agent runs outside `ferry dev` (as crates/ferry-cli/tests/e2e.rs
# e2e_release_halts_on_a_registry_refusing_pushes_and_resume_finishes_it runs it), into its own
# writable docker-registry, wrapped in `/usr/bin/time -v`. `ferry release create` starts the
# sync; completion is polled (the manifest by digest in the agent's registry, then the release
# `completed`). The agent's VmRSS is sampled from /proc every AGENT_BENCH_SAMPLE_MS; its VmHWM
# is read when the sync is done. Then it idles AGENT_BENCH_IDLE_SECONDS and the largest VmRSS
# of that window is the idle figure. Last, `ferry copy` of the same image (source registry ->
# a fresh repository of the agent's registry) is run under `/usr/bin/time` for comparison.
#
#   flock /tmp/ferry-bench.lock bash scripts/bench-agent.sh                  # 256 and 1024 MiB
#   AGENT_BENCH_MIB="64" AGENT_BENCH_IDLE_SECONDS=10 bash scripts/bench-agent.sh   # quick
#
# Env: AGENT_BENCH_MIB (artifact sizes in MiB, "256 1024"), AGENT_BENCH_LAYERS (12),
# AGENT_BENCH_IDLE_SECONDS (60; a heartbeat goes out at most once a minute),
# AGENT_BENCH_SAMPLE_MS (100), AGENT_BENCH_TIMEOUT (seconds per wait, 900),
# AGENT_BENCH_AGENT_ARGS (extra `ferry-agent run` flags), AGENT_BENCH_COPY (1: also time
# `ferry copy`; 0 skips), AGENT_BENCH_NO_BUILD (1: use the release binaries already built),
# AGENT_BENCH_BIN_DIR (where `ferry` and `ferry-agent` are; target/release).
# Everything lives in one /tmp/ferry-agent-bench.* directory, removed on success and kept
# (its path printed) on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

SIZES=${AGENT_BENCH_MIB:-"256 1024"}
LAYERS=${AGENT_BENCH_LAYERS:-12}
IDLE=${AGENT_BENCH_IDLE_SECONDS:-60}
SAMPLE_MS=${AGENT_BENCH_SAMPLE_MS:-100}
TIMEOUT=${AGENT_BENCH_TIMEOUT:-900}
COPY=${AGENT_BENCH_COPY:-1}
# shellcheck disable=SC2206
EXTRA_AGENT_ARGS=(${AGENT_BENCH_AGENT_ARGS:-})
for tool in docker-registry skopeo curl bc python3 /usr/bin/time setsid; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (bash scripts/install-peers.sh; apt-get install time)" >&2; exit 2; }
done

if [ "${AGENT_BENCH_NO_BUILD:-0}" != 1 ]; then
  echo "building ferry and ferry-agent (release)…" >&2
  # Two commands: one would unify features, and the agent would link every SDK client the
  # CLI links instead of the ones it ships with.
  cargo build --release -q -p ferry-agent --bin ferry-agent
  cargo build --release -q -p ferry-cli --bin ferry
fi
BIN=${AGENT_BENCH_BIN_DIR:-$PWD/target/release}
FERRY="$BIN/ferry"
AGENT="$BIN/ferry-agent"

WORK=$(mktemp -d /tmp/ferry-agent-bench.XXXXXX)
GROUPS_STARTED=() # process groups (one per setsid'd child)
OTHER_PIDS=()
cleanup() {
  local rc=$?
  for p in "${OTHER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for g in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.5
  for g in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" -eq 0 ]; then
    rm -rf "$WORK"
  else
    echo "bench-agent: failed (exit $rc); logs kept in $WORK" >&2
  fi
}
trap cleanup EXIT

die() { echo "bench-agent: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { printf '%.1f' "$(echo "$2 - $1" | bc -l)"; }
mib1() { printf '%.1f' "$(echo "$1 / 1024" | bc -l)"; } # KiB -> MiB, one decimal
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
json_get() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1:]: v=v[int(k)] if k.isdigit() else v[k]
print(v if v is not None else "")' "$@"; }

# bg NAME CMD... : runs CMD in its own session (process group) with output in $WORK/NAME.{out,err};
# BG_PID is its pid (= its process group id).
bg() {
  local name=$1; shift
  setsid "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  BG_PID=$!
  GROUPS_STARTED+=("$BG_PID")
}

# stop_group PID : SIGTERM its process group, wait for it (SIGKILL after 10 s)
stop_group() {
  kill -TERM -- "-$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# start_registry DIR -> REG=127.0.0.1:port, REG_PID
start_registry() {
  local dir=$1 port
  port=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/config.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $dir/root}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port, secret: ferry-bench-secret}
EOF
  local name=${dir#"$WORK"/}
  bg "registry-${name//\//-}" docker-registry serve "$dir/config.yml"
  REG_PID=$BG_PID
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.05; done
  curl -fs "http://127.0.0.1:$port/v2/" >/dev/null || die "registry in $dir did not start"
  REG="127.0.0.1:$port"
}

# wait_for WHAT SECONDS CMD... : polls CMD every 0.1 s until it succeeds
wait_for() {
  local what=$1 limit=$2; shift 2
  local deadline; deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "no $what within ${limit}s"
    sleep 0.1
  done
}

# make_image DIR TAG SIZES_KIB... : an OCI layout with one random layer per size; prints the
# manifest digest (scripts/oci-layout.py)
make_image() { python3 "$REPO/scripts/oci-layout.py" "$@"; }

# Layer sizes (KiB) for TOTAL_MIB over N layers: the largest is a third, the rest shrink
# linearly (for 12 layers: 33%, 11%, 10%, … 1%).
layer_sizes() {
  python3 -c '
import sys
total, n = int(sys.argv[1]) * 1024, int(sys.argv[2])
big = total // 3 if n > 1 else total
rest = total - big
w = list(range(n - 1, 0, -1))
sizes = [big] + [max(1, rest * x // sum(w)) for x in w]
sizes[0] += total - sum(sizes)
print(*sizes)' "$1" "$2"
}

# The sampler: one line "epoch VmRSS_KiB VmHWM_KiB" per sample of PID until it is gone.
start_sampler() {
  python3 - "$1" "$SAMPLE_MS" "$2" <<'PY' &
import sys, time
pid, interval, out = sys.argv[1], int(sys.argv[2]) / 1000, sys.argv[3]
with open(out, "w", buffering=1) as f:
    while True:
        try:
            fields = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status").read().splitlines() if ":" in l)
            rss, hwm = fields["VmRSS"].split()[0], fields["VmHWM"].split()[0]
        except (OSError, KeyError):
            break
        f.write(f"{time.time():.3f} {rss} {hwm}\n")
        time.sleep(interval)
PY
  SAMPLER_PID=$!
  OTHER_PIDS+=("$SAMPLER_PID")
}
# max_rss FILE FROM TO : the largest sampled VmRSS (KiB) with FROM <= t <= TO, and the count
max_rss() { awk -v a="$2" -v b="$3" '$1 >= a && $1 <= b { n++; if ($2 > m) m = $2 } END { printf "%d %d\n", m, n }' "$1"; }
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

FERRY_S() { "$FERRY" "$@" --state-dir "$STATE"; }

row() { printf '| %7s | %6s | %8s | %8s | %13s | %14s | %13s | %14s | %13s |\n' "$@"; }
ROWS=()
NOTES=()

run_size() {
  local mib=$1 dir="$WORK/s$1"
  mkdir -p "$dir"
  echo "[$mib MiB] generating a $LAYERS-layer image…" >&2
  start_registry "$dir/src"; local src=$REG src_pid=$REG_PID
  # shellcheck disable=SC2046
  make_image "$dir/layout" v1 $(layer_sizes "$mib" "$LAYERS") >"$dir/digest"
  local digest; digest=$(cat "$dir/digest")
  skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$dir/layout:v1" "docker://$src/bench/big:v1"
  local largest; largest=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(max(l["size"] for l in m["layers"]) >> 20)' "$dir/layout/blobs/sha256/${digest#sha256:}")
  rm -rf "$dir/layout"

  # The app: one image component pointing at the source registry.
  mkdir -p "$dir/app"
  printf '{"app": "bench", "components": [{"name": "big", "kind": "image", "source": "%s/bench/big:v1", "repository": "bench/big"}]}\n' \
    "$src" >"$dir/app/ferry.json"
  STATE="$dir/state"
  echo "[$mib MiB] ferry dev imports it…" >&2
  bg "dev-$mib" "$FERRY" dev --json --installs 0 --releases --no-console --state-dir "$STATE" --app "$dir/app"
  local dev_pid=$BG_PID
  wait_for "ferry dev start" 120 grep -q '"event":"started"' "$WORK/dev-$mib.out"
  local deadline=$(( $(date +%s) + TIMEOUT )) builds status
  while :; do
    builds=$(FERRY_S builds --json)
    status=$(json_get 0 state status <<<"$builds" 2>/dev/null || true)
    [ "$status" = succeeded ] && break
    [ "$status" = failed ] && die "the import build failed: $builds"
    [ "$(date +%s)" -lt "$deadline" ] || die "no build within ${TIMEOUT}s: $builds"
    sleep 0.5
  done
  local build repo
  build=$(json_get 0 id <<<"$builds")
  repo=$(json_get 0 artifact repository <<<"$builds")
  [ "$(json_get 0 artifact digest <<<"$builds")" = "$digest" ] || die "the build's digest is not the image's"

  # The install and its external agent, into its own docker-registry.
  start_registry "$dir/agent"; local areg=$REG areg_pid=$REG_PID
  local keys added
  keys=$("$AGENT" keygen --out "$dir/agent.key")
  added=$(FERRY_S install add bench-x --app bench \
    --public-key "$(sed -n 's/^public key: *//p' <<<"$keys")" \
    --report-key "$(sed -n 's/^report key: *//p' <<<"$keys")" --json)
  bg "agent-$mib" /usr/bin/time -v -o "$dir/agent.time" "$AGENT" run --install bench-x --keep-last 0 \
    --wait-seconds 1 --grace-seconds 1 \
    --queue-db "$STATE/ferry.db" \
    --queue "$(json_get install queue <<<"$added")" \
    --vendor-registry "$(json_get vendor_registry <<<"$added")" \
    --vendor-public-key "$(json_get vendor_public_key <<<"$added")" \
    --install-registry "$areg" \
    --key-file "$dir/agent.key" \
    --identity-secret-file "$(json_get identity_secret_file <<<"$added")" \
    "${EXTRA_AGENT_ARGS[@]}"
  local time_pid=$BG_PID agent_pid=""
  for _ in $(seq 100); do agent_pid=$(pgrep -P "$time_pid" || true); [ -n "$agent_pid" ] && break; sleep 0.05; done
  [ -n "$agent_pid" ] || die "ferry-agent did not start: $(cat "$WORK/agent-$mib.err")"
  start_sampler "$agent_pid" "$dir/rss"
  # Up and polling: its first heartbeat reached the store.
  # (Not fatal: without one within 60 s the sync starts anyway.)
  ( wait_for "agent heartbeat" 60 sh -c "'$FERRY' install show bench-x --json --state-dir '$STATE' | grep -q '\"last_seen\": [0-9]'" ) ||
    echo "[$mib MiB] no heartbeat seen yet; going on" >&2
  local before_kib; before_kib=$(status_kib "$agent_pid" VmRSS)

  echo "[$mib MiB] release → agent sync…" >&2
  local t0 t_man t_done rel dest
  dest="installs/bench-x/${repo#vendor/}"
  t0=$(now)
  rel=$(FERRY_S release create bench --build "$build" --all --json)
  rel=$(json_get id <<<"$rel")
  wait_for "manifest in the agent's registry" "$TIMEOUT" curl -fsI \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$areg/v2/$dest/manifests/$digest"
  t_man=$(now)
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    status=$(FERRY_S release show "$rel" --json | json_get release status)
    [ "$status" = completed ] && break
    case $status in halted|aborted|failed) die "release $status: $(FERRY_S release show "$rel")";; esac
    [ "$(date +%s)" -lt "$deadline" ] || die "release not completed within ${TIMEOUT}s"
    sleep 0.2
  done
  t_done=$(now)
  local hwm_kib; hwm_kib=$(status_kib "$agent_pid" VmHWM)
  cp "/proc/$agent_pid/smaps_rollup" "$dir/smaps_rollup.sync" 2>/dev/null || true
  cp "/proc/$agent_pid/status" "$dir/status.sync"
  local sync_peak; read -r sync_peak _ < <(max_rss "$dir/rss" "$t0" "$t_done")

  echo "[$mib MiB] idle ${IDLE}s…" >&2
  local seen0 seen1 t_idle
  seen0=$(FERRY_S install show bench-x --json | json_get last_seen)
  t_idle=$(now)
  sleep "$IDLE" # the idle window itself is the measurement
  local idle_peak idle_n; read -r idle_peak idle_n < <(max_rss "$dir/rss" "$t_idle" "$(now)")
  local hwm_end; hwm_end=$(status_kib "$agent_pid" VmHWM)
  seen1=$(FERRY_S install show bench-x --json | json_get last_seen)
  cp "/proc/$agent_pid/smaps_rollup" "$dir/smaps_rollup.idle" 2>/dev/null || true

  # Stop the agent alone (SIGTERM) so `time` outlives it and writes its figures.
  kill -TERM "$agent_pid"
  for _ in $(seq 100); do kill -0 "$time_pid" 2>/dev/null || break; sleep 0.1; done
  wait "$time_pid" 2>/dev/null || true
  local timev; timev=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/agent.time")
  stop_group "$dev_pid"

  local copy_kib="-" copy_s="-"
  if [ "$COPY" = 1 ]; then
    echo "[$mib MiB] ferry copy of the same image…" >&2
    /usr/bin/time -f '%e %M' -o "$dir/copy.time" "$FERRY" copy "$src/bench/big:v1" "$areg/copy/big:v1" \
      >"$dir/copy.out" 2>&1 || die "ferry copy failed: $(cat "$dir/copy.out")"
    read -r copy_s copy_kib <"$dir/copy.time"
    copy_kib=$(mib1 "$copy_kib")
  fi

  ROWS+=("$(row "$mib" "$LAYERS" "$(secs "$t0" "$t_man")" "$(secs "$t0" "$t_done")" "$(mib1 "$hwm_kib")" "$(mib1 "$sync_peak")" \
    "$(mib1 "$idle_peak")" "$(mib1 "$timev")" "$copy_kib ($copy_s s)")")
  echo "[$mib MiB] ${ROWS[-1]}" >&2
  local threads anon file
  threads=$(awk '$1 == "Threads:" {print $2}' "$dir/status.sync")
  anon=$(awk '$1 == "RssAnon:" {print $2}' "$dir/status.sync")
  file=$(awk '$1 == "RssFile:" {print $2}' "$dir/status.sync")
  NOTES+=("$mib MiB (largest layer $largest MiB): RSS before the sync $(mib1 "$before_kib") MiB; at sync end RssAnon $(mib1 "$anon") + RssFile $(mib1 "$file") MiB, $threads threads; VmHWM after idle $(mib1 "$hwm_end") MiB; idle samples $idle_n; heartbeat during idle: $([ "$seen1" != "$seen0" ] && echo yes || echo no)")
  # Free the disk before the next size (the registries hold three copies).
  stop_group "$src_pid"
  stop_group "$areg_pid"
  rm -rf "$dir/src/root" "$dir/agent/root" "$STATE/registry"
}

echo "$(nproc) cores, $(free -m | awk '/^Mem:/{print $2}') MiB RAM; load before: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "ferry $("$FERRY" --version 2>/dev/null | cut -d' ' -f2), docker-registry $(docker-registry --version 2>/dev/null | awk '{print $NF}'); agent: run --keep-last 0 --wait-seconds 1 --grace-seconds 1 ${EXTRA_AGENT_ARGS[*]}"
for mib in $SIZES; do run_size "$mib"; done

echo
echo "sync_s: release create -> release completed (the agent reported); copy_s: -> manifest in the agent's registry"
echo "peak = VmHWM read when the sync completed; sampled = max VmRSS sampled every ${SAMPLE_MS} ms during the sync;"
echo "idle = max VmRSS over ${IDLE} s of idle polling after it; time -v = /usr/bin/time -v max RSS of the whole agent run"
row size_MiB layers copy_s sync_s peak_MiB sampled_MiB idle_MiB time_v_MiB ferry_copy_MiB
row -------- ------ ------ ------ -------- ----------- -------- ---------- --------------
for r in "${ROWS[@]}"; do echo "$r"; done
echo
for n in "${NOTES[@]}"; do echo "- $n"; done
