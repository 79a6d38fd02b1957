"""gpu: OpenCL tile kernels and a tiled raster pipeline.

Kernels (this package's public API; numpy in, numpy out, results identical to gdaldem 3.6.2
within the tolerances in docs/kernels.md)::

    hillshade(dem, geotransform, ...)   -> uint8, nodata 0
    slope(dem, geotransform, ...)       -> float32, nodata -9999
    aspect(dem, geotransform, ...)      -> float32, nodata -9999
    nearest_centroid(pixels, centroids) -> int32 labels 1..k, 0 = nodata
    device_info()                       -> str

Tiled apply (gpu/applier.py): a user function over blocks of aligned rasters, on any
executor, the workers writing COG tiles and the client a VRT mosaic (docs/kernels.md)::

    apply(executor, function, {name: Input(path, halo=1)}, {name: Output("x.vrt")}) -> summary

Device selection, build caching and environment variables: gpu/device.py.
"""

from gpu.classify import nearest_centroid
from gpu.device import device_info
from gpu.terrain import aspect, hillshade, slope

__all__ = ["Block", "Input", "Output", "apply", "aspect", "device_info", "hillshade",
           "nearest_centroid", "slope"]

#: Names served lazily from gpu.applier: it needs GDAL (the `gdal` extra), which the kernels
#: alone do not, so `import gpu` keeps working without it.
_APPLIER_NAMES = frozenset({"Block", "Input", "Output", "apply"})


def __getattr__(name):
    if name in _APPLIER_NAMES:
        from gpu import applier

        return getattr(applier, name)
    raise AttributeError(f"module 'gpu' has no attribute {name!r}")

