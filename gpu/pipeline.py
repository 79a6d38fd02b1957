"""Terrain operations over a raster in tiles, on any Executor: a use of gpu.apply.

    run_tiled(executor, src, "out.vrt", operation="hillshade")
        -> gpu.apply(executor, terrain_block, {"dem": Input(src, halo=1)},
                     {"out": Output("out.vrt", <gdaldem's type>, nodata=<gdaldem's>)})

Each worker reads its tile's window (with the 1-pixel halo the 3 x 3 kernels need), runs
gpu.<operation> and writes the core as a COG tile; the client writes the VRT mosaic from
metadata (or a worker assembles one COG when dst ends in .tif). No pixel passes through the
client. Why tiles with a halo give the untiled result exactly: see gpu.tiling.

The functions sent to workers (`terrain_block`, `gpu.applier.run_block`) are module-level and
picklable by reference, as every executor (ProcessPoolExecutor, BatchExecutor) requires.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal

from . import gdal_io, mosaic
from .applier import BlockFailedError, Input, Output, apply
from .tiling import TERRAIN_HALO

#: Default core tile size. Large enough that per-tile overhead (a task round trip, opening the
#: source, one kernel launch, one COG tile) is small against the pixels, small enough that a
#: 8192 x 8192 raster still gives 64 tiles to spread over workers.
DEFAULT_TILE_SIZE = 1024

#: COG options of the output tiles (gpu.mosaic.TILE_CREATION_OPTIONS: DEFLATE level 1 with the
#: predictor, 512-pixel blocks, no overviews).
OUTPUT_CREATION_OPTIONS = mosaic.TILE_CREATION_OPTIONS


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

_NUMPY_TYPES = {gdal.GDT_Byte: np.uint8, gdal.GDT_Float32: np.float32}


class TileFailedError(RuntimeError):
    """A tile's task raised; the run was abandoned and its partial output removed."""

    def __init__(self, tile, src: str, cause: BaseException | None):
        super().__init__(
            f"tile {tile.index} ({tile.name}; core {tile.core}) of {src} failed: "
            f"{type(cause).__name__}: {cause}; no output was written (the remote traceback "
            f"is chained below)"
        )
        self.tile = tile


def terrain_block(arrays, block, *, operation: str, options: Mapping[str, object],
                  kernel: Callable | None = None) -> np.ndarray:
    """Block function of gpu.apply: gdaldem's `operation` on the block's DEM window."""
    kernel = kernel or _gpu_kernel(operation)
    return kernel(arrays["dem"][0], block.geotransform("dem"), nodata=block.nodata["dem"][0],
                  **options)


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
    """What run_tiled did, and where the time went (see gpu.applier.ApplySummary)."""

    dst: str
    operation: str
    width: int
    height: int
    tiles: int
    seconds: float
    client_busy_seconds: float  # this thread, outside waiting for workers
    client_cpu_seconds: float  # this whole process (executor threads included)
    read_seconds: float  # summed over tiles (worker time)
    kernel_seconds: float
    write_seconds: float
    assemble_seconds: float  # worker time assembling one COG (dst .tif only)
    valid_pixels: int
    minimum: float | None
    maximum: float | None
    workers: set[str] = field(default_factory=set)

    @property
    def worker_busy_seconds(self) -> float:
        return self.read_seconds + self.kernel_seconds + self.write_seconds

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
    creation_options: Sequence[str] | None = None,
    overwrite: bool = True,
    progress: bool | None = None,
    endpoint_url: str | None = None,
    kernel: Callable | None = None,
    **kernel_options,
) -> TiledRunSummary:
    """Run gdaldem's `operation` over `src` in tiles on `executor`; workers write `dst`.

    The result equals what the kernel (and so `gdaldem <operation>`) gives for the whole
    raster, whatever the tile size or the executor. dst gets src's georeferencing and
    projection and gdaldem's output type and nodata (Byte/0 for hillshade, Float32/-9999 for
    slope and aspect).

    dst: `name.vrt`: workers write COG tiles under `name.tiles/` (`creation_options`, COG
        driver) and this process writes the VRT mosaic over them (no pixels read);
        `name.tif`: the same in a scratch directory, then one worker assembles a single COG
        (with overviews) at dst and removes the scratch. creation_options (COG driver)
        replace those of both the tiles and the assembled COG. A local path, or /vsis3/bucket/key
        when workers do not share this filesystem. Existing outputs are replaced unless
        overwrite=False. A failed tile raises TileFailedError and leaves no output behind.
    src: a GDAL path the workers can read: a local file when they share this filesystem
        (ProcessPoolExecutor, BatchExecutor on the embedded emulator), `/vsis3/bucket/key`
        when they do not (BatchExecutor on AWS).
    kernel_options: gdaldem's options of the operation (z, scale, azimuth, altitude, alg,
        combined, multidirectional, percent, trigonometric, zero_for_flat, compute_edges);
        the input nodata is the source band's.
    progress: a tqdm bar over completed tiles; None shows it only when stderr is a terminal.
    endpoint_url: S3 endpoint for this (client) side's /vsis3/ access; default
        AWS_ENDPOINT_URL. Workers use their own AWS_ENDPOINT_URL.
    kernel: replaces gpu.<operation> (same signature); a module-level function.
    """
    op = _operation(operation, kernel_options)
    if not gdal_io.is_virtual(src):
        src = os.path.abspath(src)  # workers need not share this process's working directory
    t0 = time.perf_counter()
    with gdal_io.s3_config(endpoint_url):
        data_type = gdal_io.band_data_type(src, band)
    # gdaldem computes in Float32 whatever the input type; Int16 is kept as is because the
    # kernels take it natively and it halves the host-to-device transfer.
    dtype = None if data_type in (gdal.GDT_Int16, gdal.GDT_Float32) else np.float32
    opened = time.perf_counter() - t0
    try:
        s = apply(
            executor, terrain_block,
            {"dem": Input(src, bands=(band,), halo=TERRAIN_HALO, dtype=dtype)},
            {"out": Output(dst, _NUMPY_TYPES[op.data_type], 1, op.nodata,
                           statistics=True, **_creation_options(creation_options))},
            block_size=tile_size, overwrite=overwrite, progress=progress,
            endpoint_url=endpoint_url, description=operation,
            kwargs=dict(operation=operation, options=dict(kernel_options), kernel=kernel),
        )
    except BlockFailedError as exc:
        raise TileFailedError(exc.block, src, exc.__cause__) from exc.__cause__
    stats = s.stats.get("out")
    return TiledRunSummary(
        dst=s.outputs["out"], operation=operation, width=s.width, height=s.height,
        tiles=s.blocks, seconds=s.seconds + opened,
        client_busy_seconds=s.client_busy_seconds + opened,
        client_cpu_seconds=s.client_cpu_seconds, read_seconds=s.read_seconds,
        kernel_seconds=s.compute_seconds, write_seconds=s.write_seconds,
        assemble_seconds=s.assemble_seconds, valid_pixels=stats.valid_pixels if stats else 0,
        minimum=stats.minimum if stats else None, maximum=stats.maximum if stats else None,
        workers=s.workers,
    )


def _creation_options(options: Sequence[str] | None) -> dict:
    if options is None:
        return {}
    return dict(creation_options=tuple(options), cog_creation_options=tuple(options))


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
