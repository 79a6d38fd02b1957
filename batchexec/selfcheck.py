"""`batchexec worker --self-check`: is this environment able to run batchexec workers?

Run inside the worker image (scripts/build-image.sh does, after every build), on a Batch
instance to debug one, or anywhere else: it needs no session, stack or AWS credentials. Each
check prints one line; the exit status is 1 when any required check failed, and the last line
says which and what to do.

Why these checks: each is a way a built image has failed us. A Python minor version other
than the client's (cloudpickle's by-value code objects are not portable across minors: a
lambda from 3.11 raised SystemError on 3.12); a package missing or built wrong (GDAL's
gdal_array is silently absent when its bindings are built with build isolation); no NVIDIA
ICD file, so the OpenCL loader never looks for the driver the NVIDIA runtime mounts; and no
OpenCL platform at all.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: Modules a worker imports: batchexec itself, serialization, AWS, and the gpu package's stack.
REQUIRED_MODULES = (
    "batchexec", "batchexec.worker", "cloudpickle", "boto3", "botocore", "numpy", "pyopencl",
    "gpu", "osgeo.gdal", "osgeo.gdal_array",
)  # fmt: skip
#: The library the NVIDIA container runtime mounts into a GPU container (with the "compute"
#: driver capability); an ICD file naming it is how the OpenCL loader finds it.
NVIDIA_OPENCL_LIBRARY = "libnvidia-opencl.so.1"
DEFAULT_ICD_DIR = "/etc/OpenCL/vendors"
#: A first PoCL build compiles with LLVM: seconds, more on a loaded machine.
KERNEL_TIMEOUT_SECONDS = 300
#: Set in the worker image from its PYTHON_VERSION build argument: the client's minor version.
ENV_EXPECTED_PYTHON = "BATCHEXEC_CLIENT_PYTHON"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    required: bool = True

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.required else "warn")
        return f"{mark}  {self.name:<10} {self.detail}"


def check_python(expected: str | None) -> CheckResult:
    """The interpreter's major.minor equals the client's (cloudpickle needs the same minor)."""
    actual = "{}.{}".format(*sys.version_info[:2])
    full = sys.version.split()[0]
    if not expected:
        return CheckResult("python", True, f"{full} (no expected version: pass --python X.Y)")
    if expected.count(".") != 1 or not all(p.isdigit() for p in expected.split(".")):
        return CheckResult("python", False, f"expected version {expected!r} is not MAJOR.MINOR")
    if actual != expected:
        return CheckResult(
            "python", False,
            f"{full}, but the client runs {expected}: pickled functions from {expected} fail "
            f"here; rebuild the image with --build-arg PYTHON_VERSION={expected} and a base "
            f"that has it",
        )  # fmt: skip
    return CheckResult("python", True, f"{full} (client {expected})")


def check_imports(modules: Iterable[str] = REQUIRED_MODULES) -> CheckResult:
    """Every module a worker needs imports (reports all failures, not just the first)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or a broken native library at import
            failed.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    if failed:
        return CheckResult("imports", False, "cannot import " + "; ".join(failed))
    return CheckResult("imports", True, ", ".join(modules))


def check_icd(icd_dir: str | None = None, required: bool = True) -> CheckResult:
    """An ICD file names the NVIDIA OpenCL library, so the loader tries it when it is mounted."""
    icd_dir = icd_dir or os.environ.get("OCL_ICD_VENDORS") or DEFAULT_ICD_DIR
    try:
        names = sorted(n for n in os.listdir(icd_dir) if n.endswith(".icd"))
    except OSError as exc:
        detail = (f"{icd_dir}: {exc.strerror}; the image must write {NVIDIA_OPENCL_LIBRARY} "
                  f"into {icd_dir}/nvidia.icd")  # fmt: skip
        return CheckResult("icd", False, detail, required)
    for name in names:
        try:
            with open(os.path.join(icd_dir, name), encoding="utf-8") as f:
                if f.read().strip() == NVIDIA_OPENCL_LIBRARY:
                    return CheckResult("icd", True, f"{icd_dir}/{name} -> {NVIDIA_OPENCL_LIBRARY}")
        except OSError:
            continue
    return CheckResult("icd", False, f"no .icd file in {icd_dir} names {NVIDIA_OPENCL_LIBRARY} "
                       f"(found: {', '.join(names) or 'none'})", required)  # fmt: skip


