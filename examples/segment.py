#!/usr/bin/env python
"""The second main job: tiled Shepherd segmentation of a multi-band image on BatchExecutor
workers -- pyshepseg's AWS Batch job (prepare, tiles as an array job, stitch) as one call.

    python examples/segment.py                           # 4096 x 4096 sample, embedded emulator
    python examples/segment.py --executor process --workers 2
    python examples/segment.py --input scene.tif --nodata 0 --centres centres.npy
    BATCHEXEC_STACK=batchexec python examples/segment.py --input /vsis3/BUCKET/scene.tif \\
        --tile-store /vsis3/BUCKET/scratch              # on AWS (workers read S3 themselves)

What it does:
1. Input: --input (a multi-band raster GDAL can read), or a sample it generates once and
   reuses: matplotlib's grace_hopper.jpg resampled to --size x --size, 3 bands, 16 bits, with
   sensor-like noise and generated nodata (gpu.segment_sample).
2. k-means centres: --centres FILE.npy (k x bands; the fit is skipped), or fitted here on a
   decimated read of the whole raster (--clusters, default 60), saved beside the output.
3. gpu.segment_tiled.segment_raster on the executor: each worker reads its tile (all bands)
   from the input itself, labels, clumps and eliminates on OpenCL/numpy, writes a uint32 tile
   file; this process stitches tiles row by row into --output (GeoTIFF, 0 = null) with
   pyshepseg's rules, minus its null defect.
4. Prints the segment count, the time of each stage and Mpixel/s, and writes a PNG preview
   (each segment a random colour, null black) beside the output.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack

import numpy as np
from osgeo import gdal

import gpu
from gpu.segment_sample import SAMPLE_NODATA, sample_image
from gpu.segment_tiled import segment_raster, warm_up

gdal.UseExceptions()

#: Longest side of the PNG preview, in pixels.
PREVIEW_SIZE = 1024


# -- the sample image ----------------------------------------------------------------------------

def sample_raster(directory: str, size: int) -> str:
    """The sample image of this size in directory (3-band uint16 GeoTIFF), made on first use."""
    path = os.path.join(directory, f"grace_hopper_{size}.tif")
    if os.path.exists(path):
        return path
    print(f"generating {size} x {size} x 3 sample image -> {path}", flush=True)
    img = sample_image(size, size, seed=0)
    tmp = path + ".tmp"
    ds = gdal.GetDriverByName("GTiff").Create(
        tmp, size, size, img.shape[0], gdal.GDT_UInt16,
        options=["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "INTERLEAVE=BAND"])
    for b in range(img.shape[0]):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(img[b])
        band.SetNoDataValue(SAMPLE_NODATA)
    ds = None
    os.replace(tmp, path)
    return path


# -- preview ---------------------------------------------------------------------------------------

def write_preview(segments_tif: str, png: str, size: int = PREVIEW_SIZE) -> str:
    """A PNG of the segments, each a random colour (null black), read decimated (nearest)."""
    ds = gdal.Open(segments_tif)
    w, h = ds.RasterXSize, ds.RasterYSize
    scale = min(1.0, size / max(w, h))
    bw, bh = max(1, round(w * scale)), max(1, round(h * scale))
    ids = ds.GetRasterBand(1).ReadAsArray(buf_xsize=bw, buf_ysize=bh,
                                          resample_alg=gdal.GRIORA_NearestNeighbour)
    ds = None
    ids = ids.astype(np.uint64)
    # a fixed random colour per ID (a multiplicative hash, so an ID is the same colour in
    # every run and neighbouring IDs differ)
    h64 = ids * np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64, as intended
    rgb = np.stack([(h64 >> np.uint64(s)) & np.uint64(0xFF) for s in (40, 48, 56)])
    rgb = rgb.astype(np.uint8)
    rgb = np.maximum(rgb, 40)
    rgb[:, ids == 0] = 0
    mem = gdal.GetDriverByName("MEM").Create("", bw, bh, 3, gdal.GDT_Byte)
    for b in range(3):
        mem.GetRasterBand(b + 1).WriteArray(rgb[b])
    gdal.GetDriverByName("PNG").CreateCopy(png, mem)
    mem = None
    if os.path.exists(png + ".aux.xml"):
        os.remove(png + ".aux.xml")
    return png


# -- executors -----------------------------------------------------------------------------------

def open_executor(args, bands: int, clusters: int, dtype: str):
    """The executor; each worker builds its OpenCL programs as it starts (warm_up)."""
    init = dict(initializer=warm_up, initargs=(bands, clusters, dtype))
    if args.executor == "process":
        # spawn: a child forked from a process that already used OpenCL cannot use it
        return ProcessPoolExecutor(args.workers or os.cpu_count(),
                                   mp_context=multiprocessing.get_context("spawn"), **init)
    from batchexec import BatchExecutor

    return BatchExecutor(args.workers, **init)


def raster_bands(path: str) -> tuple[int, str]:
    """Band count and the numpy name of the first band's pixel type."""
    from osgeo import gdal_array

    ds = gdal.Open(path)
    try:
        code = ds.GetRasterBand(1).DataType
        return ds.RasterCount, np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(code)).name
    finally:
        ds = None


