/*
 * Per-segment pixel counts and spectral sums (the statistics the elimination merges by).
 *
 * Build options: SRC_T (an integer pixel type), NBANDS.
 * One work-item per image row walks the row and accumulates runs of equal segment IDs
 * locally (neighbouring pixels are mostly in the same segment), then adds each run to the
 * segment's totals with 32/64-bit atomics: few atomics, no contention to speak of, and exact
 * integer sums (pyshepseg sums in float32). Segment 0 (null) is skipped.
 * Needs cl_khr_int64_base_atomics; the host falls back to numpy bincount without it, and for
 * float images.
 */
#pragma OPENCL EXTENSION cl_khr_int64_base_atomics : enable

static void flush(__global uint *sizes, __global long *sums, uint id, uint n,
                  const long *acc)
{
    if (id == 0 || n == 0)
        return;
    atomic_add(&sizes[id], n);
    for (int b = 0; b < NBANDS; b++)
        atom_add(&sums[(size_t)id * NBANDS + b], acc[b]);
}

__kernel void segment_stats(__global const uint *restrict seg,
                            __global const SRC_T *restrict pixels,
                            __global uint *restrict sizes, __global long *restrict sums,
                            const int rows, const int cols)
{
    const int y = get_global_id(0);
    if (y >= rows)
        return;
    const size_t npix = (size_t)rows * (size_t)cols;
    const size_t row0 = (size_t)y * (size_t)cols;
    uint cur = seg[row0];
    uint n = 0;
    long acc[NBANDS];
    for (int b = 0; b < NBANDS; b++)
        acc[b] = 0;
    for (int x = 0; x < cols; x++) {
        const size_t i = row0 + x;
        const uint s = seg[i];
        if (s != cur) {
            flush(sizes, sums, cur, n, acc);
            cur = s;
            n = 0;
            for (int b = 0; b < NBANDS; b++)
                acc[b] = 0;
        }
        n++;
        for (int b = 0; b < NBANDS; b++)
            acc[b] += (long)pixels[(size_t)b * npix + i];
    }
    flush(sizes, sums, cur, n, acc);
}
