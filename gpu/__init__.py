"""gpu: OpenCL tile kernels and a tiled raster pipeline.

Kernels (this package's public API; numpy in, numpy out, results identical to gdaldem 3.6.2
within the tolerances in docs/kernels.md)::

    hillshade(dem, geotransform, ...)   -> uint8, nodata 0
    slope(dem, geotransform, ...)       -> float32, nodata -9999
    aspect(dem, geotransform, ...)      -> float32, nodata -9999
    nearest_centroid(pixels, centroids) -> int32 labels 1..k, 0 = nodata
    device_info()                       -> str

Device selection, build caching and environment variables: gpu/device.py.
"""

from gpu.classify import nearest_centroid
from gpu.device import device_info
from gpu.terrain import aspect, hillshade, slope

__all__ = ["aspect", "device_info", "hillshade", "nearest_centroid", "slope"]
