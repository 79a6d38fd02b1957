"""A realistic multi-band sample image for segmentation tests, fixtures and the example.

Why not noise: Shepherd segmentation's behaviour (large uniform regions cut by the clump cap,
texture merged away by elimination) only shows on real scenes. This takes matplotlib's
``grace_hopper.jpg`` (a 600 x 512 RGB photograph shipped with matplotlib), resamples it to the
requested size (bilinear), scales it to 16 bits and adds seeded sensor-like noise, then
punches generated nodata into it: a disc, rectangles, scattered single pixels, and holes
that are null in only one band (a pixel null in any band is null).

The output is deterministic for a given (rows, cols, seed, numpy version); the committed
pyshepseg fixtures store the generated input too, so they never depend on regenerating it.
"""

from __future__ import annotations

import numpy as np

#: The nodata value of the sample: never produced by the scaled data (max 250*255+249).
SAMPLE_NODATA = 65535


def sample_image(rows: int = 512, cols: int = 512, *, seed: int = 0,
                 nodata: bool = True) -> np.ndarray:
    """(3, rows, cols) uint16 image from grace_hopper.jpg with noise and (optionally) nulls."""
    from matplotlib import cbook
    from PIL import Image
    from scipy import ndimage

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        rgb = np.asarray(Image.open(f), dtype=np.float32)  # (600, 512, 3)
    if (rows, cols) == (512, 512):
        bands = rgb[44:556].transpose(2, 0, 1)  # a centred crop, no resampling
    else:
        zoom = (rows / rgb.shape[0], cols / rgb.shape[1])
        bands = np.stack([ndimage.zoom(rgb[..., b], zoom, order=1, grid_mode=True,
                                       mode="nearest") for b in range(3)])
        bands = bands[:, :rows, :cols]
    rng = np.random.default_rng(seed)
    img = np.clip(np.rint(bands), 0, 255).astype(np.uint16) * 250
    img += rng.integers(0, 250, img.shape, dtype=np.uint16)
    if nodata:
        _punch_nodata(img, rng)
    return img


def _punch_nodata(img: np.ndarray, rng: np.random.Generator) -> None:
    _, rows, cols = img.shape
    yy, xx = np.ogrid[:rows, :cols]
    r = 0.12 * min(rows, cols)
    disc = (yy - 0.7 * rows) ** 2 + (xx - 0.25 * cols) ** 2 < r * r
    img[:, disc] = SAMPLE_NODATA
    for _ in range(4):  # rectangles, one touching an edge
        h, w = (int(rng.integers(4, max(5, rows // 8))), int(rng.integers(4, max(5, cols // 8))))
        y, x = int(rng.integers(0, rows - h)), int(rng.integers(0, cols - w))
        img[:, y:y + h, x:x + w] = SAMPLE_NODATA
    img[:, : max(1, rows // 64), : cols // 3] = SAMPLE_NODATA
    scattered = rng.random((rows, cols)) < 0.002
    img[:, scattered] = SAMPLE_NODATA
    one_band = rng.random((rows, cols)) < 0.002  # null in a single band only
    img[1, one_band] = SAMPLE_NODATA
