#!/usr/bin/env python
"""The main job: a tiled hillshade of a large DEM on BatchExecutor workers, checked against gdaldem.

    python examples/hillshade.py                       # 8192 x 8192 sample DEM, embedded emulator
    python examples/hillshade.py --size 2048 --workers 2 --executor process
    python examples/hillshade.py --input dem.tif -z 2 -alt 30 --multidirectional
    python examples/hillshade.py --output out/hs.tif   # one COG, assembled by a worker
    python examples/hillshade.py --stack batchexec     # on AWS (see "Running on AWS" below)

What it does:
1. Input: --input, or a sample DEM it generates once and reuses: matplotlib's Jacksboro fault
   DEM (3 arc-second, 344 x 403, Tennessee) reprojected to UTM zone 16N and upsampled with
   cubic-spline resampling (GDAL warp) to --size x --size Float32 pixels, square pixels.
2. Runs gdaldem's hillshade over it in tiles (gpu.pipeline.run_tiled, a use of gpu.apply) on
   the executor: each worker reads its tile (with a 1-pixel halo) from the DEM itself, runs
   gpu.hillshade and writes the core as a Cloud Optimized GeoTIFF tile under
   `<output>.tiles/`; this process only coordinates, and writes the VRT mosaic --output
   (`hillshade.vrt`, one raster for GDAL/QGIS/rasterio) from what it knows, reading no pixel.
   An --output ending in .tif is instead one COG assembled by a worker. A downsampled PNG
   preview goes beside it.
3. Prints tiles/s, Mpixel/s, the client's and the workers' busy time, the OpenCL device a
   worker used, and the agreement with `gdaldem hillshade` run here on the same input with
   the same options (skip: --no-compare).

Running on AWS (--stack NAME): workers do not share this filesystem, so the input is
uploaded to the stack's bucket (s3://BUCKET/data/batchexec-examples/inputs/, skipped when an
object of the same size is there; or pass --input /vsis3/BUCKET/KEY) and the workers write
the output to /vsis3/BUCKET/data/batchexec-examples/outputs/<name of --output> (or pass
--output /vsis3/...: under the stack's WorkerDataPrefix, which the job role may write);
the comparison and the preview read it from there.
Deploy the stack first with `batchexec stack deploy --name NAME --wait`; credentials and
region come from the usual AWS configuration (AWS_PROFILE, AWS_REGION, ...), and
AWS_ENDPOINT_URL points both boto3 and GDAL at an emulator such as `batchexec local`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack

import numpy as np
from osgeo import gdal, osr

import gpu
from gpu import gdal_io
from gpu.pipeline import DEFAULT_TILE_SIZE, run_tiled, warm_up

gdal.UseExceptions()

#: The sample DEM's projected CRS: UTM zone 16N covers the Jacksboro tile (84.4-84.1 W).
SAMPLE_EPSG = 32616
#: Longest side of the PNG preview, in pixels.
PREVIEW_SIZE = 1024
#: Where inputs and scratch tiles go in the stack's bucket when running on AWS: under the
#: stack's WorkerDataPrefix (default data/), the only prefix besides sessions/ that the job
#: role lets tasks read and write.
S3_PREFIX = "data/batchexec-examples"


# -- the sample DEM --------------------------------------------------------------------------

def make_sample_dem(path: str, size: int) -> str:
    """Write matplotlib's Jacksboro DEM, upsampled to size x size, as a tiled GeoTIFF."""
    import matplotlib.cbook as cbook

    data = cbook.get_sample_data("jacksboro_fault_dem.npz")
    elevation = np.asarray(data["elevation"], dtype=np.float32)
    rows, cols = elevation.shape
    # The file's "ymin" is the northern edge (its first row), 3 arc-seconds per pixel.
    west, north = float(data["xmin"]), float(data["ymin"])
    dx, dy = float(data["dx"]), float(data["dy"])
    src = gdal.GetDriverByName("MEM").Create("", cols, rows, 1, gdal.GDT_Float32)
    src.SetGeoTransform((west, dx, 0.0, north, 0.0, -dy))
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    src.SetProjection(wgs84.ExportToWkt())
    src.GetRasterBand(1).WriteArray(elevation)

    utm = osr.SpatialReference()
    utm.ImportFromEPSG(SAMPLE_EPSG)
    # Reproject at the native resolution first to learn the footprint, then take a square
    # well inside it so that the upsampled DEM has square pixels and no empty corners.
    footprint = gdal.Warp("", src, format="MEM", dstSRS=utm.ExportToWkt())
    g = footprint.GetGeoTransform()
    x0, y1 = g[0], g[3]
    x1, y0 = x0 + g[1] * footprint.RasterXSize, y1 + g[5] * footprint.RasterYSize
    side = 0.9 * min(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = side / 2
    tmp = path + ".tmp"
    gdal.Warp(
        tmp, src, format="GTiff", dstSRS=utm.ExportToWkt(),
        outputBounds=(cx - half, cy - half, cx + half, cy + half), width=size, height=size,
        resampleAlg="cubicspline", outputType=gdal.GDT_Float32, dstNodata=-9999,
        multithread=True, warpOptions=["NUM_THREADS=ALL_CPUS"],
        creationOptions=["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "BIGTIFF=IF_SAFER"],
    )
    os.replace(tmp, path)
    return path


def sample_dem(directory: str, size: int) -> str:
    """The sample DEM of this size in directory, generated on first use."""
    path = os.path.join(directory, f"jacksboro_dem_{size}.tif")
    if not os.path.exists(path):
        print(f"generating {size} x {size} sample DEM -> {path}", flush=True)
        make_sample_dem(path, size)
    return path


# -- options shared by the kernel and gdaldem ----------------------------------------------------

def kernel_options(args) -> dict:
    """gpu.hillshade keyword options from the command line."""
    return dict(z=args.z, scale=args.scale, azimuth=args.azimuth, altitude=args.altitude,
                alg=args.alg, combined=args.combined, multidirectional=args.multidirectional,
                compute_edges=args.compute_edges)


def gdaldem_arguments(args) -> list[str]:
    """The same options as gdaldem hillshade arguments (always with an explicit -s)."""
    out = ["-z", repr(args.z), "-s", repr(args.scale), "-alt", repr(args.altitude),
           "-alg", args.alg]
    if args.multidirectional:
        out.append("-multidirectional")  # gdaldem ignores -az then; do not pass it
    else:
        out += ["-az", repr(args.azimuth)]
    if args.combined:
        out.append("-combined")
    if args.compute_edges:
        out.append("-compute_edges")
    return out


def run_gdaldem(src: str, dst: str, args) -> float:
    """gdaldem hillshade src dst with args' options; returns wall seconds."""
    cmd = ["gdaldem", "hillshade", src, dst, *gdaldem_arguments(args), "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def compare(ours: str, reference: str) -> dict:
    """Max abs difference and fraction of differing pixels between two Byte rasters."""
    a = _read(ours).astype(np.int16)
    b = _read(reference).astype(np.int16)
    if a.shape != b.shape:
        raise ValueError(f"{ours} is {a.shape}, {reference} is {b.shape}")
    diff = np.abs(a - b)
    return {"max_abs_diff": int(diff.max()),
            "differing_fraction": float(np.count_nonzero(diff)) / diff.size}


def _read(path: str) -> np.ndarray:
    ds = gdal.Open(path)
    try:
        return ds.GetRasterBand(1).ReadAsArray()
    finally:
        ds = None


def write_preview(src: str, png: str, size: int = PREVIEW_SIZE) -> str:
    """A downsampled PNG of the hillshade (averaged, so that it is not aliased).

    Run as a worker task: it reads every pixel of the output, which the client never does.
    """
    with gdal_io.s3_config():
        ds = gdal.Open(src)
        w, h = ds.RasterXSize, ds.RasterYSize
        ds = None
        scale = min(1.0, size / max(w, h))
        target = "/vsimem/preview.png" if gdal_io.is_virtual(png) else png
        gdal.Translate(target, src, format="PNG", width=max(1, round(w * scale)),
                       height=max(1, round(h * scale)), resampleAlg="average")
        if target != png:
            gdal_io.copy_file(target, png)
            gdal.Unlink(target)
        gdal_io.remove(target + ".aux.xml")
    return png


# -- executors -----------------------------------------------------------------------------------

def open_executor(args, warm_up_source: str | None = None):
    """The executor; with warm_up_source, each worker builds its kernel program at start."""
    init = {}
    if warm_up_source:
        init = dict(initializer=warm_up, initargs=(
            os.path.abspath(warm_up_source), "hillshade", 1, kernel_options(args)))
    if args.executor == "process":
        return ProcessPoolExecutor(args.workers or os.cpu_count(), **init)
    from batchexec import BatchExecutor

    return BatchExecutor(args.workers, stack=args.stack, **init)


def worker_count(executor, args) -> int:
    """How many workers the executor runs: BatchExecutor knows (the stack's default when
    --workers is not given); the process pool was given args.workers or the CPU count."""
    return getattr(executor, "max_workers", None) or args.workers or os.cpu_count()


def stage_on_s3(executor, local_or_vsi: str, output: str) -> tuple[str, str]:
    """Upload the input to the stack's bucket; returns (source, output) GDAL paths there."""
    from batchexec.aws import AwsClients

    bucket = executor.stack.bucket
    if not gdal_io.is_virtual(output):
        output = f"/vsis3/{bucket}/{S3_PREFIX}/outputs/{os.path.basename(output)}"
    if local_or_vsi.startswith("/vsis3/"):
        return local_or_vsi, output
    key = f"{S3_PREFIX}/inputs/{os.path.basename(local_or_vsi)}"
    s3 = AwsClients.resolve(executor.stack.region, executor.endpoint_url).client("s3")
    try:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except s3.exceptions.ClientError:
        size = None
    if size != os.path.getsize(local_or_vsi):
        print(f"uploading {local_or_vsi} -> s3://{bucket}/{key}", flush=True)
        s3.upload_file(local_or_vsi, bucket, key)
    return f"/vsis3/{bucket}/{key}", output


# -- the job -------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = (os.path.abspath("hillshade-output") if gdal_io.is_virtual(args.output)
               else os.path.dirname(os.path.abspath(args.output)))
    os.makedirs(out_dir, exist_ok=True)
    src = args.input or sample_dem(out_dir, args.size)
    if args.stack and args.executor != "batch":
        raise SystemExit("--stack needs --executor batch")

    report = {"input": src, "output": args.output, "executor": args.executor,
              "workers": args.workers, "tile_size": args.tile_size}
    with ExitStack() as stack:
        t0 = time.perf_counter()
        # Workers that share this filesystem build their kernel program as they start (on a
        # stack the input is staged on S3 only once the executor exists: no warm-up there).
        ex = stack.enter_context(open_executor(args, None if args.stack else src))
        # One small task first: it tells which device the workers use, and takes worker
        # start-up (and, on Batch, job launch) out of the pipeline's timing.
        report["device"] = ex.submit(gpu.device_info).result()
        report["workers"] = worker_count(ex, args)
        report["executor_start_s"] = time.perf_counter() - t0
        source, output, endpoint = src, args.output, None
        if args.stack:
            source, output = stage_on_s3(ex, src, args.output)
            endpoint = ex.endpoint_url
        summary = run_tiled(ex, source, output, operation="hillshade",
                            tile_size=args.tile_size, endpoint_url=endpoint,
                            progress=args.progress, **kernel_options(args))
        report["output"] = summary.dst
        png_name = os.path.splitext(os.path.basename(summary.dst))[0] + ".png"
        preview = os.path.join(out_dir, png_name)
        if args.stack:  # the worker writes it beside the output; fetch the small file
            remote = gdal_io.join(os.path.dirname(summary.dst), png_name)
            ex.submit(write_preview, summary.dst, remote).result()
            with gdal_io.s3_config(endpoint):
                gdal_io.copy_file(remote, preview)
        else:
            ex.submit(write_preview, summary.dst, preview).result()
    report.update(
        preview=preview, width=summary.width, height=summary.height, tiles=summary.tiles,
        seconds=summary.seconds, tiles_per_s=summary.tiles_per_second,
        mpixels_per_s=summary.mpixels_per_second,
        client_busy_s=summary.client_busy_seconds, worker_busy_s=summary.worker_busy_seconds,
        client_cpu_s=summary.client_cpu_seconds,
        client_to_worker=(summary.client_busy_seconds / summary.worker_busy_seconds
                          if summary.worker_busy_seconds else None),
        worker_read_s=summary.read_seconds, worker_kernel_s=summary.kernel_seconds,
        worker_write_s=summary.write_seconds, worker_assemble_s=summary.assemble_seconds,
        worker_processes=len(summary.workers),
    )
    if not args.no_compare:
        if gdal_io.is_virtual(src):
            raise SystemExit("--input on /vsis3/ cannot be compared locally: add --no-compare")
        scratch = tempfile.mkdtemp(prefix=".gdaldem-", dir=out_dir)
        try:
            reference = os.path.join(scratch, "gdaldem.tif")
            report["gdaldem_s"] = run_gdaldem(src, reference, args)
            with gdal_io.s3_config(endpoint):
                report.update(compare(summary.dst, reference))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


def print_report(r: dict) -> None:
    print(f"hillshade {r['width']} x {r['height']} -> {r['output']} (preview {r['preview']})")
    print(f"  executor  {r['executor']} with {r['workers']} workers "
          f"({r['worker_processes']} worker processes ran tiles); device: {r['device']}")
    print(f"  {r['tiles']} tiles of {r['tile_size']} px in {r['seconds']:.2f} s: "
          f"{r['tiles_per_s']:.1f} tiles/s, {r['mpixels_per_s']:.1f} Mpixel/s "
          f"(executor start {r['executor_start_s']:.2f} s, not included)")
    print(f"  worker busy {r['worker_busy_s']:.2f} s (read {r['worker_read_s']:.2f}, kernel "
          f"{r['worker_kernel_s']:.2f}, write {r['worker_write_s']:.2f}; summed over tiles"
          + (f"; COG assembly {r['worker_assemble_s']:.2f} s" if r["worker_assemble_s"] else "")
          + ")")
    print(f"  client busy {r['client_busy_s']:.3f} s = {100 * r['client_to_worker']:.2f} % of "
          f"worker busy (process CPU {r['client_cpu_s']:.2f} s, executor threads included)")
    if "gdaldem_s" in r:
        print(f"  gdaldem hillshade: {r['gdaldem_s']:.2f} s; agreement: max abs diff "
              f"{r['max_abs_diff']}, differing pixels {100 * r['differing_fraction']:.4f} %")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="DEM (GDAL path); default: generated sample DEM")
    p.add_argument("--output", default="hillshade-output/hillshade.vrt",
                   help="x.vrt: COG tiles under x.tiles/ and a VRT mosaic; x.tif: one COG "
                        "assembled by a worker; the PNG preview goes beside it "
                        "(default: %(default)s)")
    p.add_argument("--size", type=int, default=8192,
                   help="side of the generated sample DEM in pixels (default: %(default)s)")
    p.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE,
                   help="core tile size in pixels (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker count (default: the executor's: CPUs / stack default)")
    p.add_argument("--executor", choices=("batch", "process"), default="batch",
                   help="batch: BatchExecutor; process: ProcessPoolExecutor, for comparison")
    p.add_argument("--stack", help="run on this deployed CloudFormation stack (AWS)")
    g = p.add_argument_group("gdaldem hillshade options")
    g.add_argument("-z", type=float, default=1.0, help="vertical exaggeration")
    g.add_argument("-s", "--scale", type=float, default=1.0,
                   help="ratio of vertical to horizontal units (111120 for degrees)")
    g.add_argument("-az", "--azimuth", type=float, default=315.0)
    g.add_argument("-alt", "--altitude", type=float, default=45.0)
    g.add_argument("--alg", choices=("Horn", "ZevenbergenThorne"), default="Horn")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--combined", action="store_true")
    mode.add_argument("--multidirectional", action="store_true")
    g.add_argument("--compute-edges", action="store_true")
    p.add_argument("--no-compare", action="store_true", help="skip the gdaldem comparison")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar over tiles (default: when stderr is a terminal)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    args = p.parse_args(argv)
    if args.size < 3 or args.tile_size < 1:
        p.error("--size must be >= 3 and --tile-size >= 1")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    return args


if __name__ == "__main__":
    main()
    sys.exit(0)
