"""hillshade, slope and aspect: gdaldem's results for a numpy DEM, computed by OpenCL.

Data flow for one call::

    dem (numpy) --check--> device dtype + nodata rule (gdaldem_rules.source_spec)
        --> build options (-D...) --> program (built once per process, gpu.device.program)
        --> terrain_interior over (nx-2, ny-2) cells + terrain_border over the 1-cell frame
        --> output array (uint8 or float32), fetched without copies on CPU devices

:func:`run_terrain` is the one place that launches; it returns the output and the kernel
events so the benchmark can read OpenCL profiling times. The public functions only translate
gdaldem's options into constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyopencl as cl

from gpu import buffers, device
from gpu.gdaldem_rules import (
    HILLSHADE_NODATA,
    SLOPE_NODATA,
    TerrainInputError,
    check_geotransform,
    hillshade_constants,
    multidirectional_constants,
    normalize_alg,
    slope_constants,
    source_spec,
)

MODES = {"hillshade": 1, "combined": 2, "multidirectional": 3, "slope": 4, "aspect": 5}

# Run-time flags of the kernels (must match terrain.cl).
FLAG_COMPUTE_EDGES = 1
FLAG_TRIGONOMETRIC = 2

# Arithmetic precision per mode. float keeps the CPU vector units twice as wide; double is
# used where float rounding would be visible against gdaldem's double arithmetic.
PRECISION = {"hillshade": "float", "combined": "float", "multidirectional": "double",
             "slope": "float", "aspect": "float"}

# Work-group shape of the interior kernel, per device kind. On PoCL the work-group is the
# loop the vectoriser widens, and 16 x 16 measured best (hillshade 1.2 -> ~2 Gpixel/s kernel
# time against the runtime's own choice, slope/aspect +20-30%: 16-wide rows keep loads
# contiguous, 16 rows reuse the cached neighbours). 32 x 8 is the usual GPU shape (a few warps
# along rows for coalescing). None would let the runtime choose.
INTERIOR_LOCAL_SIZE = {"cpu": (16, 16), "gpu": (32, 8)}


@dataclass(frozen=True)
class TerrainRun:
    """The output of one launch and its kernel events (for profiling in the benchmark)."""

    output: np.ndarray
    events: tuple


def _check_dem(dem) -> np.ndarray:
    arr = np.asarray(dem)
    if arr.ndim != 2:
        raise TerrainInputError(f"dem must be a 2-D array (rows, cols), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise TerrainInputError(f"dem is empty: shape {arr.shape}")
    if arr.dtype.kind not in "biuf" or arr.dtype == np.bool_:
        raise TerrainInputError(f"dem dtype {arr.dtype} is not a numeric raster type")
    return arr


def run_terrain(mode: str, dem, geotransform, *, nodata=None, compute_edges=False,
                alg="Horn", constants=None, same_res=False, percent=False,
                trigonometric=False, zero_for_flat=False) -> TerrainRun:
    """Launch the terrain kernels for ``mode`` (a key of MODES) and return the output."""
    arr = _check_dem(dem)
    check_geotransform(geotransform)
    dev_dtype, spec = source_spec(arr.dtype, nodata)
    if arr.dtype != dev_dtype:
        arr = arr.astype(dev_dtype)  # gdaldem reads these types as Float32
    arr = np.ascontiguousarray(arr)
    ny, nx = arr.shape
    hillshade_like = mode in ("hillshade", "combined", "multidirectional")
    if hillshade_like:
        out_dtype, dst_nodata = np.uint8, float(HILLSHADE_NODATA)
    else:
        out_dtype, dst_nodata = np.float32, SLOPE_NODATA
    if mode == "aspect" and zero_for_flat:
        dst_nodata = 0.0  # gdaldem then sets no output nodata, so edges/holes are 0 too
    real = "double" if percent else PRECISION[mode]  # percent slopes reach 1e4: float ulps show
    options = (
        f"-DSRC_T={spec.ctype}", f"-DSRC_IS_INT={int(spec.is_int)}",
        f"-DMODE={MODES[mode]}", f"-DALG_ZT={int(alg == 'ZevenbergenThorne')}",
        f"-DSAME_RES={int(same_res)}", f"-DHAS_NODATA={int(spec.has_nodata)}",
        f"-DNODATA_IS_NAN={int(spec.nodata_is_nan)}",
        f"-DPERCENT={int(bool(percent))}", f"-DREAL={real}",
        f"-DREAL_IS_DOUBLE={int(real == 'double')}",
    )
    flags = (FLAG_COMPUTE_EDGES if compute_edges else 0) | \
        (FLAG_TRIGONOMETRIC if trigonometric else 0)
    st = device.state()
    prg = device.program("terrain.cl", options)
    out = buffers.empty_aligned((ny, nx), out_dtype)
    real_t = np.float32 if real == "float" else np.float64
    consts = [real_t(c) for c in (constants or (0.0,) * 6)]
    nd = np.int32(spec.nodata) if spec.is_int else np.float32(spec.nodata)
    src_buf = buffers.input_buffer(st, arr)
    dst_buf = buffers.output_buffer(st, out)
    args = (src_buf, dst_buf, np.int32(nx), np.int32(ny), nd, np.int32(flags),
            np.float32(dst_nodata), *consts)
    events = []
    if nx > 2 and ny > 2:
        kernel = cl.Kernel(prg, "terrain_interior")
        kernel.set_args(*args)
        local = INTERIOR_LOCAL_SIZE["cpu" if st.is_cpu else "gpu"]
        if local is not None and local[0] * local[1] > kernel.get_work_group_info(
                cl.kernel_work_group_info.WORK_GROUP_SIZE, st.device):
            local = None  # this device/kernel cannot take that many work-items
        grid = (nx - 2, ny - 2)
        if local is not None:  # round up: the kernel bounds-checks
            grid = tuple(-(-g // size) * size for g, size in zip(grid, local, strict=True))
        events.append(cl.enqueue_nd_range_kernel(st.queue, kernel, grid, local))
    border = nx if ny == 1 else 2 * nx + 2 * max(ny - 2, 0)
    kernel = cl.Kernel(prg, "terrain_border")
    kernel.set_args(*args)
    events.append(cl.enqueue_nd_range_kernel(st.queue, kernel, (border,), None))
    buffers.fetch(st, dst_buf, out, wait_for=events)
    src_buf.release()
    dst_buf.release()
    return TerrainRun(out, tuple(events))


def _check_number(name, value, positive=False):
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise TerrainInputError(f"{name} must be a number, got {value!r}") from exc
    if not np.isfinite(v) or (positive and v <= 0):
        raise TerrainInputError(f"{name} must be a finite{' positive' if positive else ''} "
                                f"number, got {value!r}")
    return v


def hillshade(dem, geotransform, *, z=1.0, scale=1.0, azimuth=315.0, altitude=45.0,
              alg="Horn", combined=False, multidirectional=False, nodata=None,
              compute_edges=False) -> np.ndarray:
    """``gdaldem hillshade`` for a 2-D array: uint8 shading 1..255, 0 for nodata and edges.

    ``combined`` and ``multidirectional`` select gdaldem's -combined / -multidirectional
    (mutually exclusive, as in gdaldem); with ``multidirectional`` the azimuth must stay at
    its default, since gdaldem refuses -az there.
    """
    alg = normalize_alg(alg)
    gt = check_geotransform(geotransform)
    z = _check_number("z", z)
    scale = _check_number("scale", scale, positive=True)
    azimuth = _check_number("azimuth", azimuth)
    altitude = _check_number("altitude", altitude)
    if combined and multidirectional:
        raise TerrainInputError("combined and multidirectional are mutually exclusive "
                                "(as gdaldem's -combined and -multidirectional)")
    if multidirectional and azimuth != 315.0:
        raise TerrainInputError("multidirectional shading uses fixed azimuths (225, 270, 315, "
                                "360); gdaldem rejects -az with -multidirectional")
    if multidirectional:
        return run_terrain("multidirectional", dem, gt, nodata=nodata,
                           compute_edges=compute_edges, alg=alg,
                           constants=multidirectional_constants(gt, z, scale, altitude, alg)
                           ).output
    constants, same_res = hillshade_constants(gt, z, scale, azimuth, altitude, alg, combined)
    return run_terrain("combined" if combined else "hillshade", dem, gt, nodata=nodata,
                       compute_edges=compute_edges, alg=alg, constants=constants,
                       same_res=same_res).output


def slope(dem, geotransform, *, scale=1.0, alg="Horn", percent=False, nodata=None,
          compute_edges=False) -> np.ndarray:
    """``gdaldem slope``: float32 degrees (or percent), -9999 for nodata and edges."""
    alg = normalize_alg(alg)
    gt = check_geotransform(geotransform)
    scale = _check_number("scale", scale, positive=True)
    return run_terrain("slope", dem, gt, nodata=nodata, compute_edges=compute_edges, alg=alg,
                       constants=slope_constants(gt, scale, alg), percent=percent).output


def aspect(dem, geotransform, *, alg="Horn", trigonometric=False, zero_for_flat=False,
           nodata=None, compute_edges=False) -> np.ndarray:
    """``gdaldem aspect``: float32 degrees 0..360, -9999 for flat cells, nodata and edges.

    Like gdaldem, the result does not depend on the pixel size (only the geotransform is
    validated). With ``zero_for_flat`` gdaldem sets no output nodata, so flat cells, edges
    and nodata cells are all 0.
    """
    alg = normalize_alg(alg)
    gt = check_geotransform(geotransform)
    return run_terrain("aspect", dem, gt, nodata=nodata, compute_edges=compute_edges, alg=alg,
                       trigonometric=trigonometric, zero_for_flat=zero_for_flat).output
