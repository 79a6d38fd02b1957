"""The output layout of the tiled apply: COG tiles, a VRT mosaic over them, an optional COG.

    <name>.vrt               the mosaic: one raster for GDAL, QGIS, rasterio (written last,
                             by a worker task, from the run's metadata: no tile is opened)
    <name>.tiles/r0000_c0000.tif, ...   one Cloud Optimized GeoTIFF per block (by workers)
    <name>.tif               optional: one COG assembled from the mosaic by a worker task

Why a hand-written VRT and not gdal.BuildVRT: BuildVRT opens every tile to learn its size,
type and georeferencing (on S3 a request per tile), while the run already knows all of it:
the block grid, the output's type, bands and nodata, the CRS. Each source is
a SimpleSource with its SourceProperties, so readers do not open a tile until they need its
pixels. Source paths are relative to the VRT, so the whole output can be moved or copied
(locally or between buckets) as it is.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from osgeo import gdal, osr

from . import gdal_io
from .tiling import Window

gdal.UseExceptions()

#: COG options of the block tiles. DEFLATE (readable by every GDAL build, unlike ZSTD) at
#: level 1 with the predictor: most of the size gain at a fraction of level 6's time. No
#: overviews: on a 1024 x 1024 Byte tile they quadrupled the write (5 -> 21 ms), more than
#: the hillshade kernel costs; build them on the mosaic when wanted (gdaladdo -ro x.vrt) or
#: ask for the assembled COG, which has them.
TILE_CREATION_OPTIONS = ("COMPRESS=DEFLATE", "LEVEL=1", "PREDICTOR=YES", "BLOCKSIZE=512",
                         "OVERVIEWS=NONE", "BIGTIFF=IF_SAFER")

#: The assembled COG: the same compression, and overviews for viewers. No NUM_THREADS:
#: it starts GDAL's process-wide thread pool, and a process forked after that (a
#: ProcessPoolExecutor worker on Linux) inherits the pool without its threads and hangs at
#: its first multithreaded write. Pass NUM_THREADS=ALL_CPUS where workers are not forked.
COG_CREATION_OPTIONS = ("COMPRESS=DEFLATE", "LEVEL=1", "PREDICTOR=YES", "BLOCKSIZE=512",
                        "OVERVIEWS=AUTO", "BIGTIFF=IF_SAFER")


@dataclass(frozen=True)
class Layout:
    """Where one output's files go (GDAL paths: local or /vsis3/...)."""

    vrt: str
    tiles: str  # directory or prefix of the block tiles
    cog: str | None  # the assembled COG, when asked for
    scratch: str | None  # a directory to remove once the COG is assembled (tiles + VRT)

    def tile(self, name: str) -> str:
        return gdal_io.join(self.tiles, f"{name}.tif")


def layout_for(path: str) -> Layout:
    """The layout for an output path: `x.vrt` keeps tiles and mosaic; `x.tif` gets one COG,
    its tiles and mosaic going to a scratch directory beside it that is removed afterwards."""
    if not gdal_io.is_virtual(path):
        path = os.path.abspath(path)
    stem, ext = os.path.splitext(path)
    ext = ext.lower()
    if ext == ".vrt":
        return Layout(vrt=path, tiles=f"{stem}.tiles", cog=None, scratch=None)
    if ext in (".tif", ".tiff"):
        directory, base = os.path.split(path)
        scratch = gdal_io.join(directory, f".{base}.{os.urandom(4).hex()}.parts")
        return Layout(vrt=gdal_io.join(scratch, "mosaic.vrt"),
                      tiles=gdal_io.join(scratch, "mosaic.tiles"), cog=path, scratch=scratch)
    raise ValueError(
        f"output {path!r} must end in .vrt (COG tiles plus a VRT mosaic) or .tif (one COG "
        f"assembled by a worker)"
    )


@dataclass(frozen=True)
class MosaicSource:
    """One block tile as the mosaic sees it."""

    name: str  # file name under the tiles directory, without .tif
    window: Window  # where the tile lies in the mosaic


