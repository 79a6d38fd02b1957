"""Shepherd segmentation of a multi-band image, pyshepseg's algorithm with its slow steps on
OpenCL and the rest vectorised.

Stages (pyshepseg 2.0.x, shepseg.doShepherdSegmentation, is the reference; docs/segmentation.md
says where and why this differs)::

    fit_centres      k-means (scikit-learn) on a ~1 M pixel sample       host, once per image
    label            nearest centre per pixel, label + 1, 0 = null       OpenCL (classify.cl)
    clump            4-connected flood fill, capped at 10,000 pixels    OpenCL (segment_clump.cl)
    single pixels    merge into the spectrally nearest neighbour pixel  numpy, per pass over the
                     whose segment has > 1 pixel                         remaining singles only
    eliminate        sizes 1 .. min_segment_size-1, <= 10 passes each:  numpy, per pass over the
                     decide every merge, then apply them                 segments of that size
    relabel          contiguous segment IDs                              numpy (one gather)

Why the elimination is vectorised per pass rather than a loop per segment: within a pass every
decision is made before any merge, and a merge target is strictly larger than the segments of
the size being eliminated, so targets are never sources in the same pass and merges never
chain: the decisions of a pass are independent and are computed together, and the merges are
applied together (seg pixels, sizes and spectral sums updated with scatter operations).
Each pass touches only the pixels of the segments of the current size, found through per-segment
pixel lists (linked in raster order, as pyshepseg's segment locations are), never the whole
image.

Deliberate differences from pyshepseg (measured in docs/segmentation.md):
* a valid pixel never becomes null: pyshepseg's single-pixel step can merge a pixel into the
  null "segment" 0 (it only asks that the neighbour's segment has more than one pixel);
* spectral sums are float64 (pyshepseg: float32), so near-equal merge candidates can rank
  differently;
* labelling near-ties are decided in float64 (see gpu.classify).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyopencl as cl

from gpu import buffers, device
from gpu.classify import ClassifyInputError, launch_1d, nearest_centroid

log = logging.getLogger("gpu")

#: pyshepseg's clump cap (shepseg.clump's MAX_CLUMP_SIZE): large uniform regions are cut into
#: clumps of about this many pixels, which keeps the later merging steps cheap.
MAX_CLUMP_SIZE = 10000
#: pyshepseg's limit on elimination passes per segment size.
MAX_PASSES = 10
#: Default number of pixels the k-means fit samples (spread evenly over the valid pixels).
DEFAULT_SAMPLE_SIZE = 1_000_000
#: k-means random starts: several guard against a poor local minimum; each one costs a fit.
DEFAULT_KMEANS_STARTS = 3


class SegmentInputError(ClassifyInputError):
    """The image, centres or options cannot be segmented; the message says what to change."""


@dataclass
class Segmentation:
    """What gpu.segment returns: the segments, the centres used and how the run went."""

    segments: np.ndarray          # uint32 (rows, cols); 0 = null, 1..n contiguous
    centres: np.ndarray           # float64 (k, bands)
    max_spectral_diff: float
    single_pixels_merged: int = 0
    small_segments_merged: int = 0
    timings: dict = field(default_factory=dict)  # stage -> seconds

    @property
    def segment_count(self) -> int:
        return int(self.segments.max()) if self.segments.size else 0


# -- inputs ------------------------------------------------------------------------------------

def _check_image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        raise SegmentInputError(
            f"image must be 3-D (bands, rows, cols), got a 2-D array {img.shape}; "
            "for one band pass image[None]")
    if img.ndim != 3:
        raise SegmentInputError(f"image must be 3-D (bands, rows, cols), got shape {img.shape}")
    if img.shape[0] < 1:
        raise SegmentInputError(f"image has no bands (shape {img.shape}); need at least one")
    if img.dtype.kind not in "iuf":
        raise SegmentInputError(f"image dtype {img.dtype} is not numeric")
    return img


def null_mask(image: np.ndarray, nodata) -> np.ndarray | None:
    """True where any band is nodata (NaN nodata matches NaN); None when nodata is None."""
    if nodata is None:
        return None
    if isinstance(nodata, float) and math.isnan(nodata):
        return np.isnan(image).any(axis=0)
    return (image == nodata).any(axis=0)


def _check_centres(centres, bands: int) -> np.ndarray:
    cen = np.asarray(centres, dtype=np.float64)
    if cen.ndim != 2 or cen.shape[0] < 1:
        raise SegmentInputError(f"centres must be 2-D (k, bands) with k >= 1, got {cen.shape}")
    if cen.shape[1] != bands:
        raise SegmentInputError(
            f"centres have {cen.shape[1]} bands but the image has {bands}: fit the centres on "
            "this image's bands (or pass centres=None to fit them)")
    if not np.all(np.isfinite(cen)):
        raise SegmentInputError("centres must be finite")
    return cen


# -- k-means -----------------------------------------------------------------------------------

def fit_centres(pixels: np.ndarray, clusters: int = 60, *, starts: int = DEFAULT_KMEANS_STARTS,
                seed: int | None = 0) -> np.ndarray:
    """k-means centres (k, bands) fitted on pixels (n, bands), as pyshepseg does (sklearn)."""
    from sklearn.cluster import KMeans

    if pixels.shape[0] < clusters:
        raise SegmentInputError(
            f"only {pixels.shape[0]} valid pixels to fit {clusters} clusters; "
            "lower clusters or give more valid pixels")
    km = KMeans(n_clusters=clusters, n_init=starts, random_state=seed)
    km.fit(np.asarray(pixels, dtype=np.float64))
    return km.cluster_centers_


def sample_valid_pixels(image: np.ndarray, nodata, sample_size: int = DEFAULT_SAMPLE_SIZE):
    """About sample_size valid pixels (n, bands), taken at a regular stride over the image."""
    bands = image.shape[0]
    flat = image.reshape(bands, -1)
    mask = null_mask(image, nodata)
    idx = np.arange(flat.shape[1]) if mask is None else np.flatnonzero(~mask.reshape(-1))
    if idx.size == 0:
        raise SegmentInputError("the image is all nodata: there is nothing to segment")
    step = max(1, idx.size // sample_size)
    return flat[:, idx[::step]].T


def auto_max_spectral_diff(centres: np.ndarray, percentile: float = 50) -> float:
    """pyshepseg's 'auto' merge limit: a percentile of the distances between centres.

    Computed as pyshepseg does (float32 distances, numpy.percentile) so the limit is the same.
    """
    k = centres.shape[0]
    if k < 2:
        return float("inf")
    i, j = np.triu_indices(k, 1)
    dist = np.sqrt(((centres[i] - centres[j]) ** 2).sum(axis=1)).astype(np.float32)
    return float(np.percentile(dist, percentile))


# -- clumping ----------------------------------------------------------------------------------

#: Where the sequential clump search runs when the main device is a GPU: "cpu" (default) a
#: CPU OpenCL device if one exists (PoCL comes with the gpu extra), "main" the GPU itself.
ENV_CLUMP_DEVICE = "BATCHEXEC_CLUMP_DEVICE"

_clump_lock = threading.Lock()
_clump_state: device.DeviceState | None = None


def clump_device(separate_cpu_context: bool = False) -> device.DeviceState:
    """The device the clump search runs on.

    The search is one work-item (see segment_clump.cl): compiled C on a CPU device, but a
    single GPU thread would be one to two orders of magnitude slower. So with a GPU as the main
    device it runs on a CPU OpenCL device in a context of its own, created once per process,
    unless BATCHEXEC_CLUMP_DEVICE=main or no CPU device exists (then, logged, the GPU).
    separate_cpu_context forces the second context on a CPU machine too (tests).
    """
    global _clump_state
    st = device.state()
    if (st.is_cpu and not separate_cpu_context) or os.environ.get(ENV_CLUMP_DEVICE) == "main":
        return st
    current = _clump_state
    if current is not None and current.pid == os.getpid():
        return current
    with _clump_lock:
        if _clump_state is None or _clump_state.pid != os.getpid():
            cpus = [d for p in cl.get_platforms() for d in _devices(p)
                    if d.type & cl.device_type.CPU]
            if not cpus:
                log.warning("no CPU OpenCL device: the sequential clump search runs on %s "
                            "as one work-item (slow on a GPU)", st.device.name)
                return st
            ctx = cl.Context([cpus[0]])
            _clump_state = device.DeviceState(pid=os.getpid(), context=ctx,
                                              queue=cl.CommandQueue(ctx), device=cpus[0],
                                              cache_dir=st.cache_dir)
        return _clump_state


def _devices(platform):
    try:
        return platform.get_devices()
    except cl.Error:
        return []


def _clump_program(st: device.DeviceState) -> cl.Program:
    options = (f"-DMAX_CLUMP_SIZE={MAX_CLUMP_SIZE}",)
    if st is device.state():
        return device.program("segment_clump.cl", options)
    key = ("segment_clump.cl", options)
    if key not in st.programs:
        source = (Path(device.__file__).parent / "segment_clump.cl").read_text()
        st.programs[key] = cl.Program(st.context, source).build(options=list(options),
                                                                cache_dir=st.cache_dir)
    return st.programs[key]


def clump(labels: np.ndarray, *, separate_cpu_context: bool = False) -> tuple[np.ndarray, int]:
    """Capped 4-connected clumps of equal labels, numbered in raster order (0 stays 0)."""
    rows, cols = labels.shape
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    out = buffers.empty_aligned((rows, cols), np.uint32)
    if out.size == 0:
        return out, 0
    if out.size >= 2 ** 32:
        raise SegmentInputError("an image tile must have fewer than 2**32 pixels")
    out.fill(0)
    st = clump_device(separate_cpu_context)
    prg = _clump_program(st)
    mf = cl.mem_flags
    lab_buf = buffers.input_buffer(st, lab)
    if st.is_cpu:
        out_buf = cl.Buffer(st.context, mf.READ_WRITE | mf.USE_HOST_PTR, hostbuf=out)
    else:
        out_buf = cl.Buffer(st.context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=out)
    stack_buf = cl.Buffer(st.context, mf.READ_WRITE, size=out.nbytes)
    count = np.zeros(1, np.uint32)
    count_buf = cl.Buffer(st.context, mf.WRITE_ONLY, size=4)
    kernel = cl.Kernel(prg, "clump")
    kernel.set_args(lab_buf, out_buf, stack_buf, np.int32(rows), np.int32(cols), count_buf)
    event = cl.enqueue_nd_range_kernel(st.queue, kernel, (1,), (1,))
    cl.enqueue_copy(st.queue, count, count_buf, wait_for=[event], is_blocking=True)
    buffers.fetch(st, out_buf, out, wait_for=[event])
    for buf in (lab_buf, out_buf, stack_buf, count_buf):
        buf.release()
    return out, int(count[0])


# -- segment statistics ------------------------------------------------------------------------

_INT_CTYPES = {np.dtype(np.uint8): "uchar", np.dtype(np.int8): "char",
               np.dtype(np.uint16): "ushort", np.dtype(np.int16): "short",
               np.dtype(np.uint32): "uint", np.dtype(np.int32): "int"}


def segment_stats(image: np.ndarray, seg: np.ndarray, nseg: int):
    """(sizes int64 (nseg,), spectral sums float64 (nseg, bands)) of segments 0..nseg-1.

    Integer images: the segment_stats OpenCL kernel (exact integer sums, one pass); float
    images, or devices without 64-bit atomics: numpy bincount. Index 0 (null) is not used.
    """
    flat = seg.reshape(-1)
    st = device.state()
    if (image.dtype in _INT_CTYPES and flat.size
            and "cl_khr_int64_base_atomics" in st.device.extensions):
        rows, cols = seg.shape
        prg = device.program("segment_stats.cl", (f"-DSRC_T={_INT_CTYPES[image.dtype]}",
                                                  f"-DNBANDS={image.shape[0]}"))
        mf = cl.mem_flags
        sizes = np.zeros(nseg, np.uint32)
        sums = np.zeros((nseg, image.shape[0]), np.int64)
        img = np.ascontiguousarray(image)
        seg_buf = buffers.input_buffer(st, np.ascontiguousarray(seg))
        pix_buf = buffers.input_buffer(st, img)
        size_buf = cl.Buffer(st.context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=sizes)
        sum_buf = cl.Buffer(st.context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=sums)
        kernel = cl.Kernel(prg, "segment_stats")
        kernel.set_args(seg_buf, pix_buf, size_buf, sum_buf, np.int32(rows), np.int32(cols))
        event = launch_1d(st.queue, kernel, rows)
        cl.enqueue_copy(st.queue, sizes, size_buf, wait_for=[event])
        cl.enqueue_copy(st.queue, sums, sum_buf, wait_for=[event], is_blocking=True)
        for buf in (seg_buf, pix_buf, size_buf, sum_buf):
            buf.release()
        sizes = sizes.astype(np.int64)
        sizes[0] = 0  # not counted here; never used (null is no merge source or target)
        return sizes, sums.astype(np.float64)
    sizes = np.bincount(flat, minlength=nseg).astype(np.int64)
    sums = np.stack([np.bincount(flat, weights=b.reshape(-1), minlength=nseg)
                     for b in image]).T.copy()
    return sizes, sums


# -- neighbours --------------------------------------------------------------------------------

def _neighbours(pix: np.ndarray, rows: int, cols: int):
    """4-neighbours of flat pixel indices in pyshepseg's order (up, left, right, down).

    Returns (index array (..., 4), in-bounds mask); out-of-bounds indices point at the pixel
    itself so gathers stay in range.
    """
    r, c = np.divmod(pix, cols)
    nb = np.stack([pix - cols, pix - 1, pix + 1, pix + cols], axis=-1)
    ok = np.stack([r > 0, c > 0, c < cols - 1, r < rows - 1], axis=-1)
    return np.where(ok, nb, pix[..., None]), ok


def _spectral_distance(flat_img: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared spectral distance between pixels a and b (exact for integer images)."""
    acc = np.zeros(a.shape, np.float64 if flat_img.dtype.kind == "f" else np.int64)
    for band in flat_img:
        if band.dtype.kind == "f":
            d = band[a].astype(np.float64) - band[b]
        else:
            d = band[a].astype(np.int64) - band[b]
        acc += d * d
    return acc


