"""Learning-rate schedules at known points; one-cycle against torch's OneCycleLR when available."""
from __future__ import annotations

import math

import pytest

from nnlib import schedules


def test_constant():
    s = schedules.Constant(0.3, total=10)
    assert [s(t) for t in (0, 5, 9)] == [0.3, 0.3, 0.3]


def test_step():
    s = schedules.Step(1.0, total=100, step_size=10, gamma=0.5)
    assert [s(t) for t in (0, 9, 10, 19, 20, 35)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]


def test_exponential():
    s = schedules.Exponential(0.2, total=10, gamma=0.9)
    assert s(0) == 0.2
    assert s(3) == pytest.approx(0.2 * 0.729, rel=1e-12)


def test_cosine_endpoints_and_midpoint():
    s = schedules.Cosine(0.1, total=100, min_lr=0.001)
    assert s(0) == pytest.approx(0.1, rel=1e-12)
    assert s(50) == pytest.approx(0.5 * (0.1 + 0.001), rel=1e-12)
    assert s(100) == pytest.approx(0.001, rel=1e-12)
    assert s(150) == pytest.approx(0.001, rel=1e-12)  # stays at the floor past the end
    assert s(25) == pytest.approx(0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi / 4)), rel=1e-12)


def test_one_cycle_start_peak_end():
    s = schedules.OneCycle(0.1, total=100, pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
    assert s(0) == pytest.approx(0.1 / 25, rel=1e-12)
    assert s(29) == pytest.approx(0.1, rel=1e-12)  # peak at pct_start * total - 1, as in PyTorch
    assert s(28) < s(29) > s(30)
    assert s(99) == pytest.approx(0.1 / 25 / 1e4, rel=1e-12)
    values = [s(t) for t in range(100)]
    assert all(a < b for a, b in zip(values[:29], values[1:30]))
    assert all(a > b for a, b in zip(values[29:-1], values[30:]))


@pytest.mark.parametrize("total, pct_start, div, final_div", [
    (100, 0.3, 25.0, 1e4),
    (15, 0.3, 25.0, 1e4),  # peak at a fractional step (3.5)
    (10, 0.25, 10.0, 100.0),
    (1000, 0.1, 5.0, 1e3),
])
def test_one_cycle_matches_torch(total, pct_start, div, final_div):
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=total, pct_start=pct_start, div_factor=div,
        final_div_factor=final_div, anneal_strategy="cos", cycle_momentum=False, three_phase=False,
    )
    ours = schedules.OneCycle(0.1, total, pct_start=pct_start, div_factor=div, final_div_factor=final_div)
    for t in range(total):
        assert ours(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), f"step {t}"
        opt.step()
        if t < total - 1:
            ref.step()


def test_warmup_is_linear_then_hands_over():
    s = schedules.Warmup(schedules.Cosine(0.1, total=100), warmup=5)
    inner = schedules.Cosine(0.1, total=100)
    assert [s(t) for t in range(5)] == pytest.approx([inner(t) * (t + 1) / 5 for t in range(5)], rel=1e-12)
    assert s(0) == pytest.approx(0.02, rel=1e-12)  # lr / warmup
    assert s(4) == pytest.approx(inner(4), rel=1e-12)
    assert [s(t) for t in (5, 50, 99)] == [inner(t) for t in (5, 50, 99)]
    assert s.total == 100


def test_warmup_wraps_any_schedule():
    wrapped = schedules.Warmup(schedules.Constant(0.1, 10), 4)
    assert [wrapped(t) for t in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert wrapped.total == 10


@pytest.mark.parametrize("make, message", [
    (lambda: schedules.Step(0.1, 100, step_size=0), "step: step_size must be an integer >= 1, got 0"),
    (lambda: schedules.Step(0.1, 100, step_size=2.0), "step: step_size must be an integer >= 1, got 2.0"),
    (lambda: schedules.Step(0.1, 100, step_size=2, gamma=0.0), "step: gamma must be a number > 0, got 0.0"),
    (lambda: schedules.Exponential(0.1, 100, gamma=-0.5), "exponential: gamma must be a number > 0, got -0.5"),
    (lambda: schedules.Cosine(0.1, 100, min_lr=-1.0), "cosine: min_lr must be a number >= 0, got -1.0"),
    (lambda: schedules.Constant(-0.1, 100), "constant: lr must be a number >= 0, got -0.1"),
    (lambda: schedules.Constant(0.1, -1), "constant: total must be an integer >= 0, got -1"),
    (lambda: schedules.OneCycle(0.1, 100, pct_start=1.0), "onecycle: pct_start must be a number in (0, 1), got 1.0"),
    (lambda: schedules.OneCycle(0.1, 100, div_factor=1.0), "onecycle: div_factor must be a number > 1, got 1.0"),
    (lambda: schedules.OneCycle(0.1, 100, final_div_factor=0.5), "onecycle: final_div_factor must be a number > 1, got 0.5"),
    (lambda: schedules.Warmup(schedules.Constant(0.1, 100), 0), "warmup: warmup must be an integer >= 1, got 0"),
])
def test_invalid_arguments_are_refused_naming_the_argument_the_range_and_the_value(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message
