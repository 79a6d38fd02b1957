"""Tiled segmentation through executors (gpu.segment_tiled.segment_raster): pyshepseg's tile
grid, agreement with pyshepseg's tiled output, its null defect absent, one tile = untiled, and
the same raster from BatchExecutor (on the emulator) and ProcessPoolExecutor."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyopencl")
gdal = pytest.importorskip("osgeo.gdal")
metrics = pytest.importorskip("sklearn.metrics")

import gpu  # noqa: E402
from gpu.segment_sample import SAMPLE_NODATA, sample_image  # noqa: E402
from gpu.segment_tiled import (  # noqa: E402
    SegmentTileFailedError,
    _shared_segments,
    segment_raster,
    segmentation_tiles,
)
from gpu.segmentation import SegmentInputError  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "pyshepseg"


def write_image(path, img, nodata=SAMPLE_NODATA):
    ds = gdal.GetDriverByName("GTiff").Create(str(path), img.shape[2], img.shape[1],
                                              img.shape[0], gdal.GDT_UInt16)
    ds.SetGeoTransform((500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0))
    for b in range(img.shape[0]):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(img[b])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds = None
    return str(path)


def read(path):
    return gdal.Open(str(path)).ReadAsArray()


@pytest.fixture(scope="module")
def hopper768():
    with np.load(FIXTURES / "grace_hopper_768_tiled.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def hopper768_tif(hopper768, tmp_path_factory):
    return write_image(tmp_path_factory.mktemp("seg") / "hopper768.tif", hopper768["image"])


@pytest.fixture(scope="module")
def small_tif(tmp_path_factory):
    img = sample_image(300, 260, seed=4)
    return img, write_image(tmp_path_factory.mktemp("seg") / "small.tif", img)


def spawn_pool(n=2):
    # spawn: a forked child of a process that already ran OpenCL cannot use it
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))


def test_tile_grid_is_pyshepsegs():
    rows = segmentation_tiles(768, 768, 256, 64)
    assert [(t.window.xoff, t.window.xsize) for t in rows[0]] == [(0, 256), (192, 256),
                                                                  (384, 384)]
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)
    one = segmentation_tiles(900, 500, 4096, 1024)
    assert len(one) == 1 and one[0][0].window.xsize == 900 and one[0][0].window.ysize == 500
    with pytest.raises(SegmentInputError, match="even"):
        segmentation_tiles(100, 100, 50, 11)
    with pytest.raises(SegmentInputError, match="exceed"):
        segmentation_tiles(100, 100, 50, 50)


def test_vote_ignores_null():
    """pyshepseg takes the mode including 0 and nulls the segment; ours votes without 0."""
    a = np.array([[5, 5, 0, 0],
                  [5, 5, 6, 0],
                  [5, 5, 6, 6],
                  [5, 7, 7, 6]], np.uint32)  # segments 5 and 6 cross the midline (row 2)
    b = np.array([[0, 0, 0, 0],
                  [0, 0, 0, 0],
                  [3, 0, 4, 4],
                  [0, 0, 0, 4]], np.uint32)
    assert _shared_segments(a, b, axis=0) == {5: 3, 6: 4}
    b[2, 0] = 0  # no non-null vote for 5: left to get a new ID
    assert _shared_segments(a, b, axis=0) == {6: 4}
    assert _shared_segments(a.T, b.T, axis=1) == {6: 4}


def test_tiled_agrees_with_pyshepseg_and_writes_no_valid_pixel_as_null(hopper768,
                                                                       hopper768_tif,
                                                                       tmp_path):
    from test_segment import assert_agrees

    nulls = (hopper768["image"] == hopper768["nodata"]).any(axis=0)
    ref = hopper768["tiled_256_64"]
    assert np.count_nonzero((ref == 0) & ~nulls) > 0  # pyshepseg's stitch nulled valid pixels
    with ThreadPoolExecutor(2) as ex:
        summary = segment_raster(ex, hopper768_tif, str(tmp_path / "t.tif"),
                                 centres=hopper768["centres"], tile_size=256, overlap=64)
    ours = read(tmp_path / "t.tif")
    assert summary.tiles == 9 and summary.segments == int(ours.max())
    assert_agrees(ours, ref, nulls)  # includes: our nulls == input nulls exactly
    ds = gdal.Open(str(tmp_path / "t.tif"))
    assert ds.GetRasterBand(1).GetNoDataValue() == 0
    assert ds.GetGeoTransform() == (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0)
    assert not [p for p in os.listdir(tmp_path) if p != "t.tif"]  # scratch removed


def test_one_tile_equals_the_untiled_run(hopper768, hopper768_tif, tmp_path):
    untiled = gpu.segment(hopper768["image"], centres=hopper768["centres"],
                          nodata=int(hopper768["nodata"])).segments
    with ThreadPoolExecutor(1) as ex:
        summary = segment_raster(ex, hopper768_tif, str(tmp_path / "one.tif"),
                                 centres=hopper768["centres"])  # 4096/1024: one tile
    assert summary.tiles == 1
    np.testing.assert_array_equal(read(tmp_path / "one.tif"), untiled)
    # pyshepseg's one-tile run is its untiled run too
    np.testing.assert_array_equal(hopper768["tiled_1024_256"], hopper768["segments"])


def test_batch_and_process_pools_give_identical_rasters(small_tif, make_executor, tmp_path):
    img, src = small_tif
    centres = gpu.segment(img, clusters=12, nodata=SAMPLE_NODATA).centres
    options = dict(centres=centres, tile_size=128, overlap=32, min_segment_size=20)
    with spawn_pool(2) as ex:
        p = segment_raster(ex, src, str(tmp_path / "process.tif"), **options)
    b = segment_raster(make_executor(2), src, str(tmp_path / "batch.tif"), **options)
    assert p.tiles == b.tiles == 4
    got = read(tmp_path / "batch.tif")
    np.testing.assert_array_equal(got, read(tmp_path / "process.tif"))
    nulls = (img == SAMPLE_NODATA).any(axis=0)
    np.testing.assert_array_equal(got == 0, nulls)
    assert len(np.unique(got)) - 1 == got.max()


def test_fits_centres_once_on_the_client(small_tif, tmp_path):
    img, src = small_tif
    with ThreadPoolExecutor(2) as ex:
        s = segment_raster(ex, src, str(tmp_path / "fit.tif"), clusters=10, tile_size=128,
                           overlap=32, sample_size=20000)
    assert s.centres.shape == (10, 3) and s.fit_seconds > 0
    got = read(tmp_path / "fit.tif")
    np.testing.assert_array_equal(got == 0, (img == SAMPLE_NODATA).any(axis=0))


def test_bad_rasters_say_what_to_do(small_tif, tmp_path):
    img, src = small_tif
    with ThreadPoolExecutor(1) as ex:
        with pytest.raises(SegmentInputError, match="has 3 band"):
            segment_raster(ex, src, str(tmp_path / "x.tif"), bands=[1, 4], clusters=4)
        with pytest.raises(SegmentInputError, match="2 bands but the image has 3"):
            segment_raster(ex, src, str(tmp_path / "x.tif"), centres=np.zeros((4, 2)))
        empty = write_image(tmp_path / "empty.tif", np.full((3, 40, 40), 9, np.uint16),
                            nodata=9)
        with pytest.raises(SegmentInputError, match="all nodata"):
            segment_raster(ex, empty, str(tmp_path / "x.tif"), clusters=4)
        with pytest.raises(SegmentInputError, match="even"):
            segment_raster(ex, src, str(tmp_path / "x.tif"), clusters=4, tile_size=64,
                           overlap=9)
    assert not (tmp_path / "x.tif").exists()


def test_a_failing_tile_leaves_no_output(small_tif, tmp_path):
    """A source the workers cannot read (/vsimem/ is per process) fails the run cleanly."""
    img, _ = small_tif
    src = "/vsimem/only-the-client-sees-this.tif"
    write_image(src, img)
    try:
        with spawn_pool(1) as ex:
            with pytest.raises(SegmentTileFailedError, match="r0000_c0000") as info:
                segment_raster(ex, src, str(tmp_path / "x.tif"), centres=np.zeros((4, 3)),
                               tile_size=128, overlap=32)
    finally:
        gdal.Unlink(src)
    assert info.value.__cause__ is not None
    assert os.listdir(tmp_path) == []


def test_warm_up_builds_what_a_tile_needs():
    """As an initializer, warm_up leaves nothing to build for the tiles (fresh process)."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from gpu import device\n"
        "from gpu.segment_tiled import warm_up\n"
        "from gpu.segmentation import segment_with_centres\n"
        "warm_up(3, 12, 'uint16')\n"
        "n = device.build_count()\n"
        "img = np.random.default_rng(0).integers(0, 999, (3, 64, 64)).astype(np.uint16)\n"
        "c = np.random.default_rng(1).uniform(0, 999, (12, 3))\n"
        "segment_with_centres(img, c, nodata=0, min_segment_size=5, max_spectral_diff=50.0)\n"
        "segment_with_centres(img, c, nodata=None, min_segment_size=5, max_spectral_diff=50.)\n"
        "assert device.build_count() == n, (device.build_count(), n)\n"
        "print('ok')\n")
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_tiles_that_are_all_nodata(small_tif, tmp_path):
    img, _ = small_tif
    img = img.copy()
    img[:, :, :170] = SAMPLE_NODATA  # whole tiles of nothing but nulls
    src = write_image(tmp_path / "half.tif", img)
    with ThreadPoolExecutor(2) as ex:
        s = segment_raster(ex, src, str(tmp_path / "half_seg.tif"), centres=np.eye(3) * 9000,
                           tile_size=64, overlap=16, min_segment_size=10)
    got = read(tmp_path / "half_seg.tif")
    assert s.tiles > 4
    np.testing.assert_array_equal(got == 0, (img == SAMPLE_NODATA).any(axis=0))
    assert int(got.max()) == len(np.unique(got)) - 1 == s.segments


def test_through_s3_as_on_aws(small_tif, tmp_path, moto_endpoint, monkeypatch):
    """Workers that share no filesystem: the source and the tile files are on S3."""
    boto3 = pytest.importorskip("boto3")
    img, src = small_tif
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="scenes")
    s3.upload_file(src, "scenes", "in/small.tif")
    centres = np.linspace(0, 60000, 24).reshape(8, 3)
    options = dict(centres=centres, tile_size=128, overlap=32, min_segment_size=20)
    with ThreadPoolExecutor(2) as ex:
        local = segment_raster(ex, src, str(tmp_path / "local.tif"), **options)
    with spawn_pool(2) as ex:  # fresh processes see the endpoint only through the environment
        remote = segment_raster(ex, "/vsis3/scenes/in/small.tif", str(tmp_path / "s3.tif"),
                                tile_store="/vsis3/scenes/scratch", **options)
    assert remote.tiles == local.tiles == 4
    np.testing.assert_array_equal(read(tmp_path / "s3.tif"), read(tmp_path / "local.tif"))
    assert s3.list_objects_v2(Bucket="scenes", Prefix="scratch/").get("KeyCount", 0) == 0
