#!/usr/bin/env bash
# Copy benchmark: Ferry against `skopeo copy --all --preserve-digests` and a raw parallel
# curl GET→PUT floor, side by side in one run, on one corpus, between loopback
# docker-registry instances. Prints a table of wall time, peak RSS and requests, with ratios.
#
#   bash scripts/bench-copy.sh            # 12 layers, ~1 GiB, plus a single 2 GiB layer
#   BENCH_MIB=256 BENCH_BIG_MIB=0 bash scripts/bench-copy.sh   # a quick run
#
# Requests are counted from each registry's access log, so every tool is measured the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

TOTAL_MIB=${BENCH_MIB:-1024}
BIG_MIB=${BENCH_BIG_MIB:-2048}
CONC=${BENCH_CONCURRENCY:-4}
for tool in docker-registry skopeo curl bc python3 /usr/bin/time sha256sum; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install docker-registry skopeo curl bc time)" >&2; exit 2; }
done

echo "building ferry (release)…" >&2
cargo build --release -q -p ferry-cli
FERRY="$PWD/target/release/ferry"

WORK=$(mktemp -d /tmp/ferry-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# start_registry NAME -> sets REG_<NAME>=127.0.0.1:port; access log in $WORK/NAME.log
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

# requests NAME... : access-log lines so far, over the named registries
requests() { local n=0 f; for f in "$@"; do n=$((n + $(grep -c '" [0-9][0-9][0-9] ' "$WORK/$f.log" || true))); done; echo "$n"; }
blob_gets() { grep -c '"GET /v2/[^ ]*/blobs/sha256' "$WORK/$1.log" || true; }

# make_layout DIR TAG SIZES_MIB... : an OCI layout with one random layer per size
make_layout() {
  local dir=$1 tag=$2; shift 2
  mkdir -p "$dir/blobs/sha256"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  local layers="" diffs="" sep="" mib f d
  for mib in "$@"; do
    f="$dir/blobs/sha256/tmp"
    head -c "$((mib * 1024 * 1024))" /dev/urandom >"$f"
    d=$(sha256sum "$f" | cut -d' ' -f1)
    mv "$f" "$dir/blobs/sha256/$d"
    layers+="$sep{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$((mib * 1024 * 1024))}"
    diffs+="$sep\"sha256:$d\""
    sep=","
  done
  local cfg="{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diffs]},\"config\":{}}"
  local cd; cd=$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)
  printf '%s' "$cfg" >"$dir/blobs/sha256/$cd"
  local man="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cd\",\"size\":${#cfg}},\"layers\":[$layers]}"
  local md; md=$(printf '%s' "$man" | sha256sum | cut -d' ' -f1)
  printf '%s' "$man" >"$dir/blobs/sha256/$md"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$md" "${#man}" "$tag" >"$dir/index.json"
}

# timed LABEL CMD... : runs CMD, records wall seconds and peak RSS (KiB) in T_<LABEL>, M_<LABEL>
# Shell functions (the curl floor) are timed by wall clock only.
timed() {
  local label=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  if declare -F "$1" >/dev/null; then
    "$@" >"$WORK/out.$label" 2>&1 || { echo "FAILED: $*" >&2; cat "$WORK/out.$label" >&2; exit 1; }
    echo 0 >"$WORK/rss.$label"
  else
    /usr/bin/time -f '%M' -o "$WORK/rss.$label" "$@" >"$WORK/out.$label" 2>&1 || { echo "FAILED: $*" >&2; cat "$WORK/out.$label" >&2; exit 1; }
  fi
  t1=$(date +%s.%N)
  printf -v "T_$label" '%.3f' "$(echo "$t1 - $t0" | bc -l)"
  printf -v "M_$label" '%s' "$(tail -1 "$WORK/rss.$label")"
}

SKOPEO=(skopeo copy --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false -q)

# floor DST_REGISTRY SRC_REF_REPO DST_REPO MANIFEST_FILE: parallel raw GET→PUT of every blob
floor_copy() {
  local src=$1 repo=$2 dst=$3 dstrepo=$4 blobs=$5
  xargs -P "$CONC" -I{} sh -c '
    loc=$(curl -fsS -X POST -D - -o /dev/null "http://'"$dst"'/v2/'"$dstrepo"'/blobs/uploads/" | tr -d "\r" | sed -n "s/^[Ll]ocation: //p")
    case "$loc" in http*) ;; *) loc="http://'"$dst"'$loc";; esac
    case "$loc" in *\?*) sep="&";; *) sep="?";; esac
    curl -fsS "http://'"$src"'/v2/'"$repo"'/blobs/{}" | curl -fsS -X PUT -T - -o /dev/null "$loc${sep}digest={}"
  ' <"$blobs"
}