def vrt_xml(vrt: str, tiles: str, *, width: int, height: int,
            geotransform: Sequence[float] | None, projection: str, data_type: int, bands: int,
            nodata: float | None, sources: Sequence[MosaicSource],
            block_size: int = 512) -> bytes:
    """The VRT document of a mosaic of COG tiles, from metadata only.

    Formatted as text rather than built with ElementTree: a 32768 x 32768 mosaic has 1024
    sources per band, and the tree cost ~10x more than the strings.
    """
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if projection:
        srs = osr.SpatialReference()
        srs.ImportFromWkt(projection)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        mapping = ",".join(str(i) for i in srs.GetDataAxisToSRSAxisMapping())
        lines.append(f'  <SRS dataAxisToSRSAxisMapping="{mapping}">{escape(projection)}</SRS>')
    if geotransform is not None:
        gt = ", ".join(repr(float(v)) for v in geotransform)
        lines.append(f"  <GeoTransform>{gt}</GeoTransform>")
    type_name = gdal.GetDataTypeName(data_type)
    tiles_rel = escape(_relative(tiles, vrt))
    for band in range(1, bands + 1):
        lines.append(f'  <VRTRasterBand dataType="{type_name}" band="{band}">')
        if nodata is not None:
            lines.append(f"    <NoDataValue>{float(nodata)!r}</NoDataValue>")
        for src in sources:
            w = src.window
            bx, by = min(block_size, w.xsize), min(block_size, w.ysize)
            lines.append(
                f'    <SimpleSource>'
                f'<SourceFilename relativeToVRT="1">{tiles_rel}/{escape(src.name)}.tif'
                f'</SourceFilename><SourceBand>{band}</SourceBand>'
                f'<SourceProperties RasterXSize="{w.xsize}" RasterYSize="{w.ysize}" '
                f'DataType="{type_name}" BlockXSize="{bx}" BlockYSize="{by}"/>'
                f'<SrcRect xOff="0" yOff="0" xSize="{w.xsize}" ySize="{w.ysize}"/>'
                f'<DstRect xOff="{w.xoff}" yOff="{w.yoff}" xSize="{w.xsize}" '
                f'ySize="{w.ysize}"/></SimpleSource>')
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>\n")
    return "\n".join(lines).encode("utf-8")


def _relative(tiles: str, vrt: str) -> str:
    """The tiles directory relative to the VRT's directory (they are siblings by layout)."""
    vrt_dir = os.path.dirname(vrt.rstrip("/"))
    if not tiles.startswith(vrt_dir + "/"):
        raise ValueError(f"tiles {tiles} are not under the VRT's directory {vrt_dir}")
    return tiles[len(vrt_dir) + 1:]


def assemble_cog(vrt: str, cog: str, creation_options: Sequence[str] = COG_CREATION_OPTIONS,
                 remove: str | None = None) -> float:
    """Worker task: translate a mosaic into one COG at `cog`; then remove `remove` (the
    scratch directory of tiles and mosaic). Returns the seconds it took.

    The COG is written to a temporary file beside a local destination and renamed into place
    (readers never see half a file), or to a local temporary file uploaded in one sequential
    copy for /vsis3/ (GTiff needs random writes).
    """
    t0 = time.perf_counter()
    with gdal_io.s3_config():
        if gdal_io.is_virtual(cog):
            fd, tmp = tempfile.mkstemp(suffix=".tif")
        else:
            fd, tmp = tempfile.mkstemp(suffix=".tif", prefix=f".{os.path.basename(cog)}.",
                                       dir=os.path.dirname(cog))
        os.close(fd)
        try:
            gdal.Translate(tmp, vrt, format="COG", creationOptions=list(creation_options))
            if gdal_io.is_virtual(cog):
                gdal_io.copy_file(tmp, cog)
            else:
                os.replace(tmp, cog)
        finally:
            gdal_io.remove(tmp)
        if remove:
            gdal_io.remove_tree(remove)
    return time.perf_counter() - t0
