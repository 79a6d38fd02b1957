"""Tiled Shepherd segmentation beside pyshepseg, on one image, in one run.

Not a test: run it by hand and copy the table into docs/benchmarks.md::

    .venv/bin/python bench/bench_segment.py                      # ours only (no pyshepseg)
    .venv/bin/python bench/bench_segment.py --pyshepseg-python /tmp/pss-venv/bin/python

What is timed, honestly:

* Input: gpu.segment_sample's 3-band uint16 image (grace_hopper.jpg resampled to --size,
  noise, generated nodata), as a GeoTIFF; 60 fixed k-means centres fitted once beforehand and
  given to both sides (the fit is excluded from both: it is the same scikit-learn call).
* pyshepseg, tiled: wall time of tiling.doTiledShepherdSegmentation(tif, out.tif, tileSize,
  overlapSize, kmeansObj=<those centres>, GTiff output and temp files) in a process of the
  interpreter that has pyshepseg (its own venv: it needs numba), after a warm-up run on a
  small file that pays numba's JIT compilation. pyshepseg runs its tiles one after another
  in that process (its in-process default).
* pyshepseg, untiled: shepseg.doShepherdSegmentation(img, kmeansObj=...) on the array.
* ours, tiled: wall time of gpu.segment_tiled.segment_raster(executor, tif, out.tif, ...)
  with the same tiles, end to end (workers read their tiles with GDAL, segment, write tile
  files; this process stitches and writes a DEFLATE GeoTIFF), on a warm executor
  (ProcessPoolExecutor with --workers spawned workers, and/or BatchExecutor on the embedded
  emulator; their start and program builds happen before the clock starts).
* ours, untiled: gpu.segment(img, centres=...) on the array, after a warm-up call.
* Output format: pyshepseg writes an uncompressed GeoTIFF here (GTiff driver, no creation
  options), so by default ours writes an uncompressed tiled GeoTIFF too
  (``--output-compression none``); ``deflate`` times ours with segment_raster's default
  (DEFLATE level 1), which costs the client more.

Runs alternate (pyshepseg, ours, pyshepseg, ours ...) so background load hits both; the table
gives medians, and the ratio pyshepseg / ours is also given per repeat (each pair ran within
seconds of each other) with its median, which drifting load disturbs less. Agreement of the
tiled outputs is reported too (adjusted Rand index over the pixels pyshepseg kept valid; valid
pixels pyshepseg wrote as null). Without pyshepseg (CI, or no --pyshepseg-python), its columns
are left out and say why.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from osgeo import gdal  # noqa: E402

import gpu  # noqa: E402
from gpu.segment_sample import SAMPLE_NODATA, sample_image  # noqa: E402
from gpu.segment_tiled import segment_raster, warm_up  # noqa: E402

gdal.UseExceptions()

#: ours' output when matching pyshepseg's uncompressed GeoTIFF.
UNCOMPRESSED = ("TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "BIGTIFF=IF_SAFER")

#: Run by the pyshepseg interpreter: warm numba up, then time the tiled and untiled calls.
PYSHEPSEG_RUNNER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from osgeo import gdal
    from sklearn.cluster import KMeans
    import pyshepseg
    from pyshepseg import shepseg, tiling
    gdal.UseExceptions()
    args = json.loads(sys.argv[1])
    centres = np.load(args["centres"])
    km = KMeans(n_clusters=len(centres), init=centres, n_init=1, max_iter=1).fit(centres)
    km.cluster_centers_ = centres
    def tiled(src, dst, ts, ov):
        t = time.perf_counter()
        r = tiling.doTiledShepherdSegmentation(
            src, dst, tileSize=ts, overlapSize=ov, minSegmentSize=args["min_segment_size"],
            imgNullVal=args["nodata"], kmeansObj=km, outputDriver="GTiff",
            tempfilesDriver="GTiff", tempfilesExt="tif", writeHistogram=False)
        return time.perf_counter() - t, int(r.maxSegId)
    tiled(args["warm_src"], args["warm_dst"], 128, 32)  # numba's JIT compile, not timed
    out = {"version": pyshepseg.__version__}
    if args["what"] == "tiled":
        out["seconds"], out["segments"] = tiled(args["src"], args["dst"], args["tile_size"],
                                                args["overlap"])
    else:
        img = gdal.Open(args["src"]).ReadAsArray()
        t = time.perf_counter()
        r = shepseg.doShepherdSegmentation(img, kmeansObj=km, imgNullVal=args["nodata"],
                                           minSegmentSize=args["min_segment_size"])
        out["seconds"], out["segments"] = time.perf_counter() - t, int(r.segimg.max())
    print("RESULT " + json.dumps(out))
""")


