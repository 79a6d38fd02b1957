"""GDAL helpers for the tiled pipeline: window reads, tile writes, and /vsis3/ configuration.

Why a module of its own: the worker side (read a window, write a tile) and the client side
(inspect the source, stitch tiles) must open rasters the same way, and both must reach S3
through the same endpoint as boto3 does. GDAL 3.6 does not read AWS_ENDPOINT_URL, so
`s3_config` maps it onto GDAL's own options for the duration of a call. The options are
thread-local (gdal.SetThreadLocalConfigOption) so that tiles running on a ThreadPoolExecutor
do not race on process-global state, and the previous values are restored afterwards.

Paths are GDAL paths: a local file name or a virtual one such as `/vsis3/bucket/key.tif`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
from osgeo import gdal, gdal_array

from .tiling import Window

gdal.UseExceptions()

#: Dummy credentials for an emulator endpoint when none are configured (moto accepts any).
_EMULATOR_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

#: Options that make /vsis3/ cheap and predictable for one-object-per-tile access: never list
#: a "directory" to find sidecar files (one request per open saved), and never cache a
#: "missing" answer for a key another process is about to write.
_S3_ACCESS_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_NON_CACHED": "/vsis3/",
}


def is_virtual(path: str) -> bool:
    """True for a GDAL virtual path (/vsis3/, /vsimem/, ...), False for a local file."""
    return str(path).startswith("/vsi")


def endpoint_config(environ: Mapping[str, str] | None = None, endpoint_url: str | None = None):
    """GDAL config options that point /vsis3/ at endpoint_url (default: AWS_ENDPOINT_URL).

    Empty when no endpoint is set: GDAL then talks to AWS itself with its usual credential
    chain. With an endpoint (an emulator such as moto), GDAL needs the host:port, plain HTTP
    when the scheme says so, path-style addressing, a region, and some credentials.
    """
    env = os.environ if environ is None else environ
    endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return {}
    url = urlparse(endpoint)
    if not url.hostname:
        raise ValueError(f"AWS endpoint {endpoint!r} has no host; expected e.g. http://host:port")
    host = url.netloc
    options = {
        "AWS_S3_ENDPOINT": host,
        "AWS_HTTPS": "NO" if url.scheme == "http" else "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_REGION": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if not env.get("AWS_ACCESS_KEY_ID") and not env.get("AWS_PROFILE"):
        options.update(_EMULATOR_CREDENTIALS)
    return options


@contextlib.contextmanager
def gdal_config(options: Mapping[str, str]) -> Iterator[None]:
    """Set GDAL config options for this thread, restoring the previous values on exit."""
    previous = {k: gdal.GetThreadLocalConfigOption(k, None) for k in options}
    try:
        for key, value in options.items():
            gdal.SetThreadLocalConfigOption(key, value)
        yield
    finally:
        for key, value in previous.items():
            gdal.SetThreadLocalConfigOption(key, value)


def s3_config(endpoint_url: str | None = None):
    """Context in which /vsis3/ paths reach endpoint_url (default: AWS_ENDPOINT_URL)."""
    options = dict(_S3_ACCESS_OPTIONS)
    options.update(endpoint_config(endpoint_url=endpoint_url))
    return gdal_config(options)


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about a source band before tiling it."""

    width: int
    height: int
    geotransform: tuple[float, ...]
    projection: str
    nodata: float | None
    data_type: int  # a gdal.GDT_* constant

    @property
    def has_georeference(self) -> bool:
        return self.geotransform != (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class DatasetInfo:
    """A raster's grid and its bands' types and nodata: what the tiled apply checks and plans
    with, read once by the client (workers get it in their task instead of reopening)."""

    path: str
    width: int
    height: int
    geotransform: tuple[float, ...]
    projection: str | None  # WKT; None when not read (see dataset_info)
    data_types: tuple[int, ...]  # gdal.GDT_* per band
    nodata: tuple[float | None, ...]  # per band

    @property
    def band_count(self) -> int:
        return len(self.data_types)


def dataset_info(path: str, projection: bool = True) -> DatasetInfo:
    """Grid and per-band type/nodata of a raster (a header read: no pixels).

    projection=False leaves it None: the first CRS a process reads initialises PROJ (its
    database; 35-40 ms here), which a caller that only coordinates can leave to workers.
    """
    ds = gdal.Open(path)
    try:
        bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
        return DatasetInfo(
            path=path, width=ds.RasterXSize, height=ds.RasterYSize,
            geotransform=tuple(ds.GetGeoTransform()),
            projection=ds.GetProjection() if projection else None,
            data_types=tuple(b.DataType for b in bands),
            nodata=tuple(b.GetNoDataValue() for b in bands),
        )
    finally:
        ds = None


@functools.lru_cache(maxsize=16)
def projection_of(path: str) -> str:
    """The WKT of a raster's CRS ('' if none), read once per process and path."""
    ds = gdal.Open(path)
    try:
        return ds.GetProjection()
    finally:
        ds = None


def band_data_type(path: str, band: int = 1) -> int:
    """The gdal.GDT_* type of one band (an open and a header read; no georeferencing)."""
    ds = gdal.Open(path)
    try:
        if not 1 <= band <= ds.RasterCount:
            raise ValueError(f"{path} has {ds.RasterCount} band(s); band {band} does not exist")
        return ds.GetRasterBand(band).DataType
    finally:
        ds = None


def raster_info(path: str, band: int = 1) -> RasterInfo:
    ds = gdal.Open(path)
    try:
        if not 1 <= band <= ds.RasterCount:
            raise ValueError(f"{path} has {ds.RasterCount} band(s); band {band} does not exist")
        b = ds.GetRasterBand(band)
        return RasterInfo(
            width=ds.RasterXSize,
            height=ds.RasterYSize,
            geotransform=tuple(ds.GetGeoTransform()),
            projection=ds.GetProjection(),
            nodata=b.GetNoDataValue(),
            data_type=b.DataType,
        )
    finally:
        ds = None


def window_geotransform(geotransform, window: Window) -> tuple[float, ...]:
    """The geotransform of a window of a raster: same pixel size, shifted origin."""
    g0, g1, g2, g3, g4, g5 = geotransform
    x, y = window.xoff, window.yoff
    return (g0 + x * g1 + y * g2, g1, g2, g3 + x * g4 + y * g5, g4, g5)


#: Local reads map uncompressed GeoTIFFs into memory and copy just the window. Through the
#: block cache instead, a 1026-pixel window of a raster in 512-pixel blocks reads 4 x 4 whole
#: blocks (the halo spills into the next block on every side): 4x the bytes, and 3.7x the CPU
#: time of the mapped read on the 8192 x 8192 job. Ignored by GDAL for compressed files.
_LOCAL_READ_OPTIONS = {"GTIFF_VIRTUAL_MEM_IO": "YES"}


def read_window(path: str, window: Window | None = None, band: int = 1,
                dtype=None) -> np.ndarray:
    """Read one window (default: all) of one band as a 2-D array (rows, columns)."""
    options = {} if is_virtual(path) else _LOCAL_READ_OPTIONS
    with gdal_config(options):
        return _read_window(path, window, band, dtype)


def read_bands(path: str, window: Window, bands, dtype=None) -> np.ndarray:
    """Read one window of several bands (1-based numbers) as a 3-D array (bands, rows, cols).

    Band by band into one array, so that local files keep the memory-mapped read path of
    read_window (the dataset-level interleaved read would go through the block cache).
    """
    options = {} if is_virtual(path) else _LOCAL_READ_OPTIONS
    with gdal_config(options):
        ds = gdal.Open(path)
        try:
            first = ds.GetRasterBand(bands[0])
            np_type = (np.dtype(dtype) if dtype is not None
                       else np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(first.DataType)))
            buf_type = gdal_array.NumericTypeCodeToGDALTypeCode(np_type)
            out = np.empty((len(bands), window.ysize, window.xsize), dtype=np_type)
            for i, number in enumerate(bands):
                got = ds.GetRasterBand(number).ReadAsArray(
                    window.xoff, window.yoff, window.xsize, window.ysize, buf_type=buf_type,
                    buf_obj=out[i])
                if got is None:
                    raise OSError(f"reading {window} of {path} band {number} failed")
            return out
        finally:
            ds = None


