"""gpu.hillshade / slope / aspect against the real gdaldem 3.6.2 binary.

Oracle: ``gdaldem <mode>`` run by subprocess on a GeoTIFF written with GDAL (an explicit
``-s`` always), read back with GDAL. Targets, asserted exactly:

* slope, aspect (Float32): identical nodata masks, max |difference| <= 1e-4 degrees (aspect as
  circular distance; percent slope as the same absolute bound).
* hillshade (Byte): identical nodata masks, no pixel off by more than 1, and at most 1 pixel
  in 10,000 off at all.

DEMs: matplotlib's jacksboro_fault_dem (Int16, geographic, square pixels) and topobathy
(Float32, geographic, non-square pixels), smooth and noisy synthetic surfaces, and terraces
with flat areas and exact ties, each with and without nodata holes (holes touch the edges).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess

import numpy as np
import pytest

gdal = pytest.importorskip("osgeo.gdal")
gdal_array = pytest.importorskip("osgeo.gdal_array")
pytest.importorskip("pyopencl")

import gpu  # noqa: E402
from gpu.gdaldem_rules import TerrainInputError  # noqa: E402

gdal.UseExceptions()

GDALDEM = shutil.which("gdaldem")
pytestmark = pytest.mark.skipif(GDALDEM is None, reason="gdaldem binary not on PATH")

SLOPE_TOL = 1e-4
HILLSHADE_MAX_FRACTION = 1e-4


# --------------------------------------------------------------------------- DEMs


def _jacksboro():
    from matplotlib import cbook

    data = cbook.get_sample_data("jacksboro_fault_dem.npz")
    dx = float(data["dx"])
    return data["elevation"].astype(np.int16), (0.0, dx, 0.0, 36.0, 0.0, -dx), 111120.0


def _topobathy():
    from matplotlib import cbook

    data = cbook.get_sample_data("topobathy.npz")
    lon, lat = data["longitude"], data["latitude"]
    dx = float(lon[-1] - lon[0]) / (lon.size - 1)
    dy = float(lat[-1] - lat[0]) / (lat.size - 1)
    topo = np.ascontiguousarray(data["topo"][::-1] if dy > 0 else data["topo"])
    return topo.astype(np.float32), (float(lon[0]), dx, 0.0, float(lat[-1]), 0.0, -abs(dy)), \
        111120.0


def _grid(rows, cols):
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    return y, x


def _smooth():
    y, x = _grid(150, 211)
    z = 300 * np.sin(x / 23.0) * np.cos(y / 31.0) + 0.7 * x + 1500.3
    return z.astype(np.float32), (500000.0, 10.0, 0.0, 4100000.0, 0.0, -25.0), 1.0


def _noise():
    rng = np.random.default_rng(7)
    z = np.cumsum(rng.normal(0, 3, (133, 171)), axis=1) + rng.normal(0, 2, (133, 171)) + 800
    return z.astype(np.float32), (0.0, 5.0, 0.0, 0.0, 0.0, -5.0), 1.0


def _terraces():
    """Integer terraces: large flat areas, exact ties between opposite neighbours."""
    y, x = _grid(140, 160)
    z = np.floor((200 * np.sin(x / 40.0) + 150 * np.cos(y / 25.0)) / 25.0) * 25.0
    z[40:70, 50:90] = 100.0  # plateau
    z[100:120, 10:30] = np.where((x[100:120, 10:30] + y[100:120, 10:30]) % 2 == 0, 10, 20)
    return z.astype(np.int16), (0.0, 30.0, 0.0, 0.0, 0.0, -30.0), 1.0


def _terraces_float_south_up():
    """Float terraces on a south-up grid (positive gt[5]) with non-square pixels."""
    z, _, _ = _terraces()
    return z.astype(np.float32) + 0.25, (0.0, 2.0, 0.0, 0.0, 0.0, 3.0), 1.0


DEMS = {
    "jacksboro-int16": _jacksboro,
    "topobathy-float32": _topobathy,
    "smooth-float32": _smooth,
    "noise-float32": _noise,
    "noise-int16": lambda: ((lambda z, gt, s: (np.round(z).astype(np.int16), gt, s))(*_noise())),
    "terraces-int16": _terraces,
    "terraces-float32-southup": _terraces_float_south_up,
}

_cache: dict = {}


def dem_case(name: str, holes: str):
    """(dem, geotransform, scale, nodata) for a named DEM; holes: none, value or nan."""
    key = (name, holes)
    if key not in _cache:
        dem, gt, scale = DEMS[name]()
        nodata = None
        if holes != "none":
            dem = dem.copy()
            if dem.dtype == np.int16:
                nodata = -32768
            else:
                nodata = float("nan") if holes == "nan" else -9999.0
            rng = np.random.default_rng(abs(hash(name)) % 1000)
            mask = rng.random(dem.shape) < 0.02
            mask[:3, :5] = True  # corner block
            mask[10:14, -1] = True  # right edge
            mask[-1, 20:23] = True  # bottom edge
            mask[25, 0] = True  # left edge
            dem[mask] = nodata
        _cache[key] = (dem, gt, scale, nodata)
    return _cache[key]


# --------------------------------------------------------------------------- oracle


_written: dict = {}


def run_gdaldem(tmp_path, mode, dem, gt, nodata, args):
    """Write dem as a GeoTIFF (once per array), run ``gdaldem mode`` with args, read back."""
    dst = str(tmp_path / f"{mode}.tif")
    key = (hashlib.sha1(dem.tobytes()).hexdigest(), dem.shape, dem.dtype.str, tuple(gt),
           repr(nodata))
    src = _written.get(key)
    if src is None or not os.path.exists(src):
        src = str(tmp_path / "dem.tif")
        _write_geotiff(src, dem, gt, nodata)
        _written[key] = src
    subprocess.run([GDALDEM, mode, src, dst, "-q", *args], check=True,
                   capture_output=True)
    out = gdal.Open(dst)
    arr = out.GetRasterBand(1).ReadAsArray()
    out = None
    return arr


def _write_geotiff(src, dem, gt, nodata):
    driver = gdal.GetDriverByName("GTiff")
    dtype = gdal_array.NumericTypeCodeToGDALTypeCode(dem.dtype)
    ds = driver.Create(src, dem.shape[1], dem.shape[0], 1, dtype)
    ds.SetGeoTransform(gt)
    band = ds.GetRasterBand(1)
    if nodata is not None:
        band.SetNoDataValue(nodata)
    band.WriteArray(dem)
    ds = None


# --------------------------------------------------------------------------- comparators


def assert_hillshade_close(got, ref):
    assert got.dtype == np.uint8 and got.shape == ref.shape
    np.testing.assert_array_equal(got == 0, ref == 0, err_msg="nodata masks differ")
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1, f"max difference {diff.max()} > 1"
    n_off = int(np.count_nonzero(diff))
    assert n_off <= HILLSHADE_MAX_FRACTION * diff.size, (
        f"{n_off} of {diff.size} pixels differ (allowed 1 in 10,000)")


def assert_float_close(got, ref, nodata=-9999.0, circular=False):
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got == nodata, ref == nodata, err_msg="nodata masks differ")
    valid = ref != nodata
    diff = np.abs(got[valid].astype(np.float64) - ref[valid].astype(np.float64))
    if circular:
        diff = np.minimum(diff, 360.0 - diff)
    worst = float(diff.max()) if diff.size else 0.0
    assert np.all(np.isfinite(diff)), "non-finite difference"
    assert worst <= SLOPE_TOL, f"max difference {worst} > {SLOPE_TOL}"


def test_comparators_can_fail():
    """The thresholds are live: a 1-pixel shift or a 2e-4 offset is rejected."""
    ref = np.full((100, 100), 100, np.uint8)
    bad = ref.copy()
    bad[0, :2] = 101  # 2 of 10,000 pixels off by one
    with pytest.raises(AssertionError):
        assert_hillshade_close(bad, ref)
    bad = ref.copy()
    bad[5, 5] = 102
    with pytest.raises(AssertionError):
        assert_hillshade_close(bad, ref)
    fref = np.linspace(0, 80, 400, dtype=np.float32).reshape(20, 20)
    with pytest.raises(AssertionError):
        assert_float_close(fref + np.float32(2e-4), fref)
    with pytest.raises(AssertionError):
        a = fref.copy()
        a[3, 3] = -9999.0
        assert_float_close(a, fref)


# --------------------------------------------------------------------------- cases

HOLES = ["none", "value"]
ALGS = ["Horn", "ZevenbergenThorne"]
EDGES = [False, True]


# Each gdaldem run costs ~0.1 s, so the full product is kept for the plain shading and the
# -combined / -multidirectional variants run on four DEMs covering both read paths, square
# and non-square pixels, ties and noise.
VARIANT_DEMS = ["jacksboro-int16", "topobathy-float32", "terraces-int16", "noise-float32"]
HILLSHADE_CASES = [(name, "plain") for name in DEMS] + [
    (name, variant) for variant in ("combined", "multidirectional") for name in VARIANT_DEMS
]


@pytest.mark.parametrize("edges", EDGES, ids=["noedges", "edges"])
@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("holes", HOLES)
@pytest.mark.parametrize("name,variant", HILLSHADE_CASES)
def test_hillshade_matches_gdaldem(tmp_path, name, variant, holes, alg, edges):
    dem, gt, scale, nodata = dem_case(name, holes)
    z, az, alt = (1.0, 315.0, 45.0) if name.endswith("-int16") else (2.5, 130.0, 35.0)
    if variant == "multidirectional":
        az = 315.0  # gdaldem refuses -az with -multidirectional
    args = ["-s", repr(scale), "-z", repr(z), "-alt", repr(alt), "-alg", alg]
    if variant != "multidirectional":
        args += ["-az", repr(az)]
    if variant != "plain":
        args.append("-" + variant)
    if edges:
        args.append("-compute_edges")
    ref = run_gdaldem(tmp_path, "hillshade", dem, gt, nodata, args)
    got = gpu.hillshade(dem, gt, z=z, scale=scale, azimuth=az, altitude=alt, alg=alg,
                        combined=variant == "combined",
                        multidirectional=variant == "multidirectional",
                        nodata=nodata, compute_edges=edges)
    assert_hillshade_close(got, ref)


SLOPE_CASES = [(name, False) for name in DEMS] + [
    (name, True) for name in ("jacksboro-int16", "noise-float32", "terraces-float32-southup")
]


@pytest.mark.parametrize("edges", EDGES, ids=["noedges", "edges"])
@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("holes", HOLES)
@pytest.mark.parametrize("name,percent", SLOPE_CASES)
def test_slope_matches_gdaldem(tmp_path, name, percent, holes, alg, edges):
    dem, gt, scale, nodata = dem_case(name, holes)
    args = ["-s", repr(scale), "-alg", alg] + (["-p"] if percent else []) + \
        (["-compute_edges"] if edges else [])
    ref = run_gdaldem(tmp_path, "slope", dem, gt, nodata, args)
    got = gpu.slope(dem, gt, scale=scale, alg=alg, percent=percent, nodata=nodata,
                    compute_edges=edges)
    assert_float_close(got, ref)


# Every DEM with the default azimuth output, with and without holes; the -trigonometric /
# -zero_for_flat variants on the DEMs with flat areas and ties, with holes (zero_for_flat
# changes what holes and edges become).
ASPECT_CASES = [(name, "azimuth", holes) for name in DEMS for holes in HOLES] + [
    (name, flags, "value")
    for name in ("terraces-int16", "terraces-float32-southup", "jacksboro-int16")
    for flags in ("trigonometric", "zero_for_flat", "trigonometric+zero_for_flat")
]


@pytest.mark.parametrize("edges", EDGES, ids=["noedges", "edges"])
@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("name,flags,holes", ASPECT_CASES)
def test_aspect_matches_gdaldem(tmp_path, name, flags, holes, alg, edges):
    dem, gt, scale, nodata = dem_case(name, holes)
    trig = "trigonometric" in flags
    zero = "zero_for_flat" in flags
    args = ["-s", repr(scale), "-alg", alg] + (["-trigonometric"] if trig else []) + \
        (["-zero_for_flat"] if zero else []) + (["-compute_edges"] if edges else [])
    ref = run_gdaldem(tmp_path, "aspect", dem, gt, nodata, args)
    got = gpu.aspect(dem, gt, alg=alg, trigonometric=trig, zero_for_flat=zero,
                     nodata=nodata, compute_edges=edges)
    assert_float_close(got, ref, nodata=0.0 if zero else -9999.0, circular=True)


@pytest.mark.parametrize("mode", ["hillshade", "slope", "aspect"])
@pytest.mark.parametrize("name", ["topobathy-float32", "smooth-float32"])
def test_nan_nodata_matches_gdaldem(tmp_path, mode, name):
    dem, gt, scale, nodata = dem_case(name, "nan")
    for edges in EDGES:
        extra = ["-compute_edges"] if edges else []
        ref = run_gdaldem(tmp_path, mode, dem, gt, nodata, ["-s", repr(scale), *extra])
        if mode == "hillshade":
            assert_hillshade_close(gpu.hillshade(dem, gt, scale=scale, nodata=nodata,
                                                 compute_edges=edges), ref)
        elif mode == "slope":
            assert_float_close(gpu.slope(dem, gt, scale=scale, nodata=nodata,
                                         compute_edges=edges), ref)
        else:
            assert_float_close(gpu.aspect(dem, gt, nodata=nodata, compute_edges=edges), ref,
                               circular=True)


def test_values_near_nodata_follow_gdaldem_tolerance(tmp_path):
    """gdaldem's Float32 path treats values within ~2 float ulps of nodata as nodata."""
    dem, gt, scale = _smooth()
    dem = dem.copy()
    dem[50:53, 60:63] = np.float32(-9999.0) * np.float32(1 + 2e-7)
    dem[80, 80] = np.float32(-9999.0) * np.float32(1 + 1e-5)  # clearly not nodata
    args = ["-s", "1", "-compute_edges"]
    ref = run_gdaldem(tmp_path, "slope", dem, gt, -9999.0, args)
    got = gpu.slope(dem, gt, nodata=-9999.0, compute_edges=True)
    assert_float_close(got, ref)


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (2, 2), (2, 7), (3, 3), (7, 2)])
@pytest.mark.parametrize("edges", EDGES, ids=["noedges", "edges"])
def test_tiny_rasters_match_gdaldem(tmp_path, shape, edges):
    dem = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) ** 1.5) * 3.0
    gt = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    extra = ["-compute_edges"] if edges else []
    ref = run_gdaldem(tmp_path, "hillshade", dem, gt, None, ["-s", "1", *extra])
    assert_hillshade_close(gpu.hillshade(dem, gt, compute_edges=edges), ref)
    ref = run_gdaldem(tmp_path, "slope", dem, gt, None, ["-s", "1", *extra])
    assert_float_close(gpu.slope(dem, gt, compute_edges=edges), ref)
    ref = run_gdaldem(tmp_path, "aspect", dem, gt, None, ["-s", "1", *extra])
    assert_float_close(gpu.aspect(dem, gt, compute_edges=edges), ref, circular=True)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64])
