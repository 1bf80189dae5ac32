#!/usr/bin/env python3
"""An OCI image layout for the benchmarks: one random (incompressible) layer per size.

    python3 scripts/oci-layout.py DIR TAG SIZE_KIB [SIZE_KIB ...]

Writes DIR/oci-layout, DIR/index.json (the manifest tagged TAG) and the blobs, streaming each
layer to disk in 8 MiB chunks (flat memory whatever its size); prints the manifest digest.
Used by scripts/bench-wan.sh and scripts/bench-agent.sh.
"""
import hashlib, json, os, sys
d, tag, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
b = os.path.join(d, "blobs", "sha256"); os.makedirs(b, exist_ok=True)
open(os.path.join(d, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
def put(data):
    h = hashlib.sha256(data).hexdigest(); open(os.path.join(b, h), "wb").write(data); return h
layers = []
for kib in sizes:
    h = hashlib.sha256(); tmp = os.path.join(b, "tmp")
    with open(tmp, "wb") as f:
        left = kib * 1024
        while left:
            chunk = os.urandom(min(left, 8 << 20)); f.write(chunk); h.update(chunk); left -= len(chunk)
    os.rename(tmp, os.path.join(b, h.hexdigest()))
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + h.hexdigest(), "size": kib * 1024})
cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}, "config": {}}).encode()
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + put(cfg), "size": len(cfg)},
    "layers": layers}).encode()
mh = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + mh, "size": len(man),
    "annotations": {"org.opencontainers.image.ref.name": tag}}]}, open(os.path.join(d, "index.json"), "w"))
print("sha256:" + mh)
