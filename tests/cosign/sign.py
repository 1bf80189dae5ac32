"""An independent cosign signer for Ferry's tests: follows cosign's published signature
specification with Python's `cryptography`, sharing no code with Ferry.

Usage: sign.py SUBJECT_DIGEST DOCKER_REFERENCE
Prints JSON: two PEM public keys (the signer's and an unrelated one), and two signature
manifests for SUBJECT_DIGEST (`good`, and `tampered`: the payload edited after signing),
each as {"blobs": [{"digest", "b64"}], "manifest": "<exact bytes>"}.
"""

import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SUBJECT, REFERENCE = sys.argv[1], sys.argv[2]


def pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def signature_manifest(payload, signature):
    config = json.dumps({
        "architecture": "", "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
        "rootfs": {"type": "layers", "diff_ids": [digest(payload)]}, "config": {},
    }, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "size": len(config), "digest": digest(config)},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": len(payload), "digest": digest(payload),
            "annotations": {"dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()},
        }],
    }, separators=(",", ":"))
    return {
        "blobs": [{"digest": digest(b), "b64": base64.b64encode(b).decode()} for b in (config, payload)],
        "manifest": manifest,
    }


key = ec.generate_private_key(ec.SECP256R1())
other = ec.generate_private_key(ec.SECP256R1())
payload = json.dumps({
    "critical": {
        "identity": {"docker-reference": REFERENCE},
        "image": {"docker-manifest-digest": SUBJECT},
        "type": "cosign container image signature",
    },
    "optional": None,
}, separators=(",", ":")).encode()
signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
tampered = payload.replace(REFERENCE.encode(), b"evil.example/other")
print(json.dumps({
    "public_key": pem(key),
    "other_public_key": pem(other),
    "good": signature_manifest(payload, signature),
    "tampered": signature_manifest(tampered, signature),
}))
