"""Tiled Shepherd segmentation of a raster through any Executor (pyshepseg's tiled job).

Data flow (only small records cross the executor; pixels go through storage)::

    client: segment_raster(executor, src, dst)          worker: segment_tile(SegmentTileTask)
    ┌──────────────────────────────────────────┐        ┌──────────────────────────────────┐
    │ prepare: raster facts, k-means on a      │  task  │ read the tile's window, all      │
    │   decimated read (or given centres),     │ ─────▶ │   bands (GDAL)                   │
    │   merge limit, tile grid                 │        │ segment_with_centres (OpenCL)    │
    │ stitch, in row-major order as tiles      │ ◀───── │ write uint32 tile file           │
    │   arrive: recode IDs across overlaps,    │ result │ return SegmentTileResult         │
    │   write each tile's interior into dst    │        └──────────────────────────────────┘
    └──────────────────────────────────────────┘

Tiles (pyshepseg's getTilesForFile): tile_size steps of (tile_size - overlap); the last row and
column of tiles grow to the raster's edge rather than leave a sliver. The overlap is even and
each tile keeps its interior, trimmed by overlap/2 on every internal edge.

Stitching (pyshepseg's stitchTiles/recodeTile), with its null defect fixed: tiles are stitched
row by row. A segment of the current tile that crosses the midline of its top (or left)
overlap takes the most common segment ID among the already stitched tile's pixels under it
(left overrides top, as in pyshepseg). pyshepseg counts null (0) in that vote -- the previous
tile's saved overlap holds 0 for segments it did not own -- and writes the whole segment as
null when 0 wins: 20,091 valid pixels of a 4096 x 4096 image with 1024/256 tiles. Here 0 never
votes; a segment with no non-null vote gets a new ID. New IDs go, in the tile's ID order, only
to segments that have pixels in the tile's interior, so IDs stay contiguous (pyshepseg's
ownership test by bounding box can give out IDs whose segment is never written).

Why the client stitches: the recoding of tile n depends on the stitched IDs of the tiles above
and left of it, a sequential dependency across the raster; it is cheap (a few vectorised
passes over the overlaps and one over each tile), while the segmentation itself runs on the
workers. Tiles are stitched as soon as every tile before them (row-major) has arrived.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal

from gpu import gdal_io
from gpu.segmentation import (
    DEFAULT_KMEANS_STARTS,
    DEFAULT_SAMPLE_SIZE,
    SegmentInputError,
    _check_centres,
    _merge_limit,
    fit_centres,
    null_mask,
)
from gpu.tiling import Window

gdal.UseExceptions()

#: pyshepseg's defaults (tiling.DFLT_TILESIZE, DFLT_OVERLAPSIZE).
DEFAULT_TILE_SIZE = 4096
DEFAULT_OVERLAP = 1024

#: The stitched result: tiled, DEFLATE level 1 with horizontal differencing (segment IDs
#: change slowly along a row), readable by every GDAL build.
OUTPUT_CREATION_OPTIONS = ("TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "COMPRESS=DEFLATE",
                           "ZLEVEL=1", "PREDICTOR=2", "NUM_THREADS=ALL_CPUS",
                           "BIGTIFF=IF_SAFER")
#: Tile files are read back once; locally compression is pure cost, through S3 it pays.
LOCAL_TILE_CREATION_OPTIONS = ()
S3_TILE_CREATION_OPTIONS = ("COMPRESS=ZSTD", "ZSTD_LEVEL=1")


class SegmentTileFailedError(RuntimeError):
    """A tile's task raised; the run was abandoned and its partial output removed."""

    def __init__(self, tile, src: str, cause: BaseException):
        super().__init__(f"segmentation tile {tile.name} ({tile.window}) of {src} failed: "
                         f"{type(cause).__name__}: {cause}; no output was written "
                         "(the remote traceback is chained below)")
        self.tile = tile


# -- the tile grid -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SegTile:
    """One tile of the grid: its window and its place in the grid."""

    row: int
    col: int
    window: Window

    @property
    def name(self) -> str:
        return f"r{self.row:04d}_c{self.col:04d}"


