/*
 * Terrain kernels that reproduce gdaldem 3.6.2 (apps/gdaldem_lib.cpp): hillshade (plain,
 * combined, multidirectional), slope and aspect, Horn or Zevenbergen-Thorne gradients.
 *
 * One source, specialised at build time by -D options (see gpu/terrain.py, which also derives
 * the constants c0..c5 exactly as gdaldem's GDALCreate*Data functions do):
 *
 *   SRC_T        element type of the DEM as given (float, short, ushort, uchar, char)
 *   SRC_IS_INT   1: gdaldem's integer path (window in int, exact nodata equality)
 *                0: its Float32 path (window in float, ARE_REAL_EQUAL nodata test)
 *   MODE         MODE_HILLSHADE, MODE_COMBINED, MODE_MULTIDIR, MODE_SLOPE, MODE_ASPECT
 *   ALG_ZT       1: Zevenbergen-Thorne, 0: Horn
 *   SAME_RES     1: gdaldem's GDALHillshadeAlg_same_res (gt[1] == -gt[5], plain Horn)
 *   HAS_NODATA, NODATA_IS_NAN, PERCENT
 *   REAL         float or double: precision of the shading/angle arithmetic
 *   REAL_IS_DOUBLE  1 when REAL is double
 *
 * Run-time arguments (uniform branches, so options that only matter at the edges or in one
 * comparison do not multiply the number of programs to compile):
 *   flags        FLAG_COMPUTE_EDGES | FLAG_TRIGONOMETRIC
 *   dst_nodata   output nodata (0 for hillshade, -9999 for slope/aspect, 0 with
 *                -zero_for_flat); aspect also writes it for flat cells, as gdaldem does
 *
 * Two kernels: terrain_interior covers the (nx-2) x (ny-2) cells whose 3x3 window lies inside
 * the raster, with no edge logic so the CPU vectoriser gets straight-line code; terrain_border
 * covers the one-cell frame, where gdaldem writes nodata or (-compute_edges) extrapolates.
 *
 * FP contraction stays at OpenCL's default (on): "#pragma OPENCL FP_CONTRACT OFF" makes PoCL's
 * LLVM refuse to vectorise any kernel that divides, and an FMA only moves results by an ulp.
 * Sums that decide flatness (aspect) have no products, so they round exactly as gdaldem's.
 */
#if defined(cl_khr_fp64)
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

/* Every helper is forced inline: a call left in the kernel body stops PoCL's vectoriser. */
#define INLINE __attribute__((always_inline)) inline

#define MODE_HILLSHADE 1
#define MODE_COMBINED 2
#define MODE_MULTIDIR 3
#define MODE_SLOPE 4
#define MODE_ASPECT 5

#if SRC_IS_INT
typedef int WIN_T;
typedef int NODATA_T;
#else
typedef float WIN_T;
typedef float NODATA_T;
#endif

#if MODE == MODE_SLOPE || MODE == MODE_ASPECT
typedef float OUT_T;
#else
typedef uchar OUT_T;
#endif

#define FLAG_COMPUTE_EDGES 1
#define FLAG_TRIGONOMETRIC 2
#define FLAG_NEVER_SET 0x40000000 /* see GDALHillshadeAlg_same_res below */

#define RAD2DEG ((REAL)57.29577951308232)
#define DEG2RAD ((REAL)0.017453292519943295)
#define INV_SQUARE_OF_HALF_PI ((REAL)0.40528473456935108) /* 1 / ((pi * pi) / 4) */

/* PoCL's sqrt/rsqrt/fabs/copysign builtins are out-of-line calls, and one call in the body
 * stops the work-item loop from being vectorised. Clang's __builtin_* versions lower to LLVM
 * intrinsics (sqrtps and friends), which vectorise; sqrt is correctly rounded either way. */
#if REAL_IS_DOUBLE
#define SQRT(v) __builtin_sqrt(v)
#else
#define SQRT(v) __builtin_sqrtf(v)
#endif
#define RSQRT(v) ((REAL)1 / SQRT(v))
#define FABSF(v) __builtin_fabsf(v)
#define COPYSIGNF(a, b) __builtin_copysignf(a, b)

