"""Container mode of the emulator's compute environment (`batchexec local --containers`).

Jobs then run as containers of their job definition's image, as on AWS Batch, through a
container engine's command line (docker, or podman: the same flags), instead of as processes
of the server's interpreter:

    engine run --rm --name bx-<job id> --network host --label batchexec.emulator=<pid>
               -e AWS_... -e <job variables> IMAGE <command>

- Network: the host's, so the container reaches the emulator at the endpoint the client used
  (127.0.0.1:PORT) and no bridge or iptables is needed (dockerd --bridge=none works).
- Environment: only what Batch and ECS would give the container: the job definition's and
  the overrides' variables, AWS_REGION, AWS_BATCH_*, AWS_ENDPOINT_URL (the emulator's unless
  the job sets one), and the **job role's** temporary credentials, minted by moto's STS for
  the job definition's jobRoleArn (ECS's task-role credentials). Never the server's
  environment or credentials: with IAM enforced (batchexec.emulator.auth), a task can do
  exactly what the job role allows.
- The image: the job definition's, unless the server was given `--image` (run every job in
  that local image: the stack's ECR URI names no registry the emulator has).
- Not emulated: GPU, vCPU and memory reservations (no --gpus, no cgroup limits).

Values of variables travel in the engine command's environment (`-e NAME` without a value),
so credentials never appear in a process list.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import BatchExecError

logger = logging.getLogger(__name__)

#: Engines tried, in order, when none is named.
ENGINES = ("docker", "podman")
#: Seconds a role's credentials stay valid: longer than any job the emulator runs.
CREDENTIAL_SECONDS = 12 * 3600


class ContainerEngineError(BatchExecError):
    """No usable container engine for `batchexec local --containers`."""


@dataclass
class ContainerRuntime:
    engine: str
    endpoint: str
    image: str | None = None
    _names: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def find(cls, endpoint: str, engine: str | None = None,
             image: str | None = None) -> ContainerRuntime:  # fmt: skip
        """The named engine (a name or path), else docker, else podman; checked to answer."""
        candidates = [engine] if engine else list(ENGINES)
        tried = []
        for name in candidates:
            path = shutil.which(name)
            if not path:
                tried.append(f"{name}: not found")
                continue
            r = subprocess.run([path, "info"], capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                return cls(engine=path, endpoint=endpoint, image=image)
            reason = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            tried.append(f"{name}: {reason}")
        raise ContainerEngineError(
            "batchexec local --containers needs a working container engine (a running Docker "
            "daemon, or podman): " + "; ".join(tried)
        )

    def command(self, job: Any, container_env: dict[str, str]) -> tuple[list[str], dict]:
        """(argv of the engine, the engine's own environment) to run `job`."""
        from .jobs import job_command  # the raw command, parameters substituted

        props = job.job_definition.container_properties or {}
        image = self.image or props.get("image")
        if not image:
            raise ContainerEngineError(f"job {job.job_id}: its job definition names no image")
        name = container_name(job)
        argv = [self.engine, "run", "--rm", "--name", name, "--network", "host",
                "--label", f"batchexec.emulator={os.getpid()}"]  # fmt: skip
        for key in sorted(container_env):
            argv += ["-e", key]
        argv += [image, *job_command(job)]
        engine_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        engine_env.update(container_env)
        with self._lock:
            self._names.add(name)
        return argv, engine_env

    def remove(self, name: str) -> None:
        """Force-remove the container: a SIGKILLed engine CLI leaves it running."""
        subprocess.run([self.engine, "rm", "--force", name], capture_output=True, timeout=60)
        with self._lock:
            self._names.discard(name)

    def remove_all(self) -> None:
        with self._lock:
            names = list(self._names)
        for name in names:
            self.remove(name)


def container_name(job: Any) -> str:
    """bx-<job id>; an array child's id "<parent>:<index>" becomes "<parent>-<index>"."""
    return "bx-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", job.job_id)


def container_environment(job: Any, variables: dict[str, str], endpoint: str) -> dict[str, str]:
    """What Batch and ECS give a job's container (see the module docstring)."""
    from .jobs import batch_environment  # jobs imports moto: only once a job runs

    env = batch_environment(job, variables)
    env.setdefault("AWS_ENDPOINT_URL", endpoint)
    role_arn = (job.job_definition.container_properties or {}).get("jobRoleArn")
    if role_arn:
        env.update(job_role_credentials(job, role_arn))
    return env


def job_role_credentials(job: Any, role_arn: str) -> dict[str, str]:
    """Temporary credentials of the job role, from moto's STS, as ECS hands them to a task."""
    from moto.sts.models import sts_backends

    account = job.job_definition.backend.account_id
    role = sts_backends[account]["global"].assume_role(
        region_name=job.job_definition._region,
        role_session_name=f"batch-{job.job_id}"[:64],
        role_arn=role_arn,
        policy="",
        duration=CREDENTIAL_SECONDS,
        external_id="",
    )
    return {
        "AWS_ACCESS_KEY_ID": role.access_key_id,
        "AWS_SECRET_ACCESS_KEY": role.secret_access_key,
        "AWS_SESSION_TOKEN": role.session_token,
    }
