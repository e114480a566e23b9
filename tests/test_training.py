"""Fast unit tests of the training machinery: minibatches, ShardStream, the factories, fit, resume."""
from __future__ import annotations

import numpy as np
import pytest

from nnlib import optim, schedules
from nnlib.mnist.data.stream import ShardStream, minibatches
from nnlib.files import save_npz
from nnlib.model import Sequential
from nnlib.losses import make_loss
from nnlib.training import History, fit, make_optimizer, make_schedule, steps_per_epoch

SIZES = [7, 5, 9, 6]  # images per shard; image i of shard s has pixel value 10*s + i (unique ids)


@pytest.fixture
def shard_dir(tmp_path):
    for s, n in enumerate(SIZES):
        ids = 10 * s + np.arange(n)
        x = np.broadcast_to(ids[:, None, None], (n, 28, 28)).astype(np.uint8)
        save_npz(tmp_path / f"train-{s:05d}.npz", {"x": x, "y": (ids % 10).astype(np.uint8)})
    return tmp_path


def stream(shard_dir, seed=0, window=2):
    return ShardStream(shard_dir, [f"train-{s:05d}.npz" for s in range(len(SIZES))], np.random.default_rng(seed),
                       window=window, counts=SIZES)


def ids_of(batches) -> list[int]:
    return [int(round(v * 255)) for xb, _ in batches for v in xb[:, 0, 0, 0]]


def all_ids() -> list[int]:
    return sorted(10 * s + i for s, n in enumerate(SIZES) for i in range(n))


def test_minibatches_cover_every_image_once_in_float_batches():
    x = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    y = np.arange(10, dtype=np.uint8)
    batches = list(minibatches(x, y, 4, np.random.default_rng(1)))
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    assert batches[0][0].dtype == np.float32 and batches[0][0].shape == (4, 1, 28, 28) and batches[0][1].dtype == np.int64
    assert sorted(int(v) for _, yb in batches for v in yb) == list(range(10))
    assert np.allclose(batches[0][0][:, 0, 0, 0] * 255, batches[0][1])  # images and labels stay paired


def test_stream_pass_holds_every_image_once(shard_dir):
    total = sum(SIZES)
    seen = ids_of(stream(shard_dir).epoch(total, 4))
    assert sorted(seen) == all_ids()


def test_stream_wraps_around_with_a_new_order(shard_dir):
    total = sum(SIZES)
    s = stream(shard_dir)
    first, second = ids_of(s.epoch(total, 5)), ids_of(s.epoch(total, 5))
    assert sorted(second) == all_ids() and second != first


