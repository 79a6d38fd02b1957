"""nearest_centroid: per-pixel k-means labels (Shepherd segmentation's labelling step).

Why here rather than scikit-learn: ``KMeans.predict`` on a full scene is the slow, memory-
hungry part of pyshepseg's segmentation (it transposes the image to pixels x bands in
float64); this does the same labelling band-sequentially on the OpenCL device.

Nodata rule: a pixel is nodata when ANY band equals ``nodata`` (pyshepseg's
``(img == imgNullVal).any(axis=0)``); a NaN ``nodata`` matches NaN values (numpy's ``==``
would never match). Such pixels get label 0; the others 1..k (``KMeans.predict(...) + 1``).

Precision: pixels are compared in float32, which alone changed 6 of 16 M labels against
scikit-learn (float64) on a uint16 scene: near-ties. With ``refine=True`` (the default) the
kernel also finds the runner-up, and a pixel whose best and runner-up distances are within
float32's error bound is decided again in float64: on the device when it has ``cl_khr_fp64``,
otherwise on the host (numpy, float64, from the original pixels), which is logged once per
process. Only near-ties take that path (about 1 pixel in 10^3 to 10^4), so it costs little.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyopencl as cl

from gpu import buffers, device

_CTYPES = {np.dtype(np.uint8): "uchar", np.dtype(np.int8): "char",
           np.dtype(np.uint16): "ushort", np.dtype(np.int16): "short",
           np.dtype(np.uint32): "uint", np.dtype(np.int32): "int",
           np.dtype(np.float32): "float"}

log = logging.getLogger("gpu")

#: Pixels per work-item of the labelling kernel (its VW: explicit float8 arithmetic).
PIXELS_PER_WORK_ITEM = 8
#: Explicit work-group size of the 1-D kernels. Fixed rather than left to the runtime because
#: PoCL compiles machine code per work-group size at the first launch: with the runtime's
#: choice (which depends on the range) a warm-up on a tiny image built one variant and the
#: first real tile another (seconds on a loaded 2-core machine).
WORK_GROUP = 64


def launch_1d(queue, kernel, items: int, wait_for=None):
    """Enqueue kernel over `items` work-items (rounded up to WORK_GROUP; kernels guard)."""
    size = -(-max(items, 1) // WORK_GROUP) * WORK_GROUP
    return cl.enqueue_nd_range_kernel(queue, kernel, (size,), (WORK_GROUP,), wait_for=wait_for)

# Centroids live in __constant memory, whose guaranteed minimum size is 64 KiB.
MAX_CENTROID_VALUES = 16384


#: 64-bit pixel types are labelled in float32 on the device; their near-ties are always
#: re-decided on the host from the original values (the device never sees them in 64 bits).
_WIDE = (np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.uint64))

_warned_no_fp64 = False


class ClassifyInputError(ValueError):
    """pixels/centroids have the wrong shape or type; the message says which."""


def _check(pixels, centroids):
    pix = np.asarray(pixels)
    cen = np.asarray(centroids)
    if pix.ndim != 3:
        raise ClassifyInputError(
            f"pixels must be 3-D (bands, rows, cols), got shape {pix.shape}")
    if cen.ndim != 2:
        raise ClassifyInputError(f"centroids must be 2-D (k, bands), got shape {cen.shape}")
    if cen.shape[1] != pix.shape[0]:
        raise ClassifyInputError(
            f"centroids have {cen.shape[1]} bands but pixels have {pix.shape[0]}: "
            "centroids must be (k, bands) for pixels (bands, rows, cols)")
    if cen.shape[0] < 1 or pix.shape[0] < 1:
        raise ClassifyInputError("need at least one band and one centroid")
    if cen.size > MAX_CENTROID_VALUES:
        raise ClassifyInputError(
            f"k * bands = {cen.size} exceeds {MAX_CENTROID_VALUES} (constant memory)")
    for name, a in (("pixels", pix), ("centroids", cen)):
        if a.dtype.kind not in "iuf" or a.dtype == np.bool_:
            raise ClassifyInputError(f"{name} dtype {a.dtype} is not numeric")
    if not np.all(np.isfinite(cen)):
        raise ClassifyInputError("centroids must be finite")
    return pix, cen


def device_has_fp64() -> bool:
    """True when the current OpenCL device supports double precision (cl_khr_fp64)."""
    dev = device.state().device
    return "cl_khr_fp64" in dev.extensions or bool(getattr(dev, "double_fp_config", 0))


def nearest_centroid(pixels, centroids, *, nodata=None, refine=True,
                     device_fp64: bool | None = None) -> np.ndarray:
    """Label each pixel with 1 + the index of its nearest centroid; 0 where nodata.

    pixels: (bands, rows, cols), any integer or float dtype (64-bit types are converted to
    float32 for the device); centroids: (k, bands). Returns int32 (rows, cols).
    refine: re-decide float32 near-ties in float64 (see the module docstring); False gives
    the plain float32 labelling. device_fp64: None detects; False forces the host fallback.
    """
    global _warned_no_fp64
    pix, cen = _check(pixels, centroids)
    original = pix
    bands, rows, cols = pix.shape
    if pix.dtype not in _CTYPES:
        pix = pix.astype(np.float32)
    pix = np.ascontiguousarray(pix)
    labels = buffers.empty_aligned((rows, cols), np.int32)
    if labels.size == 0:
        return labels
    npix = rows * cols
    nd = float(np.float32(nodata)) if nodata is not None else 0.0
    cen64 = np.ascontiguousarray(cen, dtype=np.float64)
    if device_fp64 is None:
        device_fp64 = device_has_fp64()
    on_device = bool(refine and device_fp64 and original.dtype not in _WIDE)
    if refine and not device_fp64 and not _warned_no_fp64:
        _warned_no_fp64 = True
        log.info("OpenCL device has no fp64: near-tie labels are re-decided on the host")
    options = (f"-DSRC_T={_CTYPES[pix.dtype]}", f"-DNBANDS={bands}",
               f"-DNCLUSTERS={cen.shape[0]}", f"-DHAS_NODATA={int(nodata is not None)}",
               f"-DNODATA_IS_NAN={int(nodata is not None and math.isnan(nd))}",
               f"-DMARK_TIES={int(bool(refine))}") + (("-DREFINE_FP64",) if on_device else ())
    st = device.state()
    prg = device.program("classify.cl", options)
    mf = cl.mem_flags
    cen_buf = cl.Buffer(st.context, mf.READ_ONLY | mf.COPY_HOST_PTR,
                        hostbuf=np.ascontiguousarray(cen, dtype=np.float32))
    pix_buf = buffers.input_buffer(st, pix)
    out_buf = buffers.output_buffer(st, labels)
    cnorm = float(np.sqrt((cen64 ** 2).sum(axis=1)).max())
    kernel = cl.Kernel(prg, "nearest_centroid")
    kernel.set_args(pix_buf, cen_buf, out_buf, np.int64(npix), np.float32(nd),
                    np.float32(cnorm))
    event = launch_1d(st.queue, kernel, -(-npix // PIXELS_PER_WORK_ITEM))
    buffers.fetch(st, out_buf, labels, wait_for=[event])
    try:
        if refine:
            marked = np.flatnonzero(labels.reshape(-1) < 0)
            if marked.size and on_device:
                _refine_on_device(st, prg, pix_buf, cen64, labels, marked, npix)
            elif marked.size:
                _resolve_on_host(original, cen64, labels, marked)
    finally:
        for buf in (pix_buf, out_buf, cen_buf):
            buf.release()
    return labels


def _refine_on_device(st, prg, pix_buf, cen64, labels, marked, npix) -> None:
    """refine_labels over the marked pixels; their new labels are scattered back on the host."""
    mf = cl.mem_flags
    idx = np.ascontiguousarray(marked, dtype=np.int64)
    out = np.empty(npix, np.int32)  # only the marked entries are written and read back
    cen_buf = cl.Buffer(st.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=cen64)
    idx_buf = cl.Buffer(st.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=idx)
    out_buf = cl.Buffer(st.context, mf.READ_WRITE, size=out.nbytes)
    kernel = cl.Kernel(prg, "refine_labels")
    kernel.set_args(pix_buf, cen_buf, out_buf, idx_buf, np.int64(idx.size), np.int64(npix))
    event = launch_1d(st.queue, kernel, idx.size)
    cl.enqueue_copy(st.queue, out, out_buf, wait_for=[event], is_blocking=True)
    labels.reshape(-1)[idx] = out[idx]
    for buf in (cen_buf, idx_buf, out_buf):
        buf.release()


def _resolve_on_host(pixels: np.ndarray, centroids: np.ndarray, labels: np.ndarray,
                     marked: np.ndarray) -> None:
    """Re-decide the marked pixels in float64 from the original values, in place."""
    flat = labels.reshape(-1)
    pts = pixels.reshape(pixels.shape[0], -1)[:, marked].T.astype(np.float64)
    d = ((pts[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    flat[marked] = np.argmin(d, axis=1).astype(np.int32) + 1