def _read_window(path, window, band, dtype):
    ds = gdal.Open(path)
    try:
        if window is None:
            window = Window(0, 0, ds.RasterXSize, ds.RasterYSize)
        b = ds.GetRasterBand(band)
        buf_type = None if dtype is None else gdal_array.NumericTypeCodeToGDALTypeCode(dtype)
        arr = b.ReadAsArray(window.xoff, window.yoff, window.xsize, window.ysize,
                            buf_type=buf_type)
        if arr is None:
            raise OSError(f"reading {window} of {path} band {band} failed")
        return arr
    finally:
        ds = None


def create_raster(path, width, height, data_type, *, geotransform=None, projection="",
                  nodata=None, creation_options=()) -> gdal.Dataset:
    """Create a single-band GeoTIFF (local path or /vsimem/) and return it open for writing."""
    drv = gdal.GetDriverByName("GTiff")
    ds = drv.Create(str(path), width, height, 1, data_type, options=list(creation_options))
    if geotransform is not None:
        ds.SetGeoTransform(tuple(geotransform))
    if projection:
        ds.SetProjection(projection)
    if nodata is not None:
        ds.GetRasterBand(1).SetNoDataValue(nodata)
    return ds


def write_raster(path: str, array: np.ndarray, *, geotransform=None, projection="",
                 nodata=None, creation_options=()) -> None:
    """Write a 2-D array as a single-band GeoTIFF at a local path or any /vsi path.

    GTiff cannot be created in place on /vsis3/ (it needs random writes), so a virtual
    destination is written to /vsimem/ first and copied across in one sequential upload.
    """
    data_type = gdal_array.NumericTypeCodeToGDALTypeCode(array.dtype)
    target = f"/vsimem/{uuid.uuid4().hex}.tif" if is_virtual(path) else path
    ds = create_raster(target, array.shape[1], array.shape[0], data_type,
                       geotransform=geotransform, projection=projection, nodata=nodata,
                       creation_options=creation_options)
    try:
        ds.GetRasterBand(1).WriteArray(array)
        ds.FlushCache()
    finally:
        ds = None
    if target != path:
        try:
            copy_file(target, path)
        finally:
            gdal.Unlink(target)


