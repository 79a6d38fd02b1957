"""gpu: OpenCL tile kernels and a tiled raster pipeline."""
