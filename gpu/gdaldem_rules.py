"""gdaldem 3.6.2's decisions, in pure Python: which read path, which nodata, which constants.

Why a separate module: these rules are the contract with the oracle (apps/gdaldem_lib.cpp) and
are easiest to check line by line against it when they are not mixed with OpenCL plumbing.
Every constant is computed in double precision in the same order as GDALCreateHillshadeData,
GDALCreateHillshadeMultiDirectionalData and GDALCreateSlopeData; the kernel receives them
ready-made (c0..c5) so its inner loop has no transcendental set-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALGORITHMS = {"horn": "Horn", "zevenbergenthorne": "ZevenbergenThorne"}

# gdaldem reads Byte, UInt16 and Int16 bands through its GInt32 path and everything else as
# Float32. numpy dtypes that map onto the integer path keep their type on the device (no host
# conversion); int8 is GDAL 3.7's Int8, which fits the same path exactly.
INTEGER_PATH = {
    np.dtype(np.uint8): ("uchar", 0, 255),
    np.dtype(np.int8): ("char", -128, 127),
    np.dtype(np.uint16): ("ushort", 0, 65535),
    np.dtype(np.int16): ("short", -32768, 32767),
}

SLOPE_NODATA = -9999.0
HILLSHADE_NODATA = 0


class TerrainInputError(ValueError):
    """The DEM, geotransform or an option cannot be processed; the message says which."""


@dataclass(frozen=True)
class SourceSpec:
    """How the kernel sees the DEM: element type, gdaldem's read path, and its nodata."""

    ctype: str  # OpenCL type of the array handed to the device
    is_int: bool  # gdaldem's GInt32 path
    has_nodata: bool
    nodata: float | int
    nodata_is_nan: bool


def normalize_alg(alg: str) -> str:
    """'Horn' or 'ZevenbergenThorne' (case-insensitive, as gdaldem's -alg is)."""
    if not isinstance(alg, str) or alg.lower() not in ALGORITHMS:
        raise TerrainInputError(
            f"alg must be 'Horn' or 'ZevenbergenThorne' (gdaldem -alg), got {alg!r}"
        )
    return ALGORITHMS[alg.lower()]


def source_spec(dtype: np.dtype, nodata: float | None) -> tuple[np.dtype, SourceSpec]:
    """The dtype to hand to the device and the nodata rule gdaldem applies to this input.

    Integer path (GDALGeneric3x3Processing<GInt32>): nodata is used only when it is within 1e-2
    of an integer inside the type's range, then rounded; otherwise gdaldem ignores it.
    Float32 path: the array is read as Float32 (so float64 or int32 DEMs lose precision exactly
    as in gdaldem) and nodata is cast to float; NaN nodata matches NaN cells.
    """
    dtype = np.dtype(dtype)
    if dtype in INTEGER_PATH:
        ctype, lo, hi = INTEGER_PATH[dtype]
        has = nodata is not None
        value = 0
        if has:
            nd = float(nodata)
            if (not math.isnan(nd) and abs(nd - math.floor(nd + 0.5)) < 1e-2
                    and lo <= nd <= hi):
                value = int(math.floor(nd + 0.5))
            else:
                has = False
        return dtype, SourceSpec(ctype, True, has, value, False)
    if dtype.kind not in "biuf":
        raise TerrainInputError(f"DEM dtype {dtype} is not numeric")
    has = nodata is not None
    value = float(np.float32(nodata)) if has else 0.0
    return np.dtype(np.float32), SourceSpec("float", False, has, value,
                                            has and math.isnan(value))


def check_geotransform(geotransform) -> tuple[float, ...]:
    """Six finite numbers with non-zero pixel sizes (gt[1], gt[5])."""
    try:
        gt = tuple(float(v) for v in geotransform)
    except (TypeError, ValueError) as exc:
        raise TerrainInputError(
            f"geotransform must be GDAL's 6 numbers, got {geotransform!r}") from exc
    if len(gt) != 6 or not all(math.isfinite(v) for v in gt):
        raise TerrainInputError(f"geotransform must be 6 finite numbers, got {geotransform!r}")
    if gt[1] == 0 or gt[5] == 0:
        raise TerrainInputError(
            f"geotransform pixel size gt[1]={gt[1]}, gt[5]={gt[5]} must be non-zero")
    return gt


def hillshade_constants(gt, z, scale, azimuth, altitude, alg, combined):
    """(c0..c5, same_res) for the plain or combined hillshade, as GDALCreateHillshadeData."""
    inv_nsres = 1.0 / gt[5]
    inv_ewres = 1.0 / gt[1]
    d2r = math.pi / 180.0
    sin_alt = math.sin(altitude * d2r)
    az = azimuth * d2r
    z_scaled = z / ((2 if alg == "ZevenbergenThorne" else 8) * scale)
    cos_alt_mul_z = math.cos(altitude * d2r) * z_scaled
    cos_az_mul_cos_alt_mul_z = math.cos(az) * cos_alt_mul_z
    sin_az_mul_cos_alt_mul_z = math.sin(az) * cos_alt_mul_z
    square_z = z_scaled * z_scaled
    if combined:
        return (inv_ewres, inv_nsres, sin_alt, cos_az_mul_cos_alt_mul_z,
                sin_az_mul_cos_alt_mul_z, square_z), False
    sin_alt_254 = 254.0 * sin_alt
    cos_254 = 254.0 * cos_az_mul_cos_alt_mul_z
    sin_254 = 254.0 * sin_az_mul_cos_alt_mul_z
    if alg == "Horn" and gt[1] == -gt[5]:
        return (sin_alt_254, sin_254 * inv_ewres, cos_254 * -inv_ewres,
                square_z * inv_ewres * inv_ewres, 0.0, 0.0), True
    return (inv_ewres, inv_nsres, sin_alt_254, cos_254, sin_254, square_z), False


def multidirectional_constants(gt, z, scale, altitude, alg):
    """c0..c5 as GDALCreateHillshadeMultiDirectionalData (azimuth is not used)."""
    d2r = math.pi / 180.0
    z_scaled = z / ((2 if alg == "ZevenbergenThorne" else 8) * scale)
    cos_alt_mul_z = math.cos(altitude * d2r) * z_scaled
    return (1.0 / gt[1], 1.0 / gt[5], 127.0 * math.sin(altitude * d2r),
            127.0 * cos_alt_mul_z, 127.0 * math.cos(225 * d2r) * cos_alt_mul_z,
            z_scaled * z_scaled)


def slope_constants(gt, scale, alg):
    """c0..c2 as GDALCreateSlopeData plus the divisor 8*scale (Horn) or 2*scale (ZT)."""
    return (gt[1], gt[5], (2 if alg == "ZevenbergenThorne" else 8) * scale, 0.0, 0.0, 0.0)