def write_tif(path, img, nodata=SAMPLE_NODATA):
    ds = gdal.GetDriverByName("GTiff").Create(str(path), img.shape[2], img.shape[1],
                                              img.shape[0], gdal.GDT_UInt16)
    for b in range(img.shape[0]):
        ds.GetRasterBand(b + 1).WriteArray(img[b])
        ds.GetRasterBand(b + 1).SetNoDataValue(nodata)
    ds = None


def prepare(workdir: Path, size: int, clusters: int):
    src = workdir / f"sample_{size}.tif"
    centres_path = workdir / f"centres_{size}_{clusters}.npy"
    warm = workdir / "warm_300.tif"
    if not src.exists():
        print(f"generating the {size} x {size} sample", flush=True)
        write_tif(src, sample_image(size, size, seed=2))
    if not warm.exists():
        write_tif(warm, sample_image(300, 300, seed=3))
    if not centres_path.exists():
        from gpu.segmentation import fit_centres, sample_valid_pixels

        img = gdal.Open(str(src)).ReadAsArray()
        np.save(centres_path, fit_centres(sample_valid_pixels(img, SAMPLE_NODATA, 200_000),
                                          clusters, starts=1, seed=0))
    return src, warm, centres_path


def pyshepseg_interpreter(arg: str | None) -> tuple[str | None, str]:
    """The python that can import pyshepseg, or (None, why not)."""
    candidates = [arg] if arg else [sys.executable]
    for py in candidates:
        try:
            proc = subprocess.run([py, "-c", "import pyshepseg, numba; "
                                   "print(pyshepseg.__version__)"],
                                  capture_output=True, text=True, timeout=120)
        except OSError as exc:
            return None, f"{py}: {exc}"
        if proc.returncode == 0:
            return py, proc.stdout.strip()
    return None, ("pyshepseg is not importable here (it is not a dependency of this project); "
                  "pass --pyshepseg-python PATH to an interpreter that has it")