/* Branch-free single-precision atan / atan2 (Cephes atanf coefficients, max relative error
 * ~2e-7): the library versions are scalar calls on PoCL and made slope and aspect 8x slower
 * than hillshade. Every branch is a select, so the work-group vectoriser keeps SIMD lanes. */
INLINE float atan_f(float v)
{
    const float ax = FABSF(v);
    const bool big = ax > 2.414213562373095f;    /* tan(3 pi / 8) */
    const bool mid = ax > 0.4142135623730950f;   /* tan(pi / 8) */
    const float num = big ? -1.0f : (mid ? ax - 1.0f : ax);
    const float den = big ? ax : (mid ? ax + 1.0f : 1.0f);
    const float xr = num / den;
    const float base = big ? 1.5707963267948966f : (mid ? 0.7853981633974483f : 0.0f);
    const float z = xr * xr;
    const float p = ((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z
                    - 3.33329491539e-1f;
    return COPYSIGNF(base + (p * z * xr + xr), v);
}

INLINE float atan2_f(float y, float x)
{
    const float ay = FABSF(y), ax = FABSF(x);
    const bool swap = ay > ax;
    float r = atan_f((swap ? ax : ay) / (swap ? ay : ax));
    r = swap ? 1.5707963267948966f - r : r;
    r = (x < 0.0f) ? 3.141592653589793f - r : r;
    return COPYSIGNF(r, y);
}


/* acos(c) = atan2(sqrt((1 - c)(1 + c)), c): accurate near |c| = 1, and vectorisable. */
INLINE float acos_f(float c)
{
    return atan2_f(SQRT((1.0f - c) * (1.0f + c)), c);
}

#if REAL_IS_DOUBLE
#define ATAN(v) atan(v)
#define ATAN2(y, x) atan2(y, x)
#define ACOS(v) acos(v)
#else
#define ATAN(v) atan_f(v)
#define ATAN2(y, x) atan2_f(y, x)
#define ACOS(v) acos_f(v)
#endif

/* gdaldem's nodata test: integer path compares exactly; Float32 path uses ARE_REAL_EQUAL
 * (|a - b| < FLT_EPSILON * |a + b| * 2) or isnan when the nodata value is NaN. */
INLINE bool is_nodata(WIN_T v, NODATA_T nd)
{
#if !HAS_NODATA
    return false;
#elif SRC_IS_INT
    return v == nd;
#elif NODATA_IS_NAN
    return v != v; /* isnan() is an out-of-line call on PoCL */
#else
    return v == nd || FABSF(v - nd) < FLT_EPSILON * FABSF(v + nd) * 2.0f;
#endif
}

/* INTERPOL(): linear extrapolation 2a - b used for the missing row/column at raster edges. */
INLINE WIN_T interpol(WIN_T a, WIN_T b, NODATA_T nd)
{
#if HAS_NODATA
    if (is_nodata(a, nd) || is_nodata(b, nd))
        return nd;
#endif
    return 2 * a - b;
}

/* Output conversion as GDALCopyWords does for Float32 -> Byte: add 0.5f, clamp, truncate. */
INLINE OUT_T to_out(float v)
{
#if MODE == MODE_SLOPE || MODE == MODE_ASPECT
    return v;
#else
    /* ternaries, not fmin/fmax: PoCL's builtins are calls that stop the loop vectoriser */
    float r = v + 0.5f;
    r = r > 0.0f ? r : 0.0f; /* also maps NaN to 0, as GDAL does */
    r = r < 255.0f ? r : 255.0f;
    return (uchar)r;
#endif
}

/* ComputeVal(): nodata centre -> nodata; a nodata neighbour -> nodata, or with -compute_edges
 * replaced by the centre value. Returns false when the output is nodata. */
INLINE bool screen_nodata(WIN_T *w, NODATA_T nd, int flags)
{
#if HAS_NODATA
    if (is_nodata(w[4], nd))
        return false;
    for (int k = 0; k < 9; k++) {
        if (is_nodata(w[k], nd)) {
            if (!(flags & FLAG_COMPUTE_EDGES))
                return false;
            w[k] = w[4];
        }
    }
#endif
    return true;
}

/* The per-cell algorithms, on a screened 3x3 window w[0..8] (row-major, w[4] = centre). */
INLINE float compute(const WIN_T *w, REAL c0, REAL c1, REAL c2, REAL c3, REAL c4, REAL c5,
                     int flags, float dst_nodata)
{
#if MODE == MODE_ASPECT
    /* GDALAspectAlg / GDALAspectZevenbergenThorneAlg; c* unused (gdaldem ignores resolution) */
#if ALG_ZT
    const WIN_T dx = w[5] - w[3];
    const WIN_T dy = w[7] - w[1];
#else
    const WIN_T dx = (w[2] + w[5] + w[5] + w[8]) - (w[0] + w[3] + w[3] + w[6]);
    const WIN_T dy = (w[6] + w[7] + w[7] + w[8]) - (w[0] + w[1] + w[1] + w[2]);
#endif
    /* gdaldem's if/else chain written as selects (branches stop the vectoriser) */
    const float a = (float)(ATAN2((REAL)dy, -(REAL)dx) / DEG2RAD);
    const float trig = a < 0.0f ? a + 360.0f : a;
    const float azimuth = a > 90.0f ? 450.0f - a : 90.0f - a;
    float aspect = (flags & FLAG_TRIGONOMETRIC) ? trig : azimuth;
    aspect = ((dx == 0) & (dy == 0)) ? dst_nodata : aspect; /* flat */
    return aspect == 360.0f ? 0.0f : aspect;
#else /* gradient-based modes */

#if MODE == MODE_HILLSHADE && SAME_RES
    /* GDALHillshadeAlg_same_res: the accumulation order gdaldem uses when gt[1] == -gt[5]
     * c0 = sin_alt*254, c1 = sin_az*cos_alt*z*254*inv_res, c2 = cos_az*cos_alt*z*254*-inv_res,
     * c3 = square_z*inv_res^2 */
    /* LLVM's SLP pass pairs w0 - w8 with w1 - w7 (adjacent loads) into a 2-wide vector,
     * which then stops the work-group loop from vectorising 8- or 16-wide. OR-ing w1 with a
     * run-time zero (a flag bit that is never set) hides the pairing and costs one op. */
#if SRC_IS_INT
    const WIN_T w1 = w[1];
#else
    const WIN_T w1 = as_float(as_int(w[1]) | (flags & FLAG_NEVER_SET));
#endif
    WIN_T accX = w[0] - w[8];
    const WIN_T six_minus_two = w[6] - w[2];
    WIN_T accY = accX;
    const WIN_T three_minus_five = w[3] - w[5];
    const WIN_T one_minus_seven = w1 - w[7];
    accX += three_minus_five;
    accY += one_minus_seven;
    accX += three_minus_five;
    accY += one_minus_seven;
    accX += six_minus_two;
    accY -= six_minus_two;
    const REAL x = (REAL)accX;
    const REAL y = (REAL)accY;
    const REAL xx_plus_yy = x * x + y * y;
    const REAL cang_mul_254 = (c0 + (x * c1 + y * c2)) * RSQRT((REAL)1 + c3 * xx_plus_yy);
    return (float)(cang_mul_254 <= (REAL)0 ? (REAL)1 : (REAL)1 + cang_mul_254);
#else

#if ALG_ZT
    const WIN_T sx = w[3] - w[5];
    const WIN_T sy = w[7] - w[1];
#else
    const WIN_T sx = (w[0] + w[3] + w[3] + w[6]) - (w[2] + w[5] + w[5] + w[8]);
    const WIN_T sy = (w[6] + w[7] + w[7] + w[8]) - (w[0] + w[1] + w[1] + w[2]);
#endif

#if MODE == MODE_SLOPE
    /* GDALSlope*Alg: c0 = ewres, c1 = nsres, c2 = 8*scale (Horn) or 2*scale (ZT) */
    const REAL dx = (REAL)sx / c0;
    const REAL dy = (REAL)sy / c1;
    const REAL key = dx * dx + dy * dy;
#if PERCENT
    return (float)(100 * (SQRT(key) / c2));
#else
    return (float)(ATAN(SQRT(key) / c2) * RAD2DEG);
#endif

#elif MODE == MODE_HILLSHADE
    /* GDALHillshadeAlg: c0 = inv_ewres, c1 = inv_nsres, c2 = sin_alt*254,
     * c3 = cos_az*cos_alt*z*254, c4 = sin_az*cos_alt*z*254, c5 = square_z */
    const REAL x = (REAL)sx * c0;
    const REAL y = (REAL)sy * c1;
    const REAL xx_plus_yy = x * x + y * y;
    const REAL cang_mul_254 = (c2 - (y * c3 - x * c4)) * RSQRT((REAL)1 + c5 * xx_plus_yy);
    return (float)(cang_mul_254 <= (REAL)0 ? (REAL)1 : (REAL)1 + cang_mul_254);

#elif MODE == MODE_COMBINED
    /* GDALHillshadeCombinedAlg: c0 = inv_ewres, c1 = inv_nsres, c2 = sin_alt,
     * c3 = cos_az*cos_alt*z, c4 = sin_az*cos_alt*z, c5 = square_z */
    const REAL x = (REAL)sx * c0;
    const REAL y = (REAL)sy * c1;
    const REAL xx_plus_yy = x * x + y * y;
    const REAL slope = xx_plus_yy * c5;
    const REAL cos_ang = (c2 - (y * c3 - x * c4)) * RSQRT((REAL)1 + slope);
    REAL c = cos_ang > (REAL)1 ? (REAL)1 : cos_ang;
    c = c < (REAL)-1 ? (REAL)-1 : c;
    REAL cang = ACOS(c);
    cang = (REAL)1 - cang * ATAN(SQRT(slope)) * INV_SQUARE_OF_HALF_PI;
    return cang <= (REAL)0 ? 1.0f : (float)((REAL)1 + (REAL)254 * cang);

#elif MODE == MODE_MULTIDIR
    /* GDALHillshadeMultiDirectionalAlg: c0 = inv_ewres, c1 = inv_nsres, c2 = sin_alt*127,
     * c3 = cos_alt*z*127, c4 = cos(225 deg)*cos_alt*z*127, c5 = square_z */
    const REAL x = (REAL)sx * c0;
    const REAL y = (REAL)sy * c1;
    const REAL xx = x * x;
    const REAL yy = y * y;
    const REAL xx_plus_yy = xx + yy;
    if (xx_plus_yy == (REAL)0)
        return (float)((REAL)1 + (REAL)2 * c2);
    REAL val225 = c2 + (x - y) * c4;
    val225 = val225 <= (REAL)0 ? (REAL)0 : val225;
    REAL val270 = c2 - x * c3;
    val270 = val270 <= (REAL)0 ? (REAL)0 : val270;
    REAL val315 = c2 + (x + y) * c4;
    val315 = val315 <= (REAL)0 ? (REAL)0 : val315;
    REAL val360 = c2 - y * c3;
    val360 = val360 <= (REAL)0 ? (REAL)0 : val360;
    const REAL weight_225 = (REAL)0.5 * xx_plus_yy - x * y;
    const REAL weight_270 = xx;
    const REAL weight_315 = xx_plus_yy - weight_225;
    const REAL weight_360 = yy;
    const REAL cang_mul_127 =
        ((weight_225 * val225 + weight_270 * val270 + weight_315 * val315 +
          weight_360 * val360) / xx_plus_yy) * RSQRT((REAL)1 + c5 * xx_plus_yy);
    return (float)((REAL)1 + cang_mul_127);
#endif
#endif /* SAME_RES */
#endif /* MODE */
}

#define AT(row, col) ((WIN_T)src[(size_t)(row) * (size_t)nx + (size_t)(col)])

__kernel void terrain_interior(__global const SRC_T *restrict src, __global OUT_T *restrict dst,
                               const int nx, const int ny, const NODATA_T nd,
                               const int flags, const float dst_nodata,
                               const REAL c0, const REAL c1, const REAL c2,
                               const REAL c3, const REAL c4, const REAL c5)
{
    const int x = (int)get_global_id(0) + 1;
    const int y = (int)get_global_id(1) + 1;
    if (x >= nx - 1 || y >= ny - 1)
        return;
    const size_t row = (size_t)y * (size_t)nx + (size_t)x;
    __global const SRC_T *up = src + row - (size_t)nx;
    __global const SRC_T *mid = src + row;
    __global const SRC_T *down = src + row + (size_t)nx;
    WIN_T w[9] = {(WIN_T)up[-1], (WIN_T)up[0], (WIN_T)up[1],
                  (WIN_T)mid[-1], (WIN_T)mid[0], (WIN_T)mid[1],
                  (WIN_T)down[-1], (WIN_T)down[0], (WIN_T)down[1]};
    float v;
    if (screen_nodata(w, nd, flags))
        v = compute(w, c0, c1, c2, c3, c4, c5, flags, dst_nodata);
    else
        v = dst_nodata;
    dst[row] = to_out(v);
}

/* The one-cell frame: index i walks the top row, the bottom row, then the left and right
 * columns of the rows in between (2*nx + 2*(ny-2) cells when ny >= 2). */
__kernel void terrain_border(__global const SRC_T *restrict src, __global OUT_T *restrict dst,
                             const int nx, const int ny, const NODATA_T nd,
                             const int flags, const float dst_nodata,
                             const REAL c0, const REAL c1, const REAL c2,
                             const REAL c3, const REAL c4, const REAL c5)
{
    const int i = (int)get_global_id(0);
    int x, y;
    if (ny == 1) {
        if (i >= nx)
            return;
        x = i;
        y = 0;
    } else if (i < 2 * nx) {
        x = i % nx;
        y = i < nx ? 0 : ny - 1;
    } else {
        const int k = i - 2 * nx;
        if (k >= 2 * (ny - 2))
            return;
        y = 1 + k / 2;
        x = (k % 2) ? nx - 1 : 0;
    }
    const size_t out = (size_t)y * (size_t)nx + (size_t)x;

    if (!(flags & FLAG_COMPUTE_EDGES) || nx < 2 || ny < 2) {
        dst[out] = to_out(dst_nodata);
        return;
    }
    WIN_T w[9];
    if (y == 0 || y == ny - 1) {
        /* First and last rows: columns clamp (jmin/jmax), the missing row is extrapolated. */
        const int jmin = x == 0 ? x : x - 1;
        const int jmax = x == nx - 1 ? x : x + 1;
        if (y == 0) {
            w[0] = interpol(AT(0, jmin), AT(1, jmin), nd);
            w[1] = interpol(AT(0, x), AT(1, x), nd);
            w[2] = interpol(AT(0, jmax), AT(1, jmax), nd);
            w[3] = AT(0, jmin);
            w[4] = AT(0, x);
            w[5] = AT(0, jmax);
            w[6] = AT(1, jmin);
            w[7] = AT(1, x);
            w[8] = AT(1, jmax);
        } else {
            w[0] = AT(y - 1, jmin);
            w[1] = AT(y - 1, x);
            w[2] = AT(y - 1, jmax);
            w[3] = AT(y, jmin);
            w[4] = AT(y, x);
            w[5] = AT(y, jmax);
            w[6] = interpol(AT(y, jmin), AT(y - 1, jmin), nd);
            w[7] = interpol(AT(y, x), AT(y - 1, x), nd);
            w[8] = interpol(AT(y, jmax), AT(y - 1, jmax), nd);
        }
    } else if (x == 0) {
        /* Left column of a middle row: the missing column is extrapolated from the right. */
        for (int r = 0; r < 3; r++) {
            w[3 * r] = interpol(AT(y - 1 + r, 0), AT(y - 1 + r, 1), nd);
            w[3 * r + 1] = AT(y - 1 + r, 0);
            w[3 * r + 2] = AT(y - 1 + r, 1);
        }
    } else {
        for (int r = 0; r < 3; r++) {
            w[3 * r] = AT(y - 1 + r, x - 1);
            w[3 * r + 1] = AT(y - 1 + r, x);
            w[3 * r + 2] = interpol(AT(y - 1 + r, x), AT(y - 1 + r, x - 1), nd);
        }
    }
    float v;
    if (screen_nodata(w, nd, flags))
        v = compute(w, c0, c1, c2, c3, c4, c5, flags, dst_nodata);
    else
        v = dst_nodata;
    dst[out] = to_out(v);
}
