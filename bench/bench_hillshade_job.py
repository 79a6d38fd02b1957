#!/usr/bin/env python
"""Benchmark: the main hillshade job end to end, beside gdaldem, in one run.

    python bench/bench_hillshade_job.py                 # 8192 x 8192, 2 workers, 3 rounds
    python bench/bench_hillshade_job.py --size 4096 --rounds 2

Contenders, run round-robin in each round so that they share the machine's state (other
load, page cache) and their ratios are side by side:

- gdaldem       `gdaldem hillshade` on the DEM (its default output: striped, uncompressed)
- gdaldem-deflate  the same, compressed as the pipeline's tiles are (tiled 512, DEFLATE 1,
                predictor)
- process       gpu.pipeline.run_tiled on ProcessPoolExecutor(workers)
- batch         gpu.pipeline.run_tiled on BatchExecutor(workers), embedded emulator

Each pipeline time is end to end: tile reads, kernels, the workers' COG tile writes and the
client's VRT mosaic (run_tiled's wall time; the output is the main job's, a .vrt).
Executor start-up (emulator, Batch job launch, worker process start) is measured once and
reported separately: a long-lived executor pays it once for many jobs. As in
examples/hillshade.py, workers build their OpenCL program at start (initializer
gpu.pipeline.warm_up), so that cost is in the start-up column too. The table reports the
median over rounds and round 1 (cold page cache for the first contender).

Wall times on a small shared machine swing with other load, so CPU seconds are reported too:
this process plus every live descendant (pool workers; the emulator's moto server and its
Batch worker processes) for the pipelines, the gdaldem child for gdaldem. CPU seconds say
what the job costs, independent of what else runs. Writes bench/results/hillshade_job.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "hillshade_job.json")

#: gdaldem writes GeoTIFF, not COG: the GTiff options closest to the pipeline's COG tiles.
GTIFF_LIKE_TILES = ("TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "COMPRESS=DEFLATE",
                    "ZLEVEL=1", "PREDICTOR=2", "BIGTIFF=IF_SAFER")


def load_example():
    """examples/hillshade.py as a module (examples/ is not a package)."""
    path = os.path.join(ROOT, "examples", "hillshade.py")
    spec = importlib.util.spec_from_file_location("hillshade_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of all its live descendants."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def _children_cpu_seconds() -> float:
    """CPU time of waited-for children (gdaldem)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--tile-size", type=int, default=None, help="default: the pipeline's")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "batchexec-bench"),
                   help="where the sample DEM is cached (default: %(default)s)")
    p.add_argument("--skip", nargs="*", default=[], choices=("process", "batch"))
    p.add_argument("--json", default=RESULTS)
    args = p.parse_args(argv)

    import gpu
    from gpu.pipeline import DEFAULT_TILE_SIZE, OUTPUT_CREATION_OPTIONS, run_tiled, warm_up

    example = load_example()
    job_args = example.parse_args(["--size", str(args.size)])  # gdaldem defaults, -s 1
    os.makedirs(args.data_dir, exist_ok=True)
    dem = example.sample_dem(args.data_dir, args.size)
    tile_size = args.tile_size or DEFAULT_TILE_SIZE
    options = example.kernel_options(job_args)
    gdaldem_co = [x for o in GTIFF_LIKE_TILES for x in ("-co", o)]

    init = dict(initializer=warm_up, initargs=(dem, "hillshade", 1, options))
    executors, start_s, device = {}, {}, {}
    try:
        if "process" not in args.skip:
            t0 = time.perf_counter()
            executors["process"] = ProcessPoolExecutor(args.workers, **init)
            device["process"] = executors["process"].submit(gpu.device_info).result()
            start_s["process"] = time.perf_counter() - t0
        if "batch" not in args.skip:
            from batchexec import BatchExecutor

            t0 = time.perf_counter()
            executors["batch"] = BatchExecutor(args.workers, **init)
            device["batch"] = executors["batch"].submit(gpu.device_info).result()
            start_s["batch"] = time.perf_counter() - t0

        times: dict[str, list[float]] = {"gdaldem": [], "gdaldem-deflate": []}
        times.update({name: [] for name in executors})
        cpu: dict[str, list[float]] = {name: [] for name in times}
        breakdown: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(dir=args.data_dir) as scratch:
            out = os.path.join(scratch, "out.tif")
            mosaic = os.path.join(scratch, "out.vrt")
            for rnd in range(args.rounds):
                for name, extra in (("gdaldem", []), ("gdaldem-deflate", gdaldem_co)):
                    cmd = ["gdaldem", "hillshade", dem, out, "-q",
                           *example.gdaldem_arguments(job_args), *extra]
                    c0, t0 = _children_cpu_seconds(), time.perf_counter()
                    subprocess.run(cmd, check=True)
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(_children_cpu_seconds() - c0)
                    os.remove(out)
                for name, ex in executors.items():
                    c0 = _cpu_seconds()
                    s = run_tiled(ex, dem, mosaic, tile_size=tile_size, progress=False,
                                  **options)
                    cpu[name].append(_cpu_seconds() - c0)
                    times[name].append(s.seconds)
                    breakdown[name] = dict(
                        read_s=s.read_seconds, kernel_s=s.kernel_seconds,
                        write_s=s.write_seconds, client_busy_s=s.client_busy_seconds,
                        worker_busy_s=s.worker_busy_seconds,
                        worker_processes=len(s.workers))
                    os.remove(mosaic)
                    shutil.rmtree(mosaic[:-4] + ".tiles")
                print(f"round {rnd + 1}: " + ", ".join(
                    f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    finally:
        for ex in executors.values():
            ex.shutdown()

    mpix = args.size * args.size / 1e6
    base = statistics.median(times["gdaldem"])
    base_cpu = statistics.median(cpu["gdaldem"])
    rows = []
    for name, ts in times.items():
        med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
        rows.append(dict(contender=name, median_s=med, round1_s=ts[0], all_s=ts,
                         mpixels_per_s=mpix / med, vs_gdaldem=med / base,
                         cpu_median_s=med_cpu, cpu_all_s=cpu[name],
                         cpu_vs_gdaldem=med_cpu / base_cpu,
                         executor_start_s=start_s.get(name), **breakdown.get(name, {})))
    result = dict(
        benchmark="hillshade_job", date=datetime.date.today().isoformat(),
        machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        python=sys.version.split()[0], size=args.size, tile_size=tile_size,
        workers=args.workers, rounds=args.rounds, options=options,
        output_creation_options=list(OUTPUT_CREATION_OPTIONS), device=device, rows=rows,
    )
    _print_table(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")
    return result


def _print_table(result: dict) -> None:
    print(f"\nhillshade {result['size']} x {result['size']}, tile {result['tile_size']}, "
          f"{result['workers']} workers, {result['rounds']} rounds ({result['machine']})")
    print(f"{'contender':16s} {'median s':>9s} {'round 1 s':>10s} {'Mpx/s':>7s} "
          f"{'x gdaldem':>9s} {'CPU s':>6s} {'CPU x':>6s} {'start s':>8s}")
    for r in result["rows"]:
        start = "" if r["executor_start_s"] is None else f"{r['executor_start_s']:.2f}"
        print(f"{r['contender']:16s} {r['median_s']:9.2f} {r['round1_s']:10.2f} "
              f"{r['mpixels_per_s']:7.1f} {r['vs_gdaldem']:9.2f} {r['cpu_median_s']:6.2f} "
              f"{r['cpu_vs_gdaldem']:6.2f} {start:>8s}")
    for r in result["rows"]:
        if "kernel_s" in r:
            print(f"  {r['contender']}: worker read {r['read_s']:.2f} s, kernel "
                  f"{r['kernel_s']:.2f} s, write {r['write_s']:.2f} s (summed over tiles); "
                  f"client busy {r['client_busy_s']:.3f} s (last round)")


if __name__ == "__main__":
    main()
