/*
 * Nearest cluster centre per pixel: the labelling step of Shepherd segmentation
 * (pyshepseg's applySpectralClusters, which calls scikit-learn's KMeans.predict).
 *
 * Build options: SRC_T (pixel element type), NBANDS, NCLUSTERS (compile-time so the band and
 * cluster loops unroll), HAS_NODATA, NODATA_IS_NAN, MARK_TIES (1: write -label for near-ties).
 *
 * Distances are squared Euclidean, computed as sum((p - c)^2), which is more accurate than
 * the |p|^2 - 2 p.c + |c|^2 expansion scikit-learn uses. In float32 the two can still disagree
 * on near-ties (6 of 16 M labels on a uint16 scene), so with MARK_TIES the kernel also tracks
 * the runner-up, and when the gap between best and runner-up is within the float32 error
 * bound
 *     2^-20 * (sqrt(d2) * cnorm + (NBANDS + 3) * d2)          (cnorm = max centre norm)
 * it writes -label: refine_labels (double, on devices with cl_khr_fp64) or the host (numpy
 * float64) then decides those pixels again. Ties go to the lowest cluster index, as numpy's
 * argmin does.
 *
 * Each work-item labels VW = 8 consecutive pixels with explicit float8 arithmetic (the last,
 * partial block pixel by pixel). PoCL did not vectorise the one-pixel-per-work-item form of
 * this loop: the explicit vectors halve the CPU time (0.9 s instead of 1.8 s of CPU for
 * 16 M pixels x 60 centres, runner-up tracking included); on GPUs they cost nothing.
 */
#pragma OPENCL FP_CONTRACT OFF

#define VW 8  /* pixels per work-item; the host sizes the range to match */
#define VF float8
#define VI int8
#define CONV_F convert_float8
#define VLOAD vload8
#define VSTORE vstore8

__kernel void nearest_centroid(__global const SRC_T *restrict pixels,
                               __constant float *restrict centroids,
                               __global int *restrict labels, const long npix,
                               const float nodata, const float cnorm)
{
    const long blk = get_global_id(0);
    const long i0 = blk * VW;
    if (i0 >= npix)
        return;
    if (i0 + VW <= npix) {
        VF p[NBANDS];
        VI null = (VI)(0);
        for (int b = 0; b < NBANDS; b++) {
            p[b] = CONV_F(VLOAD(0, pixels + (size_t)b * (size_t)npix + (size_t)i0));
#if HAS_NODATA
#if NODATA_IS_NAN
            null |= isnan(p[b]);
#else
            null |= p[b] == (VF)(nodata);
#endif
#endif
        }
        VF best = (VF)(INFINITY), second = (VF)(INFINITY);
        VI label = (VI)(0);
        for (int k = 0; k < NCLUSTERS; k++) {
            VF d = (VF)(0.0f);
            for (int b = 0; b < NBANDS; b++) {
                const VF t = p[b] - (VF)(centroids[k * NBANDS + b]);
                d += t * t;
            }
            const VI less = d < best;
            second = fmin(second, fmax(best, d));
            best = fmin(best, d);
            label = select(label, (VI)(k + 1), less);
        }
#if MARK_TIES
        const VF tol = 0x1p-20f * (sqrt(second) * cnorm + (NBANDS + 3) * second);
        label = select(label, -label, (second - best) <= tol);
#endif
        label = select(label, (VI)(0), null);
        VSTORE(label, 0, labels + i0);
        return;
    }
    for (long i = i0; i < npix; i++) {
        float p[NBANDS];
        int null = 0;
        for (int b = 0; b < NBANDS; b++) {
            p[b] = (float)pixels[(size_t)b * (size_t)npix + (size_t)i];
#if HAS_NODATA
#if NODATA_IS_NAN
            null |= isnan(p[b]);
#else
            null |= p[b] == nodata;
#endif
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
            second = fmin(second, fmax(best, d));
            label = d < best ? k + 1 : label;
            best = fmin(best, d);
        }
#if MARK_TIES
        const float tol = 0x1p-20f * (sqrt(second) * cnorm + (NBANDS + 3) * second);
        label = second - best <= tol ? -label : label;
#endif
        labels[i] = null ? 0 : label;
    }
}

#ifdef REFINE_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
/* Decide the marked pixels (indices in idx) again in double precision. */
__kernel void refine_labels(__global const SRC_T *restrict pixels,
                            __global const double *restrict centroids,
                            __global int *restrict labels, __global const long *restrict idx,
                            const long nidx, const long npix)
{
    const long j = get_global_id(0);
    if (j >= nidx)
        return;
    const long i = idx[j];
    double best = INFINITY;
    int label = 0;
    for (int k = 0; k < NCLUSTERS; k++) {
        double d = 0.0;
        for (int b = 0; b < NBANDS; b++) {
            const double t = (double)pixels[(size_t)b * (size_t)npix + (size_t)i]
                             - centroids[k * NBANDS + b];
            d += t * t;
        }
        if (d < best) {
            best = d;
            label = k + 1;
        }
    }
    labels[i] = label;
}
#endif
