#!/usr/bin/env bash
# WAN benchmark: `ferry copy` against `skopeo copy --preserve-digests`, side by side in one
# run, with the source registry behind a delay proxy (crates/ferry-testkit/src/bin/
# delay-proxy.rs: a fixed delay each way and a per-connection window, since this kernel has
# no netem) and the destinations on loopback, as an install's agent sees a far vendor
# registry and its own near one. Cases, for each RTT:
#   (a) one large single-layer image      (b) a 30-layer service image
#   (c) warm re-copy of (b) by digest     (d) fan-out of (b) to four repositories on one registry
#   (e) peak RSS for single-layer images of several sizes, ranged reads on and off
# Requests and blob PUTs are counted from each registry's access log.
#
#   bash scripts/bench-wan.sh                       # full: 1 GiB, 30 layers/135 MiB, RTT 20 and 100 ms
#   WAN_BIG_MIB=128 WAN_SERVICE_MIB=40 WAN_RTTS=100 WAN_RSS_MIB= bash scripts/bench-wan.sh   # quick
#
# Env: WAN_RTTS (ms, "20 100"), WAN_WINDOW_KIB (per connection, 4096), WAN_BIG_MIB (1024),
# WAN_SERVICE_MIB (135, the largest of 30 layers is 48/135 of it), WAN_LAYERS (30),
# WAN_RSS_MIB ("256 2048"; empty skips (e)), WAN_FANOUT (4), WAN_FERRY_ARGS (extra `ferry copy`
# flags, e.g. "--range-part-mib 4", for tuning runs).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

RTTS=${WAN_RTTS:-"20 100"}
WINDOW=$(( ${WAN_WINDOW_KIB:-4096} * 1024 ))
BIG_MIB=${WAN_BIG_MIB:-1024}
SERVICE_MIB=${WAN_SERVICE_MIB:-135}
LAYERS=${WAN_LAYERS:-30}
RSS_MIB=${WAN_RSS_MIB-"256 2048"}
FANOUT=${WAN_FANOUT:-4}
for tool in docker-registry skopeo curl bc python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install docker-registry skopeo curl bc time)" >&2; exit 2; }
done

echo "building ferry and the delay proxy (release)…" >&2
cargo build --release -q -p ferry-cli -p ferry-testkit --bin ferry --bin delay-proxy
FERRY="$PWD/target/release/ferry"
# shellcheck disable=SC2206
FERRY_ARGS=(${WAN_FERRY_ARGS:-})
PROXY="$PWD/target/release/delay-proxy"

WORK=$(mktemp -d /tmp/ferry-wan.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# start_registry NAME -> REG_<NAME>=127.0.0.1:port; access log in $WORK/NAME.log
start_registry() {
  local name=$1 port
  port=$(free_port)
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/config.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $WORK/$name/root}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
EOF
  docker-registry serve "$WORK/$name/config.yml" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.05; done
  curl -fs "http://127.0.0.1:$port/v2/" >/dev/null || { echo "registry $name did not start" >&2; exit 1; }
  printf -v "REG_$name" '%s' "127.0.0.1:$port"
}

# start_proxy NAME UPSTREAM RTT_MS -> PX_<NAME>=127.0.0.1:port
start_proxy() {
  local name=$1 upstream=$2 rtt=$3 port
  port=$(free_port)
  "$PROXY" "127.0.0.1:$port" "$upstream" $((rtt / 2)) "$WINDOW" >"$WORK/proxy-$name.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q ready "$WORK/proxy-$name.out" 2>/dev/null && break; sleep 0.05; done
  printf -v "PX_$name" '%s' "127.0.0.1:$port"
}

# Access-log lines of registry NAME from line MARK on, matching an extended regex.
mark() { wc -l <"$WORK/$1.log"; }
count() { tail -n +"$(( $2 + 1 ))" "$WORK/$1.log" | grep -cE "$3" || true; }
ANY='" [0-9]{3} '
BLOB_PUT='"PUT /v2/[^ ]*/blobs/uploads/'

# make_image DIR TAG SIZES_KIB... : an OCI layout with one random layer per size; prints the
# manifest digest (scripts/oci-layout.py)
make_image() { python3 "$REPO/scripts/oci-layout.py" "$@"; }

