"""gpu.nearest_centroid against scikit-learn's KMeans.predict (the labelling step of Shepherd
segmentation, as pyshepseg does it: labels = predict + 1, 0 where any band is null).

Target: at most 1 mismatch per million pixels (near-ties decided by float32 rounding).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyopencl")
cluster = pytest.importorskip("sklearn.cluster")

import gpu  # noqa: E402
from gpu.classify import ClassifyInputError  # noqa: E402

MAX_MISMATCH_PER_PIXEL = 1e-6


def _dem_bands() -> np.ndarray:
    """Four realistic bands from matplotlib's jacksboro DEM: elevation, two gradients and a
    smoothed texture, tiled to just over a million pixels."""
    from matplotlib import cbook

    z = cbook.get_sample_data("jacksboro_fault_dem.npz")["elevation"].astype(np.float32)
    gy, gx = np.gradient(z)
    texture = np.abs(z - np.roll(z, 3, axis=0)) + np.abs(z - np.roll(z, 3, axis=1))
    bands = np.stack([z, 40 * gx, 40 * gy, 10 * texture]).astype(np.float32)
    return np.tile(bands, (1, 3, 3))  # (4, 1032, 1209)


def _mixtures(rng) -> np.ndarray:
    """Six bands drawn from a mixture of 12 Gaussian classes, 1000 x 1000 pixels."""
    k, bands, n = 12, 6, 1_000_000
    means = rng.uniform(0, 1000, (k, bands))
    which = rng.integers(0, k, n)
    pix = means[which] + rng.normal(0, 60, (n, bands))
    return pix.T.reshape(bands, 1000, 1000).astype(np.float32)


def _fit_predict(pixels: np.ndarray, k: int, nodata=None, seed=0):
    """Reference labels: KMeans fitted on a sample of valid pixels, predict on all, +1."""
    bands = pixels.shape[0]
    flat = pixels.reshape(bands, -1).T
    valid = np.ones(flat.shape[0], bool)
    if nodata is not None:
        valid = ~(np.isnan(flat) if np.isnan(nodata) else flat == nodata).any(axis=1)
    rng = np.random.default_rng(seed)
    sample = flat[valid][rng.choice(valid.sum(), 20000, replace=False)]
    km = cluster.KMeans(n_clusters=k, n_init=1, random_state=seed).fit(sample.astype(np.float64))
    ref = np.zeros(flat.shape[0], np.int32)
    ref[valid] = km.predict(flat[valid].astype(np.float64)) + 1
    return km.cluster_centers_, ref.reshape(pixels.shape[1:])


def _assert_labels_match(got, ref):
    assert got.dtype == np.int32 and got.shape == ref.shape
    np.testing.assert_array_equal(got == 0, ref == 0, err_msg="nodata masks differ")
    mismatches = int(np.count_nonzero(got != ref))
    assert mismatches <= MAX_MISMATCH_PER_PIXEL * got.size, (
        f"{mismatches} of {got.size} labels differ from KMeans.predict + 1")


@pytest.fixture(scope="module")
def dem_bands():
    return _dem_bands()


@pytest.fixture(scope="module")
def mixtures():
    return _mixtures(np.random.default_rng(3))


@pytest.mark.parametrize("k", [5, 16])
def test_matches_kmeans_on_dem_bands(dem_bands, k):
    centres, ref = _fit_predict(dem_bands, k)
    _assert_labels_match(gpu.nearest_centroid(dem_bands, centres), ref)


@pytest.mark.parametrize("nodata", [-9999.0, float("nan")], ids=["value", "nan"])
def test_matches_kmeans_with_nodata(mixtures, nodata):
    pixels = mixtures.copy()
    rng = np.random.default_rng(11)
    for band in range(pixels.shape[0]):  # holes in different bands: any band nulls a pixel
        mask = rng.random(pixels.shape[1:]) < 0.01
        pixels[band][mask] = nodata
    pixels[:, :5, :5] = nodata
    centres, ref = _fit_predict(pixels, 12, nodata=nodata)
    got = gpu.nearest_centroid(pixels, centres, nodata=nodata)
    assert np.count_nonzero(got == 0) > 0.05 * got.size
    _assert_labels_match(got, ref)


def test_integer_bands_match_kmeans(mixtures):
    pixels = np.clip(mixtures, 0, 65535).astype(np.uint16)
    centres, ref = _fit_predict(pixels, 8)
    _assert_labels_match(gpu.nearest_centroid(pixels, centres), ref)


def test_ties_go_to_the_lowest_index():
    pixels = np.array([[[0.0, 1.0, 2.0]]], np.float32)  # 1 band, 1 x 3
    centres = np.array([[1.0], [1.0], [0.0], [2.0]])
    labels = gpu.nearest_centroid(pixels, centres)
    # 0.0 -> centre 2 (index 2), 1.0 -> tie between 0 and 1 -> 0, 2.0 -> index 3
    np.testing.assert_array_equal(labels, [[3, 1, 4]])
    equidistant = np.array([[[1.0]]], np.float32)
    assert gpu.nearest_centroid(equidistant, np.array([[0.0], [2.0]]))[0, 0] == 1


def test_comparator_can_fail():
    ref = np.ones((1000, 1000), np.int32)
    bad = ref.copy()
    bad[0, :2] = 2
    with pytest.raises(AssertionError):
        _assert_labels_match(bad, ref)


def test_input_validation():
    pix = np.zeros((3, 4, 5), np.float32)
    with pytest.raises(ClassifyInputError, match="3-D"):
        gpu.nearest_centroid(pix[0], np.zeros((2, 3)))
    with pytest.raises(ClassifyInputError, match="bands"):
        gpu.nearest_centroid(pix, np.zeros((2, 4)))
    with pytest.raises(ClassifyInputError, match="2-D"):
        gpu.nearest_centroid(pix, np.zeros(3))
    with pytest.raises(ClassifyInputError, match="finite"):
        gpu.nearest_centroid(pix, np.full((2, 3), np.nan))
    with pytest.raises(ClassifyInputError, match="numeric"):
        gpu.nearest_centroid(pix.astype(bool), np.zeros((2, 3)))
    assert isinstance(ClassifyInputError("x"), ValueError)
    assert gpu.nearest_centroid(np.zeros((3, 0, 5), np.float32), np.zeros((2, 3))).shape == (0, 5)


@pytest.mark.parametrize("device_fp64", [None, False], ids=["device", "host-fallback"])
def test_float32_near_ties_are_decided_in_float64(device_fp64):
    """2^24 is equidistant from both centres once they are rounded to float32 (both become
    2^24); in float64 the second is nearer. The refinement must find that."""
    pixels = np.array([[[16777216.0, 16777000.0]]], np.float32)
    centres = np.array([[16777216.6], [16777215.5]])
    got = gpu.nearest_centroid(pixels, centres, device_fp64=device_fp64)
    np.testing.assert_array_equal(got, [[2, 2]])
    plain = gpu.nearest_centroid(pixels, centres, refine=False)
    assert plain[0, 0] == 1  # float32 alone calls it a tie (lowest index): the check can fail


def test_many_pixels_and_partial_last_block():
    """The kernel labels 8 pixels per work-item; sizes that are not multiples of 8 use the
    scalar tail path and must agree with a float64 reference."""
    rng = np.random.default_rng(2)
    centres = rng.uniform(0, 100, (7, 2))
    for n in (1, 7, 8, 9, 1001):
        pix = rng.uniform(0, 100, (2, 1, n)).astype(np.float32)
        d = ((pix.reshape(2, -1).T[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(gpu.nearest_centroid(pix, centres)[0],
                                      np.argmin(d, axis=1) + 1)
