"""Which OpenCL device the kernels run on, and the per-process state that goes with it.

Why this module exists: creating an OpenCL context and compiling programs is slow (hundreds of
milliseconds on PoCL, whose LLVM compile dominates a small tile's run time), and workers are
forked or spawned processes that each run many tasks. So the context, the queue and every built
program are created once per process, lazily, under a lock, and reused; compiled binaries also
go to a persistent cache directory so a fresh worker process loads them instead of compiling.

Selection order (first match wins):

1. ``BATCHEXEC_OPENCL_DEVICE``: ``gpu``, ``cpu``, ``pocl``, ``P:D`` (platform and device
   indices, as in ``clinfo -l``) or a case-insensitive substring of ``"<platform> <device>"``.
2. ``PYOPENCL_CTX``: handed to ``pyopencl.create_some_context(interactive=False)``, which
   parses it exactly as every pyopencl program does (``"0"``, ``"0:1"``, name substrings).
3. Otherwise a GPU when any platform offers one, else a CPU device (PoCL's from
   ``pocl-binary-distribution`` here), else whatever device exists.

Build cache directory: ``BATCHEXEC_OPENCL_CACHE_DIR``, else ``$XDG_CACHE_HOME/batchexec/opencl``,
else ``~/.cache/batchexec/opencl``. pyopencl keeps its own binary cache there only for drivers
that do not cache builds themselves; PoCL and NVIDIA do (pyopencl then skips its cache), so
before OpenCL is first initialised in the process this module points their caches into the
same directory -- ``POCL_CACHE_DIR=<dir>/pocl`` and ``CUDA_CACHE_PATH=<dir>/nvidia`` -- unless
those variables are already set. (PoCL's cache also holds the per-work-group-size machine
code it compiles at first launch, which is most of its compile time.)

Fork safety: the state records ``os.getpid()`` and is created lazily, so a worker started with
``spawn`` or ``forkserver``, or forked before any kernel ran, builds its own. OpenCL drivers do
not survive ``fork`` once initialised (PoCL's worker threads and NVIDIA's driver state stay in
the parent; a child's first launch would hang), so a child forked from a process that had
already set up its device raises :class:`ForkedAfterInitError` instead of hanging.
``os.register_at_fork`` also replaces the lock in the child, so a fork taken while another
thread held it cannot deadlock.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyopencl as cl

log = logging.getLogger("gpu")

ENV_DEVICE = "BATCHEXEC_OPENCL_DEVICE"
ENV_PYOPENCL = "PYOPENCL_CTX"
ENV_CACHE_DIR = "BATCHEXEC_OPENCL_CACHE_DIR"

_KERNEL_DIR = Path(__file__).resolve().parent


class DeviceSelectionError(RuntimeError):
    """No OpenCL device matches the request (or OpenCL offers none at all)."""


class ForkedAfterInitError(RuntimeError):
    """This process was forked after its parent initialised OpenCL; it cannot use OpenCL."""


class KernelBuildError(RuntimeError):
    """An OpenCL program failed to compile; the message carries the build log."""


@dataclass
class DeviceState:
    """Everything one process holds for one device: created once, reused by every call."""

    pid: int
    context: cl.Context
    queue: cl.CommandQueue
    device: cl.Device
    cache_dir: str
    programs: dict = field(default_factory=dict)
    builds: int = 0

    @property
    def is_cpu(self) -> bool:
        """CPU devices share host memory: buffers can wrap numpy arrays without copies."""
        return bool(self.device.type & cl.device_type.CPU)


_lock = threading.Lock()
_state: DeviceState | None = None
_parent_had_opencl = False  # set in a forked child whose parent had created its state


def _reset_after_fork() -> None:
    global _lock, _state, _parent_had_opencl
    _parent_had_opencl = _parent_had_opencl or _state is not None
    _lock = threading.Lock()
    _state = None


os.register_at_fork(after_in_child=_reset_after_fork)


def cache_dir() -> str:
    """The persistent directory for compiled program binaries (created if missing)."""
    path = os.environ.get(ENV_CACHE_DIR)
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "batchexec", "opencl")
    os.makedirs(path, exist_ok=True)
    return path


def _point_driver_caches(path: str) -> None:
    """Send PoCL's and NVIDIA's own build caches to ``path`` unless the user chose already.

    Only effective before the first OpenCL call of the process (drivers read them at init).
    """
    for var, sub in (("POCL_CACHE_DIR", "pocl"), ("CUDA_CACHE_PATH", "nvidia")):
        if not os.environ.get(var):
            os.environ[var] = os.path.join(path, sub)


def _all_devices() -> list[tuple[int, int, cl.Platform, cl.Device]]:
    found = []
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:
        raise DeviceSelectionError(
            f"OpenCL offers no platform ({exc}); install pocl-binary-distribution "
            "(pip install 'batchexec[gpu]') or a vendor ICD"
        ) from exc
    for p_index, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        for d_index, device in enumerate(devices):
            found.append((p_index, d_index, platform, device))
    return found


def _describe(platform: cl.Platform, device: cl.Device) -> str:
    return f"{platform.name.strip()} {device.name.strip()}"


def _pick_by_spec(spec: str) -> cl.Device:
    devices = _all_devices()
    key = spec.strip().lower()
    wanted_type = {"gpu": cl.device_type.GPU, "cpu": cl.device_type.CPU}.get(key)
    for p_index, d_index, platform, device in devices:
        if wanted_type is not None and device.type & wanted_type:
            return device
        if key == f"{p_index}:{d_index}":
            return device
        if key == "pocl" and "portable computing language" in platform.name.lower():
            return device
        if wanted_type is None and key in _describe(platform, device).lower():
            return device
    available = ", ".join(
        f"{p}:{d} {_describe(pl, dev)}" for p, d, pl, dev in devices
    ) or "none"
    raise DeviceSelectionError(
        f"{ENV_DEVICE}={spec!r} matches no OpenCL device; available: {available}. "
        "Use gpu, cpu, pocl, P:D or a name substring."
    )


def _pick_default() -> cl.Device:
    devices = _all_devices()
    if not devices:
        raise DeviceSelectionError(
            "OpenCL offers no device; install pocl-binary-distribution for a CPU fallback"
        )
    for kind in (cl.device_type.GPU, cl.device_type.CPU):
        for _, _, _, device in devices:
            if device.type & kind:
                return device
    return devices[0][3]


def _create_state() -> DeviceState:
    build_cache = cache_dir()
    _point_driver_caches(build_cache)
    spec = os.environ.get(ENV_DEVICE)
    if spec:
        device = _pick_by_spec(spec)
        context = cl.Context([device])
        how = f"{ENV_DEVICE}={spec}"
    elif os.environ.get(ENV_PYOPENCL):
        context = cl.create_some_context(interactive=False)
        device = context.devices[0]
        how = f"{ENV_PYOPENCL}={os.environ[ENV_PYOPENCL]}"
    else:
        device = _pick_default()
        context = cl.Context([device])
        how = "default (GPU first, else CPU)"
    props = 0
    if device.queue_properties & cl.command_queue_properties.PROFILING_ENABLE:
        props = cl.command_queue_properties.PROFILING_ENABLE
    queue = cl.CommandQueue(context, device, properties=props)
    state = DeviceState(
        pid=os.getpid(), context=context, queue=queue, device=device, cache_dir=build_cache
    )
    log.info("OpenCL device: %s (chosen by %s); build cache %s",
             _describe(device.platform, device), how, state.cache_dir)
    return state


def state() -> DeviceState:
    """The current process's device state, created on first use (thread-safe)."""
    global _state
    current = _state
    if current is not None and current.pid == os.getpid():
        return current
    with _lock:
        if _state is None or _state.pid != os.getpid():
            if _parent_had_opencl:
                raise ForkedAfterInitError(
                    "this process was forked after its parent initialised OpenCL, which "
                    "cannot work in the child (the driver's threads stayed in the parent); "
                    "start workers with multiprocessing 'spawn' or 'forkserver', or fork them "
                    "before the parent runs any gpu kernel")
            _state = _create_state()
        return _state


