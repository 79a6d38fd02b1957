"""Tiled raster pipeline: run a terrain kernel over a raster through any Executor.

Data flow (only small records cross the executor; pixels go through storage)::

    client: run_tiled(executor, src, dst)              worker: process_tile(TileTask)
    ┌───────────────────────────────────────┐          ┌──────────────────────────────────┐
    │ raster_info(src) -> tile_grid(...)    │ TileTask │ read_window(src, tile.read)      │
    │ submit(process_tile, TileTask) ───────┼────────▶ │ gpu.<operation>(array, gt, ...)  │
    │                                       │          │ write core -> tile file          │
    │ as_completed: read tile file, write ◀─┼──────────│ return TileResult(path, stats)   │
    │ its core into dst (.partial), remove  │TileResult└──────────────────────────────────┘
    │ tile file; rename .partial -> dst     │
    └───────────────────────────────────────┘
    tile files: a local scratch directory next to dst (workers on this machine), or a
    /vsis3/ prefix (workers elsewhere; the source must then be reachable by them too).

Why tiles with a halo give the untiled result exactly: see gpu.tiling. Why the pixels do not
travel in task and result messages: a worker can read the source itself, and a message
carrying a 1024 x 1024 Float32 window (4 MiB) would cost more to pickle, queue and unpickle
than the kernel costs to run.

The functions sent to workers (`process_tile`) are module-level and picklable by reference,
as every executor (ProcessPoolExecutor, BatchExecutor) requires.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal

from . import gdal_io
from .tiling import TERRAIN_HALO, Tile, Window, tile_grid

#: Default core tile size. Large enough that per-tile overhead (a task round trip, opening the
#: source, one kernel launch) is small against the pixels, small enough that a 8192 x 8192
#: raster still gives 64 tiles to spread over workers and to stitch while others compute.
DEFAULT_TILE_SIZE = 1024

#: Scratch tiles are read back once, moments after they are written. On a local disk they
#: stay in the page cache, so any compression is pure CPU cost (ZSTD level 1 tripled the tile
#: write time for the 8192 x 8192 job); through S3 the bytes cross the network, and ZSTD
#: level 1 (a few hundred MB/s) shrinks hillshade tiles about 5x.
LOCAL_TILE_CREATION_OPTIONS = ()
S3_TILE_CREATION_OPTIONS = ("COMPRESS=ZSTD", "ZSTD_LEVEL=1")

#: The stitched result: tiled so that readers can window it, compressed with DEFLATE (readable
#: by every GDAL build, unlike ZSTD) at a low level (most of the gain, a fraction of the cost),
#: with horizontal differencing, compressed on all cores.
OUTPUT_CREATION_OPTIONS = (
    "TILED=YES",
    "BLOCKXSIZE=512",
    "BLOCKYSIZE=512",
    "COMPRESS=DEFLATE",
    "ZLEVEL=1",
    "PREDICTOR=2",
    "NUM_THREADS=ALL_CPUS",
    "BIGTIFF=IF_SAFER",
)


@dataclass(frozen=True)
class Operation:
    """One gdaldem mode: the output type and nodata it writes, and the options it takes."""

    name: str
    data_type: int
    nodata: float
    options: frozenset[str]


#: Output type, nodata and keyword options of each kernel, as gdaldem writes them.
OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("hillshade", gdal.GDT_Byte, 0, frozenset(
            {"z", "scale", "azimuth", "altitude", "alg", "combined", "multidirectional",
             "compute_edges"})),
        Operation("slope", gdal.GDT_Float32, -9999.0, frozenset(
            {"scale", "alg", "percent", "compute_edges"})),
        Operation("aspect", gdal.GDT_Float32, -9999.0, frozenset(
            {"alg", "trigonometric", "zero_for_flat", "compute_edges"})),
    )
}


class TileFailedError(RuntimeError):
    """A tile's task raised; the run was abandoned and its partial output removed."""

    def __init__(self, tile: Tile, src: str, cause: BaseException):
        super().__init__(
            f"{tile} of {src} failed: {type(cause).__name__}: {cause}; no output was written "
            f"(the remote traceback is chained below)"
        )
        self.tile = tile


@dataclass(frozen=True)
class TileTask:
    """Everything a worker needs for one tile; small, so it travels inline in a message."""

    src: str
    band: int
    info: gdal_io.RasterInfo  # of src, read once by the client: one open per tile saved
    tile: Tile
    operation: str
    options: Mapping[str, object]
    dst: str  # where the worker writes the tile's core
    kernel: Callable | None = None  # None: gpu.<operation>
    creation_options: tuple[str, ...] = LOCAL_TILE_CREATION_OPTIONS


@dataclass(frozen=True)
class TileResult:
    """What a worker sends back: where the core was written, and a few numbers about it."""

    index: int
    path: str
    valid_pixels: int
    minimum: float | None
    maximum: float | None
    read_seconds: float
    kernel_seconds: float
    write_seconds: float
    worker: str  # host:pid