def run_pyshepseg(py, what, src, dst, warm, centres, args) -> dict:
    payload = dict(what=what, src=str(src), dst=str(dst), warm_src=str(warm),
                   warm_dst=str(dst) + ".warm.tif", centres=str(centres),
                   tile_size=args.tile_size, overlap=args.overlap,
                   min_segment_size=args.min_segment_size, nodata=SAMPLE_NODATA)
    proc = subprocess.run([py, "-c", PYSHEPSEG_RUNNER, json.dumps(payload)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"pyshepseg run failed:\n{proc.stdout}\n{proc.stderr}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def make_executor(kind: str, workers: int, bands: int, clusters: int):
    init = dict(initializer=warm_up, initargs=(bands, clusters))
    if kind == "process":
        ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 **init)
    else:
        from batchexec import BatchExecutor

        ex = BatchExecutor(workers, **init)
    # every worker started and warmed before any clock starts
    list(ex.map(time.sleep, [0.5] * (2 * workers)))
    return ex


def agreement(ours_path, ref_path, src_path) -> dict:
    from sklearn.metrics import adjusted_rand_score

    ours = gdal.Open(str(ours_path)).ReadAsArray()
    ref = gdal.Open(str(ref_path)).ReadAsArray()
    nulls = (gdal.Open(str(src_path)).ReadAsArray() == SAMPLE_NODATA).any(axis=0)
    kept = ref != 0
    return {
        "ari_on_pyshepseg_valid": float(adjusted_rand_score(ref[kept], ours[kept])),
        "segments_ours": int(ours.max()), "segments_pyshepseg": int(ref.max()),
        "pyshepseg_valid_written_null": int(np.count_nonzero((ref == 0) & ~nulls)),
        "ours_valid_written_null": int(np.count_nonzero((ours == 0) & ~nulls)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile-size", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=60)
    ap.add_argument("--min-segment-size", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executors", default="process,batch",
                    help="comma-separated: process, batch (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pyshepseg-python", help="an interpreter that can import pyshepseg")
    ap.add_argument("--no-untiled", action="store_true", help="skip the untiled columns")
    ap.add_argument("--output-compression", choices=("none", "deflate"), default="none",
                    help="ours' output: none (as pyshepseg's here) or segment_raster's "
                         "default DEFLATE (default: %(default)s)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench-segment"))
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "segment.json"))
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    src, warm, centres_path = prepare(workdir, args.size, args.clusters)
    centres = np.load(centres_path)
    py, pss_note = pyshepseg_interpreter(args.pyshepseg_python)
    kinds = [k.strip() for k in args.executors.split(",") if k.strip()]
    times: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    executors = {k: make_executor(k, args.workers, centres.shape[1], centres.shape[0])
                 for k in kinds}
    output_options = ({} if args.output_compression == "deflate"
                      else {"creation_options": UNCOMPRESSED})
    img = gdal.Open(str(src)).ReadAsArray()
    gpu.segment(img[:, :300, :300], centres=centres, nodata=SAMPLE_NODATA)  # builds programs
    try:
        for rep in range(args.repeats):
            if py:
                r = run_pyshepseg(py, "tiled", src, workdir / "pyshepseg_tiled.tif", warm,
                                  centres_path, args)
                times.setdefault("pyshepseg tiled", []).append(r["seconds"])
                counts["pyshepseg tiled"] = r["segments"]
                pss_note = r["version"]
            for kind, ex in executors.items():
                s = segment_raster(ex, str(src), str(workdir / f"ours_{kind}.tif"),
                                   centres=centres, tile_size=args.tile_size,
                                   overlap=args.overlap, min_segment_size=args.min_segment_size,
                                   **output_options)
                times.setdefault(f"ours tiled ({kind})", []).append(s.seconds)
                counts[f"ours tiled ({kind})"] = s.segments
            if args.no_untiled:
                continue
            if py:
                r = run_pyshepseg(py, "untiled", src, workdir / "unused.tif", warm,
                                  centres_path, args)
                times.setdefault("pyshepseg untiled", []).append(r["seconds"])
                counts["pyshepseg untiled"] = r["segments"]
            t = time.perf_counter()
            res = gpu.segment(img, centres=centres, nodata=SAMPLE_NODATA,
                              min_segment_size=args.min_segment_size)
            times.setdefault("ours untiled", []).append(time.perf_counter() - t)
            counts["ours untiled"] = res.segment_count
            print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(
                f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    finally:
        for ex in executors.values():
            ex.shutdown()
    agree = {}
    if py:
        for kind in kinds:
            agree[kind] = agreement(workdir / f"ours_{kind}.tif",
                                    workdir / "pyshepseg_tiled.tif", src)
    mpix = args.size * args.size / 1e6
    rows = []
    base = statistics.median(times["pyshepseg tiled"]) if "pyshepseg tiled" in times else None
    for name, v in times.items():
        med = statistics.median(v)
        rows.append({"run": name, "median_s": med, "runs_s": v, "mpixel_per_s": mpix / med,
                     "segments": counts.get(name),
                     "x_pyshepseg_tiled": (base / med) if base else None})
    print(f"\n{args.size} x {args.size} x 3 uint16, {centres.shape[0]} fixed centres, "
          f"min segment {args.min_segment_size}, tiles {args.tile_size}/{args.overlap}, "
          f"{args.workers} workers, our output compression {args.output_compression}; "
          f"device: {gpu.device_info()}; load average {os.getloadavg()}")
    print(f"pyshepseg: {pss_note}")
    print("| run | median s | Mpixel/s | segments | x pyshepseg tiled |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        x = f"{r['x_pyshepseg_tiled']:.2f}x" if r["x_pyshepseg_tiled"] else "-"
        print(f"| {r['run']} | {r['median_s']:.2f} | {r['mpixel_per_s']:.1f} | "
              f"{r['segments']} | {x} |")
    paired = {}
    if "pyshepseg tiled" in times:
        for kind in kinds:
            ours = times[f"ours tiled ({kind})"]
            ratios = [p / o for p, o in zip(times["pyshepseg tiled"], ours, strict=True)]
            paired[kind] = {"ratios": ratios, "median": statistics.median(ratios)}
            print(f"pyshepseg tiled / ours tiled ({kind}), per repeat: "
                  + ", ".join(f"{r:.2f}" for r in ratios)
                  + f"; median {paired[kind]['median']:.2f}x")
    for kind, a in agree.items():
        print(f"agreement ({kind} vs pyshepseg tiled): {a}")
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
            "load_average": os.getloadavg(), "device": gpu.device_info(),
            "pyshepseg": pss_note, "args": vars(args)}
    if args.json:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": rows, "paired_ratios": paired,
                       "agreement": agree}, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
