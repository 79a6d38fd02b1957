"""examples/segment.py end to end, as a user runs it (a subprocess), on a small sample.

The full-size run and the comparison with pyshepseg are bench/bench_segment.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

gdal = pytest.importorskip("osgeo.gdal")
pytest.importorskip("pyopencl")
pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "segment.py")


def run_example(tmp_path, *args):
    report = tmp_path / "report.json"
    cmd = [sys.executable, EXAMPLE, "--size", "256", "--tile-size", "128", "--overlap", "32",
           "--workers", "2", "--clusters", "8", "--json", str(report), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(report.read_text())


def test_example_on_the_default_batch_executor_then_a_process_pool(tmp_path, clean_env):
    stdout, report = run_example(tmp_path, "--output", "a/seg.tif")  # BatchExecutor()
    assert report["executor"] == "batch"
    assert "segments;" in stdout and "Mpixel/s" in stdout and "eliminate" in stdout
    assert report["tiles"] == 4 and report["segments"] > 10
    seg = gdal.Open(str(tmp_path / "a" / "seg.tif")).ReadAsArray()
    sample = gdal.Open(str(tmp_path / "a" / "grace_hopper_256.tif")).ReadAsArray()
    np.testing.assert_array_equal(seg == 0, (sample == 65535).any(axis=0))
    assert int(seg.max()) == report["segments"] == len(np.unique(seg)) - 1
    png = gdal.Open(str(tmp_path / report["preview"]))
    assert png.GetDriver().ShortName == "PNG" and png.RasterCount == 3
    centres = report["centres_saved"]
    assert np.load(tmp_path / centres).shape == (8, 3)

    # a process pool with the saved centres (no fit) gives the same segments
    stdout, again = run_example(tmp_path, "--executor", "process", "--output", "b/seg.tif",
                                "--centres", centres, "--input",
                                str(tmp_path / "a" / "grace_hopper_256.tif"),
                                "--nodata", "65535")
    assert again["fit_s"] == 0 or again["fit_s"] < 0.01
    np.testing.assert_array_equal(gdal.Open(str(tmp_path / "b" / "seg.tif")).ReadAsArray(),
                                  seg)


def test_example_rejects_bad_flags(tmp_path):
    proc = subprocess.run([sys.executable, EXAMPLE, "--overlap", "33"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "--overlap must be even" in proc.stderr
    proc = subprocess.run([sys.executable, EXAMPLE, "--centres", "nope.npy"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
