"""Where moto differs from AWS in ways our template relies on, brought back in line.

Each fix is small, patches one moto internal (setup.cfg pins the moto range and
tests/test_emulator.py checks the patched names still exist), and says which AWS behaviour it
restores:

- A managed compute environment without a ServiceRole: AWS then uses the Batch service-linked
  role (AWSServiceRoleForBatch), which is what the template wants (a custom service role
  keeps Batch from updating the compute environment in place). moto requires ServiceRole,
  and its CloudFormation reads it with `properties["ServiceRole"]`.
- Inline role policies from CloudFormation: moto stores the parsed document (a dict) where
  IAM stores JSON text, and then fails with a 500 on GetRolePolicy and when enforcing IAM
  (`POST /moto-api/reset-auth`). We store JSON, as AWS does.
- Action names under IAM enforcement: AWS authorizes SendMessageBatch, DeleteMessageBatch and
  ChangeMessageVisibilityBatch as their single-message actions, and matches actions without
  regard to case; moto checks the batch calls under their own names and Batch actions in
  lowercase. Inline role policies get those spellings added, so a policy written for AWS
  means the same in the emulator. (moto also ignores policy conditions: not fixed.)
"""

from __future__ import annotations

import json
from typing import Any

#: The service that owns the service-linked role Batch uses when given no service role.
BATCH_SERVICE = "batch.amazonaws.com"
#: AWS action -> the extra names moto's IAM enforcement checks for the same call.
MOTO_ACTION_ALIASES = {
    "sqs:SendMessage": ("sqs:SendMessageBatch",),
    "sqs:DeleteMessage": ("sqs:DeleteMessageBatch",),
    "sqs:ChangeMessageVisibility": ("sqs:ChangeMessageVisibilityBatch",),
}


def install() -> None:
    """Apply every fix. Idempotent."""
    _install_service_role_fix()
    _install_role_policy_fix()


def moto_policy(document: Any) -> str:
    """An IAM policy document as JSON text, with the action spellings moto checks added."""
    if isinstance(document, str):
        document = json.loads(document)
    document = json.loads(json.dumps(document, default=str))  # a deep copy
    statements = document.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    kept = []
    for statement in statements:
        if not statement:  # an !If that chose AWS::NoValue
            continue
        for key in ("Action", "NotAction"):
            if key in statement:
                statement[key] = _with_moto_aliases(statement[key])
        kept.append(statement)
    document["Statement"] = kept
    return json.dumps(document)


def _with_moto_aliases(actions: Any) -> list[str]:
    listed = [actions] if isinstance(actions, str) else list(actions)
    out = list(listed)
    for action in listed:
        out.extend(MOTO_ACTION_ALIASES.get(action, ()))
        if action.lower().startswith("batch:"):
            out.append(action.lower())
    return list(dict.fromkeys(out))


def _install_role_policy_fix() -> None:
    from moto.iam import models

    role_cls = models.Role
    if getattr(role_cls, "_batchexec_policy_fix", False):
        return
    orig_put = role_cls.put_policy

    def put_policy(self: Any, policy_name: str, policy_json: Any) -> None:
        orig_put(self, policy_name, moto_policy(policy_json))

    role_cls.put_policy = put_policy
    role_cls._batchexec_policy_fix = True


def _install_service_role_fix() -> None:
    from moto.batch import models

    backend_cls = models.BatchBackend
    if getattr(backend_cls, "_batchexec_service_role_fix", False):
        return
    orig_create = backend_cls.create_compute_environment
    env_cls = models.ComputeEnvironment
    orig_from_cfn = env_cls.create_from_cloudformation_json.__func__

    def create_compute_environment(self: Any, compute_environment_name: str, _type: str,
                                   state: str, compute_resources: dict, service_role: str,
                                   tags: dict | None = None):  # fmt: skip
        if not service_role:
            service_role = batch_service_linked_role_arn(self.iam_backend)
        return orig_create(self, compute_environment_name, _type, state, compute_resources,
                           service_role, tags)  # fmt: skip

    def create_from_cloudformation_json(cls: Any, resource_name: str, cfn_json: dict,
                                        account_id: str, region_name: str,
                                        **kwargs: Any):  # fmt: skip
        properties = dict(cfn_json.get("Properties") or {})
        properties.setdefault("ServiceRole", "")
        return orig_from_cfn(cls, resource_name, {**cfn_json, "Properties": properties},
                             account_id, region_name, **kwargs)  # fmt: skip

    backend_cls.create_compute_environment = create_compute_environment
    env_cls.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)
    backend_cls._batchexec_service_role_fix = True


def batch_service_linked_role_arn(iam_backend: Any) -> str:
    """The ARN of Batch's service-linked role, created the first time (as AWS does on first
    use). Found by its path: moto names it AWSServiceRoleForbatch, AWS AWSServiceRoleForBatch."""
    path = f"/aws-service-role/{BATCH_SERVICE}/"
    for role in list(iam_backend.roles.values()):
        if role.path == path:
            return role.arn
    role = iam_backend.create_service_linked_role(
        service_name=BATCH_SERVICE, description="AWS Batch service-linked role", suffix=""
    )
    return role.arn
