"""The CloudFormation stack: find its resources, and deploy, update or delete it.

The executor learns about the stack only through its Outputs (names fixed in
`STACK_OUTPUTS`), so a stack deployed by hand, by `batchexec stack deploy` or into the
embedded emulator all look the same to it. templates/batchexec.yaml is the single source of
the template; it ships inside the package as batchexec/templates/ (a symlink to it in the
source tree, a copy in a built wheel), which is where `load_template` reads it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

import botocore.exceptions
import botocore.parsers
import yaml

from .aws import AwsClients, connection_errors_explained, error_code
from .config import DEFAULT_JOB_TIMEOUT
from .errors import BatchExecError, ConfigurationError, StackNotFoundError

#: The Outputs the executor reads; a stack missing any of them is not a batchexec stack.
STACK_OUTPUTS = (
    "BucketName", "DeadLetterQueueUrl", "DeadLetterQueueArn", "SessionQueuePrefix",
    "JobQueueArn", "JobDefinitionArn", "ComputeEnvironmentArn", "LogGroupName", "RepositoryUri",
    "DefaultWorkers",
)  # fmt: skip
#: Outputs read when present: stacks deployed before they existed lack them.
OPTIONAL_STACK_OUTPUTS = ("JobTimeoutSeconds",)
#: Between the stack name and the session in session queue names. CloudFormation stack names
#: cannot contain it, so the job role's pattern "<stack>_*" matches exactly this stack's
#: session queues: never those of a stack whose name extends this one ("a" vs "a-b"), nor
#: the stack's own dead-letter queue ("<stack>-dead-letter", send-only for workers).
SESSION_QUEUE_SEPARATOR = "_"
#: Where session payloads live in the stack's bucket: sessions/<session>/...
SESSION_KEY_PREFIX = "sessions/"
#: Tags every session queue carries (set by the client at CreateQueue).
SESSION_TAG = "batchexec:session"
STACK_TAG = "batchexec:stack"
#: States in which the stack's resources exist and its Outputs are valid.
USABLE_STATES = frozenset({
    "CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_IN_PROGRESS",
    "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE",
    "UPDATE_ROLLBACK_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
    "IMPORT_COMPLETE", "IMPORT_ROLLBACK_COMPLETE",
})  # fmt: skip
#: Stack names we deploy: lowercase (the ECR repository is named after the stack and must be
#: lowercase) and short (session queue names "<stack>_<session>-results" must fit SQS's 80).
STACK_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
#: The template names no IAM resources explicitly, so CAPABILITY_IAM is enough.
CAPABILITIES = ["CAPABILITY_IAM"]
#: Seconds between status polls while waiting; CloudFormation on AWS takes minutes (the GPU
#: compute environment most of it), the emulator well under a second.
AWS_WAITER_DELAY = 10
EMULATOR_WAITER_DELAY = 1
#: Upper bound on a wait, in seconds (a compute environment can take ~10 minutes).
WAIT_LIMIT_SECONDS = 3600


class StackOperationError(BatchExecError):
    """A create, update or delete of the stack failed or could not be started."""


@dataclass(frozen=True)
class StackResources:
    """What one deployed stack provides to the executor, read from its Outputs."""

    name: str
    region: str
    bucket: str
    dead_letter_queue_url: str
    dead_letter_queue_arn: str
    job_queue: str
    job_definition: str
    compute_environment: str
    log_group: str
    repository_uri: str
    default_workers: int
    session_queue_prefix: str = ""
    #: The job definition's timeout (output JobTimeoutSeconds; stacks deployed before it
    #: existed have the template's default).
    job_timeout: float = DEFAULT_JOB_TIMEOUT

    def session_queue_names(self, session: str) -> tuple[str, str]:
        """(task queue, result queue) names of one session of this stack."""
        return session_queue_names(self.name, session)


def session_queue_prefix(stack: str) -> str:
    """The prefix of every session queue of `stack` (what the job role may use)."""
    return f"{stack}{SESSION_QUEUE_SEPARATOR}"


def session_queue_names(stack: str, session: str) -> tuple[str, str]:
    """(task queue, result queue): "<stack>_<session>-tasks", "<stack>_<session>-results"."""
    if SESSION_QUEUE_SEPARATOR in session or not session:
        raise ValueError(f"session id {session!r} must be non-empty and contain no "
                         f"{SESSION_QUEUE_SEPARATOR!r}")  # fmt: skip
    prefix = session_queue_prefix(stack)
    return f"{prefix}{session}-tasks", f"{prefix}{session}-results"


#: Attributes every session queue is created with: encrypted at rest like the stack's DLQ.
SESSION_QUEUE_SECURITY_ATTRIBUTES = {"SqsManagedSseEnabled": "true"}


def tls_only_queue_policy(queue_arn: str) -> str:
    """The queue policy that denies every request not made over TLS (as the template gives
    the dead-letter queue), for SetQueueAttributes(Policy=...) on a session queue."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "sqs:*",
        "Resource": queue_arn, "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }]})  # fmt: skip


def load_template() -> str:
    """The text of templates/batchexec.yaml, from the installed package."""
    return resources.files("batchexec").joinpath("templates/batchexec.yaml").read_text("utf-8")


