/*
 * Nearest cluster centre per pixel: the labelling step of Shepherd segmentation
 * (pyshepseg's applySpectralClusters, which calls scikit-learn's KMeans.predict).
 *
 * Build options: SRC_T (pixel element type), NBANDS, NCLUSTERS (compile-time so the band and
 * cluster loops unroll), HAS_NODATA, NODATA_IS_NAN, REFINE (0: float32 only; 1: near-ties
 * re-decided in double here; 2: near-ties marked for the host, for devices without fp64).
 *
 * Distances are squared Euclidean, computed as sum((p - c)^2), which is more accurate than
 * the |p|^2 - 2 p.c + |c|^2 expansion scikit-learn uses. In float32 the two can disagree on
 * near-ties (6 of 16 M labels on a uint16 scene), so the float32 pass also tracks the
 * runner-up: when the gap between best and runner-up is within the float32 error bound
 *     2^-20 * (sqrt(d2) * CNORM + (NBANDS + 3) * d2)        (CNORM = max centre norm)
 * the pixel is decided again in double (REFINE 1) or written as -label (REFINE 2) so that the
 * host redoes it in float64. Ties go to the lowest cluster index, as numpy's argmin does.
 */
#pragma OPENCL FP_CONTRACT OFF
#if REFINE == 1
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

__kernel void nearest_centroid(__global const SRC_T *restrict pixels,
                               __constant float *restrict centroids,
                               __global int *restrict labels, const long npix,
                               const float nodata,
                               __global const void *restrict centroids64_any,
                               const float cnorm)
{
    const long i = get_global_id(0);
    if (i >= npix)
        return;
    float p[NBANDS];
    for (int b = 0; b < NBANDS; b++) {
        p[b] = (float)pixels[(size_t)b * (size_t)npix + (size_t)i];
#if HAS_NODATA
#if NODATA_IS_NAN
        if (isnan(p[b])) {
#else
        if (p[b] == nodata) {
#endif
            labels[i] = 0;
            return;
        }
#endif
    }
    float best = INFINITY, second = INFINITY;
    int label = 0;
    for (int k = 0; k < NCLUSTERS; k++) {
        float d = 0.0f;
        for (int b = 0; b < NBANDS; b++) {
            const float t = p[b] - centroids[k * NBANDS + b];
            d += t * t;
        }
        if (d < best) {
            second = best;
            best = d;
            label = k + 1;
        } else if (d < second) {
            second = d;
        }
    }
#if REFINE
    const float tol = 0x1p-20f * (sqrt(second) * cnorm + (NBANDS + 3) * second);
    if (second - best <= tol) {
#if REFINE == 1
        __global const double *centroids64 = (__global const double *)centroids64_any;
        double bestd = INFINITY;
        for (int k = 0; k < NCLUSTERS; k++) {
            double d = 0.0;
            for (int b = 0; b < NBANDS; b++) {
                const double t = (double)pixels[(size_t)b * (size_t)npix + (size_t)i]
                                 - centroids64[k * NBANDS + b];
                d += t * t;
            }
            if (d < bestd) {
                bestd = d;
                label = k + 1;
            }
        }
#else
        label = -label;
#endif
    }
#endif
    labels[i] = label;
}
