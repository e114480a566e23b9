"""Optimizers against their closed-form updates, written out by hand for three steps.

Each test has a 2-D weight W and a 1-D bias b and feeds a different gradient at each step
(written into the grad arrays in place, as the layers do), then checks the params after every step.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from nnlib import optim
from nnlib.model import pack_parameters

LR, MOM, WD = 0.1, 0.9, 0.05
B1, B2, EPS = 0.9, 0.999, 1e-8
STEPS = 3


class Problem:
    """Params p0, gradients g[0..STEPS-1] for each name, and the arrays an optimizer updates in place."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.p0 = {"0.dense.W": rng.standard_normal((2, 3)), "0.dense.b": rng.standard_normal(3)}
        self.g = {name: [rng.standard_normal(p.shape) for _ in range(STEPS)] for name, p in self.p0.items()}
        self.param = {name: p.copy() for name, p in self.p0.items()}
        self.grad = {name: np.zeros_like(p) for name, p in self.p0.items()}

    def triples(self):
        return [(name, self.param[name], self.grad[name]) for name in self.p0]

    def run(self, opt, lrs=None):
        """Take STEPS steps; return the params after each: history[t][name] is p_{t+1}."""
        history = []
        for t in range(STEPS):
            for name in self.p0:
                self.grad[name][...] = self.g[name][t]
            if lrs is not None:
                opt.lr = lrs[t]
            opt.step()
            history.append({name: p.copy() for name, p in self.param.items()})
        return history


def assert_history(history, expected):
    """expected(name, t) is p_t (t = 1..STEPS) for that param."""
    for t, params in enumerate(history, start=1):
        for name, value in params.items():
            np.testing.assert_allclose(value, expected(name, t), rtol=1e-12, atol=1e-14, err_msg=f"{name} step {t}")


def test_sgd_plain():
    pb = Problem()
    history = pb.run(optim.SGD(pb.triples(), lr=LR))
    assert_history(history, lambda n, t: pb.p0[n] - LR * sum(pb.g[n][:t]))


def _momentum_buffers(g):
    """v1 = g0, v2 = m g0 + g1, v3 = m^2 g0 + m g1 + g2."""
    return [g[0], MOM * g[0] + g[1], MOM**2 * g[0] + MOM * g[1] + g[2]]


def test_sgd_momentum_with_a_changing_learning_rate():
    pb = Problem()
    lrs = [0.1, 0.05, 0.02]  # as a schedule sets opt.lr between steps: each step uses the current lr
    history = pb.run(optim.SGD(pb.triples(), lr=LR, momentum=MOM), lrs=lrs)

    def expected(n, t):
        v = _momentum_buffers(pb.g[n])
        return pb.p0[n] - sum(lrs[s] * v[s] for s in range(t))

    assert_history(history, expected)


def test_sgd_nesterov():
    pb = Problem()
    history = pb.run(optim.SGD(pb.triples(), lr=LR, momentum=MOM, nesterov=True))

    def expected(n, t):
        g, v = pb.g[n], _momentum_buffers(pb.g[n])
        return pb.p0[n] - LR * sum(g[s] + MOM * v[s] for s in range(t))

    assert_history(history, expected)


def _l2_sgd(p0, g, t):
    """p_t = p_{t-1} - lr (g + wd p_{t-1})  =>  p_t = a^t p0 - lr sum_s a^(t-1-s) g_s,  a = 1 - lr wd."""
    a = 1.0 - LR * WD
    return a**t * p0 - LR * sum(a ** (t - 1 - s) * g[s] for s in range(t))


def test_sgd_l2_weight_decay_on_everything():
    pb = Problem()
    history = pb.run(optim.SGD(pb.triples(), lr=LR, weight_decay=WD))
    assert_history(history, lambda n, t: _l2_sgd(pb.p0[n], pb.g[n], t))


def test_sgd_weight_decay_skips_1d_params_with_decay_weights_only():
    pb = Problem()
    opt = optim.SGD(pb.triples(), lr=LR, weight_decay=WD, decay_filter=optim.decay_weights_only)
    assert opt.decays == {"0.dense.W": True, "0.dense.b": False}
    history = pb.run(opt)

    def expected(n, t):
        if n.endswith(".W"):
            return _l2_sgd(pb.p0[n], pb.g[n], t)
        return pb.p0[n] - LR * sum(pb.g[n][:t])

    assert_history(history, expected)