def template_parameters() -> dict[str, dict]:
    """The template's Parameters section (name -> declaration)."""
    return yaml.load(load_template(), Loader=_CfnLoader).get("Parameters", {})


# -- reading a stack ---------------------------------------------------------------------------


def describe_stack(clients: AwsClients, name: str) -> StackResources:
    """The resources of a usable stack; StackNotFoundError if it is missing or broken."""
    stack = _describe(clients, name)
    status = stack["StackStatus"]
    if status not in USABLE_STATES:
        raise StackNotFoundError(name, clients.region, _state_advice(name, status))
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = [key for key in STACK_OUTPUTS if key not in outputs]
    if missing:
        raise ConfigurationError(
            f"CloudFormation stack {name!r} lacks the outputs {', '.join(missing)}: it was not "
            f"deployed from batchexec's template; run `batchexec stack update --name {name} "
            f"--wait`, or pick another stack"
        )
    try:
        default_workers = int(outputs["DefaultWorkers"])
        job_timeout = float(outputs.get("JobTimeoutSeconds", DEFAULT_JOB_TIMEOUT))
    except ValueError as exc:
        raise ConfigurationError(
            f"stack {name!r} has an output that is not a number ({exc}): redeploy it with "
            f"`batchexec stack update --name {name} --wait`"
        ) from None
    return StackResources(
        name=name,
        region=clients.region,
        bucket=outputs["BucketName"],
        dead_letter_queue_url=outputs["DeadLetterQueueUrl"],
        dead_letter_queue_arn=outputs["DeadLetterQueueArn"],
        job_queue=outputs["JobQueueArn"],
        job_definition=outputs["JobDefinitionArn"],
        compute_environment=outputs["ComputeEnvironmentArn"],
        log_group=outputs["LogGroupName"],
        repository_uri=outputs["RepositoryUri"],
        default_workers=default_workers,
        session_queue_prefix=outputs["SessionQueuePrefix"],
        job_timeout=job_timeout,
    )


def stack_status(clients: AwsClients, name: str) -> str:
    """The stack's StackStatus (e.g. CREATE_COMPLETE); StackNotFoundError if there is none."""
    return _describe(clients, name)["StackStatus"]


def stack_outputs(clients: AwsClients, name: str) -> dict[str, str]:
    """All Outputs of the stack, whatever its state."""
    stack = _describe(clients, name)
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


# -- changing a stack --------------------------------------------------------------------------


def deploy_stack(clients: AwsClients, name: str, parameters: dict | None = None,
                 wait: bool = True, *, waiter_delay: float | None = None,
                 waiter_attempts: int | None = None) -> str:  # fmt: skip
    """Create the stack from the project's template (or update it if it already exists).

    Returns the final status when waiting, else the status right after the request.
    """
    if not STACK_NAME_PATTERN.match(name):
        raise ConfigurationError(
            f"stack name {name!r} is not usable: use 1-32 lowercase letters, digits and "
            f"hyphens, starting with a letter (e.g. batchexec)"
        )
    existing = _describe_or_none(clients, name)
    if existing is not None:
        if existing["StackStatus"] == "ROLLBACK_COMPLETE":
            raise StackOperationError(
                f"stack {name!r} failed to create earlier (ROLLBACK_COMPLETE) and cannot be "
                f"updated: run `batchexec stack delete --name {name} --wait`, then deploy again"
            )
        return update_stack(clients, name, parameters, wait, waiter_delay=waiter_delay,
                            waiter_attempts=waiter_attempts)  # fmt: skip
    cfn = clients.client("cloudformation")
    _call(clients, name, cfn.create_stack, StackName=name, TemplateBody=load_template(),
          Parameters=_parameter_list(parameters), Capabilities=CAPABILITIES,
          Tags=[{"Key": "batchexec:stack", "Value": name}])  # fmt: skip
    if wait:
        _wait(clients, name, "stack_create_complete", waiter_delay, waiter_attempts)
    return stack_status(clients, name)


def update_stack(clients: AwsClients, name: str, parameters: dict | None = None,
                 wait: bool = True, *, waiter_delay: float | None = None,
                 waiter_attempts: int | None = None) -> str:  # fmt: skip
    """Update the stack to the current template; parameters not given keep their values."""
    existing = _describe(clients, name)
    previous = {p["ParameterKey"] for p in existing.get("Parameters", [])}
    given = _parameter_list(parameters)
    given_keys = {p["ParameterKey"] for p in given}
    keep = [
        {"ParameterKey": key, "UsePreviousValue": True}
        for key in template_parameters()
        if key in previous and key not in given_keys
    ]
    cfn = clients.client("cloudformation")
    try:
        _call(clients, name, cfn.update_stack, StackName=name, TemplateBody=load_template(),
              Parameters=given + keep, Capabilities=CAPABILITIES)  # fmt: skip
    except StackOperationError as exc:
        if "No updates are to be performed" in str(exc):
            return stack_status(clients, name)
        raise
    if wait:
        _wait(clients, name, "stack_update_complete", waiter_delay, waiter_attempts)
    return stack_status(clients, name)


