"""Tiled apply: run a user function over blocks of aligned rasters through any Executor.

The RIOS applier's idea (a function over aligned blocks of several inputs, with overlap,
written to several outputs) on a concurrent.futures executor, with the outputs written by the
workers themselves::

    client: apply(executor, fn, inputs, outputs)          worker: run_block(job, block)
    ┌─────────────────────────────────────────────┐       ┌──────────────────────────────────┐
    │ dataset_info(each input): grids must match  │       │ read each input's window         │
    │ ApplyJob: the grid, inputs, outputs, fn     │ index │   (core + that input's halo)     │
    │ submit(run_block, job bytes, block index) ──┼──────▶│ fn(arrays, block, **kwargs)      │
    │                                             │       │ crop to the core, cast           │
    │ as_completed: count, progress bar ◀─────────┼───────│ write each output's COG tile     │
    │ submit(write_mosaic) per output: the VRT    │Result │ return BlockResult (times, stats)│
    │ [.tif outputs: submit assemble_cog]         │       └──────────────────────────────────┘
    └─────────────────────────────────────────────┘
    Only small records cross the executor; pixels go from storage to the worker and back.

Why the client writes no pixel: on 16384 x 16384 the client used to spend 7.2 ms a tile
reading tile files and writing them into one GeoTIFF against 14.6 ms of worker time a tile,
which capped a useful fleet at about two workers. Now its per-block work is a submit and a
result. The mosaic (gpu.mosaic) is metadata only; a worker task writes it because the client
does not even read the CRS when it has nothing to compare it with: the first CRS read in a
process initialises PROJ's database, 35-40 ms, as much as 200 blocks' submits.

Why blocks with a halo give the whole-raster result: see gpu.tiling. A function whose output
pixel depends only on input pixels within `halo` of it gives, block by block, exactly what it
gives on the whole raster, as long as it treats the array border as the image border (the
read windows are clipped, not padded, at the image).

The function sent to workers (`run_block`) is module-level; the user's function travels in
the job, by reference when importable and by value (cloudpickle) when defined in a script.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import socket
import sys
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field

import cloudpickle
import numpy as np
from osgeo import gdal, gdal_array, osr
from tqdm import tqdm

from . import gdal_io, mosaic
from .tiling import Window

gdal.UseExceptions()

#: Default block (core) size. Large enough that per-block overhead (a task round trip,
#: opening each input, one kernel launch, one tile file) is small against the pixels; small
#: enough that 8192 x 8192 still gives 64 blocks to spread over workers.
DEFAULT_BLOCK_SIZE = 1024

#: Geotransforms of aligned inputs may differ by float noise; more than this fraction of a
#: pixel is a different grid.
GRID_TOLERANCE = 1e-6


class RasterAlignmentError(ValueError):
    """The inputs are not on one grid (size, geotransform, projection)."""


class OutputExistsError(FileExistsError):
    """An output (its mosaic, tiles or COG) is already there and overwrite was not asked for."""


class BlockFailedError(RuntimeError):
    """A block's task raised; the run was abandoned and its outputs removed."""

    def __init__(self, block: Block, cause: BaseException):
        super().__init__(
            f"block {block.index} ({block.name}; core {block.core}) failed: "
            f"{type(cause).__name__}: {cause}; no output was written (the remote traceback "
            f"is chained below)"
        )
        self.block = block


class BlockOutputError(ValueError):
    """The function returned something that does not fit the declared outputs."""


@dataclass(frozen=True)
class Input:
    """One input raster.

    bands: 1-based band numbers to read (default: all); the function gets (bands, rows, cols).
    halo: pixels of overlap read around each block (clipped at the image border), the radius
        of the function's window on this input.
    dtype: numpy type to read as (default: the first band's own type).
    """

    path: str
    bands: tuple[int, ...] | None = None
    halo: int = 0
    dtype: object = None