# -- the job -------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    src = args.input or sample_raster(out_dir, args.size)
    nodata = args.nodata
    if nodata is None and not args.input:
        nodata = SAMPLE_NODATA
    centres = None
    if args.centres:
        centres = np.load(args.centres)
    bands, dtype = raster_bands(src)
    clusters = centres.shape[0] if centres is not None else args.clusters
    report = {"input": src, "output": args.output, "executor": args.executor,
              "tile_size": args.tile_size, "overlap": args.overlap}
    with ExitStack() as stack:
        t0 = time.perf_counter()
        ex = stack.enter_context(open_executor(args, bands, clusters, dtype))
        # One small task first: it names the device the workers use, and takes worker start
        # (on Batch: job launch) out of the segmentation's timing.
        report["device"] = ex.submit(gpu.device_info).result()
        report["workers"] = getattr(ex, "max_workers", None) or args.workers or os.cpu_count()
        report["executor_start_s"] = time.perf_counter() - t0
        summary = segment_raster(
            ex, src, args.output, centres=centres, clusters=args.clusters,
            min_segment_size=args.min_segment_size, nodata=nodata, tile_size=args.tile_size,
            overlap=args.overlap, tile_store=args.tile_store)
    if centres is None:
        saved = os.path.splitext(args.output)[0] + "-centres.npy"
        np.save(saved, summary.centres)
        report["centres_saved"] = saved
    preview = write_preview(args.output, os.path.splitext(args.output)[0] + ".png")
    report.update(
        preview=preview, width=summary.width, height=summary.height, bands=summary.bands,
        tiles=summary.tiles, segments=summary.segments, seconds=summary.seconds,
        segment_s=summary.segment_seconds,
        mpixels_per_s=summary.mpixels_per_second, fit_s=summary.fit_seconds,
        stitch_s=summary.stitch_seconds, worker_stage_s=summary.tile_timings,
        worker_processes=len(summary.workers), max_spectral_diff=summary.max_spectral_diff)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return report


def print_report(r: dict) -> None:
    print(f"segmented {r['width']} x {r['height']} x {r['bands']} -> {r['output']} "
          f"(preview {r['preview']})")
    print(f"  {r['segments']} segments; {r['tiles']} tiles of {r['tile_size']} px "
          f"(overlap {r['overlap']}) in {r['segment_s']:.2f} s: {r['mpixels_per_s']:.1f} "
          f"Mpixel/s; with the k-means fit {r['seconds']:.2f} s (executor start "
          f"{r['executor_start_s']:.2f} s, not included)")
    print(f"  executor {r['executor']} with {r['workers']} workers ({r['worker_processes']} "
          f"worker processes ran tiles); device: {r['device']}")
    stages = r["worker_stage_s"]
    order = ("read", "label", "clump", "single_pixels", "eliminate", "write")
    print("  client: k-means fit {:.2f} s, stitch {:.2f} s".format(r["fit_s"], r["stitch_s"]))
    print("  workers (summed over tiles): " + ", ".join(
        f"{k} {stages[k]:.2f} s" for k in order if k in stages))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="multi-band raster (GDAL path); default: generated sample")
    p.add_argument("--output", default="segment-output/segments.tif",
                   help="output GeoTIFF (uint32, 0 = null); the PNG preview goes beside it "
                        "(default: %(default)s)")
    p.add_argument("--size", type=int, default=4096,
                   help="side of the generated sample image in pixels (default: %(default)s)")
    p.add_argument("--centres", help="fixed k-means centres, a (k, bands) .npy: skips the fit")
    p.add_argument("--clusters", type=int, default=60, help="k-means clusters (default: 60)")
    p.add_argument("--min-segment-size", type=int, default=50,
                   help="segments smaller than this are merged away (default: 50)")
    p.add_argument("--tile-size", type=int, default=2048,
                   help="tile size in pixels (default: %(default)s; pyshepseg's is 4096, which "
                        "would make the 4096 x 4096 sample a single tile)")
    p.add_argument("--overlap", type=int, default=512,
                   help="tile overlap in pixels, even (default: %(default)s)")
    p.add_argument("--nodata", type=float, default=None,
                   help="null value (a pixel with it in any band is null); default: the "
                        "input's own nodata")
    p.add_argument("--executor", choices=("batch", "process"), default="batch",
                   help="batch: BatchExecutor; process: ProcessPoolExecutor, for comparison")
    p.add_argument("--workers", type=int, default=None,
                   help="worker count (default: the executor's: CPUs / stack default)")
    p.add_argument("--tile-store", help="where workers write tile files: a directory or a "
                                        "/vsis3/ prefix (default: scratch beside --output)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    args = p.parse_args(argv)
    if args.size < 16:
        p.error("--size must be >= 16")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    if args.overlap < 0 or args.overlap % 2 or args.tile_size <= args.overlap:
        p.error("--overlap must be even, >= 0 and smaller than --tile-size")
    if args.min_segment_size < 1 or args.clusters < 1:
        p.error("--min-segment-size and --clusters must be >= 1")
    if args.centres and not os.path.exists(args.centres):
        p.error(f"--centres {args.centres} does not exist")
    return args


if __name__ == "__main__":
    main()
    sys.exit(0)