def delete_stack(clients: AwsClients, name: str, wait: bool = True, *,
                 waiter_delay: float | None = None,
                 waiter_attempts: int | None = None) -> str:  # fmt: skip
    """Delete the stack (bucket objects and images included). Returns the last known status."""
    _describe(clients, name)  # a clear StackNotFoundError rather than a silent no-op
    _empty_bucket(clients, name)
    cfn = clients.client("cloudformation")
    _call(clients, name, cfn.delete_stack, StackName=name)
    if not wait:
        return "DELETE_IN_PROGRESS"
    _wait(clients, name, "stack_delete_complete", waiter_delay, waiter_attempts)
    return "DELETE_COMPLETE"


# -- helpers -----------------------------------------------------------------------------------


def _describe(clients: AwsClients, name: str) -> dict:
    stack = _describe_or_none(clients, name)
    if stack is None:
        raise StackNotFoundError(name, clients.region)
    return stack


def _describe_or_none(clients: AwsClients, name: str) -> dict | None:
    cfn = clients.client("cloudformation")
    try:
        stacks = _call(clients, name, cfn.describe_stacks, StackName=name)["Stacks"]
    except StackOperationError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    live = [s for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"]
    return live[0] if live else None


def _call(clients: AwsClients, name: str, method, **kwargs):
    """One CloudFormation call; AWS failures become one-line batchexec errors."""
    try:
        with connection_errors_explained(clients.endpoint_url):
            return method(**kwargs)
    except botocore.exceptions.ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", str(exc))
        raise StackOperationError(
            f"{method.__name__} of stack {name!r} failed ({error_code(exc)}): "
            f"{_one_line(message)}{_emulator_hint(clients, method.__name__)}"
        ) from None
    except (botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError) as exc:
        raise StackOperationError(
            f"{method.__name__} of stack {name!r} failed: {_one_line(str(exc))}"
            f"{_emulator_hint(clients, method.__name__)}"
        ) from None


def _one_line(text: str, limit: int = 300) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[:limit] + "..."


def _emulator_hint(clients: AwsClients, operation: str) -> str:
    """moto's CloudFormation cannot update or delete every resource of our template."""
    if clients.endpoint_url and operation in ("update_stack", "delete_stack"):
        return (
            "; the emulator (moto) cannot update or delete this stack reliably: restart "
            "`batchexec local` and deploy afresh instead"
        )
    return ""


def _wait(clients: AwsClients, name: str, waiter_name: str, delay: float | None,
          attempts: int | None) -> None:  # fmt: skip
    if delay is None:
        delay = EMULATOR_WAITER_DELAY if clients.endpoint_url else AWS_WAITER_DELAY
    if attempts is None:
        attempts = max(1, int(WAIT_LIMIT_SECONDS / max(delay, 0.1)))
    waiter = clients.client("cloudformation").get_waiter(waiter_name)
    try:
        waiter.wait(StackName=name, WaiterConfig={"Delay": delay, "MaxAttempts": attempts})
    except botocore.exceptions.WaiterError as exc:
        status = "unknown"
        stack = exc.last_response.get("Stacks", [{}]) if exc.last_response else [{}]
        if stack and stack[0]:
            status = stack[0].get("StackStatus", status)
        raise StackOperationError(
            f"stack {name!r} did not reach the expected state (now {status}): "
            f"{_first_failure(clients, name) or exc}"
        ) from None


def _first_failure(clients: AwsClients, name: str) -> str:
    """The first failed resource event, which says what actually went wrong."""
    try:
        events = clients.client("cloudformation").describe_stack_events(StackName=name)
    except botocore.exceptions.ClientError:
        return ""
    failed = [e for e in events.get("StackEvents", []) if e["ResourceStatus"].endswith("FAILED")]
    if not failed:
        return ""
    e = failed[-1]  # events are newest first: the last failure listed happened first
    return f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', e['ResourceStatus'])}"


def _empty_bucket(clients: AwsClients, name: str) -> None:
    """CloudFormation cannot delete a non-empty bucket: remove leftover payloads first."""
    bucket = stack_outputs(clients, name).get("BucketName")
    if not bucket:
        return
    s3 = clients.client("s3")
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) != "NoSuchBucket":
            raise StackOperationError(
                f"could not empty bucket {bucket} of stack {name!r}: {exc}"
            ) from None


def _parameter_list(parameters: dict | None) -> list[dict]:
    if not parameters:
        return []
    known = template_parameters()
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ConfigurationError(
            f"unknown stack parameter(s) {', '.join(unknown)}; the template takes: "
            f"{', '.join(known)}"
        )
    return [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()]


def _state_advice(name: str, status: str) -> str:
    if status.endswith("_IN_PROGRESS"):
        return f"it is {status}; wait for it with `batchexec stack status --name {name}`"
    if status.startswith("DELETE"):
        return f"it is {status}"
    return f"it is {status}; run `batchexec stack delete --name {name} --wait` and deploy again"


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that accepts CloudFormation's short-form tags (!Ref, !Sub, ...)."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_CfnLoader.add_multi_constructor("!", _cfn_tag)
