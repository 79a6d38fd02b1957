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

Tiled apply (gpu/applier.py): a user function over blocks of aligned rasters, on any
executor, the workers writing COG tiles and the client a VRT mosaic (docs/kernels.md)::

    apply(executor, function, {name: Input(path, halo=1)}, {name: Output("x.vrt")}) -> summary

Device selection, build caching and environment variables: gpu/device.py.
"""

from gpu.classify import nearest_centroid
from gpu.device import device_info
from gpu.segmentation import Segmentation, SegmentInputError, segment
from gpu.terrain import aspect, hillshade, slope

__all__ = ["Block", "Input", "Output", "Segmentation", "SegmentInputError", "apply", "aspect",
           "device_info", "hillshade", "nearest_centroid", "segment", "segment_raster", "slope"]

#: Names served lazily: the tiled apply and the tiled segmentation need GDAL's bindings (the
#: `gdal` extra), which the kernels alone do not, so `import gpu` keeps working without them.
_LAZY = {"Block": "gpu.applier", "Input": "gpu.applier", "Output": "gpu.applier",
         "apply": "gpu.applier", "segment_raster": "gpu.segment_tiled"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'gpu' has no attribute {name!r}")
