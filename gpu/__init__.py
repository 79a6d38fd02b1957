"""gpu: OpenCL tile kernels and a tiled raster pipeline.

Kernels (this package's public API; numpy in, numpy out, results identical to gdaldem 3.6.2
within the tolerances in docs/kernels.md)::

    hillshade(dem, geotransform, ...)   -> uint8, nodata 0
    slope(dem, geotransform, ...)       -> float32, nodata -9999
    aspect(dem, geotransform, ...)      -> float32, nodata -9999
    nearest_centroid(pixels, centroids) -> int32 labels 1..k, 0 = nodata
    segment(image, centres=None, ...)   -> Segmentation (uint32 segments, 0 = null; centres)
    segment_raster(executor, src, dst)  -> tiled segmentation of a raster through any executor
    device_info()                       -> str

Device selection, build caching and environment variables: gpu/device.py.
"""

from gpu.classify import nearest_centroid
from gpu.device import device_info
from gpu.segmentation import Segmentation, SegmentInputError, segment
from gpu.terrain import aspect, hillshade, slope


def __getattr__(name):
    # The tiled segmentation needs GDAL's bindings (the gdal extra): load it only when asked.
    if name == "segment_raster":
        from gpu.segment_tiled import segment_raster

        return segment_raster
    raise AttributeError(f"module 'gpu' has no attribute {name!r}")


__all__ = ["Segmentation", "SegmentInputError", "aspect", "device_info", "hillshade",
           "nearest_centroid", "segment", "segment_raster", "slope"]