def test_stream_shuffles_within_windows_not_only_shards(shard_dir):
    seen = ids_of(stream(shard_dir, window=2).epoch(sum(SIZES), 27))
    first_window = seen[: 12]  # at least the first window's images come mixed from two shards
    assert len({v // 10 for v in first_window}) == 2
    assert seen != sorted(seen)


def test_epochs_continue_where_the_last_stopped(shard_dir):
    whole = ids_of(stream(shard_dir).epoch(20, 3))
    s = stream(shard_dir)
    assert ids_of(s.epoch(8, 3)) + ids_of(s.epoch(12, 3)) == whole
    assert s.position == 20


@pytest.mark.parametrize("skip", [0, 3, 7, 13, 27, 40])
def test_fast_forward_resumes_the_same_stream(shard_dir, skip):
    reference = ids_of(stream(shard_dir).epoch(skip + 15, 1))
    s = stream(shard_dir)
    s.fast_forward(skip)
    assert ids_of(s.epoch(15, 4)) == reference[skip:]


def test_a_stream_with_no_shards_is_an_input_error(shard_dir):
    from nnlib.errors import InputError
    with pytest.raises(InputError, match="no train shards"):
        ShardStream(shard_dir, [], np.random.default_rng(0))


def test_steps_per_epoch_counts_the_short_last_batch():
    assert steps_per_epoch(100, 32) == 4 and steps_per_epoch(96, 32) == 3


OPTIMIZER_CFG = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "betas": [0.8, 0.9], "eps": 1e-6,
                 "weight_decay": 0.01, "decay_bias_and_norm": False}


def tiny_model():
    return Sequential.from_specs([{"type": "flatten"}, {"type": "dense", "out": 8}, {"type": "relu"},
                                  {"type": "dropout", "p": 0.2}, {"type": "dense", "out": 10}], (1, 28, 28),
                                 np.random.default_rng(0))


@pytest.mark.parametrize("name, cls", [("sgd", optim.SGD), ("adam", optim.Adam), ("adamw", optim.AdamW)])
def test_make_optimizer_passes_every_option(name, cls):
    opt = make_optimizer(tiny_model(), {**OPTIMIZER_CFG, "name": name})
    assert type(opt) is cls and opt.lr == 0.1 and opt.weight_decay == 0.01
    assert opt.decays == {"1.dense.W": True, "1.dense.b": False, "4.dense.W": True, "4.dense.b": False}
    if name == "sgd":
        assert opt.momentum == 0.9 and opt.nesterov
    else:
        assert (opt.beta1, opt.beta2, opt.eps) == (0.8, 0.9, 1e-6)


def test_make_schedule_and_loss():
    cfg = {"name": "step", "interval": "step", "warmup": 2, "step_size": 3, "gamma": 0.5, "min_lr": 0.0,
           "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
    schedule = make_schedule(cfg, 1.0, 10)
    assert isinstance(schedule, schedules.Warmup)
    assert [schedule(t) for t in range(7)] == [0.5, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    assert make_loss({"name": "cross_entropy", "label_smoothing": 0.1, "half": True}).label_smoothing == 0.1
    assert make_loss({"name": "mse", "label_smoothing": 0.0, "half": False}).half is False


def run_fit(shard_dir, epochs, history=None, resume_from=None):
    """Train the tiny model; optionally restore (model, optimizer, rng, stream position) first."""
    model = tiny_model()
    opt = make_optimizer(model, {**OPTIMIZER_CFG, "name": "adam"})
    s = stream(shard_dir)
    if resume_from is not None:
        state, (steps, arrays), rng_state, position = resume_from
        model.load_state(state)
        opt.load_state(steps, arrays)
        model.layers[3].rng.bit_generator.state = rng_state
        s.fast_forward(position)
    val = (np.zeros((6, 28, 28), np.uint8) + np.arange(6, dtype=np.uint8)[:, None, None], np.arange(6, dtype=np.uint8))
    saved = {}

    def after(h, step):
        steps, arrays = opt.state()
        saved[len(h.rows)] = ({k: v.copy() for k, v in model.state().items()}, (steps, {k: v.copy() for k, v in arrays.items()}),
                              model.layers[3].rng.bit_generator.state, s.position)
    h = fit(model, make_loss({"name": "cross_entropy", "label_smoothing": 0.0, "half": True}), opt,
            lambda t: 0.01, s, epochs=epochs, images_per_epoch=11, batch_size=4, val=lambda: minibatches(*val, 128), progress=False,
            history=history, on_epoch_end=after)
    return model, h, saved


def test_fit_logs_one_row_per_epoch_and_resumes_exactly(shard_dir):
    model, history, saved = run_fit(shard_dir, epochs=4)
    assert [row["epoch"] for row in history.rows] == [1, 2, 3, 4]
    assert all(np.isfinite(row["train_loss"]) and 0 <= row["val_acc"] <= 1 for row in history.rows)
    state2 = saved[2]
    resumed_history = History(rows=[dict(r) for r in history.rows[:2]], best_epoch=history.best_epoch if history.best_epoch <= 2 else 1)
    resumed, history2, _ = run_fit(shard_dir, epochs=4, history=resumed_history, resume_from=state2)
    assert [row["epoch"] for row in history2.rows] == [1, 2, 3, 4]
    for name, value in model.state().items():
        assert np.array_equal(resumed.state()[name], value), name
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in history2.rows] == \
           [{k: v for k, v in r.items() if k not in drop} for r in history.rows]
