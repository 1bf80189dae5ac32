"""Checks of the deployable stacks: template.yaml (SAM, vendor) and infra/install-agent.yaml
(CloudFormation, customer), plus infra/buildspec.yml.

Static policy tests run over the parsed YAML (cfn-lint's decoder understands !Ref/!Sub/!GetAtt);
the customer stack is also created and deleted in moto's CloudFormation (moto_server on a free
loopback port). Run with `scripts/check-deploy.sh` or `python3 -m pytest tests/deploy`.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "template.yaml"
CUSTOMER = ROOT / "infra" / "install-agent.yaml"
BUILDSPEC = ROOT / "infra" / "buildspec.yml"
AWS_DESIGN = ROOT / "docs" / "design" / "aws.md"

FUNCTIONS = ["build-requested", "build-completed", "sync-requested", "sync-reported", "release",
             "reconcile"]
# The functions an SQS queue feeds (the reconciler runs on a schedule instead).
SQS_FUNCTIONS = [f for f in FUNCTIONS if f != "reconcile"]
# The functions that send release events (release.synced, step timers) to the release queue.
RELEASE_SENDERS = {"SyncRequestedFunction", "SyncReportedFunction", "ReleaseFunction",
                   "ReconcileFunction"}
ENV_CONTRACT = [
    "FERRY_TABLE",
    "FERRY_EVENT_BUS",
    "FERRY_BUILD_PROJECT",
    "FERRY_PULL_ROLE_ARN",
    "FERRY_REPORT_QUEUE_URL",
    "FERRY_VENDOR_REGISTRY",
    "FERRY_VENDOR_KEY_SECRET",
    "FERRY_INSTALL_QUEUE_PREFIX",
    "FERRY_MAX_RECEIVE_COUNT",
]
# The only action IAM allows on Resource "*" in these stacks (it has no resource type).
STAR_RESOURCE_OK = {"ecr:GetAuthorizationToken"}
READ_PREFIXES = ("Get", "Describe", "List", "BatchGet", "BatchCheck")


def load(path: Path) -> dict:
    return dict(cfn_yaml.load(str(path)))


@pytest.fixture(scope="module")
def vendor() -> dict:
    return load(VENDOR)


@pytest.fixture(scope="module")
def customer() -> dict:
    return load(CUSTOMER)


def resources(t: dict, rtype: str | None = None) -> dict:
    return {k: v for k, v in t["Resources"].items() if rtype is None or v["Type"] == rtype}


def as_list(x) -> list:
    return x if isinstance(x, list) else [x]


def statements(t: dict):
    """Every policy statement in the template: (resource logical id, where, statement)."""
    for name, r in t["Resources"].items():
        props = r.get("Properties", {})
        docs = []
        if r["Type"] == "AWS::IAM::Role":
            docs.append(("trust", props.get("AssumeRolePolicyDocument")))
            for p in props.get("Policies", []):
                docs.append((p["PolicyName"], p["PolicyDocument"]))
        elif r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::SQS::QueuePolicy"):
            docs.append(("policy", props.get("PolicyDocument")))
        elif r["Type"] == "AWS::ECR::Repository":
            docs.append(("repository", props.get("RepositoryPolicyText")))
        elif r["Type"] == "AWS::SecretsManager::ResourcePolicy":
            docs.append(("secret", props.get("ResourcePolicy")))
        for where, doc in docs:
            if not doc:
                continue
            for st in as_list(doc["Statement"]):
                if isinstance(st, dict) and "Fn::If" in st:
                    # A conditional statement: check its "true" branch.
                    st = st["Fn::If"][1]
                if isinstance(st, dict) and "Effect" in st:
                    yield name, where, st


def refs(x) -> set[str]:
    """Names of parameters/resources a value refers to (Ref, GetAtt, ${...} in Sub)."""
    out: set[str] = set()
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "Ref":
                out.add(str(v))
            elif k == "Fn::GetAtt":
                out.add(str(v[0] if isinstance(v, list) else v.split(".")[0]))
            elif k == "Fn::Sub":
                s = v[0] if isinstance(v, list) else v
                out |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", str(s))}
                if isinstance(v, list):
                    out |= refs(v[1])
            else:
                out |= refs(v)
    elif isinstance(x, list):
        for v in x:
            out |= refs(v)
    return out


def is_write(action: str) -> bool:
    if action == "*" or action.endswith(":*"):
        return True
    verb = action.split(":", 1)[1]
    return not verb.startswith(READ_PREFIXES)


def vendor_writes(t: dict) -> list[str]:
    """Allow statements whose principal is the vendor (VendorAccountId, a vendor-side ARN
    parameter, or a literal account other than this one) and that allow a write action."""
    vendor_params = {"VendorAccountId", "InstallQueuePrefix", "ReportQueueArn", "VendorRegistry",
                     "VendorPublicKey", "VendorRepositoryPrefix"}
    bad = []
    for name, where, st in statements(t):
        if st["Effect"] != "Allow" or "Principal" not in st:
            continue
        principal = st["Principal"]
        literal = json.dumps(principal) if not isinstance(principal, str) else principal
        by_vendor = bool(refs(principal) & vendor_params) or bool(
            re.search(r"\b\d{12}\b", literal)
        )
        if principal == "*" or (isinstance(principal, dict) and principal.get("AWS") == "*"):
            by_vendor = True
        writes = [a for a in as_list(st["Action"]) if is_write(a)]
        if by_vendor and writes:
            bad.append(f"{name}/{where}: {writes}")
    return bad


# ------------------------------------------------------------------------- both stacks


@pytest.mark.parametrize("path", [VENDOR, CUSTOMER])
def test_least_privilege_no_star_actions_and_star_resource_only_for_ecr_token(path):
    t = load(path)
    seen = 0
    for name, where, st in statements(t):
        seen += 1
        if st["Effect"] != "Allow":
            continue
        actions = as_list(st.get("Action", []))
        assert not [a for a in actions if a == "*" or a.endswith(":*")], (name, where, actions)
        assert not any(a.startswith("iam:") for a in actions), (name, where, actions)
        if st.get("Resource") == "*" or "*" in as_list(st.get("Resource", [])):
            assert set(actions) <= STAR_RESOURCE_OK, (name, where, actions)
    assert seen > 5


@pytest.mark.parametrize("path", [VENDOR, CUSTOMER])
def test_every_cfn_lint_suppression_has_a_reason(path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if "ignore_checks" in line:
            window = lines[max(0, i - 2) : i + 4]
            assert any("#" in w for w in window), f"{path.name}:{i + 1}: suppression without a reason"


# ------------------------------------------------------------------------- vendor stack


def function_props(t: dict, name: str) -> dict:
    merged = copy.deepcopy(t.get("Globals", {}).get("Function", {}))
    for k, v in resources(t)[name]["Properties"].items():
        if k == "Environment":
            merged.setdefault("Environment", {"Variables": {}})["Variables"].update(v["Variables"])
        else:
            merged[k] = v
    return merged


def functions(t: dict) -> dict:
    return resources(t, "AWS::Serverless::Function")


def test_five_functions_built_by_cargo_lambda_on_arm64_al2023(vendor):
    fns = functions(vendor)
    binaries = sorted(f["Metadata"]["BuildProperties"]["Binary"] for f in fns.values())
    assert binaries == sorted(FUNCTIONS)
    for name, f in fns.items():
        p = function_props(vendor, name)
        binary = f["Metadata"]["BuildProperties"]["Binary"]
        assert f["Metadata"]["BuildMethod"] == "rust-cargolambda", name
        assert p["Runtime"] == "provided.al2023", name
        assert p["Architectures"] == ["arm64"], name
        assert p["Handler"] == "bootstrap", name
        assert p["CodeUri"] == f"functions/{binary}", name
        crate = ROOT / p["CodeUri"] / "Cargo.toml"
        if crate.exists():  # the crates are written by another change; check once they exist
            assert re.search(rf'^name\s*=\s*"{binary}"', crate.read_text(), re.M), crate


def test_functions_get_the_environment_contract(vendor):
    for name in functions(vendor):
        env = function_props(vendor, name)["Environment"]["Variables"]
        missing = [v for v in ENV_CONTRACT if v not in env]
        assert not missing, (name, missing)


def queue_of_arn(value) -> str:
    (target,) = refs(value)
    return target


def test_sqs_triggers_report_batch_item_failures_and_visibility_is_six_times_timeout(vendor):
    queues = resources(vendor, "AWS::SQS::Queue")
    checked = 0
    for name in functions(vendor):
        p = function_props(vendor, name)
        for ev in p["Events"].values():
            if ev["Type"] == "ScheduleV2":  # the reconciler runs on a schedule, not a queue
                continue
            assert ev["Type"] == "SQS", name
            props = ev["Properties"]
            assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
            assert props["BatchSize"] == 10, name
            queue = queues[queue_of_arn(props["Queue"])]
            assert queue["Properties"]["VisibilityTimeout"] >= 6 * p["Timeout"], name
            # Every trigger is capped, so a fan-out to thousands of installs stays in quotas.
            assert "MaximumConcurrency" in props["ScalingConfig"], name
            checked += 1
    assert checked == len(SQS_FUNCTIONS)


def test_every_queue_has_sse_and_a_dlq_with_max_receive_count(vendor):
    queues = resources(vendor, "AWS::SQS::Queue")
    dlqs = set()
    for name, q in queues.items():
        redrive = q["Properties"].get("RedrivePolicy")
        if redrive:
            dlqs.add(queue_of_arn(redrive["deadLetterTargetArn"]))
            assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}, name
    assert vendor["Parameters"]["MaxReceiveCount"]["Default"] == 5
    for name, q in queues.items():
        assert q["Properties"].get("SqsManagedSseEnabled") is True, name
        assert name in dlqs or "RedrivePolicy" in q["Properties"], f"{name} has no DLQ"
    assert len(dlqs) == len(SQS_FUNCTIONS)


def test_each_dlq_has_an_alarm(vendor):
    alarmed = set()
    for a in resources(vendor, "AWS::CloudWatch::Alarm").values():
        p = a["Properties"]
        if p["MetricName"] == "SecurityEvents":
            continue  # test_security_events_are_counted_and_alarmed
        assert p["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert p["Threshold"] == 0 and p["ComparisonOperator"] == "GreaterThanThreshold"
        alarmed |= refs(p["Dimensions"])
    dlqs = {
        queue_of_arn(q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
        for q in resources(vendor, "AWS::SQS::Queue").values()
        if "RedrivePolicy" in q["Properties"]
    }
    assert dlqs and dlqs <= alarmed


def test_rules_feed_their_queues_and_only_eventbridge_from_that_rule_may_send(vendor):
    rules = resources(vendor, "AWS::Events::Rule")
    policies = resources(vendor, "AWS::SQS::QueuePolicy")
    wanted = {
        "build.requested": "BuildRequestedQueue",
        "sync.requested": "SyncRequestedQueue",
        "sync.reported": "SyncReportedQueue",
    }
    for rule_name, rule in rules.items():
        p = rule["Properties"]
        (target,) = p["Targets"]
        queue = queue_of_arn(target["Arn"])
        pattern = p["EventPattern"]
        if pattern["source"] == ["aws.codebuild"]:
            assert "EventBusName" not in p  # CodeBuild publishes on the default bus
            assert pattern["detail-type"] == ["CodeBuild Build State Change"]
            # Only the ends after which ferry-build may not have posted (never SUCCEEDED).
            assert sorted(pattern["detail"]["build-status"]) == sorted(rust_str_array("CAUGHT_STATUSES"))
            assert "SUCCEEDED" not in pattern["detail"]["build-status"]
            assert refs(pattern["detail"]["project-name"]) == {"BuildProject"}
            assert queue == "BuildCompletedQueue"
        elif pattern["source"] == [rust_const("BUILD_SOURCE")]:
            assert p["EventBusName"] == {"Ref": "FerryBus"}
            assert pattern["detail-type"] == ["build.completed"]
            assert queue == "BuildCompletedQueue"
        else:
            assert p["EventBusName"] == {"Ref": "FerryBus"}
            assert pattern["source"] == ["ferry"]
            (dt,) = pattern["detail-type"]
            assert wanted.pop(dt) == queue
        (policy,) = [q for q in policies.values() if refs(q["Properties"]["Queues"]) == {queue}]
        allows = [
            s
            for s in as_list(policy["Properties"]["PolicyDocument"]["Statement"])
            if s.get("Principal") == {"Service": "events.amazonaws.com"}
        ]
        assert len(allows) == 1 and allows[0]["Action"] == "sqs:SendMessage"
        assert rule_name in refs(allows[0]["Condition"]["ArnEquals"]["aws:SourceArn"])
        # Only rules that target this queue may send to it.
        feeding = {n for n, r in rules.items()
                   if queue_of_arn(r["Properties"]["Targets"][0]["Arn"]) == queue}
        assert refs(allows[0]["Condition"]["ArnEquals"]["aws:SourceArn"]) == feeding
    assert not wanted, f"no rule for {wanted}"


def test_table_matches_the_aws_design_and_has_pitr_ttl_sse(vendor):
    (table,) = resources(vendor, "AWS::DynamoDB::Table").values()
    p = table["Properties"]
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert p["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert [k["AttributeName"] for k in p["KeySchema"]] == ["pk", "sk"]
    gsis = {g["IndexName"]: [k["AttributeName"] for k in g["KeySchema"]] for g in p["GlobalSecondaryIndexes"]}
    assert gsis == {"gsi1": ["gsi1pk", "gsi1sk"], "gsi2": ["gsi2pk", "gsi2sk"], "gsi3": ["gsi3pk", "gsi3sk"]}
    if AWS_DESIGN.exists():
        design = AWS_DESIGN.read_text()
        for name in ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "gsi3pk", "gsi3sk", "gsi1", "gsi2", "gsi3", "ttl"]:
            assert f"`{name}`" in design, f"{name} is not in docs/design/aws.md"
        assert "**TTL attribute**" in design and "| `ttl` |" in design


def policy_of(t: dict, role: str) -> list[dict]:
    out = []
    for name, r in t["Resources"].items():
        props = r.get("Properties", {})
        if r["Type"] == "AWS::IAM::Policy" and refs(props["Roles"]) == {role}:
            out += as_list(props["PolicyDocument"]["Statement"])
        if name == role:
            for p in props.get("Policies", []):
                out += as_list(p["PolicyDocument"]["Statement"])
    return out


def test_function_roles_are_separate_and_narrow(vendor):
    roles = {refs(f["Properties"]["Role"]).pop() for f in functions(vendor).values()}
    assert len(roles) == len(FUNCTIONS)
    for role in roles:
        sts = policy_of(vendor, role)
        actions = {a for s in sts for a in as_list(s["Action"])}
        if role == "BuildRequestedRole":
            assert "codebuild:StartBuild" in actions
        else:
            assert "codebuild:StartBuild" not in actions, role
        minting = role in ("SyncRequestedRole", "SyncReportedRole", "ReconcileRole")
        assert ("sts:AssumeRole" in actions) == minting, role
        for s in sts:
            if "sts:AssumeRole" in as_list(s["Action"]):
                assert refs(s["Resource"]) == {"PullRole"}
            if "sqs:SendMessage" in as_list(s["Action"]):
                if refs(s["Resource"]) == {"ReleaseQueue"}:
                    assert role in ("SyncRequestedRole", "SyncReportedRole", "ReleaseRole",
                                    "ReconcileRole"), role
                else:
                    assert s["Resource"]["Fn::Sub"].endswith(":${NamePrefix}-install-*"), role
        assert not any(a.startswith(("ecr:", "iam:", "s3:")) for a in actions), role


def test_pull_role_trusts_only_minting_functions_and_only_reads(vendor):
    role = resources(vendor)["PullRole"]["Properties"]
    assert role["MaxSessionDuration"] == 3600
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert refs(trust["Principal"]) == {"SyncRequestedRole", "SyncReportedRole", "ReconcileRole"}
    for s in policy_of(vendor, "PullRole"):
        for a in as_list(s["Action"]):
            assert not is_write(a), a
        if s["Resource"] != "*":
            assert s["Resource"]["Fn::Sub"].endswith(":repository/${RepositoryPrefix}/*")


def test_codebuild_pushes_only_under_the_repository_prefix_with_the_buildspec(vendor):
    project = resources(vendor)["BuildProject"]["Properties"]
    assert project["Source"]["BuildSpec"] == "buildspec.yml"
    assert project["Environment"]["Type"] == "ARM_CONTAINER"
    assert project["LogsConfig"]["CloudWatchLogs"]["Status"] == "ENABLED"
    for s in policy_of(vendor, "BuildRole"):
        if any(a.startswith("ecr:") and is_write(a) for a in as_list(s["Action"])):
            assert s["Resource"]["Fn::Sub"].endswith(":repository/${RepositoryPrefix}/*")


def test_install_queues_are_granted_to_registration_by_name_prefix(vendor):
    (s,) = [
        s
        for s in resources(vendor)["RegistrationPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if "sqs:CreateQueue" in as_list(s["Action"])
    ]
    assert {"sqs:SetQueueAttributes", "sqs:GetQueueUrl"} <= set(s["Action"])
    assert s["Resource"]["Fn::Sub"].endswith(":${NamePrefix}-install-*")
    assert not any(isinstance(q["Properties"].get("QueueName"), dict) and "install" in str(q["Properties"]["QueueName"])
                   for q in resources(vendor, "AWS::SQS::Queue").values())


def test_registration_can_remove_installs_and_read_dead_letters(vendor):
    statements = resources(vendor)["RegistrationPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    actions = {a for s in statements for a in as_list(s["Action"])}
    # put_install deletes dropped subscriptions; `ferry install remove` deletes the install.
    assert {"dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:Query", "sqs:DeleteQueue"} <= actions
    (dlq,) = [s for s in statements if s.get("Sid") == "DeadLetters"]
    assert dlq["Resource"]["Fn::Sub"].endswith(":${NamePrefix}-*")


def test_reports_are_admitted_by_signature_not_by_account(vendor):
    assert "AgentAccountIds" not in vendor.get("Parameters", {})
    policy = resources(vendor)["SyncReportedQueuePolicy"]["Properties"]["PolicyDocument"]
    (agents,) = [s for s in as_list(policy["Statement"]) if s.get("Sid") == "InstallAgentsReport"]
    # Any account's agent role, but only to send, and only roles of the agent name pattern.
    assert agents["Principal"] == {"AWS": "*"}
    assert agents["Action"] == "sqs:SendMessage"
    assert "aws:PrincipalArn" in agents["Condition"]["ArnLike"]


def test_outputs_give_customers_and_functions_what_they_need(vendor):
    for out in ["EventBusName", "EventBusArn", "JobTableName", "ReportQueueArn", "ReportQueueUrl",
                "PullRoleArn", "VendorAccountId", "VendorRegistry", "BuildRequestedQueueUrl",
                "VendorKeySecretArn", "ReleaseQueueUrl"]:
        assert out in vendor["Outputs"], out


def test_sam_transform_yields_sqs_mappings_with_partial_batch_failures(monkeypatch):
    from samtranslator.translator.transform import transform

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # offline: only names ARNs

    class NoManagedPolicies:
        def load(self):
            return {}

    template = load(VENDOR)
    for fn in functions(template).values():  # what `sam build` + `sam package` do to CodeUri
        fn["Properties"]["CodeUri"] = f"s3://bucket/{fn['Properties']['CodeUri']}.zip"
    out = transform(json.loads(json.dumps(template)), {"AWS::Region": "eu-west-1"}, NoManagedPolicies())
    mappings = [r for r in out["Resources"].values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert len(mappings) == len(SQS_FUNCTIONS)
    for m in mappings:
        assert m["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert m["Properties"]["BatchSize"] == 10
    lambdas = [r for r in out["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    assert len(lambdas) == len(FUNCTIONS)
    assert all(fn["Properties"]["Architectures"] == ["arm64"] for fn in lambdas)
    # Explicit roles: SAM generated none (so no managed policy with Resource "*").
    assert not [r for r in out["Resources"] if r.endswith("FunctionRole")]


# ------------------------------------------------------------------------- customer stack


def test_vendor_has_no_write_access_into_the_customer_account(customer):
    assert vendor_writes(customer) == []
    # Trust: only ECS tasks of this account assume the stack's roles.
    for name, r in resources(customer, "AWS::IAM::Role").items():
        for s in r["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
            assert s["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}, name


def test_the_vendor_write_check_can_fail(customer):
    bad = copy.deepcopy(customer)
    repo = bad["Resources"]["InstallRepository"]["Properties"]["RepositoryPolicyText"]
    repo["Statement"].append(
        {
            "Effect": "Allow",
            "Principal": {"AWS": {"Fn::Sub": "arn:aws:iam::${VendorAccountId}:root"}},
            "Action": ["ecr:PutImage"],
        }
    )
    assert vendor_writes(bad) == ["InstallRepository/repository: ['ecr:PutImage']"]


def test_agent_role_writes_only_its_repositories_and_uses_only_its_queues(customer):
    sts = policy_of(customer, "AgentRole")
    by_sid = {s["Sid"]: s for s in sts}
    # The install queue is derived from the vendor's outputs and the install id.
    arn, values = by_sid["ReceiveJobs"]["Resource"]["Fn::Sub"]
    assert arn.endswith(":sqs:${VendorRegion}:${VendorAccountId}:${InstallQueuePrefix}${InstallId}")
    assert values["VendorRegion"] == {"Fn::Select": [3, {"Fn::Split": [":", {"Ref": "ReportQueueArn"}]}]}
    assert set(by_sid["ReceiveJobs"]["Action"]) == {
        "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"}
    assert by_sid["SendReports"]["Resource"] == {"Ref": "ReportQueueArn"}
    assert by_sid["SendReports"]["Action"] == "sqs:SendMessage"
    for sid in ("ReceiveJobs", "SendReports"):
        assert by_sid[sid]["Condition"]["StringEquals"]["aws:ResourceAccount"] == {"Ref": "VendorAccountId"}
    writes = by_sid["WriteInstallRepositories"]
    assert writes["Resource"]["Fn::Sub"].endswith(":repository/${RepositoryNamespace}/*")
    assert by_sid["ReadOwnKey"]["Resource"] == {"Ref": "AgentKeySecret"}
    for s in sts:
        if s["Effect"] == "Deny":
            continue
        for a in as_list(s["Action"]):
            if is_write(a) and not a.startswith(("logs:",)):
                assert s["Sid"] in ("WriteInstallRepositories", "ReceiveJobs", "SendReports"), (s["Sid"], a)


def test_repository_immutable_scanned_only_agent_pushes_and_lifecycle_keeps_in_use(customer):
    p = resources(customer)["InstallRepository"]["Properties"]
    assert p["ImageTagMutability"] == "IMMUTABLE"
    assert p["ImageScanningConfiguration"] == {"ScanOnPush": True}
    stmts = {}
    for st in p["RepositoryPolicyText"]["Statement"]:
        if "Fn::If" in st:  # the deployers' statement, present only when some are named
            cond, st, absent = st["Fn::If"]
            assert cond == "HasDeployers" and absent == {"Ref": "AWS::NoValue"}
            assert st["Principal"] == {"AWS": {"Ref": "DeployerRoleArns"}}
            assert st["Action"] == ["ecr:PutImage", "ecr:BatchGetImage", "ecr:DescribeImages"]
        stmts[st["Sid"]] = st
    deny = stmts["OnlyTheAgentPushes"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert {"ecr:CompleteLayerUpload", "ecr:UploadLayerPart", "ecr:BatchDeleteImage"} <= set(deny["Action"])
    assert refs(deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]) == {"AgentRole"}
    # Tags (PutImage): the agent, and the deployer roles only when some are named.
    tag = stmts["OnlyTheAgentAndDeployersTag"]
    assert tag["Effect"] == "Deny" and tag["Principal"] == "*" and tag["Action"] == "ecr:PutImage"
    cond, with_deployers, agent_only = tag["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]["Fn::If"]
    assert cond == "HasDeployers"
    assert refs(with_deployers) == {"AgentRole", "DeployerRoleArns"}
    assert refs(agent_only) == {"AgentRole"}
    pulls = stmts["InstallComputePulls"]
    assert pulls["Principal"] == {"AWS": {"Ref": "PullPrincipalArns"}}
    assert not [a for a in pulls["Action"] if is_write(a)]
    text = p["LifecyclePolicy"]["LifecyclePolicyText"]["Fn::Sub"].replace("${KeepLastVersions}", "7")
    rules = sorted(json.loads(text)["rules"], key=lambda r: r["rulePriority"])
    assert rules[0]["selection"]["tagPrefixList"] == ["in-use-"]
    assert rules[1]["selection"]["countNumber"] == 7
    assert all(r["selection"]["tagStatus"] == "tagged" for r in rules)


def test_secret_readable_only_by_the_agent_role(customer):
    pol = resources(customer)["AgentKeySecretPolicy"]["Properties"]["ResourcePolicy"]
    (deny,) = pol["Statement"]
    assert deny["Effect"] == "Deny" and deny["Action"] == "secretsmanager:GetSecretValue"
    assert refs(deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]) == {"AgentRole"}
    for s in policy_of(customer, "ExecutionRole"):
        assert not any(a.startswith("secretsmanager:") for a in as_list(s["Action"]))


def test_runtime_is_fargate_with_no_inbound_and_retained_logs(customer):
    r = resources(customer)
    sg = r["AgentSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in sg
    assert [e["FromPort"] for e in sg["SecurityGroupEgress"]] == [443]
    td = r["TaskDefinition"]["Properties"]
    assert td["RequiresCompatibilities"] == ["FARGATE"] and td["NetworkMode"] == "awsvpc"
    assert td["RuntimePlatform"]["CpuArchitecture"] == {"Ref": "CpuArchitecture"}
    (c,) = td["ContainerDefinitions"]
    assert c["Command"][:2] == ["run", "--queue"]
    assert r["AgentLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_service_starts_at_zero_tasks_with_the_circuit_breaker_on(customer):
    """The first create has no deployment to wait for (no key yet); one update with
    AgentTaskCount=1 starts the agent; a failing deployment rolls back instead of retrying."""
    svc = resources(customer)["Service"]["Properties"]
    assert svc["DesiredCount"] == {"Ref": "AgentTaskCount"}
    count = customer["Parameters"]["AgentTaskCount"]
    assert count["Default"] == 0 and count["AllowedValues"] == [0, 1]
    dc = svc["DeploymentConfiguration"]
    assert dc["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    assert dc["MaximumPercent"] == 100  # never two agents of one install at once


def test_queue_url_and_queue_arn_come_from_the_same_derivation(customer):
    (c,) = resources(customer)["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    url, values = c["Command"][2]["Fn::Sub"]
    assert url.endswith("/${VendorAccountId}/${InstallQueuePrefix}${InstallId}")
    arn, arn_values = [s for s in policy_of(customer, "AgentRole") if s["Sid"] == "ReceiveJobs"][0]["Resource"]["Fn::Sub"]
    assert values == arn_values
    out, out_values = customer["Outputs"]["InboundQueueArn"]["Value"]["Fn::Sub"]
    assert (out, out_values) == (arn, arn_values)
    assert "InboundQueueArn" not in customer["Parameters"]
    # The queue name needs [A-Za-z0-9_-]: the install id pattern must not allow more.
    assert "." not in customer["Parameters"]["InstallId"]["AllowedPattern"]


def test_the_agent_cannot_write_the_repository_it_boots_from(customer):
    params = customer["Parameters"]
    assert "/" not in params["AgentImageRepository"]["AllowedPattern"].replace("^[a-z0-9]", "")
    pull = [s for s in policy_of(customer, "ExecutionRole") if s["Sid"] == "PullAgentImage"][0]
    assert pull["Resource"]["Fn::Sub"].endswith(":repository/${AgentImageRepository}")
    sts = {s["Sid"]: s for s in policy_of(customer, "AgentRole")}
    # Writes are only under <namespace>/ (a name with a "/"), which the image repository is not.
    assert sts["WriteInstallRepositories"]["Resource"]["Fn::Sub"].endswith(":repository/${RepositoryNamespace}/*")
    deny = sts["NeverWriteTheAgentImage"]
    assert deny["Effect"] == "Deny"
    assert deny["Resource"]["Fn::Sub"].endswith(":repository/${AgentImageRepository}")
    assert {"ecr:PutImage", "ecr:CompleteLayerUpload", "ecr:SetRepositoryPolicy"} <= set(deny["Action"])
    # The image is pinned by digest.
    assert params["AgentImage"]["AllowedPattern"].endswith("@sha256:[0-9a-f]{64}$")


def _resolve(x, ctx: dict):
    """Evaluates the few intrinsics the customer stack's policies use, for one set of
    parameter values (ctx: name -> value; lists for list parameters)."""
    if isinstance(x, list):
        out = []
        for v in x:
            r = _resolve(v, ctx)
            if r is not _NO_VALUE:
                out.append(r)
        return out
    if not isinstance(x, dict):
        return x
    if len(x) == 1:
        (k, v), = x.items()
        if k == "Ref":
            return _NO_VALUE if v == "AWS::NoValue" else ctx[v]
        if k == "Fn::GetAtt":
            return ctx[".".join(v) if isinstance(v, list) else v]
        if k == "Fn::If":
            return _resolve(v[1] if ctx[v[0]] else v[2], ctx)
        if k == "Fn::Join":
            return v[0].join(_resolve(v[1], ctx))
        if k == "Fn::Split":
            return _resolve(v[1], ctx).split(v[0])
        if k == "Fn::Sub":
            text, values = (v, {}) if isinstance(v, str) else (v[0], v[1])
            local = dict(ctx, **{n: _resolve(val, ctx) for n, val in values.items()})
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(local[m.group(1)]), text)
    return {k: _resolve(v, ctx) for k, v in x.items()}


_NO_VALUE = object()


@pytest.mark.parametrize("deployers", [[], ["arn:aws:iam::111122223333:role/deploy", "arn:aws:iam::111122223333:role/ci"]])
def test_the_agent_applies_exactly_the_stack_repository_protections(customer, deployers):
    """One policy, two spellings: InstallRepository's (YAML) and the JSON the agent applies
    to every repository it creates (FERRY_REPOSITORY_POLICY). They must say the same."""
    ctx = {
        "PullPrincipalArns": ["arn:aws:iam::111122223333:role/app-task", "arn:aws:iam::111122223333:role/node"],
        "DeployerRoleArns": deployers or [""],
        "HasDeployers": bool(deployers),
        "AgentRole.Arn": "arn:aws:iam::111122223333:role/ferry-agent-acme",
        "KeepLastVersions": 7,
        "AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "111122223333",
    }
    repo = resources(customer)["InstallRepository"]["Properties"]
    (c,) = resources(customer)["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in c["Environment"]}
    stack_policy = _resolve(repo["RepositoryPolicyText"], ctx)
    agent_policy = json.loads(_resolve(env["FERRY_REPOSITORY_POLICY"], ctx))
    assert agent_policy == stack_policy
    sids = [s["Sid"] for s in agent_policy["Statement"]]
    assert ("DeployersTagInUse" in sids) == bool(deployers)
    assert json.loads(_resolve(env["FERRY_LIFECYCLE_POLICY"], ctx)) == json.loads(
        _resolve(repo["LifecyclePolicy"]["LifecyclePolicyText"], ctx))
    # The check can fail: a policy that drops the deny differs.
    broken = copy.deepcopy(agent_policy)
    broken["Statement"].pop(1)
    assert broken != stack_policy
    assert env["FERRY_VENDOR_REPOSITORY_PREFIX"] == {"Ref": "VendorRepositoryPrefix"}
    assert env["FERRY_INSTALL_NAMESPACE"] == {"Ref": "RepositoryNamespace"}


def test_agent_role_may_give_its_repositories_their_protections(customer):
    writes = {s["Sid"]: s for s in policy_of(customer, "AgentRole")}["WriteInstallRepositories"]
    assert {"ecr:CreateRepository", "ecr:SetRepositoryPolicy", "ecr:PutLifecyclePolicy"} <= set(writes["Action"])


# ------------------------------------------------------------------------- buildspec


BUILDER_RS = ROOT / "crates/ferry-aws/src/builder.rs"
FERRY_BUILD_RS = ROOT / "crates/ferry-build/src/bin/ferry-build.rs"


def rust_const(name: str, path: Path = BUILDER_RS) -> str:
    """The value of `pub const NAME: &str = "…";` in a Rust file (one definition of a name)."""
    m = re.search(rf'pub const {name}: &str = "([^"]+)";', path.read_text())
    assert m, f"no const {name} in {path}"
    return m.group(1)


def rust_str_array(name: str, path: Path = BUILDER_RS) -> list[str]:
    m = re.search(rf"pub const {name}: \[&str; \d+\] = \[([^\]]*)\];", path.read_text())
    assert m, f"no const {name} in {path}"
    return re.findall(r'"([^"]+)"', m.group(1))


def overrides() -> set[str]:
    """The environment overrides build-requested sets on every build (ferry-aws OVERRIDES)."""
    m = re.search(r"pub const OVERRIDES: \[&str; \d+\] = \[([^\]]*)\];", BUILDER_RS.read_text())
    assert m
    return {rust_const(n.strip()) for n in m.group(1).split(",") if n.strip()}


def test_buildspec_runs_ferry_build_which_posts_the_result():
    spec = yaml.safe_load(BUILDSPEC.read_text())
    assert str(spec["version"]) == "0.2"
    # Nothing rests on CodeBuild's exported variables any more.
    assert "exported-variables" not in spec["env"]
    build = spec["phases"]["build"]["commands"]
    # ferry-build is the last command, so a build whose result was posted cannot fail after.
    assert build[-1].startswith("bin/ferry-build")
    assert "FERRY_EVENT_BUS:?" in "\n".join(build)
    assert "FERRY_REGISTRY_PASSWORD" not in spec["env"].get("variables", {})
    assert "post-build" not in spec["phases"] and "post_build" not in spec["phases"]


def test_buildspec_and_template_agree_on_names(vendor):
    """Every FERRY_* variable the buildspec or ferry-build reads is set: by the project, by
    build-requested's overrides, or by the buildspec itself; and what ferry-build posts
    (bus, source, detail-type) is exactly what the rule, the build role and the bus policy
    name."""
    spec = yaml.safe_load(BUILDSPEC.read_text())
    text = "\n".join(
        c for phase in spec["phases"].values() for c in phase.get("commands", [])
    )
    project = resources(vendor)["BuildProject"]["Properties"]
    project_vars = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    exported = set(re.findall(r"(?:^|\s)(FERRY_[A-Z_]+)=", text, re.M))
    provided = set(project_vars) | overrides() | exported
    read = set(re.findall(r'\$\{?(FERRY_[A-Z_]+)', text)) | set(
        re.findall(r'os\.environ\["(FERRY_[A-Z_]+)"\]', text))
    assert read, "the buildspec reads FERRY_* variables"
    assert read <= provided, f"read but never set: {read - provided}"
    # ferry-build's own inputs: each one it needs is provided; the others are optional.
    optional = {"FERRY_WORK_DIR", "FERRY_INSECURE"}
    bin_vars = set(re.findall(r'env = "(FERRY_[A-Z_]+)"', FERRY_BUILD_RS.read_text()))
    assert {"FERRY_BUILD_ID", "FERRY_COMPONENT", "FERRY_EVENT_BUS"} <= bin_vars
    assert bin_vars - optional <= provided, f"ferry-build reads, nobody sets: {bin_vars - optional - provided}"
    # The bus ferry-build posts to is the Ferry bus.
    assert project_vars["FERRY_EVENT_BUS"] == {"Ref": "FerryBus"}
    assert rust_const("BUS_ENV", ROOT / "crates/ferry-aws/src/bus.rs") == "FERRY_EVENT_BUS"
    source = rust_const("BUILD_SOURCE")
    # The build role may put only that source and type, on that bus.
    (post,) = [s for s in policy_of(vendor, "BuildRole") if "events:PutEvents" in as_list(s["Action"])]
    assert refs(post["Resource"]) == {"FerryBus"}
    assert post["Condition"]["StringEquals"] == {
        "events:source": source, "events:detail-type": "build.completed"}
    # Nobody else may put that source: the bus policy denies it to every other principal.
    (bus_policy,) = resources(vendor, "AWS::Events::EventBusPolicy").values()
    st = bus_policy["Properties"]["Statement"]
    assert refs(bus_policy["Properties"]["EventBusName"]) == {"FerryBus"}
    assert st["Effect"] == "Deny" and st["Principal"] == "*" and st["Action"] == "events:PutEvents"
    assert st["Condition"]["StringEquals"] == {"events:source": source}
    assert refs(st["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]) == {"BuildRole"}
    # The functions publish under Ferry's own source, never the builder's.
    assert rust_const("SOURCE", ROOT / "crates/ferry-aws/src/bus.rs") != source
    # The handler names the same overrides the buildspec header documents.
    header = BUILDSPEC.read_text().split("version:")[0]
    for name in overrides() | set(project_vars):
        assert name in header, f"{name} is not documented in the buildspec header"


def test_buildspec_and_template_agree_on_docker_builds(vendor):
    """docker-build components need buildah in the build container and privileged mode for its
    chroot isolation: the buildspec installs the tool ferry-build runs, for the kind name
    ferry-core gives docker-build components, and the project is privileged."""
    spec = yaml.safe_load(BUILDSPEC.read_text())
    install = "\n".join(spec["phases"]["install"]["commands"])
    tool = re.search(r'const BUILDAH: &str = "([^"]+)"',
                     (ROOT / "crates/ferry-build/src/docker.rs").read_text()).group(1)
    kind = re.search(r'ComponentKind::DockerBuild \{ \.\. \} => "([^"]+)"',
                     (ROOT / "crates/ferry-core/src/domain.rs").read_text()).group(1)
    assert f"install -y -q {tool}" in install and f"command -v {tool}" in install
    assert f'"$FERRY_KIND" = {kind}' in install
    assert "FERRY_COMPONENT" in install  # the kind comes from the build's own component
    project = resources(vendor)["BuildProject"]["Properties"]
    assert project["Environment"]["PrivilegedMode"] is True
    # The overrides build-requested sets include the component the buildspec reads.
    overrides = re.findall(r'pub const ENV_COMPONENT: &str = "([^"]+)"',
                           (ROOT / "crates/ferry-aws/src/builder.rs").read_text())
    assert overrides == ["FERRY_COMPONENT"]


# ------------------------------------------------------------------------- moto


@pytest.fixture(scope="module")
def moto():
    binary = os.environ.get("MOTO_SERVER", "moto_server")
    if not shutil.which(binary):
        pytest.fail(f"{binary} not found: pip install 'moto[server]'")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    ready = threading.Event()

    def watch():
        for line in proc.stderr:
            if "Running on" in line:
                ready.set()
        ready.set()  # the process ended: stop waiting

    threading.Thread(target=watch, daemon=True).start()
    if not ready.wait(60) or proc.poll() is not None:
        proc.kill()
        pytest.fail("moto_server did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # a loaded machine: do not fail the suite on shutdown
        proc.kill()
        proc.wait(10)


def policy_doc(doc):
    """A policy document from IAM: boto3 decodes JSON; moto's CloudFormation stores inline
    policies as a Python repr, which boto3 then hands back as a string."""
    if not isinstance(doc, str):
        return doc
    try:
        return json.loads(doc)
    except json.JSONDecodeError:
        return ast.literal_eval(doc)


def test_customer_stack_in_moto_cloudformation(moto):
    import boto3

    kw = dict(endpoint_url=moto, region_name="eu-west-1",
              aws_access_key_id="testing", aws_secret_access_key="testing")
    ec2, sqs, cf = (boto3.client(n, **kw) for n in ("ec2", "sqs", "cloudformation"))
    ecr, iam, ecs = (boto3.client(n, **kw) for n in ("ecr", "iam", "ecs"))
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    # The vendor's side (one moto account plays both): the install queue and the report queue.
    def arn(name):
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    inbound, report = arn("ferry-install-acme"), arn("ferry-sync-reported")
    deployer = "arn:aws:iam::123456789012:role/deployer"
    vendor_account = inbound.split(":")[4]
    params = {
        "InstallId": "acme", "VendorAccountId": vendor_account,
        "VendorRegistry": f"{vendor_account}.dkr.ecr.eu-west-1.amazonaws.com",
        "VendorPublicKey": "ferry-vendor-ed25519:" + "A" * 43,
        "InstallQueuePrefix": "ferry-install-", "ReportQueueArn": report,
        "DeployerRoleArns": deployer,
        "PullPrincipalArns": f"arn:aws:iam::{vendor_account}:role/app-task",
        "AgentImage": f"{vendor_account}.dkr.ecr.eu-west-1.amazonaws.com/ferry-agent@sha256:" + "a" * 64,
        "CpuArchitecture": "ARM64", "VpcId": vpc, "SubnetIds": subnet, "AgentPublicKey": "age1publickey",
    }
    cf.create_stack(
        StackName="ferry-agent-acme", TemplateBody=CUSTOMER.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    stack = cf.describe_stacks(StackName="ferry-agent-acme")["Stacks"][0]
    # Created with no key set: the secret holds its random placeholder, no task runs.
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["InboundQueueArn"] == inbound
    # (moto's CloudFormation does not create the key secret; its placeholder is checked
    # statically: GenerateSecretString, and no task runs until AgentTaskCount is 1.)

    (repo,) = ecr.describe_repositories(repositoryNames=["ferry/app"])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    # Scan on push is checked statically (test_repository_immutable_...): moto stores the
    # CloudFormation spelling ScanOnPush, which its ECR responses then drop.
    assert outputs["RepositoryUri"] == repo["repositoryUri"]


    role = iam.get_role(RoleName="ferry-agent-acme")["Role"]
    assert outputs["AgentRoleArn"] == role["Arn"]
    trust = role["AssumeRolePolicyDocument"]
    trust = policy_doc(trust)
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ecs-tasks.amazonaws.com"}]
    doc = iam.get_role_policy(RoleName="ferry-agent-acme", PolicyName="ferry-agent")["PolicyDocument"]
    doc = policy_doc(doc)
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["ReceiveJobs"]["Resource"] == inbound
    assert by_sid["SendReports"]["Resource"] == report
    assert by_sid["ReceiveJobs"]["Condition"]["StringEquals"]["aws:ResourceAccount"] == vendor_account
    assert by_sid["WriteInstallRepositories"]["Resource"].endswith(":repository/ferry/*")
    assert not [a for s in doc["Statement"] for a in as_list(s["Action"]) if a.startswith("iam:")]

    (svc,) = ecs.describe_services(cluster="ferry-agent-acme", services=["ferry-agent"])["services"]
    # moto's CloudFormation drops LaunchType and NetworkConfiguration of a service (checked
    # statically); it keeps the service, its count and its task definition.
    assert svc["status"] == "ACTIVE" and svc["desiredCount"] == 0
    td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
    # moto's CloudFormation also drops the task role, network mode and Fargate compatibility
    # (checked statically); it keeps the container.
    assert td["family"] == "ferry-agent-acme"
    (container,) = td["containerDefinitions"]
    queue_url = sqs.get_queue_url(QueueName="ferry-install-acme")["QueueUrl"]
    # The protections the agent applies to every repository it creates, as moto's
    # CloudFormation rendered them (moto does not put RepositoryPolicyText on the stack's own
    # repository; the two spellings are compared statically above).
    env0 = {e["name"]: e.get("value") for e in container["environment"]}
    policy = json.loads(env0["FERRY_REPOSITORY_POLICY"])
    by_sid = {st["Sid"]: st for st in policy["Statement"]}
    assert by_sid["OnlyTheAgentPushes"]["Effect"] == "Deny"
    assert by_sid["OnlyTheAgentPushes"]["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == outputs["AgentRoleArn"]
    assert by_sid["DeployersTagInUse"]["Principal"] == {"AWS": [deployer]}
    assert sorted(by_sid["OnlyTheAgentAndDeployersTag"]["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]) == sorted(
        [outputs["AgentRoleArn"], deployer])
    assert by_sid["InstallComputePulls"]["Principal"] == {"AWS": [f"arn:aws:iam::{vendor_account}:role/app-task"]}
    assert json.loads(env0["FERRY_LIFECYCLE_POLICY"])["rules"][0]["selection"]["tagPrefixList"] == ["in-use-"]
    assert env0["FERRY_VENDOR_REPOSITORY_PREFIX"] == "ferry"
    assert container["command"][:2] == ["run", "--queue"]
    assert container["command"][2].endswith(f"/{vendor_account}/ferry-install-acme")
    assert container["command"][2].split("/")[-2:] == queue_url.split("/")[-2:]
    env = {e["name"]: e.get("value") for e in container["environment"]}
    assert env["FERRY_INSTALL"] == "acme" and env["FERRY_REPORT_QUEUE"].endswith("/ferry-sync-reported")
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/ferry/agent/acme"
    assert container["readonlyRootFilesystem"] is True

    cf.delete_stack(StackName="ferry-agent-acme")
    assert ecr.describe_repositories()["repositories"] == []
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName="ferry-agent-acme")


def test_security_events_are_counted_and_alarmed(vendor):
    """Refused reports (docs/design/trust.md) are logged with security_event by sync-reported;
    a metric filter on its log group counts them and an alarm fires on the first."""
    filters = resources(vendor, "AWS::Logs::MetricFilter")
    (f,) = [f for f in filters.values() if "security_event" in f["Properties"]["FilterPattern"]]
    assert refs(f["Properties"]["LogGroupName"]) == {"SyncReportedLogGroup"}
    metric = f["Properties"]["MetricTransformations"][0]
    alarms = [a["Properties"] for a in resources(vendor, "AWS::CloudWatch::Alarm").values()
              if a["Properties"]["MetricName"] == metric["MetricName"]]
    assert len(alarms) == 1
    assert alarms[0]["Namespace"] == metric["MetricNamespace"]
    assert alarms[0]["Threshold"] == 0 and alarms[0]["ComparisonOperator"] == "GreaterThanThreshold"


def test_only_the_ims_functions_read_the_vendor_key(vendor):
    """The vendor key signs jobs and keys sync ids: the IMS function roles (and the reconciler,
    which re-sends job messages) may read it, and nothing else."""
    readers = []
    for name, where, st in statements(vendor):
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if st["Effect"] == "Allow" and "secretsmanager:GetSecretValue" in actions:
            if refs(st["Resource"]) >= {"SourceSecretPrefix"}:
                continue  # the source credentials: test_only_the_build_role_reads_source_credentials
            assert refs(st["Resource"]) == {"VendorKeySecret"}, (name, st)
            readers.append(name)
    assert sorted(readers) == sorted(f"{f}Policy" for f in
                                     ["BuildRequested", "BuildCompleted", "SyncRequested", "SyncReported",
                                      "Release", "Reconcile"])


def test_only_the_build_role_reads_source_credentials(vendor):
    """The credentials components name for their private sources live under
    SourceSecretPrefix: the build role reads them (ferry-build), scoped to that prefix and to
    GetSecretValue; no other role may read a secret but the vendor key."""
    readers = []
    for name, _where, st in statements(vendor):
        actions = as_list(st["Action"]) if "Action" in st else []
        if st["Effect"] != "Allow" or not any(a.startswith("secretsmanager:") for a in actions):
            continue
        if refs(st["Resource"]) == {"VendorKeySecret"}:
            continue
        readers.append(name)
        assert actions == ["secretsmanager:GetSecretValue"], st
        res = st["Resource"]["Fn::Sub"]
        assert res.endswith(":secret:${SourceSecretPrefix}*"), res
    assert readers == ["BuildRole"]
    env = {e["Name"]: e["Value"] for e in
           resources(vendor)["BuildProject"]["Properties"]["Environment"]["EnvironmentVariables"]}
    assert env["FERRY_SOURCE_SECRET_PREFIX"] == {"Ref": "SourceSecretPrefix"}
    assert vendor["Parameters"]["SourceSecretPrefix"]["Default"] == "ferry/sources/"


def test_release_queue_is_fed_by_the_functions_and_the_operator_only(vendor):
    """release.step and release.synced reach the release queue by SendMessage from the sync
    functions, the release function itself and the operator (`ferry release create|resume`);
    no rule routes there, no principal outside the account may send, and only the release
    function drains it."""
    q = resources(vendor)["ReleaseQueue"]["Properties"]
    assert q["QueueName"] == {"Fn::Sub": "${NamePrefix}-release"}
    assert q["SqsManagedSseEnabled"] is True
    assert refs(q["RedrivePolicy"]["deadLetterTargetArn"]) == {"ReleaseDlq"}
    for rule in resources(vendor, "AWS::Events::Rule").values():
        assert refs(rule["Properties"]["Targets"]) != {"ReleaseQueue"}
    (policy,) = [p for p in resources(vendor, "AWS::SQS::QueuePolicy").values()
                 if refs(p["Properties"]["Queues"]) == {"ReleaseQueue"}]
    assert [s["Effect"] for s in as_list(policy["Properties"]["PolicyDocument"]["Statement"])] == ["Deny"]
    senders, consumers = set(), set()
    for name, _where, st in statements(vendor):
        if st["Effect"] != "Allow" or refs(st.get("Resource", "")) != {"ReleaseQueue"}:
            continue
        actions = set(as_list(st["Action"]))
        if "sqs:SendMessage" in actions:
            senders.add(name)
        if "sqs:ReceiveMessage" in actions:
            consumers.add(name)
    assert senders == {"SyncRequestedPolicy", "SyncReportedPolicy", "ReleasePolicy",
                       "ReconcilePolicy", "RegistrationPolicy"}
    assert consumers == {"ReleasePolicy"}
    # Exactly the senders among the functions know the queue's URL.
    for name in functions(vendor):
        env = function_props(vendor, name)["Environment"]["Variables"]
        has = "FERRY_RELEASE_QUEUE_URL" in env
        assert has == (name in RELEASE_SENDERS), name
        if has:
            assert env["FERRY_RELEASE_QUEUE_URL"] == {"Ref": "ReleaseQueue"}


def test_the_release_function_mints_nothing_and_builds_nothing(vendor):
    actions = {a for s in policy_of(vendor, "ReleaseRole") for a in as_list(s["Action"])}
    assert actions == {
        "logs:CreateLogStream", "logs:PutLogEvents", "secretsmanager:GetSecretValue",
        "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes", "sqs:SendMessage", "dynamodb:GetItem", "dynamodb:PutItem",
        "dynamodb:Query", "events:PutEvents", "dynamodb:BatchGetItem",
    }
