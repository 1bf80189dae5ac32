"""Makes examples/demo/signed-image once: a one-platform OCI image layout tagged v1, signed
with a fresh P-256 key by tests/cosign/sign.py (an independent implementation of cosign's
format, not Ferry's code), the signature manifest tagged `sha256-<hex>.sig` in the same layout
(as `cosign save` leaves it), and the public key as cosign.pub next to it.

Run once and commit the output: the key's private half is thrown away, so the signature cannot
be made again (examples/demo/ferry.json pins the public key). Usage: make_demo_signed_image.py OUT
"""

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

OUT = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def put_blob(b):
    d = digest(b)
    path = os.path.join(OUT, "blobs", "sha256", d.split(":")[1])
    with open(path, "wb") as f:
        f.write(b)
    return {"digest": d, "size": len(b)}


os.makedirs(os.path.join(OUT, "blobs", "sha256"), exist_ok=True)
content = b"a signed external image: its cosign signature travels with it into every install\n"
tar_buf = io.BytesIO()
with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
    info = tarfile.TarInfo("signed.txt")
    info.size, info.mtime, info.mode = len(content), 0, 0o644
    t.addfile(info, io.BytesIO(content))
tar = tar_buf.getvalue()
layer = gzip.compress(tar, mtime=0)
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": [digest(tar)]}},
                    separators=(",", ":")).encode()
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": MANIFEST,
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put_blob(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put_blob(layer)}],
}, separators=(",", ":")).encode()
image = put_blob(manifest)

signed = json.loads(subprocess.run(
    [sys.executable, os.path.join(HERE, "sign.py"), image["digest"], "demo.example/signed:v1"],
    check=True, capture_output=True).stdout)
good = signed["good"]
for b in good["blobs"]:
    put_blob(base64.b64decode(b["b64"]))
sig = put_blob(good["manifest"].encode())
tag = image["digest"].replace(":", "-", 1) + ".sig"

index = {"schemaVersion": 2, "manifests": [
    {"mediaType": MANIFEST, **image, "annotations": {"org.opencontainers.image.ref.name": "v1"}},
    {"mediaType": MANIFEST, **sig, "annotations": {"org.opencontainers.image.ref.name": tag}},
]}
with open(os.path.join(OUT, "index.json"), "w") as f:
    json.dump(index, f, separators=(",", ":"), sort_keys=True)
with open(os.path.join(OUT, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
with open(os.path.join(OUT, "cosign.pub"), "w") as f:
    f.write(signed["public_key"])
print(json.dumps({"digest": image["digest"], "public_key": signed["public_key"]}))
