"""The main job (examples/hillshade.py) end to end, as a user runs it: a subprocess.

Small sample DEMs keep each run to seconds; the full-size run is bench/bench_hillshade_job.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal

gdal.UseExceptions()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "hillshade.py")


def _run_job(tmp_path, *args, env=None, output="hs.tif"):
    out = tmp_path / output
    report = tmp_path / "report.json"
    cmd = [sys.executable, EXAMPLE, "--size", "300", "--tile-size", "128", "--workers", "2",
           "--output", str(out), "--json", str(report), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(report.read_text()), out


def _check_outputs(stdout, report, out):
    assert "tiles/s" in stdout and "Mpixel/s" in stdout and "max abs diff" in stdout
    assert report["tiles"] == 9 and report["width"] == report["height"] == 300
    # The workers wrote the output; the client only coordinated.
    assert report["worker_busy_s"] > 0 and 0 < report["client_busy_s"] < report["seconds"]
    assert "client busy" in stdout and "worker busy" in stdout
    assert "Portable Computing Language" in report["device"] or report["device"]
    # gdaldem agreement: the kernels' documented tolerance (docs/kernels.md) is 1 grey level
    assert report["max_abs_diff"] <= 1 and report["differing_fraction"] < 1e-3
    ds = gdal.Open(str(out))
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 0
    assert 'AUTHORITY["EPSG","32616"]' in ds.GetProjection()
    gt = ds.GetGeoTransform()
    assert gt[1] == pytest.approx(-gt[5]) and gt[1] > 0
    if out.suffix == ".vrt":  # a mosaic of COG tiles
        assert ds.GetDriver().ShortName == "VRT" and len(ds.GetFileList()) == 1 + 9
        tile = gdal.Open(ds.GetFileList()[1])
        assert tile.GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
    else:  # one COG assembled by a worker
        assert ds.GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
        tile = ds
    assert tile.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
    png = gdal.Open(report["preview"])
    assert png.GetDriver().ShortName == "PNG" and png.RasterXSize == 300
    arr = band.ReadAsArray()
    assert (arr[1:-1, 1:-1] > 0).all() and (arr[0] == 0).all()  # gdaldem's edge rule
    return arr


def test_main_job_on_a_process_pool(tmp_path):
    stdout, report, out = _run_job(tmp_path, "--executor", "process", "-z", "2", "-alt", "35")
    _check_outputs(stdout, report, out)
    assert report["executor"] == "process"
    assert sorted(os.listdir(tmp_path)) == ["hs.png", "hs.tif", "jacksboro_dem_300.tif",
                                            "report.json"]


def test_main_job_on_the_default_batch_executor(tmp_path, clean_env):
    stdout, report, out = _run_job(tmp_path, "-z", "2", "-alt", "35", output="hs.vrt")
    a = _check_outputs(stdout, report, out)
    assert report["executor"] == "batch"
    assert sorted(os.listdir(tmp_path)) == ["hs.png", "hs.tiles", "hs.vrt",
                                            "jacksboro_dem_300.tif", "report.json"]
    (tmp_path / "p").mkdir()
    _, _, out2 = _run_job(tmp_path / "p", "--executor", "process", "-z", "2", "-alt", "35",
                          "--input", str(tmp_path / "jacksboro_dem_300.tif"), "--no-compare")
    np.testing.assert_array_equal(a, gdal.Open(str(out2)).ReadAsArray())


def test_main_job_on_a_stack_goes_through_s3(tmp_path, emulator, clean_env):
    from conftest import TEST_STACK

    stdout, report, out = _run_job(
        tmp_path, "--stack", TEST_STACK, "--multidirectional", "--compute-edges",
        env={"AWS_ENDPOINT_URL": emulator.endpoint_url},
    )
    assert "uploading" in stdout
    assert report["max_abs_diff"] <= 1 and report["differing_fraction"] < 1e-3
    from gpu import gdal_io

    with gdal_io.s3_config(emulator.endpoint_url):
        ds = gdal.Open(report["output"])
        assert (ds.ReadAsArray() > 0).all()  # compute_edges: no nodata border
        ds = None

    from batchexec.aws import AwsClients
    from batchexec.stack import describe_stack

    clients = AwsClients.resolve(endpoint_url=emulator.endpoint_url)
    bucket = describe_stack(clients, TEST_STACK).bucket
    keys = [o["Key"] for o in clients.client("s3").list_objects_v2(
        Bucket=bucket, Prefix="data/batchexec-examples/").get("Contents", [])]
    # The workers wrote the COG (and the preview) to the bucket; its scratch tiles are gone.
    assert sorted(keys) == ["data/batchexec-examples/inputs/jacksboro_dem_300.tif",
                            "data/batchexec-examples/outputs/hs.png",
                            "data/batchexec-examples/outputs/hs.tif"]
    assert report["output"] == f"/vsis3/{bucket}/data/batchexec-examples/outputs/hs.tif"
    assert not out.exists() and (tmp_path / "hs.png").exists()
