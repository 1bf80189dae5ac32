#!/usr/bin/env bash
# Release fan-out on moto (issue 12): one release of one build to FERRY_BENCH_INSTALLS installs
# (default 1000) in one step, through the release function and the sync-requested function
# (ferry-lambda's handle_sqs_batch, as many concurrent pollers as the template's
# MaximumConcurrency defaults), with every AWS call the functions make counted at a proxy in
# front of moto. Prints the time from `release create` to the last job enqueued, and calls per
# install by operation. The test itself checks every install got exactly one job.
#
# Needs: moto_server (pip install 'moto[server]'). Moto and the proxy listen on free loopback
# ports and stop with the test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
export FERRY_BENCH_INSTALLS="${FERRY_BENCH_INSTALLS:-1000}"
echo "bench-fanout-aws: $FERRY_BENCH_INSTALLS installs, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
exec cargo test -p ferry-e2e-aws --test fanout bench_fan_out -- --ignored --nocapture --test-threads 1
