"""nnlib.mnist.data.augment: geometry of the distortions, identities, determinism, and agreement with scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnlib.mnist.data import augment
from nnlib.mnist.data.augment import AugmentConfig, affine_matrices, distort, elastic_field, sample_params, transform, warp

ELASTIC_AFFINE = AugmentConfig(rotate=10, shift=2, scale=0.1, shear=5, elastic_alpha=8, elastic_sigma=3)


def digits(n=40, seed=0) -> np.ndarray:
    """Blurry random blobs inside a 4-pixel margin: digit-like uint8 images."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28))
    images[:, 4:24, 4:24] = rng.random((n, 20, 20)) > 0.7
    images = ndimage.gaussian_filter(images, (0, 1, 1)) * 600
    return np.clip(images, 0, 255).astype(np.uint8)


def bar(length=20, width=4) -> np.ndarray:
    """A horizontal bar through the centre of a 28x28 image, shape (1, 28, 28)."""
    image = np.zeros((1, 28, 28), np.uint8)
    top, left = 14 - width // 2, 14 - length // 2
    image[0, top : top + width, left : left + length] = 255
    return image


def principal_axis_degrees(image: np.ndarray) -> float:
    """Orientation of the intensity-weighted principal axis, in degrees, as displayed (y up)."""
    weights = image.astype(np.float64)
    rows, cols = np.indices(image.shape)
    x, y = cols, -rows
    total = weights.sum()
    mx, my = (weights * x).sum() / total, (weights * y).sum() / total
    cxx = (weights * (x - mx) ** 2).sum() / total
    cyy = (weights * (y - my) ** 2).sum() / total
    cxy = (weights * (x - mx) * (y - my)).sum() / total
    return float(np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy)))


def axis_difference(a: float, b: float) -> float:
    """Smallest difference between two axis orientations (mod 180 degrees)."""
    return abs((a - b + 90) % 180 - 90)


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"rotate": 181}, "rotate"),
        ({"rotate": -1}, "rotate"),
        ({"shift": -0.5}, "shift"),
        ({"scale": 1.0}, "scale"),
        ({"shear": 90}, "shear"),
        ({"elastic_alpha": -1, "elastic_sigma": 1}, "elastic_alpha"),
        ({"elastic_alpha": 8}, "elastic_sigma"),
        ({"rotate": float("nan")}, "rotate"),
        ({"flip": 1}, "flip"),
    ],
)
def test_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AugmentConfig(**kwargs)


def test_config_from_params_ignores_other_keys():
    cfg = AugmentConfig.from_params({"copies": 5, "rotate": 10, "flip": True})
    assert cfg == AugmentConfig(rotate=10, flip=True)
    assert not cfg.is_identity and AugmentConfig().is_identity
    assert AugmentConfig(elastic_sigma=3).is_identity  # sigma alone switches nothing on


# --- identities and exact cases ----------------------------------------------------------------


def test_zero_parameters_are_the_identity():
    images = digits()
    assert np.array_equal(transform(images), images)
    zero_field = np.zeros((len(images), 2, 28, 28), np.float32)
    assert np.array_equal(transform(images, displacement=zero_field), images)


def test_elastic_with_alpha_zero_is_the_identity():
    images = digits()
    cfg = AugmentConfig(elastic_alpha=0.0, elastic_sigma=3.0)
    out = distort(images, np.random.default_rng(1), cfg)
    assert np.array_equal(out, images) and out is not images
    field = elastic_field(np.random.default_rng(1), 5, 0.0, 3.0)
    assert not field.any()


def test_integer_shift_is_an_exact_translation_with_zero_fill():
    images = digits()
    expected = np.zeros_like(images)
    expected[:, 2:, :25] = images[:, :-2, 3:]  # 2 down, 3 left
    assert np.array_equal(transform(images, shift=(2, -3)), expected)


def test_flip_mirrors_left_right_and_quarter_turn_is_rot90():
    images = digits()
    assert np.array_equal(transform(images, flip=True), images[:, :, ::-1])
    assert np.array_equal(transform(images, angle=90), np.rot90(images, 1, axes=(1, 2)))  # counter-clockwise


@pytest.mark.parametrize("angle", [-40.0, -10.0, 3.0, 7.5, 25.0, 60.0])
def test_rotation_turns_the_principal_axis_by_the_angle(angle):
    image = bar()
    before = principal_axis_degrees(image[0])
    after = principal_axis_degrees(transform(image, angle=angle)[0])
    assert axis_difference(after - before, angle) < 1.0


def test_sampled_angles_are_the_ones_applied():
    """distort draws its angles with sample_params: a bar turns by the drawn angle (within 1 degree)."""
    images = np.repeat(bar(), 8, axis=0)
    cfg = AugmentConfig(rotate=30)
    angles = sample_params(len(images), np.random.default_rng(5), cfg)["angle"]
    out = distort(images, np.random.default_rng(5), cfg)
    assert np.abs(angles).max() <= 30 and np.ptp(angles) > 5
    for image, angle in zip(out, angles):
        assert axis_difference(principal_axis_degrees(image), angle) < 1.0