def segmentation_tiles(width: int, height: int, tile_size: int = DEFAULT_TILE_SIZE,
                       overlap: int = DEFAULT_OVERLAP) -> list[list[SegTile]]:
    """pyshepseg's tile grid (getTilesForFile) as rows of tiles.

    Tiles start every tile_size - overlap pixels; a tile that could not be followed by a whole
    tile grows to the raster's edge instead.
    """
    tile_size, overlap = int(tile_size), int(overlap)
    if overlap < 0 or overlap % 2:
        raise SegmentInputError(f"overlap must be even and >= 0, got {overlap} (each tile "
                                "keeps half of it on each side of the stitch line)")
    if tile_size <= overlap:
        raise SegmentInputError(f"tile_size ({tile_size}) must exceed overlap ({overlap})")
    if width < 1 or height < 1:
        raise SegmentInputError(f"raster size must be positive, got {width} x {height}")
    step = tile_size - overlap

    def spans(total):
        out, pos = [], 0
        while True:
            size = tile_size
            if pos + 2 * size > total:
                size = total - pos
                if size > 0:
                    out.append((pos, size))
                return out
            out.append((pos, size))
            pos += step

    rows = []
    for r, (y, ys) in enumerate(spans(height)):
        rows.append([SegTile(r, c, Window(x, y, xs, ys))
                     for c, (x, xs) in enumerate(spans(width))])
    return rows


# -- worker side -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentTileTask:
    """Everything a worker needs for one tile; small, so it travels inline in a message."""

    src: str
    bands: tuple[int, ...]
    tile: SegTile
    centres: np.ndarray
    nodata: float | None
    min_segment_size: int
    max_spectral_diff: float
    dst: str
    creation_options: tuple[str, ...] = LOCAL_TILE_CREATION_OPTIONS


@dataclass(frozen=True)
class SegmentTileResult:
    """What a worker sends back: where the tile was written, and how the work went."""

    row: int
    col: int
    path: str
    segments: int
    timings: dict
    worker: str  # host:pid


def read_bands(path: str, bands: Sequence[int], window: Window | None = None) -> np.ndarray:
    """(bands, rows, cols) array of a window of a raster (all of it when window is None)."""
    options = {} if gdal_io.is_virtual(path) else {"GTIFF_VIRTUAL_MEM_IO": "YES"}
    with gdal_io.gdal_config(options):
        ds = gdal.Open(path)
        try:
            w = window or Window(0, 0, ds.RasterXSize, ds.RasterYSize)
            arr = ds.ReadAsArray(w.xoff, w.yoff, w.xsize, w.ysize, band_list=list(bands))
        finally:
            ds = None
    if arr is None:
        raise OSError(f"reading {window} of {path} failed")
    return arr.reshape(len(bands), arr.shape[-2], arr.shape[-1])


def segment_tile(task: SegmentTileTask) -> SegmentTileResult:
    """Worker side: read the tile's window (all bands), segment it, write the uint32 tile."""
    from gpu.segmentation import segment_with_centres

    with gdal_io.s3_config():
        t0 = time.perf_counter()
        img = read_bands(task.src, task.bands, task.tile.window)
        t1 = time.perf_counter()
        result = segment_with_centres(img, task.centres, nodata=task.nodata,
                                      min_segment_size=task.min_segment_size,
                                      max_spectral_diff=task.max_spectral_diff)
        t2 = time.perf_counter()
        gdal_io.write_raster(task.dst, result.segments, nodata=0,
                             creation_options=task.creation_options)
        t3 = time.perf_counter()
    timings = dict(result.timings, read=t1 - t0, write=t3 - t2)
    return SegmentTileResult(task.tile.row, task.tile.col, task.dst, result.segment_count,
                             timings, f"{socket.gethostname()}:{os.getpid()}")


def warm_up(bands: int, clusters: int = 60, dtype="uint16") -> None:
    """Build this run's OpenCL programs on a tiny image: an executor initializer.

    As `initializer=warm_up, initargs=(bands, clusters, dtype)` (dtype: the raster's pixel
    type as numpy names it) the program builds (about a second on PoCL without a warm
    build cache) happen when a worker starts instead of inside its first tile's timing.
    """
    from gpu.segmentation import segment_with_centres

    dtype = np.dtype(dtype)
    img = (np.arange(bands * 64) % 7).reshape(bands, 8, 8).astype(dtype)
    centres = np.linspace(0, 6, clusters * bands).reshape(clusters, bands)
    # the labelling program differs with and without nodata (and for a NaN nodata)
    for nodata in (None, 99) + ((float("nan"),) if dtype.kind == "f" else ()):
        segment_with_centres(img, centres, nodata=nodata, min_segment_size=2,
                             max_spectral_diff=float("inf"))


# -- client side: prepare ----------------------------------------------------------------------