def process_tile(task: TileTask) -> TileResult:
    """Worker side: read the tile's read window, run the kernel, write the core to task.dst."""
    op = OPERATIONS[task.operation]
    kernel = task.kernel or _gpu_kernel(task.operation)
    with gdal_io.s3_config():
        t0 = time.perf_counter()
        info = task.info
        # gdaldem computes in Float32 whatever the input type; Int16 is kept as is because
        # the kernels take it natively and it halves the host-to-device transfer.
        dtype = None if info.data_type in (gdal.GDT_Int16, gdal.GDT_Float32) else np.float32
        dem = gdal_io.read_window(task.src, task.tile.read, task.band, dtype=dtype)
        gt = gdal_io.window_geotransform(info.geotransform, task.tile.read)
        t1 = time.perf_counter()
        out = kernel(dem, gt, nodata=info.nodata, **task.options)
        core = out[task.tile.core_in_read.slices]
        t2 = time.perf_counter()
        gdal_io.write_raster(
            task.dst, np.ascontiguousarray(core),
            geotransform=gdal_io.window_geotransform(info.geotransform, task.tile.core),
            projection=info.projection, nodata=op.nodata,
            creation_options=task.creation_options,
        )
        t3 = time.perf_counter()
    valid = core[core != op.nodata]
    return TileResult(
        index=task.tile.index,
        path=task.dst,
        valid_pixels=int(valid.size),
        minimum=float(valid.min()) if valid.size else None,
        maximum=float(valid.max()) if valid.size else None,
        read_seconds=t1 - t0,
        kernel_seconds=t2 - t1,
        write_seconds=t3 - t2,
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )


def warm_up(src: str, operation: str = "hillshade", band: int = 1,
            kernel_options: Mapping[str, object] | None = None) -> None:
    """Build the kernel program this run will use, on a 3 x 3 array: an executor initializer.

    Each worker process builds its OpenCL program on first use (about 0.3 s on PoCL), which
    otherwise lands on the worker's first tile. As `initializer=warm_up, initargs=(src,
    operation, band, kernel_options)` of a pool or BatchExecutor it happens at worker start
    instead, once per worker.
    """
    with gdal_io.s3_config():
        info = gdal_io.raster_info(src, band)
    dtype = np.int16 if info.data_type == gdal.GDT_Int16 else np.float32
    dem = np.zeros((3, 3), dtype=dtype)
    _gpu_kernel(operation)(dem, info.geotransform, nodata=info.nodata, **(kernel_options or {}))


def _gpu_kernel(operation: str) -> Callable:
    import gpu  # the package's public kernels; imported late to keep this module light

    return getattr(gpu, operation)


@dataclass
class TiledRunSummary:
    """What run_tiled did, and how fast."""

    dst: str
    operation: str
    width: int
    height: int
    tiles: int
    seconds: float
    stitch_seconds: float
    read_seconds: float  # summed over tiles (worker time)
    kernel_seconds: float
    write_seconds: float
    valid_pixels: int
    minimum: float | None
    maximum: float | None
    workers: set[str] = field(default_factory=set)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles / self.seconds if self.seconds else float("inf")

    @property
    def mpixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / self.seconds if self.seconds else float("inf")