def test_shear_leans_the_top_to_the_right():
    vertical = np.rot90(bar(length=22, width=3), 1, axes=(1, 2))
    leaned = transform(vertical, shear=20.0)[0]
    assert axis_difference(principal_axis_degrees(leaned), 90 - 20) < 1.0


def column_spread(image: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted (variance, mean) of the column coordinate."""
    weights = image.astype(np.float64)
    cols = np.indices(image.shape)[1]
    mean = (weights * cols).sum() / weights.sum()
    return (weights * (cols - mean) ** 2).sum() / weights.sum(), mean


def test_scale_zooms_about_the_centre():
    image = bar(length=12, width=6)
    base_var, base_mean = column_spread(image[0])
    for zoom in (0.8, 1.25):
        var, mean = column_spread(transform(image, scale=zoom)[0])
        assert var / base_var == pytest.approx(zoom**2, rel=0.08)
        assert mean == pytest.approx(base_mean, abs=0.3)  # the centre stays put


# --- agreement with scipy ----------------------------------------------------------------------


def test_affine_matches_scipy_affine_transform():
    images = digits(20)
    params = sample_params(len(images), np.random.default_rng(2), AugmentConfig(rotate=30, shift=3, scale=0.2, shear=15, flip=True))
    matrices = affine_matrices(params["angle"], params["scale"], params["shear"], params["flip"])
    ours = warp(images, matrices, params["shift"]).astype(np.int16)
    centre = np.array([13.5, 13.5])
    for k, image in enumerate(images):
        inverse = np.linalg.inv(matrices[k])
        offset = centre - inverse @ (centre + params["shift"][k])
        ref = ndimage.affine_transform(image.astype(np.float64), inverse, offset=offset, order=1, mode="grid-constant")
        assert np.abs(ours[k] - np.rint(ref)).max() <= 1


def test_elastic_matches_map_coordinates_with_the_same_field():
    images = digits(10)
    field = elastic_field(np.random.default_rng(3), len(images), 34.0, 4.0)
    ours = transform(images, displacement=field).astype(np.int16)
    rows, cols = np.indices((28, 28))
    for k, image in enumerate(images):
        coords = [rows + field[k, 0], cols + field[k, 1]]
        ref = ndimage.map_coordinates(image.astype(np.float64), coords, order=1, mode="grid-constant")
        assert np.abs(ours[k] - np.rint(ref)).max() <= 1
    assert np.abs(ours - images).max() > 50  # and it really moved pixels


def test_smoothing_matrix_is_the_gaussian_filter():
    noise = np.random.default_rng(4).random((6, 28, 28)).astype(np.float32)
    matrix = augment.smoothing_matrix(3.0, 28)
    expected = ndimage.gaussian_filter(noise, (0, 3.0, 3.0), mode="constant")
    assert np.allclose(matrix @ noise @ matrix.T, expected, atol=1e-5)


def test_elastic_field_scales_with_alpha_and_is_smooth():
    small = elastic_field(np.random.default_rng(6), 50, 1.0, 3.0)
    big = elastic_field(np.random.default_rng(6), 50, 8.0, 3.0)
    assert small.dtype == np.float32 and small.shape == (50, 2, 28, 28)
    assert np.allclose(big, 8 * small, atol=1e-5)
    assert abs(small.mean()) < 0.01
    # smoothed: neighbouring displacements are strongly correlated
    corr = np.corrcoef(small[:, :, 10:18, 10].ravel(), small[:, :, 10:18, 11].ravel())[0, 1]
    assert corr > 0.9


# --- determinism -------------------------------------------------------------------------------


def test_distort_is_deterministic_per_seed_and_leaves_input_alone():
    images = digits()
    before = images.copy()
    a = distort(images, np.random.default_rng(7), ELASTIC_AFFINE)
    b = distort(images, np.random.default_rng(7), ELASTIC_AFFINE)
    c = distort(images, np.random.default_rng(8), ELASTIC_AFFINE)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(images, before)
    assert all(not np.array_equal(x, y) for x, y in zip(a, images))  # every image distorted


def test_distort_is_sample_params_then_elastic_fields():
    images = digits(30)
    rng = np.random.default_rng(9)
    params = sample_params(len(images), rng, ELASTIC_AFFINE)
    field = elastic_field(rng, len(images), ELASTIC_AFFINE.elastic_alpha, ELASTIC_AFFINE.elastic_sigma)
    expected = transform(images, displacement=field, **params)
    assert np.array_equal(distort(images, np.random.default_rng(9), ELASTIC_AFFINE), expected)


def test_chunk_size_does_not_change_results(monkeypatch):
    images = digits(100)
    whole = distort(images, np.random.default_rng(10), ELASTIC_AFFINE)
    monkeypatch.setattr(augment, "CHUNK", 7)
    assert np.array_equal(distort(images, np.random.default_rng(10), ELASTIC_AFFINE), whole)


def test_flip_happens_about_half_the_time():
    images = digits(400)
    flips = sample_params(len(images), np.random.default_rng(11), AugmentConfig(flip=True))["flip"]
    assert 150 < flips.sum() < 250


def test_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        distort(np.zeros((2, 28, 28), np.float32), np.random.default_rng(0), ELASTIC_AFFINE)
