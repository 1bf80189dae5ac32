#!/usr/bin/env bash
# Smoke test of the five Lambda functions with no AWS account: starts moto on a free loopback
# port and seeds it (table, component, install, install queue, bus, CodeBuild project, pull
# role), builds the functions for the host (`cargo lambda build`, debug), serves them with
# `cargo lambda watch`, and invokes each with its SQS sample from events/sqs/. Every answer
# must be a well-formed SqsBatchResponse: no failures for the samples (first run and replay),
# exactly the bad record for a batch holding one malformed message.
#
# Needs: cargo-lambda (pip install cargo-lambda), moto_server and boto3 (pip install
# 'moto[server]'), curl. Logs go to a temporary directory outside the tree (watch rebuilds on
# changes under the project); it is printed, and kept when a check fails.
# Exits non-zero on any failure; stops everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
MOTO_SERVER="${MOTO_SERVER:-moto_server}"
FUNCTIONS=(build-requested build-completed sync-requested sync-reported)
# The release function: its samples name release r-000001, which the smoke does not create, so
# the step timer must come back failed (unknown release) in a well-formed answer, and the
# release.synced (a sync that is no finished sync of that release) is ignored and deleted.
RELEASE_SAMPLE_IDS="5d1c1a52-0b7e-4d6a-9c1e-000000000005"

for tool in cargo-lambda "$MOTO_SERVER" curl "$PYTHON"; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "lambda-smoke: $tool is missing (pip install cargo-lambda 'moto[server]')" >&2
        exit 2
    }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferry-lambda-smoke.XXXXXX")"
MOTO_PID=""
WATCH_PID=""
ok=0