# -- single pixels -----------------------------------------------------------------------------

def merge_single_pixels(image: np.ndarray, seg: np.ndarray, size: np.ndarray) -> int:
    """Merge every one-pixel segment into its spectrally nearest neighbouring pixel's segment,
    among neighbours whose segment has more than one pixel; repeat until none can merge.

    Modifies seg (flat view) and size in place; returns the number merged. Each pass decides
    all merges first (as pyshepseg's mergeSinglePixels); only the remaining singles are
    revisited. Unlike pyshepseg, the null segment is never a neighbour to merge into.
    """
    rows, cols = seg.shape
    flat = seg.reshape(-1)
    flat_img = image.reshape(image.shape[0], -1)
    singles = np.flatnonzero((size[flat] == 1) & (flat != 0))
    merged = 0
    while singles.size:
        nb, ok = _neighbours(singles, rows, cols)
        nseg = flat[nb]
        ok &= (nseg != 0) & (size[nseg] > 1)
        dist = _spectral_distance(flat_img, np.broadcast_to(singles[:, None], nb.shape), nb)
        if dist.dtype.kind == "i":
            dist = np.where(ok, dist, np.iinfo(np.int64).max)
        else:
            dist = np.where(ok, dist, np.inf)
        pick = np.argmin(dist, axis=1)  # the first of equal distances, as pyshepseg
        rowsel = np.arange(singles.size)
        can = ok[rowsel, pick]
        if not can.any():
            break
        src = singles[can]
        dst_seg = nseg[rowsel, pick][can]
        old = flat[src]
        flat[src] = dst_seg
        size[old] = 0
        np.add.at(size, dst_seg, 1)
        merged += int(src.size)
        singles = singles[~can]
    return merged