def run_tiled(
    executor: futures.Executor,
    src: str,
    dst: str,
    *,
    operation: str = "hillshade",
    tile_size: int | tuple[int, int] = DEFAULT_TILE_SIZE,
    band: int = 1,
    tile_store: str | None = None,
    creation_options: Sequence[str] = OUTPUT_CREATION_OPTIONS,
    progress: bool | None = None,
    endpoint_url: str | None = None,
    kernel: Callable | None = None,
    **kernel_options,
) -> TiledRunSummary:
    """Run gdaldem's `operation` over `src` in tiles on `executor`; stitch into GeoTIFF `dst`.

    The result equals what the kernel (and so `gdaldem <operation>`) gives for the whole
    raster, whatever the tile size or the executor. dst gets src's georeferencing and
    projection, gdaldem's output type and nodata (Byte/0 for hillshade, Float32/-9999 for
    slope and aspect) and `creation_options`. dst must be a local path; it appears only when
    the run succeeded (a failed tile raises TileFailedError and leaves no dst behind).

    src: a GDAL path the workers can read: a local file when they share this filesystem
        (ProcessPoolExecutor, BatchExecutor on the embedded emulator), `/vsis3/bucket/key`
        when they do not (BatchExecutor on AWS).
    tile_store: where workers write tile files: a local directory, or a `/vsis3/bucket/prefix`
        (required when workers do not share this filesystem). A unique subdirectory is used
        and removed afterwards. Default: a scratch directory next to dst.
    kernel_options: gdaldem's options of the operation (z, scale, azimuth, altitude, alg,
        combined, multidirectional, percent, trigonometric, zero_for_flat, compute_edges);
        the input nodata is the source band's.
    progress: a tqdm bar over completed tiles; None shows it only when stderr is a terminal.
    endpoint_url: S3 endpoint for this (client) side's /vsis3/ access; default
        AWS_ENDPOINT_URL. Workers use their own AWS_ENDPOINT_URL.
    kernel: replaces gpu.<operation> (same signature); a module-level function.
    """
    op = _operation(operation, kernel_options)
    if gdal_io.is_virtual(dst):
        raise ValueError(f"dst must be a local path, got {dst!r}; copy the result afterwards")
    if not gdal_io.is_virtual(src):
        src = os.path.abspath(src)  # workers need not share this process's working directory
    t_start = time.perf_counter()
    with gdal_io.s3_config(endpoint_url):
        info = gdal_io.raster_info(src, band)
    tiles = tile_grid(info.width, info.height, tile_size, halo=TERRAIN_HALO)
    dst_dir = os.path.dirname(os.path.abspath(dst))
    run_dir = _run_directory(tile_store, dst_dir)
    tile_options = (S3_TILE_CREATION_OPTIONS if gdal_io.is_virtual(run_dir)
                    else LOCAL_TILE_CREATION_OPTIONS)
    tasks = [
        TileTask(src, band, info, t, operation, dict(kernel_options),
                 gdal_io.join(run_dir, f"{t.name}.tif"), kernel, tile_options)
        for t in tiles
    ]
    partial = os.path.join(dst_dir, f".{os.path.basename(dst)}.{uuid.uuid4().hex[:8]}.partial")
    summary = TiledRunSummary(dst, operation, info.width, info.height, len(tiles), 0.0, 0.0,
                              0.0, 0.0, 0.0, 0, None, None)
    pending: list[futures.Future] = []
    leftover = {task.dst for task in tasks}  # tile files not yet stitched (and removed)
    try:
        out = gdal_io.create_raster(
            partial, info.width, info.height, op.data_type,
            geotransform=info.geotransform if info.has_georeference else None,
            projection=info.projection, nodata=op.nodata, creation_options=creation_options,
        )
        by_future = {executor.submit(process_tile, task): task for task in tasks}
        pending = list(by_future)
        with _progress_bar(len(tiles), progress, operation) as bar:
            for fut in futures.as_completed(by_future):
                task = by_future[fut]
                try:
                    result = fut.result()
                except BaseException as exc:
                    raise TileFailedError(task.tile, src, exc) from exc
                t0 = time.perf_counter()
                with gdal_io.s3_config(endpoint_url):
                    _stitch(out, task.tile.core, result.path)
                    gdal_io.remove(result.path)
                leftover.discard(task.dst)
                summary.stitch_seconds += time.perf_counter() - t0
                _accumulate(summary, result)
                bar.update(1)
        t0 = time.perf_counter()
        out.FlushCache()
        out = None
        summary.stitch_seconds += time.perf_counter() - t0
        os.replace(partial, dst)
    except BaseException:
        out = None
        for fut in pending:
            fut.cancel()
        futures.wait(pending)  # running tiles may still write files: let them, then clean up
        gdal_io.remove(partial)
        raise
    finally:
        with gdal_io.s3_config(endpoint_url):
            _remove_run_directory(run_dir, leftover)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _operation(operation: str, kernel_options: Mapping[str, object]) -> Operation:
    try:
        op = OPERATIONS[operation]
    except KeyError:
        raise ValueError(
            f"unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}"
        ) from None
    unknown = set(kernel_options) - op.options
    if unknown:
        raise TypeError(
            f"{operation} does not take {', '.join(sorted(unknown))}; "
            f"its options are {', '.join(sorted(op.options))}"
        )
    return op


def _run_directory(tile_store: str | None, dst_dir: str) -> str:
    """A fresh directory (or /vsis3/ prefix) for this run's tile files."""
    if tile_store is None:
        return tempfile.mkdtemp(prefix=".tiles-", dir=dst_dir)
    path = gdal_io.join(tile_store, f"tiles-{uuid.uuid4().hex}")
    gdal_io.make_dir(path)
    return path


def _remove_run_directory(run_dir: str, leftover: set[str]) -> None:
    # The tiles not stitched (after a failure) one by one first: on S3 a "directory" is only
    # a prefix, and deleting the keys we know of does not depend on listing being consistent.
    # Stitched tiles were removed as they were stitched: one request each, not two.
    for path in leftover:
        gdal_io.remove(path)
    gdal_io.remove_tree(run_dir)


def _stitch(out: gdal.Dataset, core: Window, tile_path: str) -> None:
    arr = gdal_io.read_window(tile_path)
    if arr.shape != (core.ysize, core.xsize):
        raise ValueError(f"tile file {tile_path} is {arr.shape}, expected core {core}")
    out.GetRasterBand(1).WriteArray(arr, core.xoff, core.yoff)


def _accumulate(summary: TiledRunSummary, result: TileResult) -> None:
    summary.read_seconds += result.read_seconds
    summary.kernel_seconds += result.kernel_seconds
    summary.write_seconds += result.write_seconds
    summary.valid_pixels += result.valid_pixels
    summary.workers.add(result.worker)
    if result.minimum is not None:
        summary.minimum = (result.minimum if summary.minimum is None
                           else min(summary.minimum, result.minimum))
        summary.maximum = (result.maximum if summary.maximum is None
                           else max(summary.maximum, result.maximum))


def _progress_bar(total: int, progress: bool | None, operation: str):
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, unit="tile", desc=operation, disable=not enabled, leave=False)