def _adam_directions(g):
    """u_t = m_hat_t / (sqrt(v_hat_t) + eps) for t = 1..STEPS, from the raw gradients g_0..g_{t-1}."""
    out = []
    for t in range(1, len(g) + 1):
        m = (1 - B1) * sum(B1 ** (t - 1 - s) * g[s] for s in range(t))
        v = (1 - B2) * sum(B2 ** (t - 1 - s) * g[s] ** 2 for s in range(t))
        out.append((m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS))
    return out


def test_adam():
    pb = Problem()
    history = pb.run(optim.Adam(pb.triples(), lr=LR, betas=(B1, B2), eps=EPS))
    # The first Adam step is lr * g / (|g| + eps): a step of almost exactly lr against the sign of g.
    for n in pb.p0:
        np.testing.assert_allclose(history[0][n], pb.p0[n] - LR * pb.g[n][0] / (np.abs(pb.g[n][0]) + EPS))
    assert_history(history, lambda n, t: pb.p0[n] - LR * sum(_adam_directions(pb.g[n])[:t]))


def test_adam_l2_weight_decay_adds_to_the_gradient():
    pb = Problem()
    history = pb.run(optim.Adam(pb.triples(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD))
    for n in pb.p0:
        # Step 1 and 2 by hand, with the decayed gradients g'_t = g_t + wd p_t.
        p0, g = pb.p0[n], pb.g[n]
        d0 = g[0] + WD * p0
        p1 = p0 - LR * d0 / (np.abs(d0) + EPS)
        d1 = g[1] + WD * p1
        m2 = (1 - B1) * (B1 * d0 + d1) / (1 - B1**2)
        v2 = (1 - B2) * (B2 * d0**2 + d1**2) / (1 - B2**2)
        p2 = p1 - LR * m2 / (np.sqrt(v2) + EPS)
        np.testing.assert_allclose(history[0][n], p1, rtol=1e-12)
        np.testing.assert_allclose(history[1][n], p2, rtol=1e-12)


def test_adamw_decoupled_weight_decay():
    pb = Problem()
    history = pb.run(optim.AdamW(pb.triples(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD))
    a = 1.0 - LR * WD

    def expected(n, t):
        # p_t = a p_{t-1} - lr u_t, with u_t from the raw gradients (the decay never enters m or v).
        u = _adam_directions(pb.g[n])
        return a**t * pb.p0[n] - LR * sum(a ** (t - 1 - s) * u[s] for s in range(t))

    assert_history(history, expected)


def test_adamw_default_decay_and_filter():
    pb = Problem()
    opt = optim.AdamW(pb.triples(), lr=LR, decay_filter=optim.decay_weights_only)
    assert opt.weight_decay == 1e-2 and opt.decays == {"0.dense.W": True, "0.dense.b": False}
    history = pb.run(opt)
    n = "0.dense.b"  # undecayed: plain Adam
    np.testing.assert_allclose(history[-1][n], pb.p0[n] - LR * sum(_adam_directions(pb.g[n])), rtol=1e-12)


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-0.1), "sgd: lr must be a number >= 0, got -0.1"),
    (lambda p: optim.SGD(p, lr=float("nan")), "sgd: lr must be a number >= 0, got nan"),
    (lambda p: optim.SGD(p, lr="0.1"), "sgd: lr must be a number >= 0, got '0.1'"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1.0), "sgd: weight_decay must be a number >= 0, got -1.0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=1.0), "sgd: momentum must be a number in [0, 1), got 1.0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), "sgd: momentum must be a number in [0, 1), got -0.5"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov="yes"), "sgd: nesterov must be true or false, got 'yes'"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "sgd: nesterov momentum needs momentum > 0, got momentum 0.0"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), "adam: betas[1] must be a number in [0, 1), got 1.0"),
    (lambda p: optim.Adam(p, betas=(-0.1, 0.999)), "adam: betas[0] must be a number in [0, 1), got -0.1"),
    (lambda p: optim.Adam(p, betas=(0.9,)), "adam: betas must be a pair of numbers in [0, 1), got (0.9,)"),
    (lambda p: optim.Adam(p, eps=0.0), "adam: eps must be a number > 0, got 0.0"),
    (lambda p: optim.Adam(p, lr=-1e-3), "adam: lr must be a number >= 0, got -0.001"),
    (lambda p: optim.AdamW(p, betas=[1.5, 0.999]), "adamw: betas[0] must be a number in [0, 1), got 1.5"),
    (lambda p: optim.AdamW(p, weight_decay=-0.01), "adamw: weight_decay must be a number >= 0, got -0.01"),
])
def test_invalid_hyperparameters_are_refused_naming_the_argument_the_range_and_the_value(make, message):
    with pytest.raises(ValueError) as err:
        make(Problem().triples())
    assert str(err.value) == message


