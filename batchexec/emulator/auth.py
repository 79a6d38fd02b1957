"""IAM enforcement in the emulator: make moto check every request against IAM policies.

By default moto lets any credentials do anything. For tests that must show what a principal
can NOT do (one stack's job role against another stack's queues), the emulator can turn
moto's enforcement on. Before that, `create_admin` makes an IAM user allowed everything, whose
keys the caller then uses for setup; after it, the dummy "testing" keys are refused like any
unknown key. moto's caveats (conditions are ignored, some action spellings differ) are
described and partly fixed in moto_fixes.
"""

from __future__ import annotations

import json
import os
import urllib.request

from ..aws import AwsClients

ADMIN_USER = "batchexec-emulator-admin"
ALLOW_EVERYTHING = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "*", "Resource": "*"}]})  # fmt: skip


def enforce_in_server(credentials_file: str, region: str = "us-east-1") -> None:
    """In the server process, before it serves: create the admin user, write its keys to
    `credentials_file` (mode 0600, JSON with aws_access_key_id / aws_secret_access_key) and
    enforce IAM from the first request (`batchexec local --enforce-iam`)."""
    from moto import settings
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam.models import iam_backends

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["global"]
    iam.create_user(region_name=region, user_name=ADMIN_USER)
    iam.put_user_policy(ADMIN_USER, "everything", ALLOW_EVERYTHING)
    key = iam.create_access_key(ADMIN_USER)
    fd = os.open(credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"aws_access_key_id": key.access_key_id,
                   "aws_secret_access_key": key.secret_access_key}, f)  # fmt: skip
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0


def create_admin(clients: AwsClients) -> dict[str, str]:
    """An IAM user allowed every action; returns boto3 credential keyword arguments."""
    iam = clients.client("iam")
    iam.create_user(UserName=ADMIN_USER)
    iam.put_user_policy(UserName=ADMIN_USER, PolicyName="everything",
                        PolicyDocument=ALLOW_EVERYTHING)  # fmt: skip
    key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"]}  # fmt: skip


def admin_arn(clients: AwsClients) -> str:
    return clients.client("iam").get_user(UserName=ADMIN_USER)["User"]["Arn"]


def enforce_iam(endpoint_url: str, timeout: float = 10) -> None:
    """From the next request on, moto authorizes every request (body 0: no free requests)."""
    request = urllib.request.Request(
        f"{endpoint_url.rstrip('/')}/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "text/plain"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def let_assume(clients: AwsClients, role_arn: str, principal_arn: str) -> None:
    """Let `principal_arn` assume the role: the emulator's stand-in for ECS, which assumes a
    job role on a task's behalf (trust: ecs-tasks.amazonaws.com) where moto has no ECS agent.
    The role's permissions are untouched; only who may take them on changes."""
    iam = clients.client("iam")
    iam.update_assume_role_policy(
        RoleName=role_arn.rsplit("/", 1)[-1],
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": principal_arn},
             "Action": "sts:AssumeRole"}]}),
    )  # fmt: skip