@dataclass(frozen=True)
class SourceFacts:
    width: int
    height: int
    bands: tuple[int, ...]
    nodata: float | None
    geotransform: tuple[float, ...]
    projection: str


def source_facts(src: str, bands: Sequence[int] | None, nodata) -> SourceFacts:
    ds = gdal.Open(src)
    try:
        count = ds.RasterCount
        if count < 1:
            raise SegmentInputError(f"{src} has no bands: there is nothing to segment")
        chosen = tuple(range(1, count + 1)) if bands is None else tuple(int(b) for b in bands)
        if not chosen:
            raise SegmentInputError("bands is empty: pass None for all bands or a list of "
                                    "1-based band numbers")
        bad = [b for b in chosen if not 1 <= b <= count]
        if bad:
            raise SegmentInputError(f"{src} has {count} band(s); bands {bad} do not exist")
        if nodata is None:
            values = {ds.GetRasterBand(b).GetNoDataValue() for b in chosen}
            if len(values) > 1:
                raise SegmentInputError(f"the bands of {src} have different nodata values "
                                        f"{sorted(map(str, values))}: pass nodata explicitly")
            nodata = values.pop()
        return SourceFacts(ds.RasterXSize, ds.RasterYSize, chosen, nodata,
                           tuple(ds.GetGeoTransform()), ds.GetProjection())
    finally:
        ds = None