def test_a_learning_rate_of_zero_is_allowed_as_in_pytorch():
    assert optim.SGD(Problem().triples(), lr=0.0).lr == 0.0


class FlatProblem(Problem):
    """The same problem with every param (grad) a view of one 1-D array, as Sequential lays them out."""

    def __init__(self, seed=0):
        super().__init__(seed)
        holder = SimpleNamespace(params=self.param, grads=self.grad)  # what pack_parameters needs of a layer
        self.flat = pack_parameters([holder])


CONFIGS = {
    "sgd": lambda p, **kw: optim.SGD(p, lr=LR, **kw),
    "sgd momentum l2 on weights": lambda p, **kw: optim.SGD(p, lr=LR, momentum=MOM, weight_decay=WD,
                                                            decay_filter=optim.decay_weights_only, **kw),
    "nesterov l2 on all": lambda p, **kw: optim.SGD(p, lr=LR, momentum=MOM, nesterov=True, weight_decay=WD, **kw),
    "adam l2 on weights": lambda p, **kw: optim.Adam(p, lr=LR, weight_decay=WD, decay_filter=optim.decay_weights_only, **kw),
    "adamw on weights": lambda p, **kw: optim.AdamW(p, lr=LR, weight_decay=WD, decay_filter=optim.decay_weights_only, **kw),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_flat_arrays_give_the_same_bits_and_state_as_per_parameter_updates(config):
    separate, flat = Problem(), FlatProblem()
    opt_separate, opt_flat = CONFIGS[config](separate.triples()), CONFIGS[config](flat.triples(), flat=flat.flat)
    for before, after in zip(separate.run(opt_separate), flat.run(opt_flat)):
        for name in before:
            assert before[name].tobytes() == after[name].tobytes(), name
    steps, arrays = opt_flat.state()
    separate_steps, separate_arrays = opt_separate.state()
    assert (steps, sorted(arrays)) == (separate_steps, sorted(separate_arrays))
    for key, value in separate_arrays.items():
        assert arrays[key].tobytes() == value.tobytes(), key

    # A resumed flat optimizer (state saved per parameter, as checkpoints do) continues bit for bit.
    resumed_problem = FlatProblem()
    resumed_problem.flat[0][...] = flat.flat[0]
    resumed = CONFIGS[config](resumed_problem.triples(), flat=resumed_problem.flat)
    resumed.load_state(steps, {k: v.copy() for k, v in arrays.items()})
    for problem, opt in ((flat, opt_flat), (resumed_problem, resumed)):
        problem.grad["0.dense.W"][...] = 1.0
        problem.grad["0.dense.b"][...] = -2.0
        opt.step()
    assert resumed_problem.flat[0].tobytes() == flat.flat[0].tobytes()


def test_flat_arrays_must_hold_exactly_the_parameters():
    pb = FlatProblem()
    with pytest.raises(ValueError, match="do not hold"):
        optim.SGD(pb.triples()[:1], lr=LR, flat=pb.flat)
    pb.param["0.dense.b"] = pb.param["0.dense.b"].copy()  # replaced after packing: updates would be lost
    with pytest.raises(ValueError, match="'0.dense.b' or its gradient is not a view of the flat arrays"):
        optim.SGD(pb.triples(), lr=LR, flat=pb.flat)