layer_sizes() { # 12 layers summing to about TOTAL_MIB, largest first
  local t=$1; echo $((t*20/100)) $((t*16/100)) $((t*14/100)) $((t*12/100)) $((t*10/100)) $((t*8/100)) $((t*6/100)) $((t*5/100)) $((t*4/100)) $((t*2/100)) $((t*2/100)) $((t*1/100 + 1))
}

echo "generating a ${TOTAL_MIB} MiB 12-layer corpus…" >&2
# shellcheck disable=SC2046
make_layout "$WORK/v1" v1 $(layer_sizes "$TOTAL_MIB")
# v2 shares all layers but the last
mkdir -p "$WORK/v2"
cp -r "$WORK/v1/." "$WORK/v2/"
python3 - "$WORK/v2" <<'PY'
import hashlib, json, os, sys
d = sys.argv[1]; b = os.path.join(d, "blobs", "sha256")
idx = json.load(open(os.path.join(d, "index.json")))
md = idx["manifests"][0]["digest"].split(":")[1]
man = json.load(open(os.path.join(b, md)))
data = os.urandom(man["layers"][-1]["size"])
h = hashlib.sha256(data).hexdigest(); open(os.path.join(b, h), "wb").write(data)
man["layers"][-1]["digest"] = "sha256:" + h
cfg = json.load(open(os.path.join(b, man["config"]["digest"].split(":")[1])))
cfg["rootfs"]["diff_ids"][-1] = "sha256:" + h
cb = json.dumps(cfg, separators=(",", ":")).encode(); ch = hashlib.sha256(cb).hexdigest()
open(os.path.join(b, ch), "wb").write(cb)
man["config"] = {"mediaType": man["config"]["mediaType"], "digest": "sha256:" + ch, "size": len(cb)}
mb = json.dumps(man, separators=(",", ":")).encode(); mh = hashlib.sha256(mb).hexdigest()
open(os.path.join(b, mh), "wb").write(mb)
idx["manifests"][0].update({"digest": "sha256:" + mh, "size": len(mb)})
idx["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = "v2"
json.dump(idx, open(os.path.join(d, "index.json"), "w"))
PY

for r in src fdst sdst floor f1 f2 f3 f4 s1 s2 s3 s4; do start_registry "$r"; done
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/v1:v1" "docker://$REG_src/bench:v1"
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/v2:v2" "docker://$REG_src/bench:v2"
blobs_of() { python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["config"]["digest"]); [print(l["digest"]) for l in m["layers"]]' "$1"; }
man_v1="$WORK/v1/blobs/sha256/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"].split(":")[1])' "$WORK/v1/index.json")"
blobs_of "$man_v1" >"$WORK/blobs.v1"

row() { printf '| %-34s | %9s | %9s | %8s | %s\n' "$@"; }
ratio() { printf '%.2f' "$(echo "scale=4; $1 / $2" | bc -l)"; }
mib() { echo $(( $1 / 1024 )); }

echo
echo "corpus: 12 layers, $(du -sm "$WORK/v1/blobs" | cut -f1) MiB; concurrency $CONC per host; $(nproc) cores, $(free -m | awk '/^Mem:/{print $2}') MiB RAM; $(date -u +%Y-%m-%dT%H:%MZ)"
echo "ferry $("$FERRY" --version 2>/dev/null | cut -d' ' -f2), $(skopeo --version), docker-registry $(docker-registry --version 2>/dev/null | awk '{print $NF}')"
row case wall_s rss_MiB requests notes
row ---- ------ ------- -------- -----

