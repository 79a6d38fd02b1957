"""gpu.apply: a user function over blocks of aligned rasters == the function on the whole raster.

The reference is the same block function run once on the whole raster (Block.whole, arrays
read with GDAL in full): for functions whose window lies within each input's halo the tiled
result must be identical, bit for bit, whatever the block size, halos, data types, band
counts and executor.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from osgeo import gdal, osr

from gpu import gdal_io
from gpu.applier import (
    Block,
    BlockFailedError,
    BlockOutputError,
    Input,
    Output,
    OutputExistsError,
    RasterAlignmentError,
    apply,
)

# The shipped example's block function, not a copy of it (workers import it by reference:
# they get the client's sys.path, examples/ included).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
from ndvi_focal import ndvi_focal  # noqa: E402

gdal.UseExceptions()

GT = (300000.0, 30.0, 0.0, 4200000.0, 0.0, -30.0)
H, W = 29, 41  # prime-ish: thin remainder blocks for most block sizes


def _srs(epsg):
    s = osr.SpatialReference()
    s.ImportFromEPSG(epsg)
    return s.ExportToWkt()


UTM = _srs(32616)


def _raster(path, array, gt=GT, wkt=UTM, nodata=None):
    """Write a (bands, rows, cols) or (rows, cols) array as a plain GeoTIFF."""
    arr = array if array.ndim == 3 else array[None]
    drv = gdal.GetDriverByName("GTiff")
    ds = drv.Create(str(path), arr.shape[2], arr.shape[1], arr.shape[0],
                    gdal_array_type(arr.dtype), options=["TILED=YES", "BLOCKXSIZE=16",
                                                         "BLOCKYSIZE=16"])
    ds.SetGeoTransform(gt)
    if wkt:
        ds.SetProjection(wkt)
    for i in range(arr.shape[0]):
        b = ds.GetRasterBand(i + 1)
        if nodata is not None:
            b.SetNoDataValue(nodata)
        b.WriteArray(arr[i])
    ds = None
    return str(path)


def gdal_array_type(dtype):
    from osgeo import gdal_array

    return gdal_array.NumericTypeCodeToGDALTypeCode(np.dtype(dtype))


def _field(bands, dtype, seed, nodata=None):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    base = 60 + 50 * np.sin(x / 5.0 + seed) * np.cos(y / 7.0)
    arr = np.stack([base + rng.normal(0, 9, (H, W)) + 10 * b for b in range(bands)])
    arr = arr.astype(dtype)
    if nodata is not None:
        arr[:, 3:6, 30:33] = nodata
        arr[:, 0, 0] = nodata
    return arr


def _read(path):
    with gdal_io.s3_config():
        ds = gdal.Open(str(path))
        try:
            return ds.ReadAsArray()
        finally:
            ds = None


# --- block functions (module level: workers import them by reference) ------------------------

def focal_mean(a, r):
    """Mean over the (2r+1)^2 window, clipped at the array border, per band (float64)."""
    a = a.astype(np.float64)
    if r == 0:
        return a
    _, h, w = a.shape
    p = np.pad(a, ((0, 0), (r, r), (r, r)))
    ones = np.pad(np.ones((h, w)), r)
    total, count = np.zeros_like(a), np.zeros((h, w))
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            total += p[:, dy:dy + h, dx:dx + w]
            count += ones[dy:dy + h, dx:dx + w]
    return total / count


def focal_extremes(a, r):
    """Max and min of band 0 over the (2r+1)^2 window, clipped at the array border."""
    a0 = a[0].astype(np.float64)
    h, w = a0.shape
    hi = np.pad(a0, r, constant_values=-np.inf)
    lo = np.pad(a0, r, constant_values=np.inf)
    mx = np.full((h, w), -np.inf)
    mn = np.full((h, w), np.inf)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            mx = np.maximum(mx, hi[dy:dy + h, dx:dx + w])
            mn = np.minimum(mn, lo[dy:dy + h, dx:dx + w])
    return np.stack([mx, mn])


def blend(arrays, block, *, weight, halos):
    """Two outputs: a core-shaped blend of every input's focal mean (radius = its halo), and a
    2-band padded-shaped focal max/min of the input with the largest halo, nodata-aware."""
    mean = np.zeros((block.core.ysize, block.core.xsize))
    widest = None
    for name, arr in arrays.items():
        m = focal_mean(arr, halos[name])[(slice(None), *block.core_slices(name))]
        mean = mean + weight * m.mean(axis=0)
        if block.reads[name] == block.padded and (widest is None or halos[name] > widest[1]):
            widest = (name, halos[name])
    name, halo = widest
    ext = focal_extremes(arrays[name], halo)
    nd = block.nodata[name][0]
    if nd is not None:
        ext[:, arrays[name][0] == nd] = -1
    return {"mean": mean.astype(np.float32), "extremes": ext}


def passthrough(arrays, block):
    return next(iter(arrays.values()))[0]


def fails_on_one_block(arrays, block, outputs=()):
    if block.core.xoff >= 40:
        raise ZeroDivisionError("boom in block function")
    a = next(iter(arrays.values()))[0]
    return {name: a for name in outputs} if outputs else a


def dies_on_one_block(arrays, block):
    if block.index == 3:
        os._exit(7)  # a worker process killed mid-task (OOM killer, segfault in a library)
    return arrays["a"][0]


def slow(arrays, block):
    import time

    time.sleep(0.2)
    return arrays["a"][0]


def wrong_shape(arrays, block):
    return arrays["a"][0][:-1]


# --- tiled == whole raster --------------------------------------------------------------------

def _whole(function, paths, bands=None, **kwargs):
    infos = {n: gdal_io.dataset_info(p) for n, p in paths.items()}
    arrays = {}
    for n, p in paths.items():
        a = _read(p)
        a = a if a.ndim == 3 else a[None]
        if bands and n in bands:
            a = a[[b - 1 for b in bands[n]]]
        arrays[n] = a
    return function(arrays, Block.whole(infos, bands), **kwargs)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("halos", [(0, 0), (1, 2), (3, 1)])
@pytest.mark.parametrize("block_size", [7, (5, 12), 64])
def test_several_inputs_halos_and_types_equal_the_whole_raster(tmp_path, dtype, halos,
                                                               block_size):
    a = _raster(tmp_path / "a.tif", _field(2, dtype, 1))
    b = _raster(tmp_path / "b.tif", _field(1, np.float32, 2, nodata=-9999.0), nodata=-9999.0)
    kwargs = dict(weight=0.5, halos={"a": halos[0], "b": halos[1]})
    expected = _whole(blend, {"a": a, "b": b}, **kwargs)
    outputs = {"mean": Output(str(tmp_path / "mean.vrt"), np.float32),
               "extremes": Output(str(tmp_path / "ext.tif"), np.int16, bands=2, nodata=-1)}
    with ThreadPoolExecutor(2) as ex:
        s = apply(ex, blend,
                  {"a": Input(a, halo=halos[0]), "b": Input(b, halo=halos[1])},
                  outputs, block_size=block_size, kwargs=kwargs, progress=False)
    np.testing.assert_array_equal(_read(tmp_path / "mean.vrt"), expected["mean"])
    np.testing.assert_array_equal(_read(tmp_path / "ext.tif"),
                                  expected["extremes"].astype(np.int16))
    ds = gdal.Open(str(tmp_path / "ext.tif"))
    assert ds.RasterCount == 2 and ds.GetRasterBand(2).GetNoDataValue() == -1
    assert ds.GetGeoTransform() == GT and ds.GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
    assert s.outputs == {"mean": str(tmp_path / "mean.vrt"), "extremes": str(tmp_path / "ext.tif")}
    assert sorted(os.listdir(tmp_path)) == ["a.tif", "b.tif", "ext.tif", "mean.tiles",
                                            "mean.vrt"]


def test_selected_bands_read_as_type_on_a_process_pool(tmp_path):
    a = _raster(tmp_path / "a.tif", _field(3, np.uint16, 4))
    b = _raster(tmp_path / "b.tif", _field(2, np.float32, 5))
    bands = {"a": (3, 1), "b": (2,)}
    kwargs = dict(weight=2.0, halos={"a": 1, "b": 1})
    expected = _whole(blend, {"a": a, "b": b}, bands=bands, **kwargs)
    with ProcessPoolExecutor(2) as ex:
        s = apply(ex, blend,
                  {"a": Input(a, bands=bands["a"], halo=1, dtype=np.float32),
                   "b": Input(b, bands=bands["b"], halo=1)},
                  {"mean": Output(str(tmp_path / "m.vrt"), np.float64),
                   "extremes": Output(str(tmp_path / "e.vrt"), np.float32, bands=2,
                                      statistics=True)},
                  block_size=16, kwargs=kwargs, progress=False)
    np.testing.assert_array_equal(_read(tmp_path / "m.vrt"), expected["mean"])
    np.testing.assert_array_equal(_read(tmp_path / "e.vrt"), expected["extremes"])
    assert s.blocks == 6 and len(s.workers) >= 1 and s.worker_busy_seconds > 0
    assert s.stats["extremes"].valid_pixels == 2 * H * W
    assert s.stats["extremes"].maximum == expected["extremes"].max()


def test_two_inputs_ndvi_focal_equals_the_whole_raster(tmp_path):
    red = _field(1, np.uint16, 7, nodata=0)
    nir = (_field(1, np.uint16, 8) * 2).astype(np.uint16)
    r = _raster(tmp_path / "red.tif", red, nodata=0)
    n = _raster(tmp_path / "nir.tif", nir, nodata=0)
    expected = _whole(ndvi_focal, {"red": r, "nir": n})
    with ThreadPoolExecutor(3) as ex:
        apply(ex, ndvi_focal, {"red": Input(r, halo=1), "nir": Input(n, halo=1)},
              {"ndvi": Output(str(tmp_path / "ndvi.vrt"), np.float32, nodata=-9999)},
              block_size=(9, 4), progress=False)
    np.testing.assert_array_equal(_read(tmp_path / "ndvi.vrt"), expected)
    assert (expected == -9999).any() and (expected > 0).any()


# --- alignment ----------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["size", "geotransform", "projection"])
def test_unaligned_inputs_get_an_error_that_says_how_to_align(tmp_path, what):
    a = _raster(tmp_path / "a.tif", _field(1, np.float32, 1))
    arr, gt, wkt = _field(1, np.float32, 2), GT, UTM
    if what == "size":
        arr = arr[:, :-3]
    elif what == "geotransform":
        gt = (GT[0] + 12.5, *GT[1:])
    else:
        wkt = _srs(32617)
    b = _raster(tmp_path / "b.tif", arr, gt=gt, wkt=wkt)
    with ThreadPoolExecutor(1) as ex, pytest.raises(RasterAlignmentError) as info:
        apply(ex, ndvi_focal, {"red": a, "nir": b},
              {"o": Output(str(tmp_path / "o.vrt"))}, progress=False)
    msg = str(info.value)
    assert what in msg and "gdalwarp -of VRT" in msg and "-te" in msg and "-tr 30.0 30.0" in msg
    assert "EPSG:32616" in msg
    assert sorted(os.listdir(tmp_path)) == ["a.tif", "b.tif"]  # nothing started

    # Doing what the message says makes the inputs aligned.
    cmd = shlex.split(re.search(r"(gdalwarp -of VRT .*?\.vrt)", msg).group(1))
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True)
    aligned = str(tmp_path / "b_aligned.vrt")
    with ThreadPoolExecutor(1) as ex:
        apply(ex, passthrough, {"red": a, "nir": aligned}, {"o": Output(str(tmp_path / "o.vrt"))},
              progress=False)
    assert gdal.Open(str(tmp_path / "o.vrt")).RasterXSize == W


# --- bad input, bad output, failures ----------------------------------------------------------

def test_bad_arguments_are_errors_before_anything_runs(tmp_path):
    a = _raster(tmp_path / "a.tif", _field(2, np.float32, 1))
    o = {"o": Output(str(tmp_path / "o.vrt"))}
    with ThreadPoolExecutor(1) as ex:
        with pytest.raises(ValueError, match=r"has 2 band\(s\); band\(s\) \[3\] do not exist"):
            apply(ex, ndvi_focal, {"a": Input(a, bands=(1, 3))}, o)
        with pytest.raises(ValueError, match="halo must be an int >= 0"):
            apply(ex, ndvi_focal, {"a": Input(a, halo=-1)}, o)
        with pytest.raises(ValueError, match="must end in .vrt"):
            apply(ex, ndvi_focal, {"a": a}, {"o": Output(str(tmp_path / "o.png"))})
        with pytest.raises(TypeError, match="must be a gpu.applier.Output"):
            apply(ex, ndvi_focal, {"a": a}, {"o": str(tmp_path / "o.vrt")})
        with pytest.raises(ValueError, match="at least one input"):
            apply(ex, ndvi_focal, {}, o)
        with pytest.raises(RuntimeError):  # GDAL: no such file
            apply(ex, ndvi_focal, {"a": str(tmp_path / "missing.tif")}, o)
        import threading

        with pytest.raises(TypeError, match="cannot pickle the function or its kwargs"):
            apply(ex, ndvi_focal, {"a": a}, o, kwargs={"lock": threading.Lock()})
    assert sorted(os.listdir(tmp_path)) == ["a.tif"]


def test_existing_output_needs_overwrite(tmp_path):
    a = _raster(tmp_path / "a.tif", _field(1, np.float32, 1))
    with ThreadPoolExecutor(2) as ex:
        apply(ex, fails_on_one_block, {"a": a}, {"o": Output(str(tmp_path / "o.vrt"))},
              block_size=64, progress=False)
        with pytest.raises(OutputExistsError, match="overwrite=True"):
            apply(ex, fails_on_one_block, {"a": a}, {"o": Output(str(tmp_path / "o.vrt"))})
        apply(ex, fails_on_one_block, {"a": a}, {"o": Output(str(tmp_path / "o.vrt"))},
              block_size=64, overwrite=True, progress=False)
    np.testing.assert_array_equal(_read(tmp_path / "o.vrt"), _read(a))


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_a_failing_block_names_it_and_leaves_no_output(tmp_path, pool):
    a = _raster(tmp_path / "a.tif", _field(1, np.float32, 1))
    ex = ThreadPoolExecutor(2) if pool == "thread" else ProcessPoolExecutor(2)
    with ex, pytest.raises(BlockFailedError) as info:
        apply(ex, fails_on_one_block, {"a": a},
              {"o": Output(str(tmp_path / "o.vrt")), "p": Output(str(tmp_path / "p.tif"))},
              block_size=10, kwargs=dict(outputs=("o", "p")), progress=False)
    assert "ZeroDivisionError: boom in block function" in str(info.value)
    assert "core x 40:41" in str(info.value)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert sorted(os.listdir(tmp_path)) == ["a.tif"]  # no mosaic, tiles or scratch


def test_a_worker_that_dies_fails_the_run_cleanly(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    a = _raster(tmp_path / "a.tif", _field(1, np.float32, 1))
    with ProcessPoolExecutor(2) as ex, pytest.raises(BlockFailedError) as info:
        apply(ex, dies_on_one_block, {"a": a}, {"o": Output(str(tmp_path / "o.vrt"))},
              block_size=10, progress=False)
    assert isinstance(info.value.__cause__, BrokenProcessPool)
    assert sorted(os.listdir(tmp_path)) == ["a.tif"]


def test_ctrl_c_stops_the_run_and_removes_its_output(tmp_path):
    import signal
    import threading

    a = _raster(tmp_path / "a.tif", _field(1, np.float32, 1))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    with ThreadPoolExecutor(2) as ex:
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                apply(ex, slow, {"a": a}, {"o": Output(str(tmp_path / "o.vrt"))},
                      block_size=8, progress=False)  # 30 blocks of 0.2 s on 2 threads
        finally:
            timer.cancel()
    assert sorted(os.listdir(tmp_path)) == ["a.tif"]  # cancelled blocks never ran


def test_outputs_that_do_not_fit_are_explained(tmp_path):
    a = _raster(tmp_path / "a.tif", _field(1, np.float32, 1))
    with ThreadPoolExecutor(1) as ex:
        with pytest.raises(BlockFailedError) as info:
            apply(ex, wrong_shape, {"a": Input(a, halo=2)}, {"o": Output(str(tmp_path / "o.vrt"))},
                  block_size=16, progress=False)
        assert isinstance(info.value.__cause__, BlockOutputError)
        assert re.search(r"is (\d+) x \d+ \(rows x cols\); expected the core's \d+ x \d+ "
                         r"or the padded window's \d+ x \d+", str(info.value))
        with pytest.raises(BlockFailedError, match="expected 3 band"):
            apply(ex, fails_on_one_block, {"a": a},
                  {"o": Output(str(tmp_path / "o.vrt"), bands=3)}, block_size=64)
        with pytest.raises(BlockFailedError, match="must return a dict of arrays"):
            apply(ex, fails_on_one_block, {"a": a},
                  {"o": Output(str(tmp_path / "o.vrt")), "p": Output(str(tmp_path / "p.vrt"))},
                  block_size=64)
    assert sorted(os.listdir(tmp_path)) == ["a.tif"]


# --- BatchExecutor and S3 ----------------------------------------------------------------------

def test_batch_executor_writes_the_same_outputs(tmp_path, make_executor):
    red = _field(1, np.uint16, 7, nodata=0)
    r = _raster(tmp_path / "red.tif", red, nodata=0)
    n = _raster(tmp_path / "nir.tif", (_field(1, np.uint16, 8) * 2).astype(np.uint16), nodata=0)
    expected = _whole(ndvi_focal, {"red": r, "nir": n})
    ex = make_executor(2)
    s = apply(ex, ndvi_focal, {"red": Input(r, halo=1), "nir": Input(n, halo=1)},
              {"ndvi": Output(str(tmp_path / "ndvi.vrt"), np.float32, nodata=-9999)},
              block_size=16, progress=False)
    np.testing.assert_array_equal(_read(tmp_path / "ndvi.vrt"), expected)
    assert s.blocks == 6 and s.client_busy_seconds < s.seconds
    with pytest.raises(BlockFailedError, match="boom in block function"):
        apply(ex, fails_on_one_block, {"a": r}, {"o": Output(str(tmp_path / "f.vrt"))},
              block_size=10, progress=False)
    assert not os.path.exists(tmp_path / "f.vrt") and not os.path.exists(tmp_path / "f.tiles")