def check_opencl(require_gpu: bool = False) -> CheckResult:
    """OpenCL offers a device, and the gpu package can open the one it would use."""
    try:
        import pyopencl as cl

        platforms = cl.get_platforms()
    except Exception as exc:
        return CheckResult("opencl", False, f"no OpenCL platform: {type(exc).__name__}: {exc}")
    found, has_gpu = [], False
    for platform in platforms:
        try:
            devices = platform.get_devices()
        except Exception:  # a platform with no devices raises DEVICE_NOT_FOUND
            devices = []
        for device in devices:
            has_gpu = has_gpu or bool(device.type & cl.device_type.GPU)
            found.append(f"{platform.name.strip()}: {device.name.strip()}")
    if not found:
        return CheckResult("opencl", False, "OpenCL platforms offer no device")
    try:
        import gpu

        in_use = gpu.device_info()
    except Exception as exc:
        return CheckResult("opencl", False, f"devices {found}, but the gpu package cannot "
                           f"open one: {type(exc).__name__}: {exc}")  # fmt: skip
    # In a child: a driver that cannot build (PoCL without a linker) aborts the process.
    kernel = subprocess.run(
        [sys.executable, "-c", "from batchexec.selfcheck import _run_tiny_kernel as k; k()"],
        capture_output=True, text=True, timeout=KERNEL_TIMEOUT_SECONDS,
    )  # fmt: skip
    if kernel.returncode != 0:
        lines = [ln for ln in kernel.stderr.strip().splitlines() if ln.strip()]
        why = " / ".join(lines[-3:])[:400]
        return CheckResult("opencl", False, f"{in_use} cannot build and run a kernel (exit "
                           f"status {kernel.returncode}): {why}")  # fmt: skip
    if require_gpu and not has_gpu:
        return CheckResult("opencl", False, f"no GPU device (only {'; '.join(found)}): is the "
                           f"NVIDIA runtime mounting the driver (NVIDIA_DRIVER_CAPABILITIES "
                           f"with compute, a GPU reserved for the job)?")  # fmt: skip
    kind = "GPU" if has_gpu else "no GPU, CPU fallback"
    return CheckResult("opencl", True, f"{kind}; using {in_use}; all: {'; '.join(found)}")


#: Compiled and run on the device the gpu package picks: listing platforms is not enough (PoCL
#: lists its CPU device fine, then fails at the first kernel when the linker is missing).
_TINY_KERNEL = "__kernel void twice(__global float *a) { a[get_global_id(0)] *= 2.0f; }"


def _run_tiny_kernel() -> None:
    import numpy as np
    import pyopencl as cl

    from gpu import device

    state = device.state()
    host = np.arange(4, dtype=np.float32)
    buf = cl.Buffer(state.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                    hostbuf=host)  # fmt: skip
    program = cl.Program(state.context, _TINY_KERNEL).build()
    program.twice(state.queue, host.shape, None, buf)
    out = np.empty_like(host)
    cl.enqueue_copy(state.queue, out, buf)
    state.queue.finish()
    if not np.array_equal(out, host * 2):
        raise RuntimeError(f"a kernel doubling {host.tolist()} returned {out.tolist()}")


def run_checks(expected_python: str | None = None, *, require_gpu: bool = False,
               require_icd: bool = True,
               icd_dir: str | None = None) -> list[CheckResult]:  # fmt: skip
    expected = expected_python or os.environ.get(ENV_EXPECTED_PYTHON) or None
    checks: list[Callable[[], CheckResult]] = [
        lambda: check_python(expected),
        check_imports,
        lambda: check_icd(icd_dir, required=require_icd),
        lambda: check_opencl(require_gpu),
    ]
    return [check() for check in checks]


def main(expected_python: str | None = None, *, require_gpu: bool = False,
         require_icd: bool = True, out=None) -> int:  # fmt: skip
    """Print one line per check; 0 when every required check passed, else 1."""
    out = out or sys.stdout
    results = run_checks(expected_python, require_gpu=require_gpu, require_icd=require_icd)
    for result in results:
        print(result.line(), file=out)
    failed = [r.name for r in results if not r.ok and r.required]
    if failed:
        print(f"batchexec worker --self-check: {len(failed)} check(s) failed: "
              f"{', '.join(failed)} (see the FAIL lines above)", file=out)  # fmt: skip
        return 1
    print("batchexec worker --self-check: this environment can run batchexec workers", file=out)
    out.flush()
    return 0
