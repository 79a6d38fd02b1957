"""nearest_centroid: per-pixel k-means labels (Shepherd segmentation's labelling step).

Why here rather than scikit-learn: ``KMeans.predict`` on a full scene is the slow, memory-
hungry part of pyshepseg's segmentation (it transposes the image to pixels x bands in
float64); this does the same labelling band-sequentially on the OpenCL device.

Nodata rule: a pixel is nodata when ANY band equals ``nodata`` (pyshepseg's
``(img == imgNullVal).any(axis=0)``); a NaN ``nodata`` matches NaN values (numpy's ``==``
would never match). Such pixels get label 0; the others 1..k (``KMeans.predict(...) + 1``).
Pixels are compared and labelled in float32.
"""

from __future__ import annotations

import math

import numpy as np
import pyopencl as cl

from gpu import buffers, device

_CTYPES = {np.dtype(np.uint8): "uchar", np.dtype(np.int8): "char",
           np.dtype(np.uint16): "ushort", np.dtype(np.int16): "short",
           np.dtype(np.uint32): "uint", np.dtype(np.int32): "int",
           np.dtype(np.float32): "float"}

# Centroids live in __constant memory, whose guaranteed minimum size is 64 KiB.
MAX_CENTROID_VALUES = 16384


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


def nearest_centroid(pixels, centroids, *, nodata=None) -> np.ndarray:
    """Label each pixel with 1 + the index of its nearest centroid; 0 where nodata.

    pixels: (bands, rows, cols), any integer or float dtype (64-bit types are converted to
    float32 on the host); centroids: (k, bands). Returns int32 (rows, cols).
    """
    pix, cen = _check(pixels, centroids)
    bands, rows, cols = pix.shape
    if pix.dtype not in _CTYPES:
        pix = pix.astype(np.float32)
    pix = np.ascontiguousarray(pix)
    labels = buffers.empty_aligned((rows, cols), np.int32)
    if labels.size == 0:
        return labels
    nd = float(np.float32(nodata)) if nodata is not None else 0.0
    options = (f"-DSRC_T={_CTYPES[pix.dtype]}", f"-DNBANDS={bands}",
               f"-DNCLUSTERS={cen.shape[0]}", f"-DHAS_NODATA={int(nodata is not None)}",
               f"-DNODATA_IS_NAN={int(nodata is not None and math.isnan(nd))}")
    st = device.state()
    prg = device.program("classify.cl", options)
    mf = cl.mem_flags
    cen_buf = cl.Buffer(st.context, mf.READ_ONLY | mf.COPY_HOST_PTR,
                        hostbuf=np.ascontiguousarray(cen, dtype=np.float32))
    pix_buf = buffers.input_buffer(st, pix)
    out_buf = buffers.output_buffer(st, labels)
    kernel = cl.Kernel(prg, "nearest_centroid")
    kernel.set_args(pix_buf, cen_buf, out_buf, np.int64(rows * cols), np.float32(nd))
    event = cl.enqueue_nd_range_kernel(st.queue, kernel, (rows * cols,), None)
    buffers.fetch(st, out_buf, labels, wait_for=[event])
    for buf in (pix_buf, out_buf, cen_buf):
        buf.release()
    return labels
