"""The schema of params.yaml: every key of every stage, its default, its check and its meaning.

This is the single source of defaults and checks: the stages validate their section against it,
:class:`~nnlib.mnist.data.augment.AugmentConfig` checks its ranges with it, and the README's params table is
tested against it. A schema is a nested dict whose leaves are :class:`~nnlib.mnist.config.params.Field` objects.
The effective value of a key is params.yaml's, else the preset's, else the default here
(:func:`effective_params`, ``nnlib params``).
"""
from __future__ import annotations

import math

from nnlib.mnist.config.params import PARAMS_FILE, Field, load_section, load_top_level
from nnlib.options import CROSS_ENTROPY, LABEL_SMOOTHING_RANGE, LOSS_NAMES, spelled, valid_label_smoothing

# The names the factories accept (nnlib/optim.py, nnlib/schedules.py; tests/test_params.py checks they
# agree). Spelled out here so that the prepare stage, which reads this module, does not depend on them.
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "exponential", "onecycle", "step")


def _number(low=None, high=None, high_open=False):
    """A check for a finite number in [low, high] (or [low, high))."""

    def check(value):
        if not math.isfinite(value) or (low is not None and value < low):
            return False
        if high is None:
            return True
        return value < high if high_open else value <= high

    return check


AUGMENT = {
    "copies": Field(int, 0, "an integer >= 0", lambda v: v >= 0, "distorted copies of each train image"),
    "rotate": Field(float, 0.0, "a number of degrees in [0, 180]", _number(0, 180), "largest rotation, uniform in [-rotate, rotate] degrees"),
    "shift": Field(float, 0.0, "a number of pixels >= 0", _number(0), "largest shift, uniform in [-shift, shift] pixels, per axis"),
    "scale": Field(float, 0.0, "a number in [0, 1)", _number(0, 1, True), "zoom uniform in [1 - scale, 1 + scale]"),
    "shear": Field(float, 0.0, "a number of degrees in [0, 90)", _number(0, 90, True), "largest shear angle, uniform in [-shear, shear] degrees"),
    "elastic_alpha": Field(float, 0.0, "a number >= 0", _number(0), "elastic displacement scale, pixels"),
    "elastic_sigma": Field(float, 0.0, "a number >= 0", _number(0), "elastic smoothing, pixels"),
    "flip": Field(bool, False, "true or false", None, "mirror left-right with p = 0.5"),
    "resolution": Field(int, 0, "0 (off) or an integer in [4, 20]", lambda v: v == 0 or 4 <= v <= 20,
                        "photometric: down to a side uniform in [resolution, 20] pixels and back up"),
    "blur": Field(float, 0.0, "a number of pixels in [0, 4]", _number(0, 4), "photometric: Gaussian blur, sigma uniform in [0, blur]"),
    "occlude": Field(float, 0.0, "a number in [0, 0.5]", _number(0, 0.5), "photometric: share of pixels set to paper, uniform in [0, occlude]"),
    "contrast": Field(float, 0.0, "a number in [0, 0.7]", _number(0, 0.7),
                      "photometric: paper level uniform in [0, contrast x 255], ink between paper + 64 and 255"),
    "noise": Field(float, 0.0, "a number in [0, 1]", _number(0, 1), "photometric: Gaussian noise, std uniform in [0, noise] of the range"),
    "photo_p": Field(float, 0.0, "a number in [0, 1]", _number(0, 1), "probability that an image gets each photometric family that is on"),
}

PREPARE = {
    "val_size": Field(int, 5000, "an integer >= 1", lambda v: v >= 1, "images held out for validation"),
    "max_train": Field(int, 0, "an integer >= 0", lambda v: v >= 0, "cap on train images; 0 = all"),
    "shard_size": Field(int, 10000, "an integer >= 100", lambda v: v >= 100, "images per shard"),
    "workers": Field(int, 0, "an integer >= 0", lambda v: v >= 0, "processes; 0 = one per CPU core"),
    "augment": AUGMENT,
}


positive = lambda v: v > 0  # noqa: E731
non_negative = lambda v: v >= 0  # noqa: E731

# 'auto': a share of the cores this process may use, given the nnlib runs already going (nnlib/threads.py).
THREADS = Field((int, str), "auto", "'auto' or an integer >= 0 (0 = every core)",
                lambda v: v == "auto" if isinstance(v, str) else v >= 0,
                "BLAS threads; auto shares the cores with running nnlib jobs; bytes are identical only at a fixed count")

BACKEND = Field(str, "numpy", "'numpy' or 'cupy'", lambda v: v in ("numpy", "cupy"), "array backend; cupy needs a GPU and the gpu extra")