def reset() -> None:
    """Drop the process's device state so the next call selects again (tests, env changes)."""
    global _state
    with _lock:
        _state = None


def program(filename: str, options: tuple[str, ...] = ()) -> cl.Program:
    """The built program for ``gpu/<filename>`` with these build options, built once per process.

    Options are a tuple so they can key the dict; the binary cache on disk is pyopencl's, keyed
    by source, options and device, so a new process skips the LLVM compile.
    """
    st = state()
    key = (filename, tuple(options))
    built = st.programs.get(key)
    if built is not None:
        return built
    with _lock:
        built = st.programs.get(key)
        if built is None:
            source = (_KERNEL_DIR / filename).read_text()
            try:
                built = cl.Program(st.context, source).build(
                    options=list(options), cache_dir=st.cache_dir
                )
            except cl.RuntimeError as exc:
                raise KernelBuildError(f"building gpu/{filename} {options}: {exc}") from exc
            st.programs[key] = built
            st.builds += 1
            log.debug("built gpu/%s with %s", filename, " ".join(options))
        return built


def build_count() -> int:
    """How many programs this process has built (the cache check in tests uses it)."""
    return state().builds


def device_info() -> str:
    """Platform, device and OpenCL version in use, e.g. for logs and benchmark tables."""
    st = state()
    dev = st.device
    kind = "GPU" if dev.type & cl.device_type.GPU else (
        "CPU" if dev.type & cl.device_type.CPU else cl.device_type.to_string(dev.type))
    return (f"platform: {dev.platform.name.strip()}; device: {dev.name.strip()} ({kind}, "
            f"{dev.max_compute_units} compute units, {dev.version.strip()})")