@dataclass(frozen=True)
class Output:
    """One output raster.

    path: `name.vrt` (COG tiles under `name.tiles/` plus a VRT mosaic) or `name.tif` (one COG
        assembled by a worker from them); a local path or /vsis3/bucket/key.
    dtype: numpy type the function's result is cast to (with astype).
    bands: band count; a function may return a 2-D array for a one-band output.
    nodata: written as the output's nodata value (None: none).
    creation_options: COG driver options of the tiles (gpu.mosaic.TILE_CREATION_OPTIONS).
    cog_creation_options: COG driver options of the assembled COG (a .tif path only).
    statistics: also count the valid pixels and find min/max (a pass over each block).
    """

    path: str
    dtype: object = np.float32
    bands: int = 1
    nodata: float | None = None
    creation_options: tuple[str, ...] = mosaic.TILE_CREATION_OPTIONS
    cog_creation_options: tuple[str, ...] = mosaic.COG_CREATION_OPTIONS
    statistics: bool = False


@dataclass(frozen=True)
class Block:
    """What the function is told about its block.

    core: the block's own pixels in the raster (what the outputs cover);
    reads: per input, the window its array covers (core grown by its halo, clipped);
    padded: the core grown by the largest halo (clipped): an output may be returned with this
        shape or the core's; the core is cut out of it.
    """

    index: int
    row: int
    col: int
    core: Window
    reads: Mapping[str, Window]
    padded: Window
    raster_geotransform: tuple[float, ...]
    projection: str
    nodata: Mapping[str, tuple[float | None, ...]]  # per input, per band read

    @property
    def name(self) -> str:
        return f"r{self.row:04d}_c{self.col:04d}"

    def geotransform(self, input_name: str | None = None) -> tuple[float, ...]:
        """Geotransform of an input's array (default: of the core)."""
        window = self.core if input_name is None else self.reads[input_name]
        return gdal_io.window_geotransform(self.raster_geotransform, window)

    def core_slices(self, input_name: str | None = None) -> tuple[slice, slice]:
        """(row, column) slices of the core in an input's array (default: the padded window)."""
        outer = self.padded if input_name is None else self.reads[input_name]
        return self.core.relative_to(outer).slices

    @classmethod
    def whole(cls, infos: Mapping[str, gdal_io.DatasetInfo], band_numbers=None) -> Block:
        """The one block that is the whole raster: to run a block function untiled."""
        first = next(iter(infos.values()))
        full = Window(0, 0, first.width, first.height)
        nodata = {n: tuple(i.nodata[b - 1] for b in (band_numbers or {}).get(
            n, range(1, i.band_count + 1))) for n, i in infos.items()}
        return cls(0, 0, 0, full, {n: full for n in infos}, full, first.geotransform,
                   first.projection, nodata)


@dataclass(frozen=True)
class _InputPlan:
    path: str
    bands: tuple[int, ...]
    dtype: object


@dataclass(frozen=True)
class _OutputPlan:
    dtype: np.dtype
    bands: int
    nodata: float | None
    creation_options: tuple[str, ...]
    statistics: bool
    tiles: str


