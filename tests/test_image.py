"""The worker image: the Dockerfile's invariants, the self-check it runs, and the build
script's argument handling. The build itself (about 5 minutes) is CI's separate step,
`bash scripts/build-image.sh --offline-base` in .ci/run, not a unit test."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from batchexec import selfcheck

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "templates" / "Dockerfile").read_text()


def test_dockerfile_builds_on_the_clients_python_without_cuda_or_docker_hub_frontend():
    assert not DOCKERFILE.startswith("# syntax=")  # would pull a frontend from Docker Hub
    assert "ARG PYTHON_VERSION=" in DOCKERFILE
    assert re.search(r"ARG BASE=\S*python:\$\{PYTHON_VERSION\}-slim-bookworm", DOCKERFILE)
    assert not re.search(r"^FROM nvidia/cuda", DOCKERFILE, re.M)  # NVIDIA_REQUIRE_CUDA
    assert "NVIDIA_VISIBLE_DEVICES" not in DOCKERFILE.split("ENV")[-1]  # ECS sets it
    assert "--uid 1000 " not in DOCKERFILE  # ubuntu:24.04's user ubuntu has it
    assert "libnvidia-opencl.so.1" in DOCKERFILE and "/etc/OpenCL/vendors" in DOCKERFILE
    assert 'pip install ".[gpu,gdal]"' in DOCKERFILE  # never the emulator extra
    tail = 'RUN batchexec worker --self-check\nCMD ["batchexec", "worker"]'
    assert DOCKERFILE.rstrip().endswith(tail)


def test_makefile_builds_for_amd64_with_an_explicit_region_and_no_hidden_errors():
    makefile = (ROOT / "templates" / "Makefile").read_text()
    assert "--platform $(PLATFORM)" in makefile and "PLATFORM ?= linux/amd64" in makefile
    assert "get-login-password --region $(REGION)" in makefile
    assert "2>/dev/null" not in makefile


def test_self_check_passes_here_apart_from_the_image_only_icd():
    out = io.StringIO()
    code = selfcheck.main("{}.{}".format(*sys.version_info[:2]), require_icd=False, out=out)
    assert code == 0, out.getvalue()
    assert "can run batchexec workers" in out.getvalue()


def test_self_check_fails_on_another_python_minor_and_says_how_to_fix_it():
    result = selfcheck.check_python("3.99")
    assert not result.ok and "PYTHON_VERSION=3.99" in result.detail
    malformed = selfcheck.check_python("3")
    assert not malformed.ok and "MAJOR.MINOR" in malformed.detail


def test_self_check_reports_every_missing_module():
    result = selfcheck.check_imports(["json", "no_such_module_a", "no_such_module_b"])
    assert not result.ok
    assert "no_such_module_a" in result.detail and "no_such_module_b" in result.detail


def test_self_check_finds_the_nvidia_icd_or_says_where_it_must_be(tmp_path):
    assert not selfcheck.check_icd(str(tmp_path / "absent")).ok
    (tmp_path / "pocl.icd").write_text("libpocl.so.2\n")
    missing = selfcheck.check_icd(str(tmp_path))
    assert not missing.ok and "pocl.icd" in missing.detail
    (tmp_path / "nvidia.icd").write_text("libnvidia-opencl.so.1\n")
    assert selfcheck.check_icd(str(tmp_path)).ok


def test_self_check_exit_status_and_last_line_name_the_failures():
    command = [sys.executable, "-m", "batchexec", "worker", "--self-check", "--no-icd"]
    r = subprocess.run([*command, "--python", "3.99"], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 check(s) failed: python" in r.stdout.strip().splitlines()[-1]
    assert any(line.startswith("FAIL  python") for line in r.stdout.splitlines())


def test_self_check_flags_belong_to_self_check():
    r = subprocess.run([sys.executable, "-m", "batchexec", "worker", "--python", "3.11"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "go with --self-check" in r.stderr


def build_script(*args):
    return subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_build_script_rejects_bad_arguments_before_doing_anything():
    r = build_script("--bogus")
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr
    r = build_script("--python", "3")
    assert r.returncode == 2 and "MAJOR.MINOR" in r.stderr
    r = build_script("--help")
    assert r.returncode == 0 and "--offline-base" in r.stdout


def test_self_check_reports_a_driver_that_cannot_link_kernels(tmp_path):
    """What the first slim image did: PoCL lists its CPU device, then aborts at the first
    kernel without a linker. The check builds one in a child and reports it as a FAIL line."""
    env = {
        **os.environ,
        "PATH": str(tmp_path),
        "BATCHEXEC_OPENCL_CACHE_DIR": str(tmp_path),
        "POCL_CACHE_DIR": str(tmp_path / "pocl"),
    }  # a cold cache: PoCL must link
    r = subprocess.run([sys.executable, "-m", "batchexec", "worker", "--self-check", "--no-icd"],
                       capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
    assert line.startswith("FAIL  opencl") and "cannot build and run a kernel" in line
    assert '"ld"' in line