cleanup() {
    # Both were started with setsid: their process group id is their pid.
    if [[ -n "$WATCH_PID" ]]; then
        kill -TERM -- "-$WATCH_PID" 2>/dev/null || true
        wait "$WATCH_PID" 2>/dev/null || true
    fi
    if [[ -n "$MOTO_PID" ]]; then
        kill -TERM -- "-$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    if [[ "$ok" == 1 ]]; then
        rm -rf "$WORK"
    else
        echo "lambda-smoke: FAILED; logs kept in $WORK" >&2
        tail -n 40 "$WORK/watch.log" 2>/dev/null >&2 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Polls until $1 (a command) succeeds, for at most $2 seconds.
wait_for() {
    local what="$1" secs="$2" deadline=$((SECONDS + $2))
    until eval "$what" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "lambda-smoke: timed out after ${secs}s waiting for: $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

# ---- moto, seeded
MOTO_PORT="$(free_port)"
setsid "$MOTO_SERVER" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
wait_for "curl -sf http://127.0.0.1:$MOTO_PORT/moto-api/" 30

export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
unset AWS_SESSION_TOKEN AWS_PROFILE
export AWS_EC2_METADATA_DISABLED=true
export FERRY_TABLE=ferry-jobs FERRY_EVENT_BUS=ferry
export FERRY_BUILD_PROJECT=ferry-build
export FERRY_VENDOR_REGISTRY=123456789012.dkr.ecr.us-east-1.amazonaws.com
export FERRY_REPOSITORY_PREFIX=ferry FERRY_INSTALL_QUEUE_PREFIX=ferry-install-
export FERRY_VENDOR_KEY_SECRET=ferry-vendor-key FERRY_MAX_RECEIVE_COUNT=5
export FERRY_RELEASE_QUEUE_URL="http://127.0.0.1:$MOTO_PORT/123456789012/ferry-release"
export RUST_LOG=info

# The records follow docs/design/aws.md (item shapes), with the samples' ids from events/.
FERRY_PULL_ROLE_ARN="$("$PYTHON" - <<'EOF'
import base64, json, os
import boto3

ddb = boto3.client("dynamodb")
keys = ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "gsi3pk", "gsi3sk"]
ddb.create_table(
    TableName=os.environ["FERRY_TABLE"],
    BillingMode="PAY_PER_REQUEST",
    AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    GlobalSecondaryIndexes=[
        {
            "IndexName": g,
            "KeySchema": [{"AttributeName": g + "pk", "KeyType": "HASH"}, {"AttributeName": g + "sk", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        }
        for g in ("gsi1", "gsi2", "gsi3")
    ],
)

sqs = boto3.client("sqs")
queue = "ferry-install-acme-prod-eu"
sqs.create_queue(QueueName=queue)
sqs.create_queue(QueueName="ferry-release")

component = {"app": "shop", "name": "web", "kind": "image", "source": "docker.io/library/alpine", "repository": "shop/web"}
install = {
    "id": "acme-prod-eu",
    "app": "shop",
    "registry": {"endpoint": "111122223333.dkr.ecr.eu-west-1.amazonaws.com", "namespace": "vendor"},
    # Any 32 bytes are an X25519 public key; nobody opens this smoke's grants.
    "agent_public_key": "ferry-x25519-pub:" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="),
    # The sample agent's report key: events/sqs/sync-reported.json is signed with it, so the
    # sample report is authenticated and lands (ferry-core's event tests check the pairing).
    "agent_report_key": "ferry-agent-ed25519:cB0RifRyi8qCWC7Lp4f-ir2MTcztUGI58XHOSk1wH08",
    "queue": queue,
    "components": ["web"],
}
S = lambda v: {"S": v}
for item in (
    {"pk": S("COMPONENT#shop#web"), "sk": S("COMPONENT"), "kind": S("component"), "data": S(json.dumps(component))},
    {"pk": S("INSTALL#acme-prod-eu"), "sk": S("INSTALL"), "kind": S("install"), "data": S(json.dumps(install))},
    {
        "pk": S("INSTALL#acme-prod-eu"), "sk": S("SUB#shop#web"),
        "gsi1pk": S("SUB#shop#web"), "gsi1sk": S("INSTALL#acme-prod-eu"),
        "kind": S("subscription"), "data": S(json.dumps(install)),
    },
):
    ddb.put_item(TableName=os.environ["FERRY_TABLE"], Item=item)

boto3.client("events").create_event_bus(Name=os.environ["FERRY_EVENT_BUS"])
# The vendor key, as the stack's GenerateSecretString makes it (64 alphanumerics).
boto3.client("secretsmanager").create_secret(
    Name=os.environ["FERRY_VENDOR_KEY_SECRET"],
    SecretString=base64.b32encode(os.urandom(40)).decode().rstrip("="),
)
boto3.client("codebuild").create_project(
    name=os.environ["FERRY_BUILD_PROJECT"],
    source={"type": "S3", "location": "ferry-sources/bundle.zip"},
    artifacts={"type": "NO_ARTIFACTS"},
    environment={"type": "ARM_CONTAINER", "image": "aws/codebuild/amazonlinux-aarch64-standard:3.0", "computeType": "BUILD_GENERAL1_SMALL"},
    serviceRole="arn:aws:iam::123456789012:role/ferry-codebuild",
)
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
role = boto3.client("iam").create_role(RoleName="ferry-pull", AssumeRolePolicyDocument=json.dumps(trust))
print(role["Role"]["Arn"])
EOF
)"
export FERRY_PULL_ROLE_ARN
echo "lambda-smoke: moto on 127.0.0.1:$MOTO_PORT seeded (pull role $FERRY_PULL_ROLE_ARN)"

# ---- build and serve
start=$SECONDS
# In one command (features unify: every binary links every client; what is smoked is how each
# function answers). The scheduled reconciler too (no SQS sample: its schedule's event carries
# nothing it reads).
pkgs=()
for f in "${FUNCTIONS[@]}" release reconcile; do pkgs+=(-p "$f"); done
cargo lambda build "${pkgs[@]}"
echo "lambda-smoke: cargo lambda build took $((SECONDS - start))s"

WATCH_PORT="$(free_port)"
# --ignore-changes: other edits in the tree must not restart functions mid-smoke.
setsid cargo lambda watch --ignore-changes -A 127.0.0.1 -P "$WATCH_PORT" >"$WORK/watch.log" 2>&1 &
WATCH_PID=$!
wait_for "curl -s -o /dev/null http://127.0.0.1:$WATCH_PORT/" 120

# Checks one invoke's answer: a SqsBatchResponse whose failed ids are exactly $2 (comma list).
check_response() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
raw, want = sys.argv[1], sorted(filter(None, sys.argv[2].split(",")))
try:
    resp = json.loads(raw)
except ValueError as e:
    sys.exit(f"not JSON ({e}): {raw!r}")
if not isinstance(resp, dict) or not isinstance(resp.get("batchItemFailures"), list):
    sys.exit(f"not a SqsBatchResponse: {raw!r}")
got = []
for item in resp["batchItemFailures"]:
    if not isinstance(item, dict) or not isinstance(item.get("itemIdentifier"), str):
        sys.exit(f"malformed batchItemFailures entry {item!r} in {raw!r}")
    got.append(item["itemIdentifier"])
if sorted(got) != want:
    sys.exit(f"failed ids {sorted(got)}, expected {want}: {raw!r}")
EOF
}

invoke() { # function, expected failed ids, then invoke's data arguments
    local fn="$1" want="$2" out
    shift 2
    # The first invoke of each function compiles and starts it: allow for that.
    if ! out="$(cargo lambda invoke "$fn" -A 127.0.0.1 -P "$WATCH_PORT" --output-format json "$@" 2>"$WORK/invoke-$fn.err")"; then
        echo "lambda-smoke: invoke $fn failed: $(cat "$WORK/invoke-$fn.err")" >&2
        return 1
    fi
    check_response "$out" "$want" || {
        echo "lambda-smoke: $fn answered badly" >&2
        return 1
    }
    echo "lambda-smoke: ok  $fn -> $(tr -d ' \n' <<<"$out")"
}

for round in first replay; do
    echo "lambda-smoke: $round round"
    for f in "${FUNCTIONS[@]}"; do
        invoke "$f" "" --data-file "events/sqs/$f.json"
    done
    # No failure is not enough: the build and the sync must have gone all the way, once.
    STATE_FILE="$WORK/state" ROUND="$round" "$PYTHON" - <<'EOF'
import json, os, sys
import boto3
ddb = boto3.client("dynamodb")
table = os.environ["FERRY_TABLE"]
def status(pk, sk):
    item = ddb.get_item(TableName=table, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True).get("Item")
    return item and (item["status"]["S"], item["version"]["N"])
build = status("BUILD#b-000001", "BUILD")
sync = status("SYNC#s-3f1c2a9d0b7e4c15a8e2d6f4b9c01e7a", "SYNC")
if not build or build[0] != "succeeded" or not sync or sync[0] != "succeeded":
    sys.exit(f"lambda-smoke: expected build and sync succeeded, found build {build}, sync {sync}")
msgs = boto3.client("sqs").receive_message(
    QueueUrl=boto3.client("sqs").get_queue_url(QueueName="ferry-install-acme-prod-eu")["QueueUrl"],
    MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0,
).get("Messages", [])
if len(msgs) != 1:
    sys.exit(f"lambda-smoke: expected one job message on the install queue, found {len(msgs)}")
state = json.dumps([build, sync])
if os.environ["ROUND"] == "first":
    open(os.environ["STATE_FILE"], "w").write(state)
elif open(os.environ["STATE_FILE"]).read() != state:
    sys.exit(f"lambda-smoke: the replay changed the store: {state}")
print(f"lambda-smoke: store ok: build {build}, sync {sync}, one job message")
EOF
done

# The functions log JSON lines naming the SQS message and the job.
grep -q '"message_id":"5d1c1a52-0b7e-4d6a-9c1e-000000000003".*"job_id":"s-3f1c2a9d0b7e4c15a8e2d6f4b9c01e7a"' "$WORK/watch.log" || {
    echo "lambda-smoke: no JSON log line with the message id and job id in $WORK/watch.log" >&2
    exit 1
}

# The release function answers for both its records: the timer fails (unknown release r-000001), the release.synced is ignored.
invoke release "$RELEASE_SAMPLE_IDS" --data-file events/sqs/release.json

# One malformed record among good ones: only it fails.
bad_batch="$("$PYTHON" - <<'EOF'
import copy, json
good = json.load(open("events/sqs/build-requested.json"))["Records"][0]
bad = copy.deepcopy(good)
bad["messageId"] = "smoke-malformed"
bad["body"] = '{"version": 1, "type": "build.req'
print(json.dumps({"Records": [good, bad]}))
EOF
)"
invoke build-requested smoke-malformed --data-ascii "$bad_batch"

# The reconciler: one pass over the same store; every job finished, so nothing is stuck.
if ! out="$(cargo lambda invoke reconcile -A 127.0.0.1 -P "$WATCH_PORT" --output-format json \
    --data-ascii '{"source":"aws.scheduler","detail-type":"Scheduled Event","detail":{}}' 2>"$WORK/invoke-reconcile.err")"; then
    echo "lambda-smoke: invoke reconcile failed: $(cat "$WORK/invoke-reconcile.err")" >&2
    exit 1
fi
"$PYTHON" - "$out" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
if r.get("redriven") != [] or r.get("failed") != [] or r.get("more") is not False:
    sys.exit(f"lambda-smoke: reconcile should find nothing stuck, answered {r!r}")
EOF
echo "lambda-smoke: ok  reconcile -> $(tr -d ' \n' <<<"$out")"

ok=1
echo "lambda-smoke: all checks passed"
