"""gpu.device: device choice, environment overrides, once-per-process builds, fork safety.

Overrides are checked in subprocesses so this process's device state is not disturbed.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

cl = pytest.importorskip("pyopencl")

import gpu  # noqa: E402
from gpu import device  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GT = (0.0, 10.0, 0.0, 0.0, 0.0, -10.0)


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    # gpu.device exports POCL_CACHE_DIR / CUDA_CACHE_PATH into this process's environment
    # (so workers share the cache); drop them so each child derives its own.
    full_env = {k: v for k, v in os.environ.items()
                if k not in (device.ENV_DEVICE, device.ENV_PYOPENCL, device.ENV_CACHE_DIR,
                             "POCL_CACHE_DIR", "CUDA_CACHE_PATH")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=120)


def _first_device():
    platform = cl.get_platforms()[0]
    return platform, platform.get_devices()[0]


def test_device_info_names_platform_and_device():
    info = gpu.device_info()
    st = device.state()
    assert isinstance(info, str)
    assert st.device.platform.name.strip() in info
    assert st.device.name.strip() in info


def test_default_prefers_a_gpu_else_the_cpu_device():
    has_gpu = any(d.type & cl.device_type.GPU
                  for p in cl.get_platforms() for d in p.get_devices())
    result = _run_python("import gpu; print(gpu.device_info())")
    assert result.returncode == 0, result.stderr
    assert ("GPU" if has_gpu else "CPU") in result.stdout


def test_batchexec_variable_selects_pocl():
    result = _run_python("import gpu; print(gpu.device_info())",
                         BATCHEXEC_OPENCL_DEVICE="pocl")
    assert result.returncode == 0, result.stderr
    assert "Portable Computing Language" in result.stdout


def test_pyopencl_ctx_is_honoured():
    platform, dev = _first_device()
    result = _run_python("import gpu; print(gpu.device_info())", PYOPENCL_CTX="0:0")
    assert result.returncode == 0, result.stderr
    assert dev.name.strip() in result.stdout
    assert platform.name.strip() in result.stdout


def test_unknown_device_request_says_what_is_available():
    code = "import gpu, numpy as np; gpu.slope(np.zeros((4, 4)), (0, 1, 0, 0, 0, -1))"
    result = _run_python(code, BATCHEXEC_OPENCL_DEVICE="no-such-device")
    assert result.returncode != 0
    assert "DeviceSelectionError" in result.stderr
    assert "available" in result.stderr


def test_selection_is_logged_to_the_gpu_logger():
    code = """
        import logging, gpu
        logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
        gpu.device_info()
    """
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert "gpu OpenCL device:" in result.stderr


def test_programs_are_built_once_per_process():
    code = """
        import numpy as np, gpu
        from gpu import device
        dem = np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32)
        gt = (0.0, 10.0, 0.0, 0.0, 0.0, -10.0)
        counts = []
        first = gpu.slope(dem, gt)
        counts.append(device.build_count())
        for scale in (1.0, 2.0, 3.0):  # scale is a kernel argument, not a build option
            gpu.slope(dem, gt, scale=scale)
        np.testing.assert_array_equal(gpu.slope(dem, gt), first)
        counts.append(device.build_count())
        gpu.slope(dem.astype(np.int16), gt)  # another element type: one more program
        counts.append(device.build_count())
        gpu.slope(dem.astype(np.int16), gt)
        counts.append(device.build_count())
        print(counts)
    """
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1, 1, 2, 2]"


def test_concurrent_first_calls_build_once():
    dem = np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)
    before = device.build_count()
    results = [None] * 6
    errors = []

    def work(i):
        try:
            results[i] = gpu.hillshade(dem, GT, z=3.25)  # z does not change the program
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert device.build_count() <= before + 1


def test_build_cache_directory_is_persistent_and_overridable(tmp_path):
    code = """
        import numpy as np, gpu
        from gpu import device
        gpu.aspect(np.arange(30, dtype=np.float32).reshape(5, 6), (0, 1, 0, 0, 0, -1))
        print(device.state().cache_dir)
    """
    cache = tmp_path / "opencl-cache"
    result = _run_python(code, BATCHEXEC_OPENCL_CACHE_DIR=str(cache))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(cache)
    assert any(cache.rglob("*")), "pyopencl wrote nothing to the cache directory"
    default = _run_python(code, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert default.stdout.strip() == str(tmp_path / "xdg" / "batchexec" / "opencl")


def _child_slope(queue):
    dem = np.arange(100, dtype=np.float32).reshape(10, 10) ** 1.3
    try:
        out = gpu.slope(dem, GT)
    except device.ForkedAfterInitError as exc:
        queue.put(("refused", str(exc)))
        return
    queue.put((os.getpid(), device.state().pid, float(out[5, 5])))


def test_spawned_workers_get_their_own_state():
    dem = np.arange(100, dtype=np.float32).reshape(10, 10) ** 1.3
    expected = float(gpu.slope(dem, GT)[5, 5])  # parent state exists before the child starts
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_slope, args=(queue,))
    proc.start()
    pid, state_pid, value = queue.get(timeout=120)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert pid == state_pid != os.getpid()
    assert value == expected
    assert device.state().pid == os.getpid()


def test_fork_after_init_fails_fast_instead_of_hanging():
    gpu.device_info()  # the parent has initialised OpenCL
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_slope, args=(queue,))
    proc.start()
    outcome = queue.get(timeout=60)
    proc.join(timeout=60)
    assert outcome[0] == "refused"
    assert "spawn" in outcome[1]


def test_fork_before_init_works():
    code = """
        import multiprocessing, numpy as np
        import gpu

        def child(q):
            q.put(float(gpu.slope(np.arange(25.0).reshape(5, 5), (0, 1, 0, 0, 0, -1))[2, 2]))

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("fork")
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            print(q.get(timeout=60))
            p.join()
    """
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) > 0
