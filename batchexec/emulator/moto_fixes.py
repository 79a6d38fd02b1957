"""Where moto differs from AWS in ways our template relies on, brought back in line.

Each fix is small, patches one moto internal (setup.cfg pins the moto range and
tests/test_emulator.py checks the patched names still exist), and says which AWS behaviour it
restores:

- A managed compute environment without a ServiceRole: AWS then uses the Batch service-linked
  role (AWSServiceRoleForBatch), which is what the template wants (a custom service role
  keeps Batch from updating the compute environment in place). moto requires ServiceRole,
  and its CloudFormation reads it with `properties["ServiceRole"]`.
"""

from __future__ import annotations

from typing import Any

#: The service that owns the service-linked role Batch uses when given no service role.
BATCH_SERVICE = "batch.amazonaws.com"


def install() -> None:
    """Apply every fix. Idempotent."""
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

    def create_from_cloudformation_json(cls: Any, resource_name: str, cloudformation_json: dict,
                                        account_id: str, region_name: str, **kwargs: Any):  # fmt: skip
        properties = dict(cloudformation_json.get("Properties") or {})
        properties.setdefault("ServiceRole", "")
        return orig_from_cfn(cls, resource_name, {**cloudformation_json, "Properties": properties},
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
