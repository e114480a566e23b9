"""The evaluation report: metric functions against hand-computed examples, and the evaluation library
and the evaluate stage's figures on a tiny untrained model (no data files, no DVC)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from nnlib import evaluation, losses, metrics
from nnlib.mnist.data.stream import minibatches
from nnlib.model import EVAL_BATCH_SIZE, Sequential
from nnlib.mnist.plots import save_figure

ROOT = Path(__file__).resolve().parents[1]
MLP = [{"type": "flatten"}, {"type": "dense", "out": 12}, {"type": "relu"}, {"type": "dense", "out": 10}]
CNN = [{"type": "conv", "out": 4, "k": 3}, {"type": "relu"}, {"type": "maxpool", "k": 2}, {"type": "flatten"},
       {"type": "dense", "out": 6}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "dropout", "p": 0.3},
       {"type": "dense", "out": 10}]
EVAL_KEYS = ["accuracy", "errors", "images", "nll", "loss_fn", "loss", "macro_f1", "ece"]  # no hash: it is no metric
PNGS = ["curves.png", "confusion.png", "misclassified.png", "first_layer.png", "reliability.png", "features.png"]


# --- metric functions, by hand ---------------------------------------------------------------------

def test_precision_recall_f1_and_macro_f1_by_hand():
    # y_true 0 0 0 1, y_pred 0 0 1 1; class 2 never occurs and is never predicted.
    matrix = metrics.confusion_matrix([0, 0, 0, 1], [0, 0, 1, 1], num_classes=3)
    precision, recall, f1 = metrics.precision_recall_f1(matrix)
    np.testing.assert_allclose(precision, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(recall, [2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(f1, [0.8, 2 / 3, 0.0])  # 2PR/(P+R): 2*(2/3)/(5/3), 2*0.5/1.5; empty class: 0, not NaN
    assert metrics.macro_f1(matrix) == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)


def test_macro_f1_is_one_when_every_prediction_is_right():
    assert metrics.macro_f1(metrics.confusion_matrix(range(10), range(10))) == 1.0


def test_ece_by_hand():
    # Bins of width 1/15: 0.95 -> bin 14 (accuracy 1/2), 0.65 -> bin 9, 0.35 -> bin 5 (accuracy 1 each).
    confidence, correct = [0.95, 0.95, 0.65, 0.35], [True, False, True, True]
    expected = 2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(1 - 0.65) + 1 / 4 * abs(1 - 0.35)
    assert metrics.expected_calibration_error(confidence, correct) == pytest.approx(expected)  # 0.475
    count, mean_confidence, accuracy = metrics.calibration_bins(confidence, correct)
    assert count.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 2]
    assert mean_confidence[14] == pytest.approx(0.95) and accuracy[14] == 0.5
    assert mean_confidence[0] == 0.0 and accuracy[0] == 0.0  # an empty bin: 0, never NaN


def test_ece_of_a_calibrated_and_of_a_certain_but_wrong_classifier():
    assert metrics.expected_calibration_error([1.0, 1.0], [True, True]) == 0.0  # 1.0 falls in the last bin
    assert metrics.expected_calibration_error([1.0, 1.0], [False, False]) == 1.0
    assert metrics.expected_calibration_error([0.3] * 10, [True] * 3 + [False] * 7) == pytest.approx(0.0)


def test_top_confusions_most_frequent_first_ties_in_order_no_diagonal():
    matrix = np.array([[50, 2, 0, 3],
                       [2, 40, 0, 0],
                       [0, 7, 60, 0],
                       [1, 0, 0, 9]])
    assert metrics.top_confusions(matrix) == [(2, 1, 7), (0, 3, 3), (0, 1, 2), (1, 0, 2), (3, 0, 1)]
    assert metrics.top_confusions(matrix, n=2) == [(2, 1, 7), (0, 3, 3)]
    assert metrics.top_confusions(np.diag([5, 5])) == []  # no mistakes, nothing to list


def test_log_loss_of_uniform_outputs_is_log_k_and_large_logits_stay_finite():
    assert metrics.log_loss(np.zeros((4, 10), np.float32), [0, 1, 2, 3]) == pytest.approx(math.log(10))
    huge = np.array([[1e4, 0.0], [0.0, 1e4]], np.float32)
    assert metrics.log_loss(huge, [1, 1]) == pytest.approx(5e3)


def test_pca_2d_shape_variance_and_sign():
    rng = np.random.default_rng(0)
    direction = np.array([3.0, -4.0, 0.0]) / 5
    features = rng.normal(size=(200, 1)) * 10 * direction + rng.normal(size=(200, 3)) * 0.01
    points, explained = evaluation.pca_2d(features)
    assert points.shape == (200, 2) and explained.shape == (2,)
    assert explained[0] > 0.99 and explained[0] >= explained[1] >= 0 and explained.sum() <= 1 + 1e-12
    along = (features - features.mean(axis=0)) @ direction
    np.testing.assert_allclose(np.abs(points[:, 0]), np.abs(along), atol=0.05)
    assert np.sign(points[:, 0] @ along) == -1  # the largest loading (-4/5 on the 2nd feature) is made positive
    assert evaluation.pca_2d(features[:, :1])[0].shape == (200, 2)  # one feature: PC2 is 0
    wide = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))  # the SVD of the centred data agrees
    centred = wide - wide.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    points, explained = evaluation.pca_2d(wide)
    np.testing.assert_allclose(np.abs(points), np.abs(centred @ vt[:2].T), rtol=0, atol=1e-9)
    np.testing.assert_allclose(explained, s[:2] ** 2 / (s**2).sum(), rtol=1e-12)


# --- the evaluation library on a tiny model --------------------------------------------------------

def tiny(specs=MLP, n: int = 60, seed: int = 0):
    """(model, x uint8 (n, 28, 28), y (n,)) for an untrained network."""
    rng = np.random.default_rng(seed)
    model = Sequential.from_specs(specs, (1, 28, 28), rng)
    return model, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.mark.parametrize("specs, width", [(MLP, 12), (CNN, 6)])
def test_run_keeps_the_input_of_the_last_dense_layer_and_the_same_outputs(specs, width):
    model, x, y = tiny(specs)
    result = evaluation.run(model, losses.SoftmaxCrossEntropy(), minibatches(x, y, 16))
    assert result.features.shape == (60, width) and result.logits.shape == (60, 10)
    np.testing.assert_allclose(result.logits, model.predict_logits(x.reshape(-1, 1, 28, 28).astype(np.float32) / 255), rtol=1e-5, atol=1e-5)
    loss, accuracy, predictions = evaluation.evaluate(model, losses.SoftmaxCrossEntropy(), minibatches(x, y, 16))
    assert (loss, accuracy) == (result.loss, result.accuracy) and (predictions == result.predictions).all()
    assert result.loss == pytest.approx(metrics.log_loss(result.logits, y), rel=1e-5)


def test_run_takes_any_float_batches_not_only_images():
    """The library evaluates whatever batches it is given: here 2-D features of a network of 5 inputs."""
    rng = np.random.default_rng(0)
    model = Sequential.from_specs([{"type": "dense", "out": 8}, {"type": "relu"}, {"type": "dense", "out": 3}], (5,), rng)
    x, y = rng.standard_normal((10, 5)).astype(np.float32), rng.integers(0, 3, 10)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    result = evaluation.run(model, losses.SoftmaxCrossEntropy(), batches)
    assert result.features.shape == (10, 8) and list(result.y) == list(y) and result.y.dtype == np.int64
    np.testing.assert_array_equal(result.logits, np.concatenate([model.predict_logits(x[:4]), model.predict_logits(x[4:])]))
    assert evaluation.evaluate(model, losses.SoftmaxCrossEntropy(), iter(batches))[1] == result.accuracy
    with pytest.raises(ValueError, match="no batches"):
        evaluation.run(model, losses.SoftmaxCrossEntropy(), [])


def test_scalars_are_flat_finite_json_with_the_documented_keys():
    model, x, y = tiny()
    result = evaluation.run(model, losses.MSE(), minibatches(x, y, EVAL_BATCH_SIZE))
    scores = evaluation.scalars(result, "mse")
    assert list(scores) == EVAL_KEYS
    json.dumps(scores, allow_nan=False)
    assert not any(isinstance(v, (dict, list)) for v in scores.values())
    assert scores["images"] == 60 and scores["errors"] == 60 - round(60 * scores["accuracy"])
    assert scores["loss_fn"] == "mse" and scores["loss"] != pytest.approx(scores["nll"])  # nll: cross-entropy always
    assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["macro_f1"] <= 1 and 0 <= scores["ece"] <= 1
    assert scores["nll"] > 0


def test_details_per_class_and_top_confusions():
    model, x, y = tiny()
    result = evaluation.run(model, losses.SoftmaxCrossEntropy(), minibatches(x, y, EVAL_BATCH_SIZE))
    found = evaluation.details(result)
    json.dumps(found, allow_nan=False)
    assert sorted(found["per_class"], key=int) == [str(k) for k in range(10)]
    assert set(found["per_class"]["3"]) == {"precision", "recall", "f1", "support"}
    assert sum(c["support"] for c in found["per_class"].values()) == 60
    assert [(c["true"], c["predicted"], c["count"]) for c in found["top_confusions"]] == metrics.top_confusions(result.confusion)
    assert len(found["top_confusions"]) == 5  # an untrained network makes plenty of mistakes


def test_confident_mistakes_are_wrong_and_in_decreasing_confidence():
    model, x, y = tiny()
    result = evaluation.run(model, losses.SoftmaxCrossEntropy(), minibatches(x, y, EVAL_BATCH_SIZE))
    shown = evaluation.confident_mistakes(result, 5)
    assert len(shown) == min(5, int((~result.correct).sum()))
    assert not result.correct[shown].any()
    assert (np.diff(result.confidence[shown]) <= 0).all()
    others = np.setdiff1d(np.flatnonzero(~result.correct), shown)
    assert result.confidence[shown].min() >= result.confidence[others].max()


WIDE_MLP = [{"type": "flatten"}, {"type": "dense", "out": 100}, {"type": "relu"}, {"type": "dense", "out": 10}]


@pytest.mark.parametrize("specs, shape", [(MLP, (12, 28, 28)), (CNN, (4, 3, 3)), (WIDE_MLP, (64, 28, 28))])
def test_first_layer_images(specs, shape):
    model, _, _ = tiny(specs)
    images, description = evaluation.first_layer_images(model)
    assert images.shape == shape and description


def test_first_layer_images_of_a_dense_layer_not_on_pixels_is_none():
    model, _, _ = tiny([{"type": "maxpool", "k": 2}, {"type": "flatten"}, {"type": "dense", "out": 10}])
    images, why = evaluation.first_layer_images(model)
    assert images is None and "196" in why


def load_stage():
    """stages/evaluate.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("specs", [MLP, CNN])
def test_the_stage_draws_every_png(specs, tmp_path):
    model, x, y = tiny(specs)
    result = evaluation.run(model, losses.SoftmaxCrossEntropy(), minibatches(x, y, EVAL_BATCH_SIZE))
    log = [{"epoch": e, "train_loss": 1 / e, "train_acc": 1 - 0.1 / e, "val_loss": 1.1 / e, "val_acc": 1.0 if e == 2 else 0.8,
            "lr": 0.1 / e} for e in (1, 2)]  # a val error rate of 0 must not break the log axis
    names = []
    for name, figure in load_stage().figures(result, model, x, log, "preset test · seed 0 · test accuracy 10.00%", 36):
        save_figure(figure, tmp_path / name)
        names.append(name)
    assert names == PNGS
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