def write_cog(path: str, array: np.ndarray, *, geotransform, projection="", nodata=None,
              creation_options=()) -> None:
    """Write a (bands, rows, cols) array as a Cloud Optimized GeoTIFF, local or any /vsi path.

    The array is wrapped, not copied, as an in-memory dataset and handed to GDAL's COG driver
    (which lays out the header, tiles and any overviews as the COG spec requires). A virtual
    destination is written to /vsimem/ and uploaded in one sequential copy, as write_raster.
    """
    if array.ndim == 2:
        array = array[np.newaxis]
    src = gdal_array.OpenArray(np.ascontiguousarray(array))
    if src is None:
        raise OSError(f"cannot wrap a {array.dtype} array as a GDAL dataset")
    src.SetGeoTransform(tuple(geotransform))
    if projection:
        src.SetProjection(projection)
    if nodata is not None:
        for i in range(src.RasterCount):
            src.GetRasterBand(i + 1).SetNoDataValue(nodata)
    target = f"/vsimem/{uuid.uuid4().hex}.tif" if is_virtual(path) else path
    try:
        out = gdal.GetDriverByName("COG").CreateCopy(target, src,
                                                       options=list(creation_options))
        if out is None:
            raise OSError(f"writing {path} failed")
        out = None
        if target != path:
            copy_file(target, path)
    finally:
        src = None
        if target != path:
            gdal.Unlink(target)


def write_bytes(path: str, data: bytes) -> None:
    """Write a small file (a VRT) at a local path or any /vsi path."""
    if not is_virtual(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    f = gdal.VSIFOpenL(path, "wb")
    if f is None:
        raise OSError(f"cannot open {path} for writing")
    try:
        if gdal.VSIFWriteL(data, 1, len(data), f) != len(data):
            raise OSError(f"short write to {path}")
    finally:
        if gdal.VSIFCloseL(f) != 0:
            raise OSError(f"closing {path} failed (upload incomplete?)")


def copy_file(src: str, dst: str, chunk: int = 8 << 20) -> None:
    """Copy a file between any two GDAL paths (local or /vsi), sequentially."""
    fin = gdal.VSIFOpenL(src, "rb")
    if fin is None:
        raise OSError(f"cannot open {src} for reading")
    try:
        fout = gdal.VSIFOpenL(dst, "wb")
        if fout is None:
            raise OSError(f"cannot open {dst} for writing")
        try:
            while True:
                data = gdal.VSIFReadL(1, chunk, fin)
                if not data:
                    break
                if gdal.VSIFWriteL(data, 1, len(data), fout) != len(data):
                    raise OSError(f"short write to {dst}")
        finally:
            if gdal.VSIFCloseL(fout) != 0:
                raise OSError(f"closing {dst} failed (upload incomplete?)")
    finally:
        gdal.VSIFCloseL(fin)


def join(prefix: str, name: str) -> str:
    """Join a directory or /vsi prefix and a file name with exactly one slash."""
    return f"{str(prefix).rstrip('/')}/{name}"


def make_dir(path: str) -> None:
    if is_virtual(path):
        return  # object stores have no directories
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Delete one file (local or /vsi); a missing file is not an error."""
    if is_virtual(path):
        with contextlib.suppress(RuntimeError):
            gdal.Unlink(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def remove_tree(path: str) -> None:
    """Delete a directory or /vsi prefix and everything under it; missing is not an error."""
    if is_virtual(path):
        with contextlib.suppress(RuntimeError):
            gdal.RmdirRecursive(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def exists(path: str) -> bool:
    if is_virtual(path):
        return gdal.VSIStatL(path) is not None
    return os.path.exists(path)
