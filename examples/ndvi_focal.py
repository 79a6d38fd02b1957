#!/usr/bin/env python
"""Your own function over blocks of two rasters: NDVI, then a 3 x 3 focal mean, on workers.

    python examples/ndvi_focal.py                      # 4096 x 4096 sample bands, embedded emulator
    python examples/ndvi_focal.py --red B04.tif --nir B08.tif --output out/ndvi.vrt
    python examples/ndvi_focal.py --executor process   # the same on a ProcessPoolExecutor

What it does:
1. Inputs: --red and --nir (aligned rasters: same size, geotransform and projection; if
   yours are not, the error says how to make them so with `gdalwarp -of VRT`), or two sample
   UInt16 reflectance bands it generates once beside the output (nodata 0, with a hole).
2. gpu.apply runs `ndvi_focal` below over 1024 x 1024 blocks with a 1-pixel halo on each
   input, through BatchExecutor (the embedded default unless a stack is configured): each
   worker reads its block of both bands, computes NDVI = (nir - red) / (nir + red) and the
   mean of the valid NDVI values in each 3 x 3 window, and writes a Float32 COG tile
   (nodata -9999); this process writes the VRT mosaic --output from metadata only.
3. Checks the mosaic against the same function run on the whole raster here (identical,
   pixel for pixel; skip with --no-check) and prints the client's and workers' busy time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from osgeo import gdal, osr

from gpu import gdal_io
from gpu.applier import Block, Input, Output, apply

gdal.UseExceptions()

#: Output nodata: NDVI is in [-1, 1], so any value outside works; -9999 is the usual choice.
NODATA = -9999.0


def ndvi_focal(arrays, block):
    """NDVI of red and NIR, then the mean of the valid NDVI values in each 3 x 3 window.

    Valid: neither band is nodata and nir + red > 0. A cell with no valid value in its window
    is NODATA. The window is clipped at the array border, which gpu.apply makes the image
    border (the 1-pixel halo supplies the neighbours everywhere else), so the blocks give what
    the whole raster gives.
    """
    red = arrays["red"][0].astype(np.float32)
    nir = arrays["nir"][0].astype(np.float32)
    valid = (red + nir) > 0
    for name, band in (("red", red), ("nir", nir)):
        nodata = block.nodata[name][0]
        if nodata is not None:
            valid &= band != np.float32(nodata)
    ndvi = np.where(valid, (nir - red) / np.where(valid, nir + red, 1), 0).astype(np.float32)
    rows, cols = ndvi.shape
    total = np.zeros((rows, cols), np.float32)
    count = np.zeros((rows, cols), np.float32)
    padded, weight = np.pad(ndvi, 1), np.pad(valid.astype(np.float32), 1)
    for dy in range(3):
        for dx in range(3):
            total += padded[dy:dy + rows, dx:dx + cols]
            count += weight[dy:dy + rows, dx:dx + cols]
    return np.where(count > 0, total / np.maximum(count, 1), np.float32(NODATA))


# -- sample inputs -------------------------------------------------------------------------------

def make_sample_bands(directory: str, size: int) -> tuple[str, str]:
    """Two UInt16 reflectance bands (red, NIR) on a UTM grid: fields, forest, water, a hole."""
    red_path = os.path.join(directory, f"sample_red_{size}.tif")
    nir_path = os.path.join(directory, f"sample_nir_{size}.tif")
    if os.path.exists(red_path) and os.path.exists(nir_path):
        return red_path, nir_path
    print(f"generating {size} x {size} sample red and NIR bands in {directory}", flush=True)
    rng = np.random.default_rng(42)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    vegetation = 0.5 + 0.35 * np.sin(9 * x + 2 * np.cos(7 * y)) * np.cos(11 * y)
    vegetation += rng.normal(0, 0.05, (size, size)).astype(np.float32)
    vegetation = np.clip(vegetation, 0, 1)
    water = (x - 0.7) ** 2 + (y - 0.3) ** 2 < 0.01
    red = 600 + 2400 * (1 - vegetation)
    nir = 800 + 4200 * vegetation
    red[water], nir[water] = 500, 200
    hole = slice(size // 5, size // 5 + max(1, size // 50))
    red, nir = red.astype(np.uint16), nir.astype(np.uint16)
    red[hole, hole] = 0  # nodata
    utm = osr.SpatialReference()
    utm.ImportFromEPSG(32633)
    gt = (400000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0)
    options = ("TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "COMPRESS=DEFLATE",
               "PREDICTOR=2")
    for path, band in ((red_path, red), (nir_path, nir)):
        gdal_io.write_raster(path + ".tmp", band, geotransform=gt, projection=utm.ExportToWkt(),
                             nodata=0, creation_options=options)
        os.replace(path + ".tmp", path)
    return red_path, nir_path


# -- the check -----------------------------------------------------------------------------------

def whole_raster(red: str, nir: str) -> np.ndarray:
    """The same function on the whole raster, in this process: the reference."""
    infos = {"red": gdal_io.dataset_info(red), "nir": gdal_io.dataset_info(nir)}
    arrays = {name: gdal_io.read_bands(path, Block.whole(infos).core, (1,))
              for name, path in (("red", red), ("nir", nir))}
    return ndvi_focal(arrays, Block.whole(infos, {"red": (1,), "nir": (1,)}))


def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    if bool(args.red) != bool(args.nir):
        raise SystemExit("give both --red and --nir, or neither (sample bands)")
    red, nir = (args.red, args.nir) if args.red else make_sample_bands(out_dir, args.size)

    t0 = time.perf_counter()
    if args.executor == "process":
        ex = ProcessPoolExecutor(args.workers or os.cpu_count())
    else:
        from batchexec import BatchExecutor

        ex = BatchExecutor(args.workers)
    with ex:
        ex.submit(int).result()  # workers up: start-up is not part of the run's time
        start_s = time.perf_counter() - t0
        s = apply(ex, ndvi_focal, {"red": Input(red, halo=1), "nir": Input(nir, halo=1)},
                  {"ndvi": Output(args.output, np.float32, nodata=NODATA, statistics=True)},
                  block_size=args.block_size, overwrite=True, progress=args.progress)
    stats = s.stats["ndvi"]
    report = dict(
        red=red, nir=nir, output=s.outputs["ndvi"], executor=args.executor,
        width=s.width, height=s.height, blocks=s.blocks, seconds=s.seconds,
        executor_start_s=start_s, mpixels_per_s=s.mpixels_per_second,
        client_busy_s=s.client_busy_seconds, worker_busy_s=s.worker_busy_seconds,
        client_cpu_s=s.client_cpu_seconds, worker_processes=len(s.workers),
        valid_pixels=stats.valid_pixels, minimum=stats.minimum, maximum=stats.maximum,
    )
    print(f"ndvi_focal {s.width} x {s.height} -> {report['output']}")
    print(f"  {s.blocks} blocks on {args.executor} ({len(s.workers)} worker processes) in "
          f"{s.seconds:.2f} s, {s.mpixels_per_second:.1f} Mpixel/s (executor start "
          f"{start_s:.2f} s, not included)")
    print(f"  worker busy {s.worker_busy_seconds:.2f} s (read {s.read_seconds:.2f}, compute "
          f"{s.compute_seconds:.2f}, write {s.write_seconds:.2f}); client busy "
          f"{s.client_busy_seconds:.3f} s")
    print(f"  {stats.valid_pixels} valid pixels, NDVI mean range {stats.minimum:.3f} .. "
          f"{stats.maximum:.3f}")
    if not args.no_check:
        expected = whole_raster(red, nir)
        with gdal_io.s3_config():
            got = gdal_io.read_window(s.outputs["ndvi"])
        differing = int(np.count_nonzero(got != expected))
        report["differing_pixels"] = differing
        print(f"  whole-raster check: {'identical' if differing == 0 else 'DIFFERENT'} "
              f"({differing} of {got.size} pixels differ)")
        if differing:
            raise SystemExit(1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--red", help="red band raster (GDAL path); default: generated sample")
    p.add_argument("--nir", help="near-infrared band raster, aligned with --red")
    p.add_argument("--output", default="ndvi-output/ndvi_focal.vrt",
                   help="x.vrt (COG tiles + VRT mosaic) or x.tif (one COG) (default: "
                        "%(default)s)")
    p.add_argument("--size", type=int, default=4096,
                   help="side of the generated sample bands (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--executor", choices=("batch", "process"), default="batch")
    p.add_argument("--no-check", action="store_true",
                   help="skip the whole-raster comparison (it reads both bands here)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--json", help="also write the report as JSON to this file")
    args = p.parse_args(argv)
    if args.size < 3 or args.block_size < 1:
        p.error("--size must be >= 3 and --block-size >= 1")
    return args


if __name__ == "__main__":
    main()
    sys.exit(0)