@dataclass(frozen=True)
class ApplyJob:
    """What every block's task shares: small, so it travels inline in a message.

    It is pickled once per run (not once per block) and each worker unpickles it once
    (`_job`); a task is then (those bytes, a block index), and the worker derives the block's
    windows from the grid described here. This keeps the client's per-block work to a submit.
    """

    function: Callable
    kwargs: Mapping[str, object]
    inputs: Mapping[str, _InputPlan]
    outputs: Mapping[str, _OutputPlan]
    width: int
    height: int
    block_size: tuple[int, int]
    halos: Mapping[str, int]
    geotransform: tuple[float, ...]
    projection: str | None  # None: workers read it from the first input (see run_block)
    nodata: Mapping[str, tuple[float | None, ...]]

    @property
    def columns(self) -> int:
        return -(-self.width // self.block_size[0])

    @property
    def block_count(self) -> int:
        return self.columns * -(-self.height // self.block_size[1])

    def crs(self) -> str:
        """The outputs' CRS (WKT): known to the client when it compared several inputs,
        else read by the worker from the first input, once per process."""
        if self.projection is not None:
            return self.projection
        return gdal_io.projection_of(next(iter(self.inputs.values())).path)

    def block(self, index: int, projection: str = "") -> Block:
        """Block `index` of the row-major grid (what gpu.tiling.tile_grid would give)."""
        if not 0 <= index < self.block_count:
            raise IndexError(f"block {index} of {self.block_count}")
        row, col = divmod(index, self.columns)
        tx, ty = self.block_size
        xoff, yoff = col * tx, row * ty
        core = Window(xoff, yoff, min(tx, self.width - xoff), min(ty, self.height - yoff))
        w, h = self.width, self.height
        return Block(index, row, col, core,
                     {n: core.grown(halo, w, h) for n, halo in self.halos.items()},
                     core.grown(max(self.halos.values()), w, h), self.geotransform,
                     projection, self.nodata)


@dataclass(frozen=True)
class OutputStats:
    valid_pixels: int = 0
    minimum: float | None = None
    maximum: float | None = None

    def merge(self, other: OutputStats) -> OutputStats:
        lo = [v for v in (self.minimum, other.minimum) if v is not None]
        hi = [v for v in (self.maximum, other.maximum) if v is not None]
        return OutputStats(self.valid_pixels + other.valid_pixels,
                           min(lo) if lo else None, max(hi) if hi else None)


@dataclass(frozen=True)
class BlockResult:
    """What a worker sends back: timings and (when asked) statistics, never pixels."""

    index: int
    read_seconds: float
    compute_seconds: float
    write_seconds: float
    worker: str  # host:pid
    stats: Mapping[str, OutputStats]

    @property
    def busy_seconds(self) -> float:
        return self.read_seconds + self.compute_seconds + self.write_seconds


@functools.lru_cache(maxsize=4)
def _job(job_bytes: bytes) -> ApplyJob:
    return pickle.loads(job_bytes)


def run_block(job_bytes: bytes, index: int) -> BlockResult:
    """Worker side: read each input's window, run the function, write each output's tile."""
    job = _job(job_bytes)
    with gdal_io.s3_config():
        t0 = time.perf_counter()
        crs = job.crs()
        block = job.block(index, crs)
        arrays = {name: gdal_io.read_bands(inp.path, block.reads[name], inp.bands, inp.dtype)
                  for name, inp in job.inputs.items()}
        t1 = time.perf_counter()
        result = job.function(arrays, block, **job.kwargs)
        cores = _cores(result, job, block)
        t2 = time.perf_counter()
        gt = block.geotransform()
        for name, core in cores.items():
            out = job.outputs[name]
            gdal_io.write_cog(gdal_io.join(out.tiles, f"{block.name}.tif"), core,
                              geotransform=gt, projection=crs, nodata=out.nodata,
                              creation_options=out.creation_options)
        t3 = time.perf_counter()
    stats = {name: _stats(core, job.outputs[name].nodata)
             for name, core in cores.items() if job.outputs[name].statistics}
    return BlockResult(block.index, t1 - t0, t2 - t1, t3 - t2,
                       f"{socket.gethostname()}:{os.getpid()}", stats)


def _cores(result, job: ApplyJob, block: Block) -> dict[str, np.ndarray]:
    """The function's outputs, checked, cut to the core and cast: name -> (bands, rows, cols)."""
    names = list(job.outputs)
    if not isinstance(result, Mapping):
        if len(names) != 1:
            raise BlockOutputError(
                f"the function returned a {type(result).__name__}; with several outputs "
                f"({', '.join(names)}) it must return a dict of arrays by output name")
        result = {names[0]: result}
    if set(result) != set(names):
        raise BlockOutputError(
            f"the function returned outputs {sorted(result)}, expected {sorted(names)}")
    cores = {}
    core, padded = block.core, block.padded
    for name in names:
        spec = job.outputs[name]
        arr = np.asarray(result[name])
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3 or arr.shape[0] != spec.bands:
            raise BlockOutputError(
                f"output {name!r} has shape {np.shape(result[name])}; expected {spec.bands} "
                f"band(s) of (rows, cols) (a 2-D array for one band)")
        shape = arr.shape[1:]
        if shape == (core.ysize, core.xsize):
            pass
        elif shape == (padded.ysize, padded.xsize):
            arr = arr[(slice(None), *core.relative_to(padded).slices)]
        else:
            raise BlockOutputError(
                f"output {name!r} of block {block.name} is {shape[0]} x {shape[1]} (rows x "
                f"cols); expected the core's {core.ysize} x {core.xsize} or the padded "
                f"window's {padded.ysize} x {padded.xsize} (core plus the largest halo)")
        cores[name] = np.ascontiguousarray(arr.astype(spec.dtype, copy=False))
    return cores


def _stats(core: np.ndarray, nodata) -> OutputStats:
    valid = core if nodata is None else core[core != core.dtype.type(nodata)]
    if valid.dtype.kind == "f":
        valid = valid[~np.isnan(valid)]
    if not valid.size:
        return OutputStats()
    return OutputStats(int(valid.size), float(valid.min()), float(valid.max()))


@dataclass
class ApplySummary:
    """What apply did, and where the time went.

    client_busy_seconds: wall time this (client) thread spent on the run outside waiting for
        workers: planning, submitting, handling results, writing the mosaics.
    client_cpu_seconds: CPU time of this whole process over the run (all threads: the
        executor's too; with a ThreadPoolExecutor it includes the work itself).
    worker_busy_seconds: the blocks' read + compute + write time, summed over workers.
    """

    outputs: dict[str, str]  # name -> what to open (the VRT, or the assembled COG)
    width: int
    height: int
    blocks: int
    seconds: float = 0.0
    client_busy_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    read_seconds: float = 0.0
    compute_seconds: float = 0.0
    write_seconds: float = 0.0
    assemble_seconds: float = 0.0  # worker time assembling COGs (not in worker_busy)
    stats: dict[str, OutputStats] = field(default_factory=dict)
    workers: set[str] = field(default_factory=set)

    @property
    def worker_busy_seconds(self) -> float:
        return self.read_seconds + self.compute_seconds + self.write_seconds

    @property
    def mpixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / self.seconds if self.seconds else float("inf")


def apply(
    executor: futures.Executor,
    function: Callable,
    inputs: Mapping[str, Input | str],
    outputs: Mapping[str, Output],
    *,
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    kwargs: Mapping[str, object] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    endpoint_url: str | None = None,
    description: str | None = None,
) -> ApplySummary:
    """Run `function(arrays, block, **kwargs)` over blocks of aligned `inputs` on `executor`.

    arrays: {input name: (bands, rows, cols) array of that input's read window}; block: a
    Block (core and read windows, geotransforms, nodata). The function returns one array
    (one output) or {output name: array}, each (bands, rows, cols) or (rows, cols) for one
    band, shaped as the core or as the padded window. Workers write each output's COG tiles,
    then a worker task its VRT mosaic (gpu.mosaic); `.tif` outputs are then assembled into
    one COG by a worker task. The client reads and writes no pixel. Inputs must share one
    grid (else RasterAlignmentError, which says how to align them); paths are GDAL paths the
    workers can read and write (local when they share this filesystem, /vsis3/ otherwise).

    overwrite: replace existing outputs (else OutputExistsError before anything runs).
    progress: a tqdm bar over blocks; None shows it only when stderr is a terminal.
    endpoint_url: S3 endpoint for this (client) side's /vsis3/ access; default
        AWS_ENDPOINT_URL. Workers use their own AWS_ENDPOINT_URL.
    A failing block raises BlockFailedError (the function's exception chained) after the
    blocks still running finished; no output is left behind.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    waited = 0.0
    if not callable(function):
        raise TypeError(f"function must be callable, got {function!r}")
    if not inputs:
        raise ValueError("apply needs at least one input")
    if not outputs:
        raise ValueError("apply needs at least one output")
    ins = {name: _input(name, spec) for name, spec in inputs.items()}
    for name, spec in outputs.items():
        if not isinstance(spec, Output):
            raise TypeError(f"output {name!r} must be a gpu.applier.Output, got {spec!r}")
    layouts = {name: mosaic.layout_for(spec.path) for name, spec in outputs.items()}
    with gdal_io.s3_config(endpoint_url):
        # Only several inputs need their CRS here (to compare them); see dataset_info.
        infos = {name: _info(name, inp, projection=len(ins) > 1)
                 for name, inp in ins.items()}
        check_aligned(infos)
    first = next(iter(infos.values()))
    for o in outputs.values():
        if not isinstance(o.bands, int) or o.bands < 1:
            raise ValueError(f"output {o.path}: bands must be an int >= 1, got {o.bands!r}")
    band_numbers = {n: inp.bands or tuple(range(1, infos[n].band_count + 1))
                    for n, inp in ins.items()}
    tx, ty = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    if tx < 1 or ty < 1:
        raise ValueError(f"block size must be positive, got {block_size!r}")
    job = ApplyJob(
        function=function, kwargs=dict(kwargs or {}),
        inputs={n: _InputPlan(inp.path, band_numbers[n], inp.dtype) for n, inp in ins.items()},
        outputs={n: _OutputPlan(np.dtype(o.dtype), o.bands, o.nodata,
                                tuple(o.creation_options), o.statistics, layouts[n].tiles)
                 for n, o in outputs.items()},
        width=first.width, height=first.height, block_size=(tx, ty),
        halos={n: inp.halo for n, inp in ins.items()}, geotransform=first.geotransform,
        projection=first.projection,
        nodata={n: tuple(infos[n].nodata[b - 1] for b in band_numbers[n]) for n in ins},
    )
    try:
        job_bytes = cloudpickle.dumps(job)
    except Exception as exc:
        raise TypeError(
            f"cannot pickle the function or its kwargs for the workers: {type(exc).__name__}: "
            f"{exc}; pass plain data (paths, numbers, arrays) and open resources inside the "
            f"function") from exc
    with gdal_io.s3_config(endpoint_url):
        _prepare_outputs(layouts, overwrite)  # last: nothing is created if a check fails
    blocks = [job.block(i) for i in range(job.block_count)]
    summary = ApplySummary({n: (lay.cog or lay.vrt) for n, lay in layouts.items()},
                           first.width, first.height, len(blocks))
    pending: list[futures.Future] = []
    try:
        by_future = {executor.submit(run_block, job_bytes, b.index): b for b in blocks}
        pending = list(by_future)
        with _progress_bar(len(blocks), progress, description or _label(function)) as bar:
            done = futures.as_completed(by_future)
            while True:
                t0 = time.perf_counter()
                fut = next(done, None)
                waited += time.perf_counter() - t0
                if fut is None:
                    break
                try:
                    result = fut.result()
                except BaseException as exc:
                    raise BlockFailedError(by_future[fut], exc) from exc
                _accumulate(summary, result)
                bar.update(1)
        mosaics = [executor.submit(write_mosaic, job_bytes, name, layouts[name].vrt)
                   for name in outputs]
        pending = mosaics
        t0 = time.perf_counter()
        for fut in futures.as_completed(mosaics):
            fut.result()
        waited += time.perf_counter() - t0
        assembling = {executor.submit(mosaic.assemble_cog, lay.vrt, lay.cog,
                                      tuple(outputs[name].cog_creation_options),
                                      remove=lay.scratch): name
                      for name, lay in layouts.items() if lay.cog}
        pending = list(assembling)
        t0 = time.perf_counter()
        for fut in futures.as_completed(assembling):
            summary.assemble_seconds += fut.result()
        waited += time.perf_counter() - t0
    except BaseException:
        for fut in pending:
            fut.cancel()
        t0 = time.perf_counter()
        futures.wait(pending)  # running blocks may still write tiles: let them, then clean up
        waited += time.perf_counter() - t0
        with gdal_io.s3_config(endpoint_url):
            for lay in layouts.values():
                _remove_output(lay, include_cog=False)
        raise
    summary.seconds = time.perf_counter() - t_start
    summary.client_busy_seconds = summary.seconds - waited
    summary.client_cpu_seconds = time.process_time() - cpu_start
    return summary


def _label(function) -> str:
    return getattr(function, "__name__", None) or type(function).__name__


def _input(name: str, spec: Input | str) -> Input:
    if isinstance(spec, (str, os.PathLike)):
        spec = Input(os.fspath(spec))
    if not isinstance(spec, Input):
        raise TypeError(f"input {name!r} must be a path or a gpu.applier.Input, got {spec!r}")
    if not isinstance(spec.halo, int) or spec.halo < 0:
        raise ValueError(f"input {name!r}: halo must be an int >= 0, got {spec.halo!r}")
    path = spec.path if gdal_io.is_virtual(spec.path) else os.path.abspath(spec.path)
    bands = None if spec.bands is None else tuple(int(b) for b in spec.bands)
    if bands is not None and not bands:
        raise ValueError(f"input {name!r}: bands is empty; leave it None for all bands")
    return Input(path, bands, spec.halo, spec.dtype)


def _info(name: str, inp: Input, projection: bool) -> gdal_io.DatasetInfo:
    info = gdal_io.dataset_info(inp.path, projection)
    bad = [b for b in inp.bands or () if not 1 <= b <= info.band_count]
    if bad:
        raise ValueError(f"input {name!r} ({inp.path}) has {info.band_count} band(s); "
                         f"band(s) {bad} do not exist (bands are numbered from 1)")
    return info


def check_aligned(infos: Mapping[str, gdal_io.DatasetInfo]) -> None:
    """Raise RasterAlignmentError unless all rasters share size, geotransform, projection."""
    (ref_name, ref), *others = infos.items()
    for name, info in others:
        problems = []
        if (info.width, info.height) != (ref.width, ref.height):
            problems.append(f"size {info.width} x {info.height} vs {ref.width} x {ref.height}")
        pixel = max(abs(ref.geotransform[1]), abs(ref.geotransform[5]), 1e-300)
        if any(abs(a - b) > GRID_TOLERANCE * pixel
               for a, b in zip(info.geotransform, ref.geotransform, strict=True)):
            problems.append(f"geotransform {info.geotransform} vs {ref.geotransform}")
        if not _same_projection(info.projection, ref.projection):
            problems.append(f"projection {_crs_name(info.projection)} vs "
                            f"{_crs_name(ref.projection)}")
        if problems:
            raise RasterAlignmentError(
                f"inputs {ref_name!r} ({ref.path}) and {name!r} ({info.path}) are not on one "
                f"grid: {'; '.join(problems)}. Resample {name!r} onto {ref_name!r}'s grid "
                f"first, e.g. into a VRT (no pixels copied): {_warp_command(ref, info)}"
            )


def _same_projection(a: str, b: str) -> bool:
    if not a or not b:
        return a == b
    sa, sb = osr.SpatialReference(), osr.SpatialReference()
    sa.ImportFromWkt(a)
    sb.ImportFromWkt(b)
    return bool(sa.IsSame(sb))


def _crs_name(wkt: str) -> str:
    if not wkt:
        return "(none)"
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    code = srs.GetAuthorityCode(None)
    return f"{srs.GetAuthorityName(None)}:{code}" if code else repr(srs.GetName())


def _warp_command(ref: gdal_io.DatasetInfo, info: gdal_io.DatasetInfo) -> str:
    g = ref.geotransform
    xmin, xmax = g[0], g[0] + ref.width * g[1]
    ymax, ymin = g[3], g[3] + ref.height * g[5]
    srs = _crs_name(ref.projection)
    if ":" not in srs:
        srs = ref.path  # gdalwarp takes the CRS of a raster named as -t_srs
    stem = os.path.splitext(os.path.basename(info.path))[0]
    cmd = (f"gdalwarp -of VRT -t_srs {srs} -te {min(xmin, xmax)!r} {min(ymin, ymax)!r} "
           f"{max(xmin, xmax)!r} {max(ymin, ymax)!r} -tr {abs(g[1])!r} {abs(g[5])!r} "
           f"-r bilinear {info.path} {stem}_aligned.vrt")
    if g[2] or g[4]:
        cmd += f" (the reference grid is rotated: use {ref.path} as a template in gdal.Warp)"
    return cmd


def _prepare_outputs(layouts: Mapping[str, mosaic.Layout], overwrite: bool) -> None:
    paths = [p for lay in layouts.values() for p in (lay.vrt, lay.tiles, lay.cog) if p]
    if len(set(paths)) != len(paths):
        raise ValueError(f"two outputs share a path: {paths}")
    existing = [p for lay in layouts.values() for p in (lay.vrt, lay.tiles, lay.cog)
                if p and gdal_io.exists(p)]
    if existing and not overwrite:
        raise OutputExistsError(
            f"output already exists: {', '.join(existing)}; pass overwrite=True to replace "
            f"it or choose another path")
    for lay in layouts.values():
        if lay.cog is None:
            _remove_output(lay, include_cog=False)  # a stale mosaic must not outlive a failure
        gdal_io.make_dir(lay.scratch or os.path.dirname(lay.vrt))
        gdal_io.make_dir(lay.tiles)


def _remove_output(lay: mosaic.Layout, include_cog: bool) -> None:
    gdal_io.remove(lay.vrt)
    gdal_io.remove_tree(lay.tiles)
    if lay.scratch:
        gdal_io.remove_tree(lay.scratch)
    if include_cog and lay.cog:
        gdal_io.remove(lay.cog)


def write_mosaic(job_bytes: bytes, name: str, vrt: str) -> float:
    """Worker task: write output `name`'s VRT mosaic over its tiles; returns the seconds.

    Metadata only (the grid, the output's type, bands and nodata, the CRS): no tile is opened.
    A worker writes it rather than the client only because the client has not read the CRS
    (gdal_io.dataset_info).
    """
    t0 = time.perf_counter()
    job = _job(job_bytes)
    out = job.outputs[name]
    has_gt = job.geotransform != (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    with gdal_io.s3_config():
        xml = mosaic.vrt_xml(
            vrt, out.tiles, width=job.width, height=job.height,
            geotransform=job.geotransform if has_gt else None, projection=job.crs(),
            data_type=gdal_array.NumericTypeCodeToGDALTypeCode(out.dtype), bands=out.bands,
            nodata=out.nodata,
            sources=[mosaic.MosaicSource(b.name, b.core)
                     for b in map(job.block, range(job.block_count))],
            block_size=_block_size(out.creation_options))
        gdal_io.write_bytes(vrt, xml)
    return time.perf_counter() - t0


def _block_size(options) -> int:
    for opt in options:
        key, _, value = opt.partition("=")
        if key.upper() == "BLOCKSIZE":
            return int(value)
    return 512  # the COG driver's default


def _accumulate(summary: ApplySummary, result: BlockResult) -> None:
    summary.read_seconds += result.read_seconds
    summary.compute_seconds += result.compute_seconds
    summary.write_seconds += result.write_seconds
    summary.workers.add(result.worker)
    for name, s in result.stats.items():
        summary.stats[name] = summary.stats.get(name, OutputStats()).merge(s)


def _progress_bar(total: int, progress: bool | None, label: str):
    enabled = sys.stderr.isatty() if progress is None else progress
    if not enabled:  # a disabled tqdm still builds a multiprocessing lock (~20 ms, first time)
        return contextlib.nullcontext(_NoProgress())
    return tqdm(total=total, unit="block", desc=label, leave=False)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass
