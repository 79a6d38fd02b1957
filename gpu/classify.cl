/*
 * Nearest cluster centre per pixel: the labelling step of Shepherd segmentation
 * (pyshepseg's applySpectralClusters, which calls scikit-learn's KMeans.predict).
 *
 * Build options: SRC_T (pixel element type), NBANDS, NCLUSTERS (compile-time so the band and
 * cluster loops unroll), HAS_NODATA, NODATA_IS_NAN.
 * Distances are squared Euclidean in float, computed as sum((p - c)^2), which is more
 * accurate than the |p|^2 - 2 p.c + |c|^2 expansion scikit-learn uses; the two can only
 * disagree on near-ties. Ties go to the lowest cluster index, as numpy's argmin does.
 */
#pragma OPENCL FP_CONTRACT OFF

__kernel void nearest_centroid(__global const SRC_T *restrict pixels,
                               __constant float *restrict centroids,
                               __global int *restrict labels, const long npix,
                               const float nodata)
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
    float best = INFINITY;
    int label = 0;
    for (int k = 0; k < NCLUSTERS; k++) {
        float d = 0.0f;
        for (int b = 0; b < NBANDS; b++) {
            const float t = p[b] - centroids[k * NBANDS + b];
            d += t * t;
        }
        if (d < best) {
            best = d;
            label = k + 1;
        }
    }
    labels[i] = label;
}
