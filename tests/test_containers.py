"""`batchexec local --containers`: Batch jobs as containers of the worker image, holding only
the job role's credentials, with moto's IAM enforcement on; the main job's kernel end to end.

Needs the worker image and a container engine. CI builds the image first
(`scripts/build-image.sh --offline-base --with-docker --archive FILE`) and runs pytest with
BATCHEXEC_WORKER_IMAGE_ARCHIVE=FILE and BATCHEXEC_REQUIRE_CONTAINER_TESTS=1, which turns a
missing image or engine into a failure. Elsewhere the end-to-end tests are skipped with the
reason (building the image takes minutes); the unit tests below run everywhere.

The engine: a running Docker daemon ($DOCKER_HOST or the default socket); else, as root with
docker.io installed, the fixture starts a private dockerd (overlay2, else vfs storage; no
bridge, no iptables: containers use the host's network) and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from batchexec import stack as st
from batchexec.aws import AwsClients
from batchexec.emulator.containers import ContainerRuntime, container_name

pytestmark = pytest.mark.timeout(600)

IMAGE = os.environ.get("BATCHEXEC_WORKER_IMAGE", "localhost/batchexec-worker:dev")
ARCHIVE = os.environ.get("BATCHEXEC_WORKER_IMAGE_ARCHIVE")
REQUIRED = os.environ.get("BATCHEXEC_REQUIRE_CONTAINER_TESTS") == "1"
STACK = "ctr"


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"container tests are required here (BATCHEXEC_REQUIRE_CONTAINER_TESTS=1) "
                    f"but {reason}")  # fmt: skip
    pytest.skip(reason)


def docker(*args, env=None, timeout=300):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)  # fmt: skip


@pytest.fixture(scope="module")
def engine_env():
    """An environment whose DOCKER_HOST answers; starts a private dockerd when it must."""
    if not shutil.which("docker"):
        unavailable("no docker CLI (scripts/build-image.sh --with-docker installs docker.io)")
    env = dict(os.environ)
    if docker("info", env=env, timeout=60).returncode == 0:
        yield env
        return
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        unavailable("no running Docker daemon, and none can be started here (root + dockerd)")
    work = Path(tempfile.mkdtemp(prefix="bx-dockerd-"))
    sock = work / "docker.sock"
    env["DOCKER_HOST"] = f"unix://{sock}"
    daemon = None
    for driver in ("overlay2", "vfs"):  # vfs copies the whole image per container: slow
        log = open(work / f"dockerd-{driver}.log", "w")
        daemon = subprocess.Popen(
            ["dockerd", "--data-root", str(work / "root"), "--exec-root", str(work / "exec"),
             "-H", env["DOCKER_HOST"], "--pidfile", str(work / "docker.pid"),
             "--storage-driver", driver, "--iptables=false", "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and daemon.poll() is None:
            if docker("info", env=env, timeout=30).returncode == 0:
                break
            time.sleep(1)
        if daemon.poll() is None and docker("info", env=env, timeout=30).returncode == 0:
            break
        _stop(daemon)
        daemon = None
    if daemon is None:
        unavailable(f"dockerd would not start (logs in {work})")
    try:
        yield env
    finally:
        _stop(daemon)
        shutil.rmtree(work, ignore_errors=True)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def image(engine_env):
    if docker("image", "inspect", IMAGE, env=engine_env).returncode != 0:
        if not ARCHIVE or not os.path.exists(ARCHIVE):
            unavailable(f"the worker image {IMAGE} is not loaded and no archive is given "
                        f"(bash scripts/build-image.sh --offline-base --archive FILE, then "
                        f"BATCHEXEC_WORKER_IMAGE_ARCHIVE=FILE)")  # fmt: skip
        r = docker("load", "-i", ARCHIVE, env=engine_env, timeout=600)
        assert r.returncode == 0, r.stderr
    return IMAGE


@pytest.fixture(scope="module")
def enforced(engine_env, image):
    """`batchexec local --containers` with stack "ctr" deployed (and "ctr-b", whose name
    extends it), IAM enforced, and admin credentials for the client."""
    from batchexec.emulator.auth import create_admin, enforce_iam

    env = {**engine_env, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [sys.executable, "-m", "batchexec", "local", "--port", "0", "--containers",
         "--image", image],
        stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True,
    )  # fmt: skip
    endpoint = server.stdout.readline().decode().strip()
    try:
        assert endpoint.startswith("http://"), _tail(log)
        clients = AwsClients(region="us-east-1", endpoint_url=endpoint)
        st.deploy_stack(clients, STACK)
        st.deploy_stack(clients, "ctr-b")
        admin = create_admin(clients)
        enforce_iam(endpoint)
        yield types.SimpleNamespace(endpoint=endpoint, admin=admin, log=log)
    finally:
        _stop(server)
        leftovers = docker("ps", "-aq", "--filter", f"label=batchexec.emulator={server.pid}",
                           env=engine_env).stdout.split()  # fmt: skip
        assert leftovers == [], "the server left containers behind"


def _tail(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


def what_a_task_holds():
    """Runs in a worker container: the credentials it holds and what IAM lets it do."""
    import os

    import boto3
    import botocore.exceptions

    env = os.environ
    sqs = boto3.client("sqs")
    try:
        sqs.list_queues()
        listing = "allowed"
    except botocore.exceptions.ClientError as exc:
        listing = exc.response["ResponseMetadata"]["HTTPStatusCode"]
    try:
        url = sqs.get_queue_url(QueueName="ctr-b_other-tasks")["QueueUrl"]
        sqs.receive_message(QueueUrl=url)
        other = "allowed"
    except botocore.exceptions.ClientError as exc:
        other = exc.response["ResponseMetadata"]["HTTPStatusCode"]
    # Session keys live only in the jobs' environment overrides: reading them would need
    # Batch's DescribeJobs/ListJobs, which the job role does not have.
    jobs = []
    batch = boto3.client("batch")
    for call in (lambda: batch.list_jobs(jobQueue="x"), lambda: batch.describe_jobs(jobs=["x"])):
        try:
            call()
            jobs.append("allowed")
        except botocore.exceptions.ClientError as exc:
            jobs.append(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return {"key": env.get("AWS_ACCESS_KEY_ID", ""), "token": bool(env.get("AWS_SESSION_TOKEN")),
            "stack": env.get("BATCHEXEC_STACK"), "list_queues": listing, "other_stack": other,
            "pythonpath": env.get("PYTHONPATH", ""), "batch_jobs": jobs,
            "session_key_in_task": "BATCHEXEC_SESSION_KEY" in env}  # fmt: skip


@pytest.fixture
def admin_env(enforced, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", enforced.admin["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", enforced.admin["aws_secret_access_key"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("BATCHEXEC_STACK", raising=False)


def test_hillshade_runs_in_containers_with_only_the_job_roles_rights(enforced, admin_env):
    import boto3

    import gpu
    from batchexec import BatchExecutor

    boto3.client("sqs", region_name="us-east-1", endpoint_url=enforced.endpoint,
                 **enforced.admin).create_queue(QueueName="ctr-b_other-tasks")  # fmt: skip
    rng = np.random.default_rng(7)
    dem = (np.cumsum(rng.normal(0, 3, (96, 80)), axis=1) + 500).astype(np.float32)
    geotransform = (500000.0, 30.0, 0.0, 4200000.0, 0.0, -30.0)
    # This module is not in the image: its task function travels by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with BatchExecutor(2, stack=STACK, endpoint_url=enforced.endpoint,
                           visibility_timeout=60, worker_idle_timeout=60) as ex:  # fmt: skip
            shaded = ex.submit(gpu.hillshade, dem, geotransform, z=2.0)
            held = ex.submit(what_a_task_holds)
            remote, holds = shaded.result(timeout=400), held.result(timeout=400)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    np.testing.assert_array_equal(remote, gpu.hillshade(dem, geotransform, z=2.0))
    assert remote.dtype == np.uint8 and remote.shape == dem.shape
    # Temporary credentials of the job role, not the client's (admin) nor the server's.
    assert holds["token"] and holds["key"] != enforced.admin["aws_access_key_id"]
    assert holds["stack"] == STACK and holds["pythonpath"] == ""
    assert holds["list_queues"] == 403 and holds["other_stack"] == 403
    # No session's key is within a task's reach: not its own (the runner's environment lacks
    # it), not another's (Batch's job descriptions are refused to the job role).
    assert holds["batch_jobs"] == [403, 403] and not holds["session_key_in_task"]


# -- without an engine -------------------------------------------------------------------------


def test_no_engine_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # neither docker nor podman on PATH
    r = subprocess.run(
        [sys.executable, "-m", "batchexec", "local", "--port", "0", "--containers"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "needs a working container engine" in r.stderr and "docker: not found" in r.stderr


def test_image_and_engine_flags_need_containers():
    r = subprocess.run([sys.executable, "-m", "batchexec", "local", "--image", "x"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "go with --containers" in r.stderr


def test_credentials_travel_in_the_environment_never_in_argv():
    job = types.SimpleNamespace(
        job_id="0f1e:3",
        job_definition=types.SimpleNamespace(container_properties={"image": "img:1"}),
        container_overrides={"command": ["batchexec", "worker"]},
        _add_parameters_to_command=lambda command: command,
    )
    runtime = ContainerRuntime(engine="/usr/bin/docker", endpoint="http://127.0.0.1:1")
    secret = {"AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_REGION": "us-east-1"}
    argv, env = runtime.command(job, secret)
    assert "s3cr3t" not in " ".join(argv) and env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert argv[argv.index("--name") + 1] == container_name(job) == "bx-0f1e-3"
    assert argv[-3:] == ["img:1", "batchexec", "worker"]
    assert ["-e", "AWS_SECRET_ACCESS_KEY"] == argv[argv.index("AWS_SECRET_ACCESS_KEY") - 1 :][:2]
    assert argv[argv.index("--network") + 1] == "host"


def test_enforce_iam_from_the_first_request_with_an_admin_for_the_client(tmp_path):
    import json

    import boto3
    import botocore.exceptions

    creds_file = tmp_path / "admin.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "batchexec", "local", "--port", "0", "--enforce-iam",
         str(creds_file)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        endpoint = server.stdout.readline().decode().strip()
        assert oct(creds_file.stat().st_mode & 0o777) == "0o600"
        admin = json.loads(creds_file.read_text())
        anyone = boto3.client(
            "sqs",
            region_name="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        with pytest.raises(botocore.exceptions.ClientError) as info:
            anyone.list_queues()
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        clients = boto3.client("cloudformation", region_name="us-east-1",
                               endpoint_url=endpoint, **admin)  # fmt: skip
        assert clients.describe_stacks()["Stacks"] == []
    finally:
        _stop(server)