def relabel_contiguous(seg: np.ndarray, size: np.ndarray) -> int:
    """Renumber segments 1..n in the order of their old IDs, dropping empty ones; in place."""
    used = size > 0
    used[0] = True  # 0 stays 0
    lut = (np.cumsum(used) - 1).astype(np.uint32)
    flat = seg.reshape(-1)
    # mode="clip": every ID is in range; numpy's default "raise" mode with out= buffers the
    # whole array and was 5x slower (0.19 s vs 0.04 s for 16 M pixels)
    np.take(lut, flat, out=flat, mode="clip")
    return int(lut[-1]) if lut.size else 0


# -- small-segment elimination -----------------------------------------------------------------

class _SegmentPixels:
    """Pixel lists of the segments smaller than min_size, linked so merges can append.

    pos -> pixel index (pixel_of), pos -> next pos in the same segment (nxt, -1 ends), and per
    segment head/tail positions (-1 for segments with no list: large ones and null).
    """

    def __init__(self, flat_seg: np.ndarray, size: np.ndarray, min_size: int):
        small = size < min_size
        small[0] = False
        npix = flat_seg.size
        pix = np.flatnonzero(small[flat_seg])
        key = flat_seg[pix].astype(np.int64) * npix + pix
        key.sort()  # by segment, then raster order: pyshepseg's segment-location order
        seg_of = key // npix
        self.pixel_of = key - seg_of * npix
        n = key.size
        self.nxt = np.arange(1, n + 1, dtype=np.int64)
        last = np.ones(n, bool)
        if n:
            last[:-1] = seg_of[1:] != seg_of[:-1]
        self.nxt[last] = -1
        first = np.ones(n, bool)
        if n:
            first[1:] = last[:-1]
        self.head = np.full(size.size, -1, np.int64)
        self.tail = np.full(size.size, -1, np.int64)
        self.head[seg_of[first]] = np.flatnonzero(first)
        self.tail[seg_of[last]] = np.flatnonzero(last)

    def pixels(self, segs: np.ndarray, count: int) -> np.ndarray:
        """(len(segs), count) pixel indices of segments that have exactly count pixels."""
        out = np.empty((segs.size, count), np.int64)
        pos = self.head[segs]
        for k in range(count):
            out[:, k] = self.pixel_of[pos]
            pos = self.nxt[pos]
        return out

    def append(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Append each src segment's list to its dst's (dst groups in ascending src order)."""
        has = self.head[dst] >= 0
        src, dst = src[has], dst[has]
        if src.size == 0:
            return
        order = np.argsort(dst, kind="stable")  # src is ascending: stays so within a group
        src, dst = src[order], dst[order]
        first = np.ones(src.size, bool)
        first[1:] = dst[1:] != dst[:-1]
        last = np.ones(src.size, bool)
        last[:-1] = first[1:]
        prev_tail = np.empty(src.size, np.int64)
        prev_tail[first] = self.tail[dst[first]]
        prev_tail[~first] = self.tail[src[:-1][~first[1:]]]
        self.nxt[prev_tail] = self.head[src]
        self.tail[dst[last]] = self.tail[src[last]]
        self.head[src] = -1
        self.tail[src] = -1


def eliminate_small_segments(image: np.ndarray, seg: np.ndarray, min_size: int,
                             max_spectral_diff: float) -> int:
    """pyshepseg's eliminateSmallSegments, one vectorised step per pass; seg in place.

    For each size t = 1 .. min_size-1, up to MAX_PASSES passes: every segment of size t finds
    its neighbouring segment (4-connected, not null, larger than t) with the nearest mean
    spectrum; it merges there when that distance is within max_spectral_diff. Ties go to the
    first candidate met walking the segment's pixels (raster order) and each pixel's
    neighbours (up, left, right, down), as in pyshepseg. Returns the number of merges.
    """
    rows, cols = seg.shape
    flat = seg.reshape(-1)
    nseg = int(flat.max()) + 1 if flat.size else 1
    size, sums = segment_stats(image, seg, nseg)  # (nseg,), (nseg, bands) float64
    limit = np.float32(max_spectral_diff) ** 2 if math.isfinite(max_spectral_diff) else np.inf
    lists = _SegmentPixels(flat, size, min_size)
    merged = 0
    size[0] = 0  # null is never a source
    t = 0
    while True:
        # the next size that has segments (pyshepseg steps through every size; sizes with
        # no segment do nothing, and skipping them keeps a large min_size cheap)
        pending = size[(size > t) & (size < min_size)]
        if pending.size == 0:
            break
        t = int(pending.min())
        cands = np.flatnonzero(size == t)
        passes = 0
        while cands.size and passes < MAX_PASSES:
            pix = lists.pixels(cands, t)                      # (n, t)
            nb, ok = _neighbours(pix, rows, cols)             # (n, t, 4)
            nbseg = flat[nb]
            ok &= (nbseg != cands[:, None, None]) & (nbseg != 0) & (size[nbseg] > t)
            mean_src = sums[cands] / t                        # (n, bands)
            mean_nb = sums[nbseg] / np.maximum(size[nbseg], 1)[..., None]
            dist = ((mean_src[:, None, None, :] - mean_nb) ** 2).sum(axis=-1)
            dist = np.where(ok, dist, np.inf).reshape(cands.size, t * 4)
            pick = np.argmin(dist, axis=1)
            rowsel = np.arange(cands.size)
            best = dist[rowsel, pick]
            go = np.isfinite(best) & (best <= limit)
            if not go.any():
                break
            src = cands[go]
            dst = nbseg.reshape(cands.size, t * 4)[rowsel, pick][go]
            flat[pix[go]] = dst[:, None]
            np.add.at(size, dst, t)
            np.add.at(sums, dst, sums[src])
            size[src] = 0
            sums[src] = 0
            lists.append(src, dst)
            merged += int(src.size)
            cands = cands[~go]
            passes += 1
    relabel_contiguous(seg, size)
    return merged


# -- the whole segmentation --------------------------------------------------------------------

def segment(image, *, centres=None, clusters: int = 60, min_segment_size: int = 50,
            nodata=None, max_spectral_diff: float | str | None = "auto",
            spectral_diff_percentile: float = 50, sample_size: int = DEFAULT_SAMPLE_SIZE,
            kmeans_starts: int = DEFAULT_KMEANS_STARTS, seed: int | None = 0) -> Segmentation:
    """Shepherd segmentation of image (bands, rows, cols): pyshepseg's doShepherdSegmentation.

    centres: fixed cluster centres (k, bands) (pyshepseg's kmeansObj; a tiled run passes the
        same centres to every tile); None fits k-means (scikit-learn, `clusters` clusters,
        `kmeans_starts` random starts, seeded by `seed`) on about `sample_size` valid pixels.
    nodata: a pixel equal to nodata in ANY band is null (0 in the result).
    max_spectral_diff: merge limit in the image's units; "auto" takes the
        `spectral_diff_percentile` percentile of distances between centres (pyshepseg's
        default), None means no limit.
    Returns a Segmentation: uint32 segments (0 = null, IDs 1..n contiguous), the centres used,
    the merge limit, merge counts and per-stage timings in seconds.
    """
    img = _check_image(image)
    if min_segment_size < 1:
        raise SegmentInputError(f"min_segment_size must be >= 1, got {min_segment_size}")
    mask = null_mask(img, nodata)
    if mask is not None and mask.all():
        raise SegmentInputError(
            f"the image is all nodata ({nodata!r} in some band of every pixel): there is "
            "nothing to segment; check the nodata value")
    timings = {}
    t0 = time.perf_counter()
    if centres is None:
        centres = fit_centres(sample_valid_pixels(img, nodata, sample_size), clusters,
                              starts=kmeans_starts, seed=seed)
        timings["fit"] = time.perf_counter() - t0
    cen = _check_centres(centres, img.shape[0])
    limit = _merge_limit(cen, max_spectral_diff, spectral_diff_percentile)
    return segment_with_centres(img, cen, nodata=nodata, min_segment_size=min_segment_size,
                                max_spectral_diff=limit, timings=timings)


def _merge_limit(centres, max_spectral_diff, percentile) -> float:
    if max_spectral_diff == "auto":
        return auto_max_spectral_diff(centres, percentile)
    if max_spectral_diff is None:
        return float("inf")
    value = float(max_spectral_diff)
    if not value >= 0:
        raise SegmentInputError(f"max_spectral_diff must be >= 0, 'auto' or None, got {value}")
    return value


def segment_with_centres(img: np.ndarray, centres: np.ndarray, *, nodata, min_segment_size: int,
                         max_spectral_diff: float, timings: dict | None = None) -> Segmentation:
    """The per-tile work once the centres and the merge limit are known (no fitting)."""
    timings = {} if timings is None else timings
    t = time.perf_counter()
    labels = nearest_centroid(img, centres, nodata=nodata)
    timings["label"] = time.perf_counter() - t
    t = time.perf_counter()
    seg, _ = clump(labels)
    del labels
    timings["clump"] = time.perf_counter() - t
    t = time.perf_counter()
    size = np.bincount(seg.reshape(-1)).astype(np.int64)
    singles = merge_single_pixels(img, seg, size)
    relabel_contiguous(seg, size)
    timings["single_pixels"] = time.perf_counter() - t
    t = time.perf_counter()
    eliminated = eliminate_small_segments(img, seg, min_segment_size, max_spectral_diff)
    timings["eliminate"] = time.perf_counter() - t
    return Segmentation(seg, centres, max_spectral_diff, singles, eliminated, timings)
