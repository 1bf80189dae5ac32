#!/usr/bin/env bash
# Builds the ferry-agent image and pushes it anywhere `ferry copy` can write.
#
#   bash scripts/agent-image.sh [DEST...]
#
# 1. a static ferry-agent (musl) per platform, cross-linked by cargo lambda's zig:
#    linux/amd64 → x86_64-unknown-linux-musl, linux/arm64 → aarch64-unknown-linux-musl;
#    each binary is checked to be static (no ELF interpreter);
# 2. `ferry image pack`: a FROM-scratch OCI index (CA bundle, user ferry 65532, entrypoint
#    /usr/local/bin/ferry-agent), reproducible: same binaries and CA bundle, same digest;
# 3. unpacks the amd64 root filesystem and runs `ferry-agent --help` from it (on amd64 hosts);
# 4. `ferry copy` to each DEST: `oci:DIR:TAG`, the embedded registry (`127.0.0.1:5000/ferry-agent:TAG`)
#    or ECR (`<account>.dkr.ecr.<region>.amazonaws.com/ferry-agent:TAG`, credentials from the
#    docker config, as for any `ferry copy`).
# The image always stays in target/agent-image (an OCI layout, tag = the crate version).
# The last line printed is the index digest: pass the image by that digest (AgentImage).
#
# Env: FERRY_AGENT_PLATFORMS ("linux/amd64 linux/arm64"), FERRY_AGENT_PROFILE (release),
#      FERRY_CA_BUNDLE (/etc/ssl/certs/ca-certificates.crt, Debian's ca-certificates).
# Needs: cargo-lambda (pip install cargo-lambda, brings zig), rustup targets (added here).
# See docs/design/agent-image.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0

PLATFORMS="${FERRY_AGENT_PLATFORMS:-linux/amd64 linux/arm64}"
PROFILE="${FERRY_AGENT_PROFILE:-release}"
CA_BUNDLE="${FERRY_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
PYTHON="${PYTHON:-python3}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
LAYOUT="target/agent-image"
TAG="${VERSION}"

[ -f "$CA_BUNDLE" ] || { echo "agent-image: no CA bundle at $CA_BUNDLE (apt-get install -y ca-certificates, or set FERRY_CA_BUNDLE)" >&2; exit 2; }
command -v cargo-lambda >/dev/null 2>&1 || { echo "agent-image: cargo-lambda is missing (pip install cargo-lambda)" >&2; exit 2; }

triple() {
    case "$1" in
        linux/amd64) echo x86_64-unknown-linux-musl ;;
        linux/arm64) echo aarch64-unknown-linux-musl ;;
        *) echo "agent-image: unsupported platform $1 (linux/amd64, linux/arm64)" >&2; exit 2 ;;
    esac
}

# A static executable has no PT_INTERP program header.
is_static() {
    "$PYTHON" - "$1" <<'EOF'
import struct, sys
data = open(sys.argv[1], "rb").read(1 << 16)
assert data[:4] == b"\x7fELF", "not an ELF file"
is64, little = data[4] == 2, data[5] == 1
e = "<" if little else ">"
if is64:
    phoff, = struct.unpack_from(e + "Q", data, 0x20); phentsize, phnum = struct.unpack_from(e + "HH", data, 0x36)
else:
    phoff, = struct.unpack_from(e + "I", data, 0x1C); phentsize, phnum = struct.unpack_from(e + "HH", data, 0x2A)
types = [struct.unpack_from(e + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
sys.exit(1 if 3 in types else 0)  # PT_INTERP = 3
EOF
}

binaries=()
for platform in $PLATFORMS; do
    target="$(triple "$platform")"
    if command -v rustup >/dev/null 2>&1; then rustup target add "$target" >/dev/null; fi
    start=$(date +%s)
    profile_flag=(--profile "$PROFILE")
    [ "$PROFILE" = release ] && profile_flag=(--release)
    cargo lambda build "${profile_flag[@]}" --target "$target" --skip-target-check \
        -p ferry-agent --bin ferry-agent >&2
    # cargo lambda leaves the binary as target/lambda/<bin>/bootstrap, for every target: keep
    # each platform's copy apart.
    mkdir -p "target/agent-image-bin/$target"
    bin="target/agent-image-bin/$target/ferry-agent"
    cp target/lambda/ferry-agent/bootstrap "$bin"
    is_static "$bin" || { echo "agent-image: $bin is not static (it names an ELF interpreter)" >&2; exit 1; }
    echo "agent-image: $platform $bin ($(stat -c %s "$bin") bytes, built in $(( $(date +%s) - start ))s)" >&2
    binaries+=(--binary "$platform=$bin")
done

ferry=(cargo run -q -p ferry-cli --)
digest="$("${ferry[@]}" image pack "${binaries[@]}" --ca-bundle "$CA_BUNDLE" \
    --label org.opencontainers.image.title=ferry-agent \
    --label "org.opencontainers.image.version=$VERSION" \
    --out "oci:$LAYOUT:$TAG" | tail -1)"
echo "agent-image: packed oci:$LAYOUT:$TAG $digest" >&2

if [ "$(uname -m)" = x86_64 ] && [[ " $PLATFORMS " == *" linux/amd64 "* ]]; then
    root="$(mktemp -d "${TMPDIR:-/tmp}/ferry-agent-rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    "${ferry[@]}" image unpack "oci:$LAYOUT:$TAG" --platform linux/amd64 "$root/fs" >/dev/null
    env -i "$root/fs/usr/local/bin/ferry-agent" --help >/dev/null \
        || { echo "agent-image: ferry-agent --help failed from the unpacked amd64 rootfs" >&2; exit 1; }
    echo "agent-image: amd64 rootfs runs ferry-agent --help" >&2
fi

for dest in "$@"; do
    "${ferry[@]}" copy "oci:$LAYOUT:$TAG" "$dest" >&2
    echo "agent-image: pushed to $dest" >&2
done
echo "$digest"
