"""Tiled pipeline: tiled == untiled bit for bit, any executor, georeferencing, failures, S3,
output written by the workers (COG tiles + VRT mosaic, or one worker-assembled COG).

The pipeline mechanics are tested with small numpy stand-in kernels defined here (3x3,
gdaldem's edge rule at the array border), so that these tests do not depend on the OpenCL
kernels; the real gpu kernels are exercised too when the gpu package provides them.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from osgeo import gdal

import gpu
from gpu import gdal_io
from gpu.pipeline import TileFailedError, run_tiled, warm_up

gdal.UseExceptions()

GT = (500000.0, 10.0, 0.0, 4100000.0, 0.0, -10.0)
WKT_UTM16 = 'PROJCS["WGS 84 / UTM zone 16N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",-87],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32616"]]'  # noqa: E501


# --- stand-in kernels (test-only; the product uses gpu.<operation>) ---------------------------

def _gradients(dem, gt, nodata, compute_edges):
    """Horn gradients of the interior; border (and nodata neighbourhoods) flagged invalid."""
    z = dem.astype(np.float64)
    valid = np.ones(z.shape, bool) if nodata is None else dem != nodata
    if compute_edges:  # any deterministic rule that depends only on the array border
        z = np.pad(z, 1, mode="edge")
        valid = np.pad(valid, 1, mode="edge")
    else:
        z = np.pad(z, 1, mode="constant")
        valid = np.pad(valid, 1, mode="constant", constant_values=False)
    w = [[z[r:r + z.shape[0] - 2, c:c + z.shape[1] - 2] for c in range(3)] for r in range(3)]
    ok = np.ones(dem.shape, bool)
    for r in range(3):
        for c in range(3):
            ok &= valid[r:r + dem.shape[0], c:c + dem.shape[1]]
    dx = ((w[0][2] + 2 * w[1][2] + w[2][2]) - (w[0][0] + 2 * w[1][0] + w[2][0])) / (8 * gt[1])
    dy = ((w[2][0] + 2 * w[2][1] + w[2][2]) - (w[0][0] + 2 * w[0][1] + w[0][2])) / (8 * gt[5])
    return dx, dy, ok


def standin_hillshade(dem, gt, *, z=1.0, scale=1.0, azimuth=315.0, altitude=45.0,
                      alg="Horn", combined=False, multidirectional=False, nodata=None,
                      compute_edges=False):
    dx, dy, ok = _gradients(dem, gt, nodata, compute_edges)
    dx, dy = dx * z / scale, dy * z / scale
    az, alt = np.radians(azimuth), np.radians(altitude)
    shade = (np.sin(alt) - np.cos(alt) * (dy * np.cos(az) - dx * np.sin(az))) / np.sqrt(
        1 + dx * dx + dy * dy)
    out = (1 + 254 * np.clip(shade, 0, 1)).astype(np.uint8)
    out[~ok] = 0
    return out


def standin_slope(dem, gt, *, scale=1.0, alg="Horn", percent=False, nodata=None,
                  compute_edges=False):
    dx, dy, ok = _gradients(dem, gt, nodata, compute_edges)
    out = np.degrees(np.arctan(np.hypot(dx, dy) / scale)).astype(np.float32)
    out[~ok] = -9999
    return out


def failing_kernel(dem, gt, *, nodata=None, **options):
    if dem.shape[1] < 6:  # only the thin last column of tiles
        raise ZeroDivisionError("boom in the kernel")
    return standin_hillshade(dem, gt, nodata=nodata, **options)


STANDINS = {"hillshade": standin_hillshade, "slope": standin_slope}


# --- fixtures -----------------------------------------------------------------------------------

def _dem(height, width, dtype, nodata=None, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    dem = 300 + 80 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 4, (height, width))
    dem = dem.astype(dtype)
    if nodata is not None:
        dem[height // 3: height // 3 + 4, width // 2: width // 2 + 7] = nodata
        dem[0, 0] = nodata
    return dem


def _write(path, dem, nodata=None):
    gdal_io.write_raster(str(path), dem, geotransform=GT, projection=WKT_UTM16, nodata=nodata)
    return str(path)


def _read(path):
    ds = gdal.Open(str(path))
    try:
        return ds.GetRasterBand(1).ReadAsArray()
    finally:
        ds = None


@pytest.fixture
def dem_file(tmp_path):
    return _write(tmp_path / "dem.tif", _dem(61, 83, np.float32))


@pytest.fixture(scope="module")
def process_pool():
    with ProcessPoolExecutor(2) as ex:
        yield ex


def _leftovers(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


# --- tiled == untiled -----------------------------------------------------------------------

@pytest.mark.parametrize("operation", ["hillshade", "slope"])
@pytest.mark.parametrize("dtype,nodata", [(np.float32, None), (np.int16, -32768),
                                          (np.float32, -9999.0)])
@pytest.mark.parametrize("compute_edges", [False, True])
@pytest.mark.parametrize("shape,tile_size", [((37, 51), 10), ((37, 51), (7, 16)),
                                             ((37, 51), 40), ((37, 51), 200), ((9, 11), 1)])
def test_tiled_equals_untiled_standin(tmp_path, operation, dtype, nodata, compute_edges, shape,
                                      tile_size):
    dem = _dem(*shape, dtype, nodata)  # 51 = 5*10 + 1: one-pixel-wide remainders
    src = _write(tmp_path / "dem.tif", dem, nodata)
    kernel = STANDINS[operation]
    expected = kernel(dem, GT, nodata=nodata, compute_edges=compute_edges)
    with ThreadPoolExecutor(2) as ex:
        run_tiled(ex, src, str(tmp_path / "out.tif"), operation=operation, tile_size=tile_size,
                  kernel=kernel, compute_edges=compute_edges, progress=False)
    got = _read(tmp_path / "out.tif")
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    assert _leftovers(tmp_path) == []


def _has_kernel(name):
    return callable(getattr(gpu, name, None))


REAL_CASES = [
    ("hillshade", dict(z=2.0, scale=1.0, azimuth=300.0, altitude=40.0)),
    ("hillshade", dict(scale=1.0, alg="ZevenbergenThorne", combined=True)),
    ("hillshade", dict(scale=1.0, multidirectional=True, compute_edges=True)),
    ("slope", dict(scale=1.0, percent=True)),
    ("slope", dict(scale=1.0, compute_edges=True)),
    ("aspect", dict(trigonometric=True, zero_for_flat=True)),
    ("aspect", dict(compute_edges=True)),
]


@pytest.mark.parametrize("operation,options", REAL_CASES)
@pytest.mark.parametrize("nodata", [None, -9999.0])
def test_tiled_equals_untiled_gpu_kernels(tmp_path, operation, options, nodata):
    if not _has_kernel(operation):
        pytest.skip(f"gpu.{operation} has not landed yet")
    dem = _dem(45, 67, np.float32, nodata)
    src = _write(tmp_path / "dem.tif", dem, nodata)
    expected = getattr(gpu, operation)(dem, GT, nodata=nodata, **options)
    with ThreadPoolExecutor(2) as ex:
        run_tiled(ex, src, str(tmp_path / "out.tif"), operation=operation, tile_size=16,
                  progress=False, **options)
    np.testing.assert_array_equal(_read(tmp_path / "out.tif"), expected)


# --- the output: COG tiles + VRT mosaic, written by the workers ------------------------------

@pytest.mark.parametrize("operation,dtype", [("hillshade", np.float32), ("slope", np.int16)])
@pytest.mark.parametrize("tile_size", [10, (7, 16), 200])
def test_vrt_mosaic_of_cog_tiles_equals_untiled(tmp_path, operation, dtype, tile_size):
    nodata = -9999.0 if dtype == np.float32 else -32768
    dem = _dem(37, 51, dtype, nodata)
    src = _write(tmp_path / "dem.tif", dem, nodata)
    kernel = STANDINS[operation]
    expected = kernel(dem, GT, nodata=nodata)
    with ThreadPoolExecutor(2) as ex:
        s = run_tiled(ex, src, str(tmp_path / "out.vrt"), operation=operation,
                      tile_size=tile_size, kernel=kernel, progress=False)
    assert s.dst == str(tmp_path / "out.vrt")
    ds = gdal.Open(s.dst)
    assert ds.GetDriver().ShortName == "VRT"
    assert ds.GetGeoTransform() == GT and 'AUTHORITY["EPSG","32616"]' in ds.GetProjection()
    band = ds.GetRasterBand(1)
    assert band.GetNoDataValue() == (0 if operation == "hillshade" else -9999)
    got = band.ReadAsArray()
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    tiles = sorted(os.listdir(tmp_path / "out.tiles"))
    assert len(tiles) == s.tiles and tiles[0] == "r0000_c0000.tif"
    for name in tiles:  # each tile is itself a georeferenced COG with gdaldem's nodata
        t = gdal.Open(str(tmp_path / "out.tiles" / name))
        assert t.GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
        assert t.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
        assert t.GetRasterBand(1).GetNoDataValue() == band.GetNoDataValue()
        assert t.GetProjection() == ds.GetProjection()
    assert _leftovers(tmp_path) == []
    # The mosaic names its tiles relative to itself: the output moves as a whole.
    assert 'relativeToVRT="1">out.tiles/r0000_c0000.tif<' in (tmp_path / "out.vrt").read_text()
    os.rename(tmp_path / "out.vrt", tmp_path / "moved.vrt")  # sibling name no longer matches
    os.makedirs(tmp_path / "elsewhere")
    for name in ("moved.vrt",):
        os.rename(tmp_path / name, tmp_path / "elsewhere" / "out.vrt")
    os.rename(tmp_path / "out.tiles", tmp_path / "elsewhere" / "out.tiles")
    np.testing.assert_array_equal(_read(tmp_path / "elsewhere" / "out.vrt"), expected)


def test_rerun_replaces_the_mosaic_and_overwrite_false_refuses(tmp_path, dem_file):
    dst = str(tmp_path / "m.vrt")
    with ThreadPoolExecutor(2) as ex:
        run_tiled(ex, dem_file, dst, kernel=standin_hillshade, tile_size=20, progress=False)
        assert len(os.listdir(tmp_path / "m.tiles")) == 20
        run_tiled(ex, dem_file, dst, kernel=standin_hillshade, tile_size=40, progress=False)
        assert len(os.listdir(tmp_path / "m.tiles")) == 6  # no stale tiles of the first grid
        with pytest.raises(FileExistsError, match="overwrite=True"):
            run_tiled(ex, dem_file, dst, kernel=standin_hillshade, overwrite=False)
    np.testing.assert_array_equal(_read(dst), standin_hillshade(_read(dem_file), GT))


def test_the_client_reads_and_writes_no_pixels(tmp_path, dem_file, monkeypatch):
    """Workers (pool threads here) move every pixel; the calling thread only coordinates."""
    import threading

    main = threading.main_thread()

    def guard(real):
        def call(*args, **kwargs):
            assert threading.current_thread() is not main, f"client called {real.__name__}"
            return real(*args, **kwargs)
        return call

    for cls, names in ((gdal.Band, ("ReadAsArray", "ReadRaster", "WriteArray", "WriteRaster")),
                       (gdal.Dataset, ("ReadAsArray", "ReadRaster", "WriteRaster"))):
        for name in names:
            monkeypatch.setattr(cls, name, guard(getattr(cls, name)))
    monkeypatch.setattr(gdal.Driver, "CreateCopy", guard(gdal.Driver.CreateCopy))
    with ThreadPoolExecutor(2) as ex:
        s = run_tiled(ex, dem_file, str(tmp_path / "o.vrt"), kernel=standin_hillshade,
                      tile_size=20, progress=False)
        c = run_tiled(ex, dem_file, str(tmp_path / "o.tif"), kernel=standin_hillshade,
                      tile_size=20, progress=False)
    monkeypatch.undo()
    assert 0 < s.client_busy_seconds < s.seconds and s.worker_busy_seconds > 0
    assert c.assemble_seconds > 0
    np.testing.assert_array_equal(_read(tmp_path / "o.vrt"), _read(tmp_path / "o.tif"))


def test_bad_destination_is_an_error_before_anything_runs(tmp_path, dem_file):
    with ThreadPoolExecutor(1) as ex, pytest.raises(ValueError, match="must end in .vrt"):
        run_tiled(ex, dem_file, str(tmp_path / "o.png"), kernel=standin_hillshade)
    assert os.listdir(tmp_path) == ["dem.tif"]


# --- executors, georeferencing, options ----------------------------------------------------

def test_process_and_thread_pools_give_identical_rasters(tmp_path, dem_file, process_pool):
    opts = dict(kernel=standin_hillshade, tile_size=20, progress=False, z=3.0)
    run_tiled(process_pool, dem_file, str(tmp_path / "p.tif"), **opts)
    with ThreadPoolExecutor(3) as ex:
        s = run_tiled(ex, dem_file, str(tmp_path / "t.tif"), **opts)
    np.testing.assert_array_equal(_read(tmp_path / "p.tif"), _read(tmp_path / "t.tif"))
    assert s.tiles == 5 * 4 and s.width == 83 and s.height == 61
    assert s.valid_pixels == 81 * 59 and s.tiles_per_second > 0 and s.mpixels_per_second > 0
    assert s.worker_busy_seconds == pytest.approx(
        s.read_seconds + s.kernel_seconds + s.write_seconds)


@pytest.mark.parametrize("operation,dtype,nodata", [("hillshade", gdal.GDT_Byte, 0),
                                                     ("slope", gdal.GDT_Float32, -9999)])
def test_stitched_file_keeps_georeferencing_and_gdaldem_nodata(tmp_path, dem_file, operation,
                                                               dtype, nodata):
    dst = str(tmp_path / "out.tif")
    with ThreadPoolExecutor(2) as ex:
        run_tiled(ex, dem_file, dst, operation=operation, kernel=STANDINS[operation],
                  tile_size=32, progress=False, creation_options=["COMPRESS=LZW",
                                                                  "BLOCKSIZE=256"])
    ds = gdal.Open(dst)
    assert ds.GetGeoTransform() == GT
    assert 'AUTHORITY["EPSG","32616"]' in ds.GetProjection()
    band = ds.GetRasterBand(1)
    assert band.DataType == dtype and band.GetNoDataValue() == nodata
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "LZW"
    assert ds.GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
    assert band.GetBlockSize() == [256, 256]


def test_options_are_checked_before_anything_runs(tmp_path, dem_file):
    with ThreadPoolExecutor(1) as ex:
        with pytest.raises(TypeError, match="hillshade does not take percent"):
            run_tiled(ex, dem_file, str(tmp_path / "o.tif"), percent=True)
        with pytest.raises(ValueError, match="unknown operation 'roughness'"):
            run_tiled(ex, dem_file, str(tmp_path / "o.tif"), operation="roughness")
    assert os.listdir(tmp_path) == ["dem.tif"]


def test_warm_up_builds_the_kernel_as_an_initializer(tmp_path, dem_file):
    with ThreadPoolExecutor(1, initializer=warm_up,
                            initargs=(dem_file, "slope", 1, {"scale": 1.0})) as ex:
        run_tiled(ex, dem_file, str(tmp_path / "o.tif"), operation="slope", tile_size=40,
                  progress=False, scale=1.0)
    assert warm_up(dem_file) is None


def test_progress_bar_can_be_forced_on(tmp_path, dem_file, capsys):
    with ThreadPoolExecutor(1) as ex:
        run_tiled(ex, dem_file, str(tmp_path / "o.tif"), kernel=standin_hillshade,
                  tile_size=40, progress=True)
    err = capsys.readouterr().err
    assert "hillshade" in err and "/6 " in err and "block" in err


# --- failures -------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["thread", "process"])
def test_failing_tile_names_the_tile_and_leaves_no_output(tmp_path, dem_file, pool,
                                                          process_pool):
    dst = tmp_path / "out.tif"
    dst_before = sorted(os.listdir(tmp_path))
    ex = process_pool if pool == "process" else ThreadPoolExecutor(2)
    with pytest.raises(TileFailedError) as info:
        run_tiled(ex, dem_file, str(dst), kernel=failing_kernel, tile_size=20, progress=False)
    if pool == "thread":
        ex.shutdown()
    msg = str(info.value)
    assert "of " + dem_file in msg and "ZeroDivisionError: boom in the kernel" in msg
    assert "c0004" in msg and "core x 80:83" in msg
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert sorted(os.listdir(tmp_path)) == dst_before  # no dst, no .partial, no tiles


def test_unreadable_source_is_an_error_before_any_task(tmp_path):
    with ThreadPoolExecutor(1) as ex, pytest.raises(RuntimeError):
        run_tiled(ex, str(tmp_path / "missing.tif"), str(tmp_path / "o.tif"))
    assert os.listdir(tmp_path) == []


# --- /vsis3/ against a real moto server --------------------------------------------------------

def test_endpoint_config_maps_aws_endpoint_url():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:4566", "AWS_REGION": "eu-west-1"}
    assert gdal_io.endpoint_config(env) == {
        "AWS_S3_ENDPOINT": "127.0.0.1:4566", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    assert gdal_io.endpoint_config({}) == {}


def test_vsis3_source_and_outputs_written_by_workers(tmp_path, dem_file, moto_endpoint,
                                                     monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="rasters")
    s3.upload_file(dem_file, "rasters", "in/dem.tif")

    with ThreadPoolExecutor(2) as ex:
        run_tiled(ex, dem_file, str(tmp_path / "local.tif"), kernel=standin_hillshade,
                  tile_size=25, progress=False)
    # Fresh worker processes see the endpoint only through their environment.
    with ProcessPoolExecutor(2) as ex:
        summary = run_tiled(ex, "/vsis3/rasters/in/dem.tif", "/vsis3/rasters/out/hs.vrt",
                            kernel=standin_hillshade, tile_size=25, progress=False)
        cog = run_tiled(ex, "/vsis3/rasters/in/dem.tif", "/vsis3/rasters/out/hs.tif",
                        kernel=standin_hillshade, tile_size=25, progress=False)
    assert summary.tiles == 12 and summary.dst == "/vsis3/rasters/out/hs.vrt"
    assert cog.dst == "/vsis3/rasters/out/hs.tif" and cog.assemble_seconds > 0
    expected = _read(tmp_path / "local.tif")
    with gdal_io.s3_config():
        np.testing.assert_array_equal(_read("/vsis3/rasters/out/hs.vrt"), expected)
        np.testing.assert_array_equal(_read("/vsis3/rasters/out/hs.tif"), expected)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="rasters", Prefix="out/")
                  .get("Contents", []))
    assert keys == ["out/hs.tif", "out/hs.tiles/r0000_c0000.tif"] + [
        f"out/hs.tiles/r{r:04d}_c{c:04d}.tif" for r in range(3) for c in range(4)][1:] + [
        "out/hs.vrt"]  # the .tif's scratch tiles and mosaic are gone

    # write_raster + read_window straight on S3
    with gdal_io.s3_config():
        arr = np.arange(12, dtype=np.float32).reshape(3, 4)
        gdal_io.write_raster("/vsis3/rasters/x/a.tif", arr, geotransform=GT)
        from gpu.tiling import Window
        got = gdal_io.read_window("/vsis3/rasters/x/a.tif", Window(1, 1, 3, 2))
        assert gdal_io.exists("/vsis3/rasters/x/a.tif")
        gdal_io.remove("/vsis3/rasters/x/a.tif")
        assert not gdal_io.exists("/vsis3/rasters/x/a.tif")
    np.testing.assert_array_equal(got, arr[1:3, 1:4])


# --- BatchExecutor (workers are Batch jobs on the shared emulator) -----------------------------

def test_batch_executor_gives_the_same_raster_and_surfaces_failures(tmp_path, dem_file,
                                                                    make_executor, monkeypatch):
    with ThreadPoolExecutor(2) as ex:
        run_tiled(ex, dem_file, str(tmp_path / "t.tif"), tile_size=30, progress=False,
                  scale=1.0, z=2.0)
    ex = make_executor(2)
    monkeypatch.chdir(tmp_path)  # relative paths work whatever the workers' directory
    summary = run_tiled(ex, "dem.tif", "b.tif", tile_size=30, progress=False, scale=1.0, z=2.0)
    np.testing.assert_array_equal(_read(tmp_path / "b.tif"), _read(tmp_path / "t.tif"))
    assert summary.tiles == 9 and len(summary.workers) >= 1

    before = sorted(os.listdir(tmp_path))
    with pytest.raises(TileFailedError, match="ZeroDivisionError: boom in the kernel") as info:
        run_tiled(ex, dem_file, str(tmp_path / "f.tif"), kernel=failing_kernel, tile_size=20,
                  progress=False)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert sorted(os.listdir(tmp_path)) == before
