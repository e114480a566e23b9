"""DataParallel: workers on threads give the model's own step with one worker, the same bytes at any thread
count, the gradient of the per-part-BatchNorm loss (finite differences, float64), and one dropout draw."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gradcheck import model_to_float64, numeric_grad, rel_error
from nnlib.losses import make_loss
from nnlib.model import Sequential
from nnlib.parallel import DataParallel, split_points
from nnlib.training import make_optimizer

CONV_NET = [
    {"type": "conv", "out": 4, "k": 3}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
    {"type": "conv", "out": 8, "k": 3}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
    {"type": "flatten"}, {"type": "dense", "out": 16}, {"type": "batchnorm"}, {"type": "relu"},
    {"type": "dropout", "p": 0.3}, {"type": "dense", "out": 10},
]
LOSS = make_loss({"name": "cross_entropy", "label_smoothing": 0.0, "half": False})
ADAMW = {"name": "adamw", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-4,
         "decay_bias_and_norm": False}


def batch(n=24, seed=1, shape=(1, 14, 14)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n)


def build(specs=CONV_NET, shape=(1, 14, 14), seed=0):
    return Sequential.from_specs(specs, shape, np.random.default_rng(seed), num_classes=10)


def train_bytes(runner_of, steps=4, n=24) -> str:
    """sha256 of the model state after ``steps`` AdamW steps, each run through ``runner_of(model)``."""
    model = build()
    optimizer = make_optimizer(model, ADAMW)
    runner = runner_of(model)
    runner.train()
    for step in range(steps):
        x, y = batch(n - step, seed=step)  # ragged batches too: parts of unequal size
        _, dlogits = LOSS.value_and_grad(runner.forward(x), y)
        runner.backward(dlogits)
        optimizer.step()
    if isinstance(runner, DataParallel):
        runner.close()
    return hashlib.sha256(b"".join(a.tobytes() for a in model.state().values())).hexdigest()


def test_split_points_are_array_split_without_empty_parts():
    assert split_points(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_points(2, 4) == [(0, 1), (1, 2)]
    for n, parts in [(128, 2), (127, 2), (5, 5), (129, 7)]:
        sizes = [len(p) for p in np.array_split(np.arange(n), parts) if len(p)]
        assert [b - a for a, b in split_points(n, parts)] == sizes


def test_one_worker_is_the_model_step_for_step():
    assert train_bytes(lambda m: DataParallel(m, 1)) == train_bytes(lambda m: m)


def test_bytes_depend_on_workers_not_on_threads_or_processes():
    two_on_one = train_bytes(lambda m: DataParallel(m, 2, threads=1))
    assert train_bytes(lambda m: DataParallel(m, 2, threads=2, processes=False)) == two_on_one
    assert train_bytes(lambda m: DataParallel(m, 2, threads=2, processes=True)) == two_on_one
    assert train_bytes(lambda m: DataParallel(m, 3, threads=2)) == train_bytes(lambda m: DataParallel(m, 3, threads=3))
    assert two_on_one != train_bytes(lambda m: m)  # per-part BatchNorm statistics: another recipe


def test_without_batchnorm_workers_give_the_one_worker_gradient_and_dropout_masks():
    specs = [{"type": "flatten"}, {"type": "dense", "out": 32}, {"type": "relu"}, {"type": "dropout", "p": 0.5},
             {"type": "dense", "out": 10}]
    x, y = batch(20)
    grads = []
    for workers in (1, 3):
        model = model_to_float64(build(specs))
        with DataParallel(model, workers) as runner:
            runner.train()
            _, dlogits = LOSS.value_and_grad(runner.forward(x.astype(np.float64)), y)
            runner.backward(dlogits)
        grads.append(model.flat_grads.copy())
    assert np.abs(grads[0]).max() > 0
    np.testing.assert_allclose(grads[1], grads[0], rtol=0, atol=1e-13)


def test_gradient_of_the_per_part_batchnorm_loss_by_finite_differences():
    model = model_to_float64(build([{"type": "flatten"}, {"type": "dense", "out": 6}, {"type": "batchnorm"},
                                    {"type": "relu"}, {"type": "dense", "out": 10}], shape=(1, 3, 3)))
    x, y = batch(10, shape=(1, 3, 3))
    x = x.astype(np.float64)
    with DataParallel(model, 2) as runner:
        runner.train()

        def loss():
            return float(LOSS.value_and_grad(runner.forward(x), y)[0])

        _, dlogits = LOSS.value_and_grad(runner.forward(x), y)
        runner.backward(dlogits)
        analytic = model.flat_grads.copy()
        numeric = numeric_grad(loss, model.flat_params)
    assert rel_error(analytic, numeric) < 1e-7
    whole = model_to_float64(build(model.specs(), shape=(1, 3, 3)))  # one worker normalises by all 10 rows
    whole.load_state(model.state())
    whole.train()
    _, dlogits = LOSS.value_and_grad(whole.forward(x), y)
    whole.backward(dlogits)
    assert rel_error(whole.flat_grads, analytic) > 1e-3


def test_running_statistics_are_the_mean_of_the_parts():
    model = model_to_float64(build([{"type": "flatten"}, {"type": "batchnorm"}, {"type": "dense", "out": 10}],
                                   shape=(1, 2, 2)))
    x, _ = batch(9, shape=(1, 2, 2))
    rows = x.reshape(9, 4).astype(np.float64)
    with DataParallel(model, 2, threads=2) as runner:
        runner.train()
        runner.forward(rows.reshape(9, 1, 2, 2))
    norm = model.layers[1]
    parts = [rows[:5], rows[5:]]
    m = norm.momentum
    expected_mean = np.mean([(1 - m) * 0 + m * p.mean(axis=0) for p in parts], axis=0)
    expected_var = np.mean([(1 - m) * 1 + m * p.var(axis=0, ddof=1) for p in parts], axis=0)
    np.testing.assert_allclose(norm.buffers["running_mean"], expected_mean, atol=1e-12)
    np.testing.assert_allclose(norm.buffers["running_var"], expected_var, atol=1e-12)


def test_eval_mode_splits_the_batch_and_other_attributes_are_the_models():
    model = build()
    x, _ = batch(6)
    with DataParallel(model, 2) as runner:
        model.train().forward(x * 3 + 1)  # the model's running statistics move; the replicas' must follow
        with runner.evaluating():
            np.testing.assert_allclose(runner.forward(x), model.predict_logits(x), rtol=1e-5, atol=1e-6)
        assert runner.num_parameters() == model.num_parameters() and runner.state() is not None


@pytest.mark.parametrize("workers, threads, message", [
    (0, None, "workers must be an integer >= 1, got 0"),
    (2.0, None, "workers must be an integer >= 1, got 2.0"),
    (2, 0, "threads must be an integer >= 1, got 0"),
])
def test_bad_arguments_are_named(workers, threads, message):
    with pytest.raises(ValueError, match=message):
        DataParallel(build(), workers, threads)


def test_workers_run_under_the_callers_floating_point_error_handling():
    """np.errstate is per thread: a training that ignores overflow must not warn from its worker threads."""
    model = build()
    x, _ = batch(8)
    with DataParallel(model, 2, threads=2, processes=False) as runner, np.errstate(over="raise", invalid="raise"):
        seen = runner._each(lambda replica, part: np.geterr()["over"], [(0, 4), (4, 8)])
    assert seen == ["raise", "raise"]
