"""Throughput of gpu.hillshade / slope / aspect beside gdaldem, on one DEM, in one run.

Not a test: run it by hand (``.venv/bin/python bench/bench_kernels.py``) and copy the table
into docs/benchmarks.md. What is timed, honestly:

* gdaldem: wall time of ``gdaldem <mode> in.tif out.tif -s 1 -q`` as a subprocess, input and
  output on a tmpfs (/dev/shm) so disk IO is not the bottleneck. This includes process start
  (~40 ms), GeoTIFF decode and encode: what a user of gdaldem pays.
* ours, end to end: wall time of ``gpu.<mode>(dem, gt)`` with a numpy array in and a numpy
  array out, after one warm-up call (the warm-up pays the program build, which the persistent
  cache makes a one-off per machine). On a CPU device this includes buffer set-up and the
  map/unmap; on a GPU it includes both PCIe transfers.
* ours, kernel only: the OpenCL profiling-event durations of the kernels of that call.

Runs alternate (gdaldem, ours, gdaldem, ours, ...) so load from other processes hits both
sides alike; the table reports medians and the ratio of medians.

GPU mode (``--gpu``): selects an OpenCL GPU and reports the fraction of the memory-bandwidth
roofline the kernels reach: bytes moved per pixel (Float32 in + Float32 out = 8 bytes for
slope/aspect; 4 + 1 for hillshade) x pixels / kernel time, against ``--peak-bandwidth`` GB/s
or a table of known devices.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Peak DRAM bandwidth (GB/s, vendor figures) of GPUs these kernels are expected to meet.
KNOWN_PEAK_GBPS = [
    ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0), ("A100 80GB", 1935.0), ("A100", 1555.0), ("L40S", 864.0),
    ("A10G", 600.0), ("A10", 600.0), ("L4", 300.0), ("T4", 320.0), ("V100", 900.0),
]

MODES = ("hillshade", "slope", "aspect")


def make_dem(size: int) -> np.ndarray:
    """A deterministic Float32 DEM: broad relief plus metre-scale noise (no flat areas)."""
    rng = np.random.default_rng(20261121)
    y = np.linspace(0, 40, size, dtype=np.float32)[:, None]
    x = np.linspace(0, 55, size, dtype=np.float32)[None, :]
    dem = 400.0 * np.sin(x / 7.0) * np.cos(y / 5.0) + 3.0 * x * y
    dem += rng.normal(0.0, 1.5, (size, size)).astype(np.float32)
    return dem.astype(np.float32)


def write_geotiff(path: str, dem: np.ndarray, gt) -> None:
    from osgeo import gdal

    gdal.UseExceptions()
    ds = gdal.GetDriverByName("GTiff").Create(path, dem.shape[1], dem.shape[0], 1,
                                              gdal.GDT_Float32)
    ds.SetGeoTransform(gt)
    ds.GetRasterBand(1).WriteArray(dem)
    ds = None


def read_geotiff(path: str) -> np.ndarray:
    from osgeo import gdal

    ds = gdal.Open(path)
    arr = ds.GetRasterBand(1).ReadAsArray()
    ds = None
    return arr


def peak_bandwidth(device_name: str, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given"
    for key, gbps in KNOWN_PEAK_GBPS:
        if key.lower() in device_name.lower():
            return gbps, f"table ({key})"
    return None, "unknown"


def agreement(mode: str, ours: np.ndarray, ref: np.ndarray) -> dict:
    """How far our output is from gdaldem's on the benchmark DEM (a sanity check)."""
    if mode == "hillshade":
        diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
        return {"max_abs_diff": int(diff.max()), "pixels_differing": int(np.count_nonzero(diff)),
                "nodata_masks_equal": bool(np.array_equal(ours == 0, ref == 0))}
    valid = ref != -9999.0
    diff = np.abs(ours[valid].astype(np.float64) - ref[valid])
    if mode == "aspect":
        diff = np.minimum(diff, 360.0 - diff)
    return {"max_abs_diff": float(diff.max()),
            "nodata_masks_equal": bool(np.array_equal(ours == -9999.0, ~valid))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8192, help="DEM side in pixels (default 8192)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per side (default 5)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--tmpdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where gdaldem reads and writes (a tmpfs; default /dev/shm)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "kernels.json"))
    ap.add_argument("--gpu", action="store_true",
                    help="require an OpenCL GPU and report the bandwidth roofline fraction")
    ap.add_argument("--peak-bandwidth", type=float, default=None,
                    help="device peak memory bandwidth in GB/s (default: known-device table)")
    ap.add_argument("--no-gdaldem", action="store_true", help="time only our kernels")
    args = ap.parse_args(argv)

    if args.gpu:
        os.environ.setdefault("BATCHEXEC_OPENCL_DEVICE", "gpu")
    import gpu
    from gpu import device, terrain
    from gpu.gdaldem_rules import hillshade_constants, slope_constants

    st = device.state()
    if args.gpu and st.is_cpu:
        print("--gpu: the selected OpenCL device is a CPU", file=sys.stderr)
        return 2
    gdaldem = shutil.which("gdaldem")
    use_gdaldem = gdaldem is not None and not args.no_gdaldem
    if args.tmpdir:
        os.makedirs(args.tmpdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench_kernels_", dir=args.tmpdir)

    n = args.size
    gt = (0.0, 10.0, 0.0, 0.0, 0.0, -10.0)
    dem = make_dem(n)
    src = os.path.join(work, "dem.tif")
    if use_gdaldem:
        write_geotiff(src, dem, gt)
    pixels = n * n
    peak, peak_source = peak_bandwidth(st.device.name, args.peak_bandwidth)
    results = []
    try:
        for mode in args.modes.split(","):
            if mode == "hillshade":
                consts, same_res = hillshade_constants(gt, 1.0, 1.0, 315.0, 45.0, "Horn", False)
                kw = {"constants": consts, "same_res": same_res}
            elif mode == "slope":
                kw = {"constants": slope_constants(gt, 1.0, "Horn")}
            else:
                kw = {}
            public = getattr(gpu, mode)
            warm = terrain.run_terrain(mode, dem, gt, **kw)  # build + first-touch
            np.testing.assert_array_equal(warm.output, public(dem, gt))
            t_gdal, t_ours, t_kernel = [], [], []
            dst = os.path.join(work, f"{mode}.tif")
            for _ in range(args.repeat):
                if use_gdaldem:
                    t0 = time.perf_counter()
                    subprocess.run([gdaldem, mode, src, dst, "-s", "1", "-q"], check=True)
                    t_gdal.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                run = terrain.run_terrain(mode, dem, gt, **kw)
                t_ours.append(time.perf_counter() - t0)
                t_kernel.append(sum(e.profile.end - e.profile.start for e in run.events) * 1e-9)
            row = {
                "mode": mode,
                "ours_end_to_end_s": statistics.median(t_ours),
                "ours_kernel_s": statistics.median(t_kernel),
                "ours_runs_s": t_ours,
                "kernel_runs_s": t_kernel,
            }
            row["ours_mpix_s"] = pixels / row["ours_end_to_end_s"] / 1e6
            row["kernel_mpix_s"] = pixels / row["ours_kernel_s"] / 1e6
            bytes_per_pixel = dem.itemsize + run.output.itemsize
            row["bytes_per_pixel"] = bytes_per_pixel
            row["kernel_gb_s"] = bytes_per_pixel * pixels / row["ours_kernel_s"] / 1e9
            if peak:
                row["roofline_fraction"] = row["kernel_gb_s"] / peak
            if use_gdaldem:
                row["gdaldem_s"] = statistics.median(t_gdal)
                row["gdaldem_runs_s"] = t_gdal
                row["gdaldem_mpix_s"] = pixels / row["gdaldem_s"] / 1e6
                row["speedup_end_to_end"] = row["gdaldem_s"] / row["ours_end_to_end_s"]
                row["speedup_kernel_only"] = row["gdaldem_s"] / row["ours_kernel_s"]
                row["agreement_with_gdaldem"] = agreement(mode, run.output, read_geotiff(dst))
            results.append(row)
            del run, warm
    finally:
        shutil.rmtree(work, ignore_errors=True)

    meta = {
        "date": datetime.date.today().isoformat(),
        "dem": f"{n}x{n} Float32 (synthetic relief + noise), gt[1] = -gt[5] = 10",
        "device": gpu.device_info(),
        "host": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "gdaldem": (subprocess.run([gdaldem, "--version"], capture_output=True, text=True)
                    .stdout.strip().splitlines() or [None])[0] if use_gdaldem else None,
        "gdaldem_io": args.tmpdir,
        "repeat": args.repeat,
        "peak_bandwidth_gb_s": peak,
        "peak_bandwidth_source": peak_source,
        "timing": "medians of alternating runs; ours = numpy in/numpy out incl. host "
                  "transfers; kernel = OpenCL profiling events",
    }
    print(f"{meta['device']}\n{meta['dem']}; {meta['host']}; median of {args.repeat}")
    head = f"{'mode':<10}{'gdaldem Mpx/s':>14}{'ours Mpx/s':>12}{'kernel Mpx/s':>14}" \
           f"{'x gdaldem':>11}{'kernel GB/s':>13}"
    if peak:
        head += f"{'roofline':>10}"
    print(head)
    for r in results:
        line = f"{r['mode']:<10}{r.get('gdaldem_mpix_s', float('nan')):>14.1f}" \
               f"{r['ours_mpix_s']:>12.1f}{r['kernel_mpix_s']:>14.1f}" \
               f"{r.get('speedup_end_to_end', float('nan')):>10.2f}x{r['kernel_gb_s']:>13.2f}"
        if peak:
            line += f"{r['roofline_fraction']:>10.1%}"
        print(line)
    if args.json:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
