#!/usr/bin/env python
"""Benchmark: the main job at growing sizes, beside gdaldem, in one run.

    python bench/bench_scaling.py                          # 8192, 16384, 32768; 2 workers
    python bench/bench_scaling.py --sizes 8192 16384 --rounds 2

For each size (sample DEMs of examples/hillshade.py, generated once into --data-dir and
reused), in turn: `gdaldem hillshade` (its default striped, uncompressed output), then the main
job's pipeline (gpu.pipeline.run_tiled on one BatchExecutor on the embedded emulator, shared
by all sizes, workers warmed up with gpu.pipeline.warm_up) writing COG tiles and a VRT mosaic.

Reported per size: wall seconds and milliseconds per megapixel for both; the pipeline's
client_busy_s (this process's thread outside waiting on workers: planning, submitting,
results, the mosaic), client_cpu_s (this process's CPU, the executor's threads included),
worker_busy_s (tile read + kernel + COG write, summed over tiles) and their ratio; the
client's peak RSS. Cost should grow linearly with the pixels: ms/Mpixel flat across sizes.
Writes bench/results/scaling.json. Outputs are deleted after each run; the DEMs are kept
(32768 x 32768 Float32 is 4 GiB).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_hillshade_job import load_example  # noqa: E402  (examples/hillshade.py, loaded)

RESULTS = os.path.join(HERE, "results", "scaling.json")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--tile-size", type=int, default=None, help="default: the pipeline's")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "batchexec-bench"))
    p.add_argument("--no-gdaldem", action="store_true")
    p.add_argument("--json", default=RESULTS)
    args = p.parse_args(argv)

    import gpu
    from batchexec import BatchExecutor
    from gpu.pipeline import DEFAULT_TILE_SIZE, run_tiled, warm_up

    example = load_example()
    tile_size = args.tile_size or DEFAULT_TILE_SIZE
    os.makedirs(args.data_dir, exist_ok=True)
    dems = {}
    generate_s = {}
    for size in args.sizes:
        t0 = time.perf_counter()
        dems[size] = example.sample_dem(args.data_dir, size)
        generate_s[size] = time.perf_counter() - t0
    job_args = example.parse_args(["--size", str(args.sizes[0])])
    options = example.kernel_options(job_args)

    rows = []
    t0 = time.perf_counter()
    with BatchExecutor(args.workers, initializer=warm_up,
                       initargs=(dems[args.sizes[0]], "hillshade", 1, options)) as ex:
        device = ex.submit(gpu.device_info).result()
        start_s = time.perf_counter() - t0
        for size in args.sizes:
            dem, mpix = dems[size], size * size / 1e6
            for rnd in range(args.rounds):
                scratch = tempfile.mkdtemp(prefix="scaling-", dir=args.data_dir)
                try:
                    row = dict(size=size, round=rnd + 1, mpixels=mpix)
                    if not args.no_gdaldem:
                        cmd = ["gdaldem", "hillshade", dem, os.path.join(scratch, "g.tif"),
                               "-q", *example.gdaldem_arguments(job_args)]
                        t = time.perf_counter()
                        subprocess.run(cmd, check=True)
                        row["gdaldem_s"] = time.perf_counter() - t
                        os.remove(os.path.join(scratch, "g.tif"))
                    s = run_tiled(ex, dem, os.path.join(scratch, "hs.vrt"),
                                  tile_size=tile_size, progress=False, **options)
                    row.update(
                        pipeline_s=s.seconds, tiles=s.tiles,
                        client_busy_s=s.client_busy_seconds, client_cpu_s=s.client_cpu_seconds,
                        worker_busy_s=s.worker_busy_seconds, read_s=s.read_seconds,
                        kernel_s=s.kernel_seconds, write_s=s.write_seconds,
                        client_to_worker=s.client_busy_seconds / s.worker_busy_seconds,
                        pipeline_ms_per_mpixel=1e3 * s.seconds / mpix,
                        worker_ms_per_mpixel=1e3 * s.worker_busy_seconds / mpix,
                        client_ms_per_mpixel=1e3 * s.client_busy_seconds / mpix,
                        output_mb=_du(scratch) / 2**20,
                        client_peak_rss_mb=_peak_rss_mb(),
                    )
                    if "gdaldem_s" in row:
                        row["gdaldem_ms_per_mpixel"] = 1e3 * row["gdaldem_s"] / mpix
                        row["vs_gdaldem"] = s.seconds / row["gdaldem_s"]
                    rows.append(row)
                    print(_line(row), flush=True)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)

    result = dict(
        benchmark="scaling", date=datetime.date.today().isoformat(),
        machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        python=sys.version.split()[0], workers=args.workers, tile_size=tile_size,
        rounds=args.rounds, options=options, device=device, executor_start_s=start_s,
        dem_generate_s=generate_s, rows=rows,
    )
    print(f"\nhillshade main job, BatchExecutor({args.workers}) on the embedded emulator, tile "
          f"{tile_size} ({result['machine']}); executor start {start_s:.2f} s (not included)")
    for row in rows:
        print(_line(row))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")
    return result


def _du(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def _line(r: dict) -> str:
    g = (f"gdaldem {r['gdaldem_s']:.2f} s ({r['gdaldem_ms_per_mpixel']:.1f} ms/Mpx), "
         if "gdaldem_s" in r else "")
    return (f"{r['size']:>6d} r{r['round']}: {g}pipeline {r['pipeline_s']:.2f} s "
            f"({r['pipeline_ms_per_mpixel']:.1f} ms/Mpx, {r['tiles']} tiles); client busy "
            f"{r['client_busy_s']:.3f} s, worker busy {r['worker_busy_s']:.2f} s, ratio "
            f"{r['client_to_worker']:.4f}; client CPU {r['client_cpu_s']:.2f} s; peak RSS "
            f"{r['client_peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
