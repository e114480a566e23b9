"""The robustness suite (nnlib/mnist/robustness.py): deterministic, MNIST-form, and changing every digit.

Model-free except for the last test, which scores the session's small CNN on a few hundred digits.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnlib.mnist import robustness
from nnlib.mnist.seeding import ROBUST, rng
from nnlib.modelfile import load_model

RANDOM = {"thick_strokes", "thin_strokes", "gaussian_blur", "motion_blur", "rotation", "shear", "small_off_centre",
          "salt_and_pepper", "gaussian_noise", "low_contrast", "broken_strokes"}  # the others draw nothing


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    return mnist["test_x"][:200]


def test_the_suite_holds_the_corruptions_of_the_issue_with_fixed_streams():
    assert len(robustness.NAMES) == 14 and len(set(robustness.NAMES)) == 14
    assert len({entry.stream for entry in robustness.SUITE}) == 14
    assert RANDOM < set(robustness.NAMES)


@pytest.mark.parametrize("name", robustness.NAMES)
def test_same_seed_gives_the_same_bytes_and_another_seed_other_ones(name, digits):
    first = robustness.corrupt(name, digits, 0)
    np.testing.assert_array_equal(first, robustness.corrupt(name, digits.copy(), 0))
    other = robustness.corrupt(name, digits, 1)
    assert (first != other).any() == (name in RANDOM)


@pytest.mark.parametrize("name", robustness.NAMES)
def test_each_corruption_changes_the_digits_and_keeps_them_mnist_form(name, digits):
    before = digits.copy()
    out = robustness.corrupt(name, digits, 0)
    np.testing.assert_array_equal(digits, before)  # the input is not modified
    assert out.dtype == np.uint8 and out.shape == digits.shape
    changed = (out != digits).reshape(len(digits), -1).any(axis=1)
    if name == "inverted":  # the preprocessing turns the inverted picture back: some digits come out as they were
        changed = np.ones(len(digits), bool)
    assert changed.mean() >= 0.95, f"{name} leaves {int((~changed).sum())} of {len(digits)} digits as they were"
    assert (out.reshape(len(out), -1).max(axis=1) >= 64).all(), f"{name} leaves a digit without visible ink"


def test_each_entry_draws_from_its_own_stream(digits):
    """corrupt(name) is the entry's function on seeding.rng(seed, ROBUST, stream): entries are independent."""
    for entry in robustness.SUITE:
        np.testing.assert_array_equal(robustness.corrupt(entry.name, digits[:20], 3),
                                      entry.apply(digits[:20], rng(3, ROBUST, entry.stream)))


def test_corrupting_a_subset_gives_the_images_it_gives_in_the_whole():
    """Per-image draws in a fixed order: the first k digits of a batch come out the same as a batch of k."""
    x = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    for name in robustness.NAMES:
        np.testing.assert_array_equal(robustness.corrupt(name, x, 0)[:10], robustness.corrupt(name, x[:10], 0))


def ink_mask(x: np.ndarray) -> np.ndarray:
    return x > 127


def test_inverted_digits_come_back_through_the_preprocessing(digits):
    """Dark ink on light paper, through predict's preprocessing, is the digit again: the same as the
    preprocessing of the digit itself, and close to the MNIST array (MNIST's frame is what the
    preprocessing rebuilds; only faint edge pixels and a pixel of centring differ)."""
    back = robustness.corrupt("inverted", digits, 0)
    itself = robustness.preprocess_digits(digits)
    differ = (np.abs(back.astype(int) - itself) > 1).sum(axis=(1, 2))  # float rounding: 1 - (1 - v) is not always v
    assert (differ <= 2).mean() >= 0.95
    overlap = (ink_mask(back) & ink_mask(digits)).sum(axis=(1, 2)) / (ink_mask(back) | ink_mask(digits)).sum(axis=(1, 2))
    assert np.median(overlap) >= 0.8 and (overlap >= 0.5).mean() >= 0.95


def test_low_resolution_and_small_digits_are_refitted_to_mnists_box(digits):
    """The two entries that pass through the preprocessing come out in MNIST's 20-px box, centred."""
    for name in ("low_resolution", "small_off_centre"):
        out = robustness.corrupt(name, digits[:50], 0)
        rows, cols = out.any(axis=2), out.any(axis=1)
        longest = np.maximum(rows.sum(axis=1), cols.sum(axis=1))
        assert ((longest >= 19) & (longest <= 22)).mean() >= 0.9, name


def test_subsample_is_even_and_deterministic():
    np.testing.assert_array_equal(robustness.subsample(10, 0), np.arange(10))
    np.testing.assert_array_equal(robustness.subsample(10, 20), np.arange(10))
    np.testing.assert_array_equal(robustness.subsample(10_000, 4), [0, 2500, 5000, 7500])


def test_score_reports_every_corruption(trained_model_path, mnist):
    model = load_model(trained_model_path)[0]
    result = robustness.score(model, mnist["test_x"], mnist["test_y"], seed=0, images=300)
    assert list(result.accuracy) == list(robustness.NAMES) and result.images == 300
    assert all(0 <= a <= 1 for a in result.accuracy.values())
    assert result.mean == pytest.approx(np.mean(list(result.accuracy.values())))
    assert 0.5 < result.mean < 1, "a 98% CNN is far above chance on readable corruptions"
    assert 0.95 < result.clean <= 1
    assert result.examples.shape == (15, 28, 28) and result.examples.dtype == np.uint8
    np.testing.assert_array_equal(result.examples[0], mnist["test_x"][0])
    details = result.details()
    assert set(details) == {"mean_accuracy", "clean_accuracy", "images", "seed", "accuracy"}


def test_a_callers_clean_pass_gives_the_clean_accuracy_it_would_compute(trained_model_path, mnist):
    """evaluate hands over its own clean pass (which digits were right) instead of a second one."""
    from nnlib import evaluation
    from nnlib.losses import make_loss
    from nnlib.mnist.data.stream import minibatches

    model = load_model(trained_model_path)[0]
    x, y = mnist["test_x"][:200], mnist["test_y"][:200]
    own = evaluation.run(model, make_loss({"name": "cross_entropy"}), minibatches(x, y, 128), features=False)
    for images in (0, 90):
        alone = robustness.score(model, x, y, seed=0, images=images)
        handed = robustness.score(model, x, y, seed=0, images=images, correct=own.correct)
        assert handed.clean == alone.clean and handed.accuracy == alone.accuracy
    with pytest.raises(ValueError, match="one flag per digit"):
        robustness.score(model, x, y, seed=0, images=90, correct=own.correct[:10])


def test_a_committee_is_scored_side_by_side_with_the_same_figures(trained_model_path, mnist):
    """The suite's entries on 2 threads, each on a replica of every member (nnlib.parallel.replicate of a
    committee), give the figures of one thread; the replica has the members' weights and committee weights."""
    from nnlib.committee import Committee
    from nnlib.parallel import replicate

    first, second = load_model(trained_model_path)[0], load_model(trained_model_path)[0]
    second.flat_params *= np.float32(0.9)  # a second member that differs
    committee = Committee([first, second], weights=[1.0, 3.0])
    copy = replicate(committee)
    assert copy.members[0].flat_params is first.flat_params and list(copy.weights) == [1.0, 3.0]
    x, y = mnist["test_x"], mnist["test_y"]
    one = robustness.score(committee, x, y, seed=0, images=150, threads=1)
    two = robustness.score(committee, x, y, seed=0, images=150, threads=2)
    assert one.accuracy == two.accuracy and one.clean == two.clean
    np.testing.assert_array_equal(one.examples, two.examples)
