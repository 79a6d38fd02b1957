"""examples/ndvi_focal.py as a user runs it: no arguments but a small size, embedded default.

The example runs a two-input user function (NDVI + 3 x 3 focal mean) through gpu.apply on
BatchExecutor() and checks the mosaic against the whole-raster run itself; here the output is
also checked independently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from osgeo import gdal

gdal.UseExceptions()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "ndvi_focal.py")


def test_ndvi_focal_example_on_the_embedded_default(tmp_path, clean_env):
    cmd = [sys.executable, EXAMPLE, "--size", "300", "--block-size", "128",
           "--json", str(tmp_path / "report.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "whole-raster check: identical (0 of 90000 pixels differ)" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["executor"] == "batch" and report["blocks"] == 9
    assert report["differing_pixels"] == 0 and report["worker_busy_s"] > 0
    out = tmp_path / "ndvi-output"
    assert sorted(os.listdir(out)) == ["ndvi_focal.tiles", "ndvi_focal.vrt",
                                       "sample_nir_300.tif", "sample_red_300.tif"]
    ds = gdal.Open(str(out / "ndvi_focal.vrt"))
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Float32 and band.GetNoDataValue() == -9999
    ndvi = band.ReadAsArray()
    red = gdal.Open(str(out / "sample_red_300.tif")).ReadAsArray().astype(np.float64)
    nir = gdal.Open(str(out / "sample_nir_300.tif")).ReadAsArray().astype(np.float64)
    # Independent spot check, in float64, away from nodata: the 3 x 3 mean of NDVI.
    y, x = 150, 150
    win = (slice(y - 1, y + 2), slice(x - 1, x + 2))
    expected = ((nir[win] - red[win]) / (nir[win] + red[win])).mean()
    assert abs(ndvi[y, x] - expected) < 1e-6
    # The nodata hole (red == 0, rows and columns 60..65): its inner cells have no valid
    # neighbour (nodata), its rim cells take the mean of their valid neighbours.
    assert (red[60:66, 60:66] == 0).all() and red[59, 59] > 0
    assert (ndvi[61:65, 61:65] == -9999).all()
    assert ndvi[60, 60] != -9999 and ndvi[60, 60] == ndvi[60, 60]