# Layer sizes (KiB) of the service image: the largest is 48/135 of the total, the rest
# shrink linearly.
service_sizes() {
  python3 -c '
import sys
total, n = int(sys.argv[1]) * 1024, int(sys.argv[2])
big = total * 48 // 135
rest = total - big
w = list(range(n - 1, 0, -1))
print(big, *[max(1, rest * x // sum(w)) for x in w])' "$SERVICE_MIB" "$LAYERS"
}

# timed LABEL CMD... : runs CMD; T_<LABEL> wall seconds, M_<LABEL> peak RSS MiB
timed() {
  local label=$1; shift
  /usr/bin/time -f '%e %M' -o "$WORK/time.$label" "$@" >"$WORK/out.$label" 2>&1 || { echo "FAILED: $*" >&2; cat "$WORK/out.$label" >&2; exit 1; }
  read -r t m <"$WORK/time.$label"
  printf -v "T_$label" '%s' "$t"
  printf -v "M_$label" '%s' "$(( m / 1024 ))"
}
ratio() { printf '%.2f' "$(echo "scale=4; $1 / $2" | bc -l)"; }
row() { printf '| %-44s | %8s | %7s | %9s | %9s | %s\n' "$@"; }

SKOPEO=(skopeo copy --preserve-digests --src-tls-verify=false --dest-tls-verify=false -q)

echo "generating the corpus (${BIG_MIB} MiB single layer; ${LAYERS} layers / ${SERVICE_MIB} MiB)…" >&2
start_registry src
# shellcheck disable=SC2046
BIG_DIGEST=$(make_image "$WORK/big" v1 $((BIG_MIB * 1024)))
# shellcheck disable=SC2046
SVC_DIGEST=$(make_image "$WORK/svc" v1 $(service_sizes))
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/big:v1" "docker://$REG_src/big:v1"
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/svc:v1" "docker://$REG_src/svc:v1"
rm -rf "$WORK/big" "$WORK/svc"

echo
echo "shared 2-core machine (other builds running); load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores, $(free -m | awk '/^Mem:/{print $2}') MiB RAM; $(date -u +%Y-%m-%dT%H:%MZ)"
echo "ferry $("$FERRY" --version 2>/dev/null | cut -d' ' -f2), $(skopeo --version), docker-registry $(docker-registry --version 2>/dev/null | awk '{print $NF}')"
echo "source behind the delay proxy (window $((WINDOW / 1024)) KiB per connection); destinations on loopback"
echo
row case wall_s rss_MiB src_reqs dst_reqs notes
row ---- ------ ------- -------- -------- -----

for rtt in $RTTS; do
  start_proxy "r$rtt" "$REG_src" "$rtt"
  px="PX_r$rtt"; px=${!px}
  for r in "f$rtt" "s$rtt" "ff$rtt" "sf$rtt"; do start_registry "$r"; done
  fd="REG_f$rtt"; fd=${!fd}; sd="REG_s$rtt"; sd=${!sd}
  ffd="REG_ff$rtt"; ffd=${!ffd}; sfd="REG_sf$rtt"; sfd=${!sfd}

  # (a) one large layer, (b) the service image: ferry, then skopeo.
  for img in big svc; do
    s0=$(mark src); d0=$(mark "f$rtt")
    timed "f_$img" "$FERRY" copy "${FERRY_ARGS[@]}" "$px/$img:v1" "$fd/$img:v1"
    fs=$(count src "$s0" "$ANY"); fdr=$(count "f$rtt" "$d0" "$ANY")
    s0=$(mark src); d0=$(mark "s$rtt")
    timed "s_$img" "${SKOPEO[@]}" "docker://$px/$img:v1" "docker://$sd/$img:v1"
    ss=$(count src "$s0" "$ANY"); sdr=$(count "s$rtt" "$d0" "$ANY")
    tf="T_f_$img"; ts="T_s_$img"; mf="M_f_$img"; ms="M_s_$img"
    label=$([ "$img" = big ] && echo "(a) ${BIG_MIB} MiB single layer" || echo "(b) ${LAYERS} layers, ${SERVICE_MIB} MiB")
    row "$label @${rtt}ms: ferry" "${!tf}" "${!mf}" "$fs" "$fdr" "$(ratio "${!tf}" "${!ts}")x skopeo"
    row "$label @${rtt}ms: skopeo" "${!ts}" "${!ms}" "$ss" "$sdr" ""
  done

  # (c) warm re-copy of the service image by digest.
  s0=$(mark src); d0=$(mark "f$rtt")
  timed f_warm "$FERRY" copy "${FERRY_ARGS[@]}" "$px/svc@$SVC_DIGEST" "$fd/svc:v1"
  fs=$(count src "$s0" "$ANY"); fdr=$(count "f$rtt" "$d0" "$ANY")
  s0=$(mark src); d0=$(mark "s$rtt")
  timed s_warm "${SKOPEO[@]}" "docker://$px/svc@$SVC_DIGEST" "docker://$sd/svc:v1"
  ss=$(count src "$s0" "$ANY"); sdr=$(count "s$rtt" "$d0" "$ANY")
  row "(c) warm re-copy by digest @${rtt}ms: ferry" "$T_f_warm" "$M_f_warm" "$fs" "$fdr" "$(ratio "$T_f_warm" "$T_s_warm")x skopeo"
  row "(c) warm re-copy by digest @${rtt}ms: skopeo" "$T_s_warm" "$M_s_warm" "$ss" "$sdr" ""

  # (d) fan-out of the service image to FANOUT repositories of one (fresh) registry.
  dests=(); for i in $(seq "$FANOUT"); do dests+=("$ffd/fan$i/svc:v1"); done
  s0=$(mark src); d0=$(mark "ff$rtt")
  timed f_fan "$FERRY" copy "${FERRY_ARGS[@]}" "$px/svc:v1" "${dests[@]}"
  fs=$(count src "$s0" "$ANY"); fdr=$(count "ff$rtt" "$d0" "$ANY"); fput=$(count "ff$rtt" "$d0" "$BLOB_PUT")
  s0=$(mark src); d0=$(mark "sf$rtt"); T_s_fan=0; M_s_fan=0
  for i in $(seq "$FANOUT"); do
    timed s_fan1 "${SKOPEO[@]}" "docker://$px/svc:v1" "docker://$sfd/fan$i/svc:v1"
    T_s_fan=$(echo "$T_s_fan + $T_s_fan1" | bc -l); [ "$M_s_fan1" -gt "$M_s_fan" ] && M_s_fan=$M_s_fan1
  done
  ss=$(count src "$s0" "$ANY"); sdr=$(count "sf$rtt" "$d0" "$ANY"); sput=$(count "sf$rtt" "$d0" "$BLOB_PUT")
  row "(d) fan-out x$FANOUT, one registry @${rtt}ms: ferry" "$T_f_fan" "$M_f_fan" "$fs" "$fdr" "$(ratio "$T_f_fan" "$T_s_fan")x skopeo; blob PUTs $fput ($((LAYERS + 1)) blobs)"
  row "(d) fan-out x$FANOUT @${rtt}ms: skopeo ($FANOUT runs)" "$T_s_fan" "$M_s_fan" "$ss" "$sdr" "blob PUTs $sput"
done

# (e) peak RSS by layer size, ranged reads on (default) and off, at the first RTT.
if [ -n "$RSS_MIB" ]; then
  rtt=${RTTS%% *}; px="PX_r$rtt"; px=${!px}
  start_registry rss
  for mib in $RSS_MIB; do
    make_image "$WORK/one$mib" v1 $((mib * 1024)) >/dev/null
    skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/one$mib:v1" "docker://$REG_src/one$mib:v1"
    rm -rf "$WORK/one$mib"
    timed rss_on "$FERRY" copy "${FERRY_ARGS[@]}" "$px/one$mib:v1" "$REG_rss/on$mib:v1"
    timed rss_off "$FERRY" copy --range-threshold-mib 0 "$px/one$mib:v1" "$REG_rss/off$mib:v1"
    row "(e) ${mib} MiB layer @${rtt}ms: ferry, ranged" "$T_rss_on" "$M_rss_on" "-" "-" ""
    row "(e) ${mib} MiB layer @${rtt}ms: ferry, one stream" "$T_rss_off" "$M_rss_off" "-" "-" "--range-threshold-mib 0"
  done
fi
