#!/usr/bin/env python3
"""Cold init of the Lambda functions: from exec of a function's `bootstrap` to its first poll
of the Runtime API (GET /2018-06-01/runtime/invocation/next), against a stub Runtime API on a
free loopback port, with moto (free loopback port) holding the vendor key secret the functions
read at init. Each function is started RUNS times (default 5); prints size and median/min init.

    python3 scripts/lambda-cold-init.py [BOOTSTRAP ...]

Default bootstraps: target/lambda/<function>/bootstrap for the six functions (what
`cargo lambda build [--release] -p <function>` leaves). The binaries must run on this machine:
build natively (`cargo lambda build --release -p F`) to time init on this host, or set
COLD_INIT_WRAPPER to run each bootstrap through an emulator (COLD_INIT_WRAPPER=qemu-aarch64-static
for arm64 builds on x86_64: emulated times, comparable with each other only).
Needs: moto_server, boto3. Stops everything it started.
"""

from __future__ import annotations

import base64
import http.server
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ["build-requested", "build-completed", "sync-requested", "sync-reported", "release", "reconcile"]
RUNS = int(os.environ.get("RUNS", "5"))
WRAPPER = os.environ.get("COLD_INIT_WRAPPER", "").split()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Stub(http.server.ThreadingHTTPServer):
    """Records when the first `invocation/next` poll arrives, then never answers it."""

    first_poll: float | None = None
    polled = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.endswith("/runtime/invocation/next"):
            if self.server.first_poll is None:
                self.server.first_poll = time.monotonic()
            self.server.polled.set()
            time.sleep(30)  # a poll with nothing to hand out: hold it until the function dies
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def main() -> int:
    bootstraps = [Path(p) for p in sys.argv[1:]] or [
        ROOT / "target" / "lambda" / f / "bootstrap" for f in FUNCTIONS
    ]
    missing = [str(b) for b in bootstraps if not b.exists()]
    if missing:
        print(f"lambda-cold-init: not built: {', '.join(missing)} (cargo lambda build -p F)", file=sys.stderr)
        return 2
    moto_port = free_port()
    moto = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(moto_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{moto_port}/moto-api/")
                break
            except OSError:
                time.sleep(0.2)
        import boto3

        endpoint = f"http://127.0.0.1:{moto_port}"
        kw = dict(endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
        boto3.client("secretsmanager", **kw).create_secret(
            Name="ferry-vendor-key", SecretString=base64.b32encode(os.urandom(40)).decode().rstrip("="))
        env = dict(os.environ)
        env.update({
            "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_LAMBDA_FUNCTION_NAME": "cold-init", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "AWS_LAMBDA_FUNCTION_VERSION": "1", "AWS_LAMBDA_LOG_STREAM_NAME": "s",
            "AWS_LAMBDA_LOG_GROUP_NAME": "g",
            "FERRY_TABLE": "ferry-jobs", "FERRY_EVENT_BUS": "ferry", "FERRY_BUILD_PROJECT": "ferry-build",
            "FERRY_PULL_ROLE_ARN": "arn:aws:iam::123456789012:role/ferry-pull",
            "FERRY_VENDOR_REGISTRY": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "FERRY_VENDOR_KEY_SECRET": "ferry-vendor-key", "FERRY_MAX_RECEIVE_COUNT": "5",
            "FERRY_RELEASE_QUEUE_URL": f"{endpoint}/123456789012/ferry-release",
            "RUST_LOG": "warn",
        })
        env.pop("AWS_PROFILE", None)
        print(f"{'function':<18} {'bytes':>10} {'MiB':>6} {'median ms':>10} {'min ms':>8}")
        for b in bootstraps:
            times = []
            for _ in range(RUNS):
                stub = Stub(("127.0.0.1", 0), Handler)
                stub.first_poll = None
                stub.polled = threading.Event()
                threading.Thread(target=stub.serve_forever, daemon=True).start()
                env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{stub.server_address[1]}"
                start = time.monotonic()
                proc = subprocess.Popen(WRAPPER + [str(b)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                ok = stub.polled.wait(30)
                proc.kill()
                _, err = proc.communicate()
                stub.shutdown()
                stub.server_close()
                if not ok:
                    print(f"lambda-cold-init: {b} never polled: {err.decode(errors='replace')[-400:]}", file=sys.stderr)
                    return 1
                times.append((stub.first_poll - start) * 1000)
            size = b.stat().st_size
            name = b.parent.name
            print(f"{name:<18} {size:>10} {size / 2**20:>6.2f} {statistics.median(times):>10.1f} {min(times):>8.1f}")
        return 0
    finally:
        os.killpg(moto.pid, 15)
        moto.wait()


if __name__ == "__main__":
    sys.exit(main())
