"""Tile grid over a raster: core windows that partition it, read windows that add a halo.

Why this works for the 3x3 terrain kernels: each output pixel depends only on its 3x3
neighbourhood, and the kernels apply gdaldem's edge rule at the border of the array they are
given. A tile's *read* window is its *core* grown by the kernel radius (the halo) and clipped
at the image. Where the read window meets the true image border, the array border *is* the
image border, so the edge rule fires exactly where the untiled run fires it; everywhere else
the halo supplies the real neighbours. Running the kernel on the read window and keeping the
core therefore reproduces the untiled output bit for bit.

Windows use GDAL's (xoff, yoff, xsize, ysize) order: x is the column, y the row.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Kernel radius of the 3x3 terrain kernels (hillshade, slope, aspect).
TERRAIN_HALO = 1


@dataclass(frozen=True)
class Window:
    """A pixel rectangle in GDAL order: column offset, row offset, width, height."""

    xoff: int
    yoff: int
    xsize: int
    ysize: int

    @property
    def xend(self) -> int:
        return self.xoff + self.xsize

    @property
    def yend(self) -> int:
        return self.yoff + self.ysize

    @property
    def slices(self) -> tuple[slice, slice]:
        """numpy (row, column) slices of this window in the full image."""
        return slice(self.yoff, self.yend), slice(self.xoff, self.xend)

    def relative_to(self, outer: Window) -> Window:
        """This window in the pixel coordinates of `outer` (which must contain it)."""
        if not (
            outer.xoff <= self.xoff
            and outer.yoff <= self.yoff
            and self.xend <= outer.xend
            and self.yend <= outer.yend
        ):
            raise ValueError(f"{self} is not inside {outer}")
        return Window(self.xoff - outer.xoff, self.yoff - outer.yoff, self.xsize, self.ysize)

    def grown(self, halo: int, width: int, height: int) -> Window:
        """This window grown by `halo` pixels on every side, clipped to a width x height image.

        Clipping (not padding) is what makes tiles equal the untiled run: where the grown
        window meets the image border, the array border is the image border.
        """
        if halo < 0:
            raise ValueError(f"halo must be >= 0, got {halo}")
        x0, y0 = max(0, self.xoff - halo), max(0, self.yoff - halo)
        x1, y1 = min(width, self.xend + halo), min(height, self.yend + halo)
        return Window(x0, y0, x1 - x0, y1 - y0)

    def __str__(self) -> str:
        return f"x {self.xoff}:{self.xend}, y {self.yoff}:{self.yend}"


@dataclass(frozen=True)
class Tile:
    """One unit of work: the core it produces and the window it must read to produce it."""

    index: int
    row: int
    col: int
    core: Window
    read: Window

    @property
    def core_in_read(self) -> Window:
        """Where the core lies inside the read window's array."""
        return self.core.relative_to(self.read)

    @property
    def name(self) -> str:
        """A stable, filename-safe label: 'r0003_c0012'."""
        return f"r{self.row:04d}_c{self.col:04d}"

    def __str__(self) -> str:
        return f"tile {self.index} ({self.name}; core {self.core})"


def tile_grid(width: int, height: int, tile_size: int | tuple[int, int], halo: int = TERRAIN_HALO):
    """Tiles covering a width x height raster, row-major.

    tile_size is the core size (an int, or (xsize, ysize)); the last column and row of tiles
    take the remainder, however thin. halo is the kernel radius.
    """
    tx, ty = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    if width < 1 or height < 1:
        raise ValueError(f"raster size must be positive, got {width} x {height}")
    if tx < 1 or ty < 1:
        raise ValueError(f"tile size must be positive, got {tile_size!r}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    tiles = []
    for row, yoff in enumerate(range(0, height, ty)):
        for col, xoff in enumerate(range(0, width, tx)):
            core = Window(xoff, yoff, min(tx, width - xoff), min(ty, height - yoff))
            tiles.append(Tile(len(tiles), row, col, core, core.grown(halo, width, height)))
    return tiles