def test_other_dtypes_match_gdaldem(tmp_path, dtype):
    """Byte/UInt16 take gdaldem's integer path, Int32/Float64 are read as Float32."""
    dem, gt, scale, _ = dem_case("terraces-int16", "none")
    dem = dem.astype(np.int64) - dem.min()
    dem = (dem % 256 if dtype == np.uint8 else dem).astype(dtype)
    ref = run_gdaldem(tmp_path, "slope", dem, gt, None, ["-s", "1"])
    assert_float_close(gpu.slope(dem, gt), ref)
    ref = run_gdaldem(tmp_path, "hillshade", dem, gt, None, ["-s", "1"])
    assert_hillshade_close(gpu.hillshade(dem, gt), ref)


# --------------------------------------------------------------------------- validation


def test_input_validation_messages():
    dem = np.zeros((5, 5), np.float32)
    gt = (0, 1, 0, 0, 0, -1)
    with pytest.raises(TerrainInputError, match="2-D"):
        gpu.slope(np.zeros((2, 5, 5), np.float32), gt)
    with pytest.raises(TerrainInputError, match="alg"):
        gpu.slope(dem, gt, alg="Sobel")
    with pytest.raises(TerrainInputError, match="geotransform"):
        gpu.aspect(dem, (0, 1, 0))
    with pytest.raises(TerrainInputError, match="non-zero"):
        gpu.hillshade(dem, (0, 0, 0, 0, 0, -1))
    with pytest.raises(TerrainInputError, match="mutually exclusive"):
        gpu.hillshade(dem, gt, combined=True, multidirectional=True)
    with pytest.raises(TerrainInputError, match="-az"):
        gpu.hillshade(dem, gt, multidirectional=True, azimuth=200)
    with pytest.raises(TerrainInputError, match="scale"):
        gpu.slope(dem, gt, scale=0)
    with pytest.raises(TerrainInputError, match="numeric"):
        gpu.slope(np.zeros((5, 5), dtype=object), gt)
    assert isinstance(TerrainInputError("x"), ValueError)
    assert math.isfinite(float(gpu.slope(dem, gt)[2, 2]))
