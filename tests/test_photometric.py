"""nnlib.mnist.data.photometric: the five families, their draws, and agreement with scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnlib.mnist.data import photometric
from nnlib.mnist.data.augment import AugmentConfig, distort
from test_augment import ELASTIC_AFFINE, digits

SEVERITIES = {"resolution": 6, "blur": 2.0, "occlude": 0.3, "contrast": 0.6, "noise": 0.35}


def only(name: str) -> dict:
    return {family: (SEVERITIES[family] if family == name else 0) for family in photometric.FAMILIES}


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.0, 3.5])
def test_gaussian_matrices_are_scipys_filter(sigma):
    image = digits(1)[0].astype(np.float64)
    matrix = photometric.gaussian_matrices(np.array([sigma]))[0].astype(np.float64)
    expected = ndimage.gaussian_filter(image, sigma, mode="constant")
    np.testing.assert_allclose(matrix @ image @ matrix.T, expected, atol=1e-3)


def test_resampling_keeps_flat_images_and_full_size_is_the_identity():
    np.testing.assert_allclose(photometric.resampling_matrix(28), np.eye(28), atol=1e-6)
    for side in (4, 6, 8, 13, 20):
        matrix = photometric.resampling_matrix(side)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)
        assert np.linalg.matrix_rank(matrix.astype(np.float64), tol=1e-6) == side  # side samples of detail, no more


def test_everything_off_draws_nothing_and_copies():
    x = digits(8).astype(np.float32)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    for severities, p in [({name: 0 for name in photometric.FAMILIES}, 1.0), (SEVERITIES, 0.0)]:
        out = photometric.distort(x, rng, severities, p)
        assert out is not x and np.array_equal(out, x)
    assert rng.bit_generator.state == state


@pytest.mark.parametrize("name", photometric.FAMILIES)
def test_each_family_changes_the_images_it_is_given(name):
    x = digits(200).astype(np.float32)
    out = photometric.distort(x, np.random.default_rng(1), only(name), p=0.5)
    changed = np.abs(out - x).max(axis=(1, 2)) > 1.0
    assert 0.3 < changed.mean() < 0.7, f"{name}: {changed.mean():.2f} of the images changed at p = 0.5"
    again = photometric.distort(x, np.random.default_rng(1), only(name), p=0.5)
    assert np.array_equal(out, again)


def test_contrast_puts_ink_and_paper_in_their_ranges():
    x = np.zeros((300, 28, 28), np.float32)
    x[:, 10:18, 10:18] = 255
    out = photometric.distort(x, np.random.default_rng(2), only("contrast"), p=1.0)
    paper, ink = out[:, 0, 0], out[:, 14, 14]
    assert paper.min() >= 0 and paper.max() <= 0.6 * 255 + 1e-3 and paper.max() > 0.5 * 255
    assert (ink - paper).min() >= photometric.INK_ABOVE_PAPER - 1e-3 and ink.max() <= 255 + 1e-3


def test_noise_and_occlusion_scale_with_their_severity():
    x = np.full((400, 28, 28), 128.0, np.float32)
    noisy = photometric.distort(x, np.random.default_rng(3), only("noise"), p=1.0)
    spread = (noisy - 128).std(axis=(1, 2)) / 255
    assert 0.3 * 0.35 < spread.mean() < 0.7 * 0.35 and spread.max() <= 0.35 * 1.1  # a sample std of 784 pixels
    occluded = photometric.distort(x, np.random.default_rng(4), only("occlude"), p=1.0)
    share = (occluded == 0).mean(axis=(1, 2))
    assert share.max() <= 0.33 and 0.1 < share.mean() < 0.2


def test_augment_runs_geometry_then_photometry_and_leaves_the_geometric_bytes_alone():
    x = digits(64)
    with_photo = AugmentConfig(**{**ELASTIC_AFFINE.__dict__, **SEVERITIES, "photo_p": 0.3})
    geometric = distort(x, np.random.default_rng(5), ELASTIC_AFFINE)
    rng = np.random.default_rng(5)
    both = distort(x, rng, with_photo)
    replay = np.random.default_rng(5)
    expected = distort(x, replay, ELASTIC_AFFINE)
    expected = np.clip(np.rint(photometric.distort(expected, replay, with_photo.severities, 0.3)), 0, 255).astype(np.uint8)
    assert np.array_equal(both, expected) and not np.array_equal(both, geometric)
    assert with_photo.photometric and not ELASTIC_AFFINE.photometric


@pytest.mark.parametrize("key, value", [("resolution", 3), ("resolution", 21), ("blur", -1.0), ("occlude", 0.6),
                                        ("contrast", 0.8), ("noise", 1.5), ("photo_p", 1.2)])
def test_bad_photometric_values_name_the_key(key, value):
    with pytest.raises(Exception, match=f"prepare.augment.{key}"):
        AugmentConfig(**{key: value})
