/*
 * Clumping for Shepherd segmentation: 4-connected flood fill of equal labels, clumps numbered
 * 1, 2, ... in raster order of their first pixel, each clump capped at MAX_CLUMP_SIZE added
 * pixels. Label 0 (null) is never clumped and stays 0.
 *
 * This is pyshepseg's shepseg.clump (numba) step for step, because the cap decides where
 * large uniform regions are cut and any other visiting order would cut them elsewhere: a
 * depth-first search with an explicit stack, neighbours pushed in the order left, up, down,
 * right (pyshepseg walks the 3 x 3 window column by column), a pixel marked when it is pushed,
 * and the search stopped as soon as MAX_CLUMP_SIZE pixels have been added to the seed (pixels
 * already marked stay in the clump; the unmarked rest seeds later clumps).
 *
 * The search is inherently sequential (the cap makes the result depend on the visiting
 * order), so this runs as ONE work-item: on a CPU device it is compiled C, as fast as
 * pyshepseg's numba; the parallelism of a tiled run comes from tiles on different workers.
 */

#ifndef MAX_CLUMP_SIZE
#define MAX_CLUMP_SIZE 10000
#endif

__kernel void clump(__global const int *restrict labels, __global uint *restrict out,
                    __global uint *restrict stack, const int rows, const int cols,
                    __global uint *restrict count)
{
    if (get_global_id(0) != 0)
        return;
    const long npix = (long)rows * cols;
    uint id = 1;
    for (long s = 0; s < npix; s++) {
        const int val = labels[s];
        if (val == 0 || out[s] != 0)
            continue;
        out[s] = id;
        long n = 0;
        int size = 0;
        stack[n++] = (uint)s;
        while (n > 0 && size < MAX_CLUMP_SIZE) {
            const uint q = stack[--n];
            const int qy = (int)(q / (uint)cols), qx = (int)(q - (uint)qy * (uint)cols);
            uint nb[4];
            int m = 0;
            if (qx > 0) nb[m++] = q - 1;              /* left  */
            if (qy > 0) nb[m++] = q - (uint)cols;     /* up    */
            if (qy < rows - 1) nb[m++] = q + (uint)cols; /* down */
            if (qx < cols - 1) nb[m++] = q + 1;       /* right */
            for (int k = 0; k < m; k++) {
                const uint r = nb[k];
                if (labels[r] == val && out[r] == 0) {
                    out[r] = id;
                    size++;
                    stack[n++] = r;
                }
            }
        }
        id++;
    }
    count[0] = id - 1;
}