TRAIN = {
    "backend": BACKEND,
    "epochs": Field(int, 10, "an integer >= 1", lambda v: v >= 1, "number of epochs"),
    "batch_size": Field(int, 64, "an integer >= 1", positive, "images per optimizer step"),
    "images_per_epoch": Field(int, 0, "an integer >= 0 (0 = the size of the train split)", non_negative, "images drawn from the shard stream per epoch"),
    "init_from": Field(str, "", "'' (fresh) or the path of a model file under models/init/", None,
                       "start from this model's weights instead of a fresh initialisation (see README, continue training)"),
    "threads": THREADS,
    "workers": Field(int, 1, "an integer in [1, 64], at most batch_size", lambda v: 1 <= v <= 64,
                     "data-parallel workers: each batch split in this many parts, one thread each, BLAS at 1 thread; "
                     "BatchNorm statistics per part; bytes depend on it, not on threads"),
    "resume": Field(bool, True, "true or false", None, "continue a killed run from its last checkpoint (models/checkpoints/)"),
    "select": Field(str, "last", "'last' or 'best_val'", lambda v: v in ("last", "best_val"), "which epoch's weights are kept"),
    "model": Field(list, None, "a non-empty list of layer specs like {type: dense, out: 10}", lambda v: len(v) > 0, "the network, layer by layer", required=True),
    "loss": {
        "name": Field(str, CROSS_ENTROPY, spelled(LOSS_NAMES), lambda v: v in LOSS_NAMES, "loss function"),
        "label_smoothing": Field(float, 0.0, LABEL_SMOOTHING_RANGE, valid_label_smoothing, "cross-entropy label smoothing"),
        "half": Field(bool, True, "true or false", None, "mse: 1/2 * sum of squares per example (Nielsen) instead of the mean over entries"),
    },
    "optimizer": {
        "name": Field(str, "sgd", f"one of {list(OPTIMIZERS)}", lambda v: v in OPTIMIZERS, "optimizer"),
        "lr": Field(float, 0.05, "a number > 0", positive, "(peak) learning rate"),
        "momentum": Field(float, 0.0, "a number in [0, 1)", lambda v: 0 <= v < 1, "sgd: momentum"),
        "nesterov": Field(bool, False, "true or false", None, "sgd: Nesterov momentum"),
        "betas": Field(list, [0.9, 0.999], "a list of two numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "adam/adamw: moment decay rates"),
        "eps": Field(float, 1e-8, "a number > 0", positive, "adam/adamw: denominator epsilon"),
        "weight_decay": Field(float, 0.0, "a number >= 0", non_negative, "L2 (sgd, adam) or decoupled (adamw) weight decay"),
        "decay_bias_and_norm": Field(bool, True, "true or false", None, "false: no weight decay on biases and BatchNorm parameters"),
        "ema": Field(float, 0.0, "a number in [0, 1) (0 = off)", _number(0, 1, True),
                     "decay of a moving average of the weights (and BatchNorm statistics), updated after every step; "
                     "validation, best_val and the saved model use it"),
        "ema_warmup": Field(bool, True, "true or false", None, "ema: decay min(ema, (1 + n) / (10 + n)) at the n-th update"),
    },
    "schedule": {
        "name": Field(str, "constant", f"one of {list(SCHEDULES)}", lambda v: v in SCHEDULES, "learning-rate schedule"),
        "interval": Field(str, "step", "'step' or 'epoch'", lambda v: v in ("step", "epoch"), "how often the schedule advances"),
        "warmup": Field(int, 0, "an integer >= 0", non_negative, "linear warm-up length, in intervals"),
        "step_size": Field(int, 1, "an integer >= 1", positive, "step: intervals between decays"),
        "gamma": Field(float, 0.1, "a number > 0", positive, "step/exponential: decay factor"),
        "min_lr": Field(float, 0.0, "a number >= 0", non_negative, "cosine: final learning rate"),
        "pct_start": Field(float, 0.3, "a number in (0, 1)", lambda v: 0 < v < 1, "onecycle: fraction of the run spent rising"),
        "div_factor": Field(float, 25.0, "a number > 1", lambda v: v > 1, "onecycle: initial lr = lr / div_factor"),
        "final_div_factor": Field(float, 1e4, "a number > 1", lambda v: v > 1, "onecycle: final lr = initial lr / final_div_factor"),
    },
}

EVALUATE = {
    "backend": BACKEND,
    # nnlib.model.EVAL_BATCH_SIZE, the batch of validation during training (a test checks they agree).
    "batch_size": Field(int, 128, "an integer >= 1", positive, "images per forward pass"),
    "threads": THREADS,
    "misclassified": Field(int, 36, "an integer in [0, 200]", lambda v: 0 <= v <= 200, "most confident mistakes shown in misclassified.png"),
    "robust_images": Field(int, 0, "an integer >= 0 (0 = all 10000)", non_negative,
                           "test digits the robustness suite corrupts and scores, evenly spread (docs/robustness.md)"),
}


SECTIONS = {"prepare": PREPARE, "train": TRAIN, "evaluate": EVALUATE}


def effective_params(path=PARAMS_FILE) -> dict:
    """Every section as the stages will use it: params.yaml over the preset over the defaults."""
    _, seed, preset = load_top_level(path)
    out = {"seed": seed, "preset": preset}
    for name, schema in SECTIONS.items():
        out[name] = load_section(name, schema, path)[1]
    return out