# (a) cold copy
n0=$(requests src floor); timed floor floor_copy "$REG_src" bench "$REG_floor" bench "$WORK/blobs.v1"; n_floor=$(( $(requests src floor) - n0 ))
row "(a) cold: curl GET→PUT floor" "$T_floor" "-" "$n_floor" "blobs only, no manifest"
n0=$(requests src fdst); timed fa "$FERRY" copy "$REG_src/bench:v1" "$REG_fdst/bench:v1"; n_fa=$(( $(requests src fdst) - n0 ))
n0=$(requests src sdst); timed sa "${SKOPEO[@]}" "docker://$REG_src/bench:v1" "docker://$REG_sdst/bench:v1"; n_sa=$(( $(requests src sdst) - n0 ))
row "(a) cold: ferry" "$T_fa" "$(mib "$M_fa")" "$n_fa" "$(ratio "$T_fa" "$T_floor")x floor"
row "(a) cold: skopeo" "$T_sa" "$(mib "$M_sa")" "$n_sa" "$(ratio "$T_sa" "$T_floor")x floor"

# (b) warm re-copy
n0=$(requests src fdst); timed fb "$FERRY" copy "$REG_src/bench:v1" "$REG_fdst/bench:v1"; n_fb=$(( $(requests src fdst) - n0 ))
n0=$(requests src sdst); timed sb "${SKOPEO[@]}" "docker://$REG_src/bench:v1" "docker://$REG_sdst/bench:v1"; n_sb=$(( $(requests src sdst) - n0 ))
row "(b) warm: ferry" "$T_fb" "$(mib "$M_fb")" "$n_fb" "skopeo/ferry requests: $(ratio "$n_sb" "$n_fb")x"
row "(b) warm: skopeo" "$T_sb" "$(mib "$M_sb")" "$n_sb" ""

# (c) one layer changed
n0=$(requests src fdst); timed fc "$FERRY" copy "$REG_src/bench:v2" "$REG_fdst/bench:v2"; n_fc=$(( $(requests src fdst) - n0 ))
n0=$(requests src sdst); timed sc "${SKOPEO[@]}" "docker://$REG_src/bench:v2" "docker://$REG_sdst/bench:v2"; n_sc=$(( $(requests src sdst) - n0 ))
row "(c) one layer changed: ferry" "$T_fc" "$(mib "$M_fc")" "$n_fc" "$(ratio "$T_fc" "$T_sc")x skopeo"
row "(c) one layer changed: skopeo" "$T_sc" "$(mib "$M_sc")" "$n_sc" ""

# (d) fan-out to 4 destinations
g0=$(blob_gets src); n0=$(requests src f1 f2 f3 f4)
timed fd "$FERRY" copy "$REG_src/bench:v1" "$REG_f1/bench:v1" "$REG_f2/bench:v1" "$REG_f3/bench:v1" "$REG_f4/bench:v1"
n_fd=$(( $(requests src f1 f2 f3 f4) - n0 )); g_fd=$(( $(blob_gets src) - g0 ))
g0=$(blob_gets src); n0=$(requests src s1 s2 s3 s4)
T_sd=0; M_sd=0
for d in s1 s2 s3 s4; do
  r="REG_$d"; timed sd1 "${SKOPEO[@]}" "docker://$REG_src/bench:v1" "docker://${!r}/bench:v1"
  T_sd=$(echo "$T_sd + $T_sd1" | bc -l); [ "$M_sd1" -gt "$M_sd" ] && M_sd=$M_sd1
done
printf -v T_sd '%.3f' "$T_sd"
n_sd=$(( $(requests src s1 s2 s3 s4) - n0 )); g_sd=$(( $(blob_gets src) - g0 ))
row "(d) fan-out x4: ferry (1 run)" "$T_fd" "$(mib "$M_fd")" "$n_fd" "$(ratio "$T_fd" "$T_sd")x skopeo; source blob GETs $g_fd"
row "(d) fan-out x4: skopeo (4 runs)" "$T_sd" "$(mib "$M_sd")" "$n_sd" "source blob GETs $g_sd"

# (e) one large layer: memory must stay flat
if [ "$BIG_MIB" -gt 0 ]; then
  make_layout "$WORK/big" big "$BIG_MIB"
  skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/big:big" "docker://$REG_src/big:v1"
  rm -rf "$WORK/big"
  timed fe "$FERRY" copy "$REG_src/big:v1" "$REG_floor/big:v1"
  timed se "${SKOPEO[@]}" "docker://$REG_src/big:v1" "docker://$REG_s1/big:v1"
  row "(e) one ${BIG_MIB} MiB layer: ferry" "$T_fe" "$(mib "$M_fe")" "-" ""
  row "(e) one ${BIG_MIB} MiB layer: skopeo" "$T_se" "$(mib "$M_se")" "-" ""
fi
