"""The moving average of the weights (``train.optimizer.ema``, :class:`nnlib.optim.EMA`): its formula by hand
and against PyTorch's AveragedModel, BatchNorm statistics averaged, off changes no byte, validation and
best_val on the average while the raw weights train on, checkpoints, and DataParallel workers."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gradcheck import model_to_float64, on_device, on_host
from nnlib import checkpoints, optim
from nnlib.losses import make_loss
from nnlib.model import Sequential
from nnlib.parallel import DataParallel
from nnlib.training import History, fit, make_optimizer

BN_NET = [{"type": "dense", "out": 6}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "dropout", "p": 0.2},
          {"type": "dense", "out": 3}]
SHAPE = (4,)
ADAM = {"name": "adam", "lr": 0.05, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "decay_bias_and_norm": True}
LOSS = make_loss({"name": "cross_entropy", "label_smoothing": 0.0, "half": True})
DECAY = 0.9


def build(seed=0):
    return Sequential.from_specs(BN_NET, SHAPE, np.random.default_rng(seed), num_classes=3)


def data(n=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *SHAPE)).astype(np.float32) * 2 + 1, rng.integers(0, 3, n)


def train_steps(model, optimizer, steps, runner=None, after=None):
    """``steps`` training steps on fresh batches (ragged ones too) through ``runner`` (default: the model)."""
    runner = runner or model
    runner.train()
    for step in range(steps):
        x, y = data(16 - step, seed=step)
        _, dlogits = LOSS.value_and_grad(runner.forward(on_device(x)), on_device(y))
        runner.backward(dlogits)
        optimizer.step()
        if after is not None:
            after()


def snapshot(model) -> dict:
    return {name: on_host(value).astype(np.float64) for name, value in model.state().items()}


def digest(arrays: dict) -> str:
    return hashlib.sha256(b"".join(name.encode() + on_host(arrays[name]).tobytes() for name in sorted(arrays))).hexdigest()


@pytest.mark.parametrize("warmup, decays", [(False, [DECAY] * 3), (True, [2 / 11, 3 / 12, 4 / 13])])
def test_the_average_follows_its_formula_over_four_steps_flat_or_not(warmup, decays):
    results = []
    for flat in (True, False):
        model = build()
        if not flat:
            model.flat_params = None  # one average per array instead of one for the flat parameters
        optimizer = make_optimizer(model, {**ADAM, "ema": DECAY, "ema_warmup": warmup})
        assert isinstance(optimizer.ema, optim.EMA) and len(optimizer.ema._pairs) == (3 if flat else 8)
        states = []
        train_steps(model, optimizer, 4, after=lambda: states.append(snapshot(model)))
        s1, s2, s3, s4 = states
        d1, d2, d3 = decays
        ema = optimizer.ema
        assert ema.updates == 4 and set(ema.average) == set(s1)
        for name, value in ema.average.items():
            expected = d3 * d2 * d1 * s1[name] + d3 * d2 * (1 - d1) * s2[name] + d3 * (1 - d2) * s3[name] + (1 - d3) * s4[name]
            assert value.dtype == np.float64
            np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-14, err_msg=name)
        averaged = ema.averaged()
        assert all(averaged[name].dtype == np.float32 for name in averaged)
        assert averaged["1.batchnorm.running_mean"].tobytes() != model.state()["1.batchnorm.running_mean"].tobytes()
        np.testing.assert_allclose(averaged["1.batchnorm.running_var"], ema.average["1.batchnorm.running_var"], rtol=1e-6)
        results.append(digest(ema.average))
    assert results[0] == results[1], "the flat average and the per-array one are the same bits"


def test_the_first_update_copies_and_the_warmup_decays():
    model = build()
    ema = optim.EMA(model, 0.999)
    assert ema.current_decay() == 0.1 and ema.averaged()["0.dense.W"].tobytes() == model.state()["0.dense.W"].tobytes()
    ema.update()
    assert all(np.array_equal(ema.average[name], value) for name, value in snapshot(model).items())
    ema.updates = 8990
    assert ema.current_decay() == 0.999 and optim.EMA(model, 0.5).current_decay() == 0.1
    ema.updates = 1
    assert ema.current_decay() == 2 / 11 and optim.EMA(model, 0.999, warmup=False).current_decay() == 0.999


@pytest.mark.parametrize("decay, warmup, message", [
    (1.0, True, "ema: decay must be a number in [0, 1), got 1.0"),
    (-0.1, True, "ema: decay must be a number in [0, 1), got -0.1"),
    ("0.9", True, "ema: decay must be a number in [0, 1), got '0.9'"),
    (0.9, "yes", "ema: warmup must be true or false, got 'yes'"),
])
def test_bad_arguments_are_named(decay, warmup, message):
    with pytest.raises(ValueError) as err:
        optim.EMA(build(), decay, warmup)
    assert str(err.value) == message


@pytest.mark.usefixtures("device")
@pytest.mark.parametrize("warmup", [False, True])
def test_the_average_is_pytorchs_averaged_model_with_buffers(warmup):
    """Our model trains; after every step its weights and BatchNorm statistics are copied into a torch module
    that AveragedModel(use_buffers=True) averages with get_ema_multi_avg_fn (or the warm-up rule)."""
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = model_to_float64(build())
    optimizer = make_optimizer(model, {**ADAM, "ema": DECAY, "ema_warmup": warmup})
    names = list(model.state())

    class Mirror(torch.nn.Module):  # the same arrays under torch names ('.' is not allowed in them)
        def __init__(self):
            super().__init__()
            for name, value in model.state().items():
                tensor = torch.tensor(on_host(value))
                if name.endswith(("running_mean", "running_var")):
                    self.register_buffer(name.replace(".", "_"), tensor)
                else:
                    self.register_parameter(name.replace(".", "_"), torch.nn.Parameter(tensor))

        def load(self):
            with torch.no_grad():
                for name, value in model.state().items():
                    getattr(self, name.replace(".", "_")).copy_(torch.tensor(on_host(value)))

    def warmup_fn(averages, currents, n):
        decay = min(DECAY, (1 + int(n)) / (10 + int(n)))
        torch._foreach_lerp_(averages, currents, 1 - decay)

    mirror = Mirror()
    reference = AveragedModel(mirror, multi_avg_fn=warmup_fn if warmup else get_ema_multi_avg_fn(DECAY), use_buffers=True)
    assert len(list(mirror.buffers())) == 2

    def compare():
        mirror.load()
        reference.update_parameters(mirror)
        for name in names:
            expected = getattr(reference.module, name.replace(".", "_")).detach().numpy()
            np.testing.assert_allclose(on_host(optimizer.ema.average[name]), expected, rtol=1e-12, atol=1e-15, err_msg=name)

    train_steps(model, optimizer, 6, after=compare)
    assert int(reference.n_averaged) == optimizer.ema.updates == 6


def test_off_draws_and_computes_nothing_and_on_leaves_the_raw_weights_untouched():
    """ema 0 (or absent) is no average at all; with one, training, the dropout draws and the raw weights are
    the same bytes (validation swaps the average in and the raw weights back, bit for bit)."""
    runs = {}
    for key, extra in [("absent", {}), ("zero", {"ema": 0.0, "ema_warmup": True}), ("on", {"ema": DECAY, "ema_warmup": True})]:
        model = build()
        optimizer = make_optimizer(model, {**ADAM, **extra})
        assert (optimizer.ema is None) == (key != "on")
        x, y = data(24, seed=7)

        class Stream:
            def epoch(self, n, batch_size):
                return ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size))

        history = fit(model, LOSS, optimizer, lambda t: 0.05, Stream(), epochs=3, images_per_epoch=24, batch_size=8,
                      val=[data(32, seed=9)], keep_best=True, progress=False)
        runs[key] = (digest(model.state()), [(row["val_loss"], row["val_acc"]) for row in history.rows],
                     digest(history.best_state), model.layers[3].rng.bit_generator.state)
        if key == "on":
            with optimizer.ema.applied():  # the validation the log shows is the average's
                from nnlib.evaluation import evaluate  # noqa: PLC0415
                last = evaluate(model, LOSS, [data(32, seed=9)])[:2]
            assert history.rows[-1]["val_loss"] == last[0] and history.rows[-1]["val_acc"] == last[1]
            assert digest(model.state()) == runs["on"][0], "applied() puts the raw weights back"
            if history.best_epoch == 3:
                assert runs["on"][2] == digest(optimizer.ema.averaged())
    assert runs["absent"] == runs["zero"]
    assert runs["on"][0] == runs["zero"][0] and runs["on"][3] == runs["zero"][3], "the raw weights train on unchanged"
    assert runs["on"][1] != runs["zero"][1] and runs["on"][2] != runs["zero"][2], "validation and best_val see the average"


def test_a_checkpoint_carries_the_average_and_resumes_it_bit_for_bit(tmp_path):
    def run(resume_from=None, steps=3):
        model = build()
        optimizer = make_optimizer(model, {**ADAM, "ema": DECAY, "ema_warmup": True})
        history = History(rows=[{"epoch": 1, "val_acc": 0.5}], best_epoch=1)
        if resume_from is not None:
            resume_from.restore(model, optimizer, history)
        train_steps(model, optimizer, steps)
        return model, optimizer, history

    model, optimizer, history = run()
    checkpoints.save(tmp_path, "d", model=model, optimizer=optimizer, history=history, step=3, stream_position=0)
    found, note = checkpoints.find(tmp_path, "d")
    assert found is not None and found.meta["ema_updates"] == 3 and "resuming" in note
    assert all(found.arrays[f"ema/{name}"].dtype == np.float64 for name in optimizer.ema.average)
    _, resumed, _ = run(found)
    train_steps(model, optimizer, 3)
    assert resumed.ema.updates == 6 and digest(resumed.ema.average) == digest(optimizer.ema.average)

    plain_model = build()
    plain = make_optimizer(plain_model, ADAM)
    with pytest.raises(ValueError, match="weight average"):  # (a digest of other params never gets this far)
        found.restore(plain_model, plain, History())
    checkpoints.save(tmp_path, "p", model=plain_model, optimizer=plain, history=History(rows=[{"epoch": 1}]), step=0,
                     stream_position=0)
    without, _ = checkpoints.find(tmp_path, "p")
    assert not any(key.startswith("ema/") for key in without.arrays) and "ema_updates" not in without.meta
    with pytest.raises(KeyError):
        without.restore(*run(steps=0)[:2], History())
    with pytest.raises(ValueError, match="do not match"):
        optimizer.ema.load_state(1, {"0.dense.W": optimizer.ema.average["0.dense.W"]})


def test_with_workers_the_average_is_the_models_and_the_same_on_any_thread_count():
    """DataParallel: the average reads the model (shared parameters, running statistics averaged over the
    replicas), follows the formula over the model's states, and validation through the runner sees it."""
    results = {}
    for workers, threads in [(2, 1), (2, 2), (1, 1)]:
        model = build()
        optimizer = make_optimizer(model, {**ADAM, "ema": DECAY, "ema_warmup": False})
        states = []
        with DataParallel(model, workers, threads) as runner:
            train_steps(model, optimizer, 3, runner=runner, after=lambda: states.append(snapshot(model)))
            x, _ = data(10, seed=5)
            with optimizer.ema.applied(), runner.evaluating():
                through_runner = on_host(runner.forward(x))
            averaged = build()
            averaged.load_state(optimizer.ema.averaged())
            np.testing.assert_allclose(through_runner, averaged.predict_logits(x), rtol=1e-5, atol=1e-6)
        s1, s2, s3 = states
        for name, value in optimizer.ema.average.items():
            expected = DECAY**2 * s1[name] + DECAY * (1 - DECAY) * s2[name] + (1 - DECAY) * s3[name]
            np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-14, err_msg=name)
        results[workers, threads] = digest(optimizer.ema.average)
    assert results[2, 1] == results[2, 2] != results[1, 1]
