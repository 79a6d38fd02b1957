"""Tile grid geometry: cores partition the raster, read windows add a clipped halo."""

import numpy as np
import pytest

from gpu.tiling import Tile, Window, tile_grid


def _coverage(tiles, width, height):
    hits = np.zeros((height, width), dtype=int)
    for t in tiles:
        hits[t.core.slices] += 1
    return hits


@pytest.mark.parametrize(
    "width,height,size",
    [(1, 1, 4), (7, 5, 3), (10, 10, 5), (11, 13, 5), (257, 129, 64), (65, 64, 64), (5, 9, (2, 4))],
)
def test_cores_partition_the_raster(width, height, size):
    tiles = tile_grid(width, height, size)
    assert (_coverage(tiles, width, height) == 1).all()
    assert [t.index for t in tiles] == list(range(len(tiles)))


def test_remainders_can_be_one_pixel_thin():
    tiles = tile_grid(11, 6, 5)
    assert [(t.core.xsize, t.core.ysize) for t in tiles] == [
        (5, 5), (5, 5), (1, 5), (5, 1), (5, 1), (1, 1)
    ]
    assert (tiles[2].row, tiles[2].col, tiles[2].name) == (0, 2, "r0000_c0002")


def test_read_window_is_core_plus_halo_clipped_at_the_image():
    tiles = {t.name: t for t in tile_grid(10, 10, 4, halo=1)}
    assert tiles["r0000_c0000"].read == Window(0, 0, 5, 5)
    assert tiles["r0001_c0001"].read == Window(3, 3, 6, 6)
    assert tiles["r0002_c0002"].read == Window(7, 7, 3, 3)
    assert tiles["r0001_c0001"].core_in_read == Window(1, 1, 4, 4)
    assert tiles["r0000_c0000"].core_in_read == Window(0, 0, 4, 4)


def test_halo_zero_reads_only_the_core():
    for t in tile_grid(9, 7, 4, halo=0):
        assert t.read == t.core


def test_core_in_read_slices_recover_the_core():
    image = np.arange(13 * 17).reshape(13, 17)
    for t in tile_grid(17, 13, 5, halo=2):
        read = image[t.read.slices]
        assert (read[t.core_in_read.slices] == image[t.core.slices]).all()


@pytest.mark.parametrize("args", [(0, 5, 4), (5, 5, 0), (5, 5, (4, 0))])
def test_invalid_sizes_are_rejected(args):
    with pytest.raises(ValueError):
        tile_grid(*args)


def test_window_outside_is_an_error():
    with pytest.raises(ValueError):
        Window(0, 0, 5, 5).relative_to(Window(1, 1, 5, 5))


def test_tile_str_names_it():
    t = Tile(3, 1, 2, Window(8, 4, 4, 4), Window(7, 3, 6, 6))
    assert str(t) == "tile 3 (r0001_c0002; core x 8:12, y 4:8)"
