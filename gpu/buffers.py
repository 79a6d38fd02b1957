"""numpy arrays in and out of OpenCL buffers with as few copies as the device allows.

Why: on a CPU device (PoCL) the "device" memory is host memory, and copying a 256 MB DEM in
and a 256 MB result out would cost more than the kernel itself. There, buffers wrap the numpy
arrays (CL_MEM_USE_HOST_PTR) and the result is made visible with a map/unmap, which PoCL turns
into a no-op. On a discrete GPU the copies are real and unavoidable: one upload, one download.
"""

from __future__ import annotations

import numpy as np
import pyopencl as cl

from gpu.device import DeviceState

# PoCL uses a USE_HOST_PTR pointer in place only when it is aligned to the device's base
# address alignment (128 bytes on x86); output arrays are allocated that way.
_ALIGN = 128


def empty_aligned(shape, dtype) -> np.ndarray:
    """np.empty whose data pointer is _ALIGN-byte aligned (so PoCL need not shadow-copy it)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def input_buffer(st: DeviceState, array: np.ndarray) -> cl.Buffer:
    """A read-only buffer holding ``array`` (C-contiguous); zero-copy on CPU devices."""
    mf = cl.mem_flags
    if array.nbytes == 0:
        raise ValueError("empty arrays have no OpenCL buffer")
    if st.is_cpu:
        return cl.Buffer(st.context, mf.READ_ONLY | mf.USE_HOST_PTR, hostbuf=array)
    return cl.Buffer(st.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=array)


def output_buffer(st: DeviceState, array: np.ndarray) -> cl.Buffer:
    """A write-only buffer whose results end up in ``array`` after :func:`fetch`."""
    mf = cl.mem_flags
    if st.is_cpu:
        return cl.Buffer(st.context, mf.WRITE_ONLY | mf.USE_HOST_PTR, hostbuf=array)
    return cl.Buffer(st.context, mf.WRITE_ONLY, size=array.nbytes)


def fetch(st: DeviceState, buffer: cl.Buffer, array: np.ndarray, wait_for=None) -> None:
    """Make the kernel's output visible in ``array`` (map/unmap on CPU, a copy on GPUs)."""
    if st.is_cpu:
        mapped, _ = cl.enqueue_map_buffer(
            st.queue, buffer, cl.map_flags.READ, 0, array.shape, array.dtype,
            wait_for=wait_for, is_blocking=True)
        if mapped.ctypes.data != array.ctypes.data:  # the runtime kept a shadow copy
            array[...] = mapped
        mapped.base.release(st.queue)
        st.queue.finish()
    else:
        cl.enqueue_copy(st.queue, array, buffer, wait_for=wait_for, is_blocking=True)