def sample_raster(src: str, facts: SourceFacts, sample_size: int) -> np.ndarray:
    """About sample_size valid pixels (n, bands) spread over the raster, read decimated.

    Like pyshepseg's fitSpectralClustersWholeFile, GDAL reads the bands at a reduced size
    (nearest neighbour), so the whole raster is sampled without reading all of it.
    """
    npix = facts.width * facts.height
    factor = max(1.0, math.sqrt(npix / (2.0 * sample_size)))
    bw = max(1, int(facts.width / factor))
    bh = max(1, int(facts.height / factor))
    ds = gdal.Open(src)
    try:
        arr = ds.ReadAsArray(0, 0, facts.width, facts.height, buf_xsize=bw, buf_ysize=bh,
                             band_list=list(facts.bands),
                             resample_alg=gdal.GRIORA_NearestNeighbour)
    finally:
        ds = None
    arr = arr.reshape(len(facts.bands), bh, bw)
    mask = null_mask(arr, facts.nodata)
    flat = arr.reshape(arr.shape[0], -1)
    idx = np.arange(flat.shape[1]) if mask is None else np.flatnonzero(~mask.reshape(-1))
    if idx.size == 0:
        raise SegmentInputError(f"{src} is all nodata (nodata={facts.nodata!r}) in a sample "
                                "of its pixels: there is nothing to segment; check nodata")
    step = max(1, idx.size // sample_size)
    return flat[:, idx[::step]].T


# -- client side: stitch -----------------------------------------------------------------------

class Stitcher:
    """Recodes each tile's segment IDs into the mosaic's and writes its interior (see module).

    Holds only the saved bottom overlaps of the previous tile row and the right overlap of the
    previous tile: never the whole mosaic.
    """

    def __init__(self, out: gdal.Dataset, grid: list[list[SegTile]], overlap: int):
        self.out = out
        self.grid = grid
        self.overlap = overlap
        self.margin = overlap // 2
        self.max_id = 0
        self.bottom: dict[int, np.ndarray] = {}  # col -> bottom overlap of the tile above
        self.right: np.ndarray | None = None     # right overlap of the tile to the left

    def add(self, tile: SegTile, data: np.ndarray) -> None:
        nrows, ncols = len(self.grid), len(self.grid[0])
        ov, m = self.overlap, self.margin
        h, w = data.shape
        top = 0 if tile.row == 0 else m
        left = 0 if tile.col == 0 else m
        bottom = h if tile.row == nrows - 1 else h - m
        right = w if tile.col == ncols - 1 else w - m
        recode: dict[int, int] = {}
        if tile.row > 0 and ov:
            recode.update(_shared_segments(data[:ov, :], self.bottom[tile.col], axis=0))
        if tile.col > 0 and ov:
            recode.update(_shared_segments(data[:, :ov], self.right, axis=1))
        new = self._relabel(data, recode, top, bottom, left, right)
        win = tile.window
        self.out.GetRasterBand(1).WriteArray(new[top:bottom, left:right],
                                             win.xoff + left, win.yoff + top)
        if tile.row < nrows - 1:
            self.bottom[tile.col] = new[-ov:, :].copy() if ov else new[:0, :]
        self.right = new[:, -ov:].copy() if (tile.col < ncols - 1 and ov) else None

    def _relabel(self, data, recode, top, bottom, left, right) -> np.ndarray:
        """New IDs: recoded ones from the vote; others, if present in the interior, get the next
        free IDs in ascending old-ID order; the rest (only in margins) 0 in the saved overlaps."""
        nold = int(data.max()) + 1
        lut = np.zeros(nold, np.uint32)
        interior = _present(data[top:bottom, left:right], nold)
        interior[0] = False
        for old in recode:
            interior[old] = False
        fresh = np.flatnonzero(interior)
        lut[fresh] = np.arange(self.max_id + 1, self.max_id + 1 + fresh.size, dtype=np.uint32)
        self.max_id += int(fresh.size)
        if recode:
            keys = np.fromiter(recode.keys(), np.int64, len(recode))
            lut[keys] = np.fromiter(recode.values(), np.int64, len(recode)).astype(np.uint32)
        return lut[data]


def _shared_segments(a: np.ndarray, b: np.ndarray, axis: int) -> dict[int, int]:
    """Segments of overlap `a` (this tile) crossing its midline -> their most common non-null
    ID in `b` (the same pixels in the stitched neighbour). axis 0: top overlap, 1: left.

    pyshepseg's recodeSharedSegments/crossesMidline, with null excluded from the vote (a
    segment with no non-null vote is left to get a new ID).
    """
    mid = a.shape[axis] // 2
    before = a[:mid] if axis == 0 else a[:, :mid]
    after = a[mid:] if axis == 0 else a[:, mid:]
    n = int(a.max()) + 1
    crossing = _present(before, n) & _present(after, n)
    crossing[0] = False
    if not crossing.any():
        return {}
    sel = crossing[a] & (b != 0)
    pairs = (a[sel].astype(np.uint64) << np.uint64(32)) | b[sel].astype(np.uint64)
    keys, counts = np.unique(pairs, return_counts=True)
    seg_a = (keys >> np.uint64(32)).astype(np.int64)
    seg_b = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    # most votes first, then the smallest ID (scipy.stats.mode's tie rule, as pyshepseg)
    order = np.lexsort((seg_b, -counts, seg_a))
    seg_a, seg_b = seg_a[order], seg_b[order]
    first = np.ones(seg_a.size, bool)
    first[1:] = seg_a[1:] != seg_a[:-1]
    return dict(zip(seg_a[first].tolist(), seg_b[first].tolist(), strict=True))


def _present(ids: np.ndarray, n: int) -> np.ndarray:
    """Boolean table over 0..n-1: which IDs occur in ids (a histogram, no sort)."""
    return np.bincount(ids.reshape(-1), minlength=n).astype(bool)


# -- client side: the run ----------------------------------------------------------------------

@dataclass
class SegmentRunSummary:
    """What segment_raster did, and how fast."""

    dst: str
    width: int
    height: int
    bands: int
    tiles: int
    segments: int
    centres: np.ndarray
    max_spectral_diff: float
    seconds: float = 0.0
    fit_seconds: float = 0.0
    stitch_seconds: float = 0.0
    tile_timings: dict = field(default_factory=dict)  # stage -> seconds summed over tiles
    workers: set[str] = field(default_factory=set)

    @property
    def segment_seconds(self) -> float:
        """The run without the k-means fit: tiles and stitching (what a tiled job costs)."""
        return self.seconds - self.fit_seconds

    @property
    def mpixels_per_second(self) -> float:
        """Throughput of the segmentation itself (the k-means fit excluded)."""
        s = self.segment_seconds
        return self.width * self.height / 1e6 / s if s > 0 else float("inf")


def segment_raster(executor: futures.Executor, src: str, dst: str, *, centres=None,
                   clusters: int = 60, min_segment_size: int = 50, nodata=None,
                   bands: Sequence[int] | None = None, tile_size: int = DEFAULT_TILE_SIZE,
                   overlap: int = DEFAULT_OVERLAP, max_spectral_diff="auto",
                   spectral_diff_percentile: float = 50, sample_size: int = DEFAULT_SAMPLE_SIZE,
                   kmeans_starts: int = DEFAULT_KMEANS_STARTS, seed: int | None = 0,
                   tile_store: str | None = None,
                   creation_options: Sequence[str] = OUTPUT_CREATION_OPTIONS,
                   endpoint_url: str | None = None) -> SegmentRunSummary:
    """Shepherd-segment raster `src` in overlapping tiles on `executor`; stitch into `dst`.

    dst: a local uint32 GeoTIFF (0 = null, IDs 1..n contiguous) with src's georeferencing;
        it appears only when the run succeeded.
    src: a GDAL path the workers can read (a local file for workers on this machine,
        /vsis3/bucket/key for workers elsewhere). bands: 1-based band numbers (default all).
    centres: fixed centres (k, bands); None fits k-means once, here, on a decimated read of
        the whole raster, and every tile uses those centres.
    nodata: default the bands' own nodata value (they must agree).
    tile_store: where workers write tile files (a directory, or a /vsis3/ prefix when they do
        not share this filesystem); default a scratch directory next to dst.
    """
    if gdal_io.is_virtual(dst):
        raise SegmentInputError(f"dst must be a local path, got {dst!r}")
    if not gdal_io.is_virtual(src):
        src = os.path.abspath(src)
    t_start = time.perf_counter()
    with gdal_io.s3_config(endpoint_url):
        facts = source_facts(src, bands, nodata)
        grid = segmentation_tiles(facts.width, facts.height, tile_size, overlap)
        t = time.perf_counter()
        if centres is None:
            centres = fit_centres(sample_raster(src, facts, sample_size), clusters,
                                  starts=kmeans_starts, seed=seed)
        fit_seconds = time.perf_counter() - t
    cen = _check_centres(centres, len(facts.bands))
    limit = _merge_limit(cen, max_spectral_diff, spectral_diff_percentile)
    dst_dir = os.path.dirname(os.path.abspath(dst))
    run_dir = (tempfile.mkdtemp(prefix=".segtiles-", dir=dst_dir) if tile_store is None
               else gdal_io.join(tile_store, f"segtiles-{uuid.uuid4().hex}"))
    gdal_io.make_dir(run_dir)
    tile_options = (S3_TILE_CREATION_OPTIONS if gdal_io.is_virtual(run_dir)
                    else LOCAL_TILE_CREATION_OPTIONS)
    tiles = [t for row in grid for t in row]
    tasks = [SegmentTileTask(src, facts.bands, t, cen, facts.nodata, int(min_segment_size),
                             limit, gdal_io.join(run_dir, f"{t.name}.tif"), tile_options)
             for t in tiles]
    summary = SegmentRunSummary(dst, facts.width, facts.height, len(facts.bands), len(tiles),
                                0, cen, limit, fit_seconds=fit_seconds)
    partial = os.path.join(dst_dir, f".{os.path.basename(dst)}.{uuid.uuid4().hex[:8]}.partial")
    leftover = {task.dst for task in tasks}
    pending: list[futures.Future] = []
    out = None
    try:
        out = gdal_io.create_raster(
            partial, facts.width, facts.height, gdal.GDT_UInt32, nodata=0,
            geotransform=facts.geotransform, projection=facts.projection,
            creation_options=creation_options)
        stitcher = Stitcher(out, grid, int(overlap))
        by_future = {executor.submit(segment_tile, task): i for i, task in enumerate(tasks)}
        pending = list(by_future)
        done: dict[int, SegmentTileResult] = {}
        next_index = 0
        for fut in futures.as_completed(by_future):
            i = by_future[fut]
            try:
                done[i] = fut.result()
            except BaseException as exc:
                raise SegmentTileFailedError(tasks[i].tile, src, exc) from exc
            while next_index in done:  # stitch in row-major order as soon as possible
                result = done.pop(next_index)
                t = time.perf_counter()
                with gdal_io.s3_config(endpoint_url):
                    data = gdal_io.read_window(result.path)
                    stitcher.add(tiles[next_index], data)
                    gdal_io.remove(result.path)
                leftover.discard(result.path)
                summary.stitch_seconds += time.perf_counter() - t
                for stage, sec in result.timings.items():
                    summary.tile_timings[stage] = summary.tile_timings.get(stage, 0.0) + sec
                summary.workers.add(result.worker)
                next_index += 1
        t = time.perf_counter()
        out.FlushCache()
        out = None
        summary.stitch_seconds += time.perf_counter() - t
        os.replace(partial, dst)
    except BaseException:
        out = None
        for fut in pending:
            fut.cancel()
        futures.wait(pending)
        gdal_io.remove(partial)
        raise
    finally:
        with gdal_io.s3_config(endpoint_url):
            for path in leftover:
                gdal_io.remove(path)
            gdal_io.remove_tree(run_dir)
    summary.segments = stitcher.max_id
    summary.seconds = time.perf_counter() - t_start
    return summary
