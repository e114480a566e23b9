"""What averaging trained models gives, before a committee pipeline exists: clean and robust accuracy of
fixed groups of model files (their softmax probabilities averaged, as ``nnlib committee`` does).

    python bench/committee_probe.py --group adopted=a0.npz,a1.npz,a2.npz --group off=b0.npz,b1.npz,b2.npz \\
        --json bench/committee_probe.json

Each model scores the MNIST test set of ``data/shards/test.npz`` and the robustness suite's 14 corruptions
(drawn with ``--seed``, as the evaluate stage does with the params seed); every group's committee, and the
union of all groups (unless one group holds them all), is scored from the same probabilities. Groups are
fixed in advance: picking the best subset by its test accuracy would tune on the test set.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from nnlib.functional import softmax
from nnlib.mnist import robustness
from nnlib.mnist.data.stream import load_shard, to_batch
from nnlib.modelfile import load_model


def parse_group(text: str) -> tuple[str, list[Path]]:
    name, _, files = text.partition("=")
    if not name or not files:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE,FILE,..., got {text[:80]!r}")
    return name, [Path(f) for f in files.split(",")]


def accuracies(probabilities: dict, y: np.ndarray) -> dict:
    """{set name: accuracy} of (N, K) probabilities per set."""
    return {name: float((p.argmax(axis=1) == y).mean()) for name, p in probabilities.items()}


def summary(acc: dict) -> dict:
    corrupted = {k: v for k, v in acc.items() if k != "clean"}
    worst = min(corrupted, key=corrupted.get)
    return {"clean": acc["clean"], "robust": float(np.mean(list(corrupted.values()))), "worst": [worst, corrupted[worst]],
            "per_set": acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", type=parse_group, action="append", required=True, help="NAME=FILE,FILE,...")
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--seed", type=int, default=0, help="the robustness suite's draws (the params seed)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    x, y = load_shard(args.shards / "test.npz")
    sets = {"clean": x, **{entry.name: robustness.corrupt(entry.name, x, args.seed) for entry in robustness.SUITE}}
    groups = dict(args.group)
    members = {}
    with threadpool_limits(limits=2, user_api="blas"):
        for path in dict.fromkeys(p for files in groups.values() for p in files):
            model, _ = load_model(path)
            members[str(path)] = {k: softmax(model.predict_logits(to_batch(v), 256).astype(np.float64), axis=1)
                                  for k, v in sets.items()}
    result = {"seed": args.seed, "members": {}, "committees": {}}
    for path, probs in members.items():
        result["members"][path] = summary(accuracies(probs, y))
    union = list(dict.fromkeys(p for files in groups.values() for p in files))
    if all(set(union) != set(files) for files in groups.values()):
        groups["all"] = union
    for name, files in groups.items():
        mean = {k: np.mean([members[str(p)][k] for p in files], axis=0) for k in sets}
        result["committees"][name] = {"members": [str(p) for p in files], **summary(accuracies(mean, y))}
    for kind in ("members", "committees"):
        for name, row in result[kind].items():
            print(f"{kind[:-1]:9s} {name:50s} clean {100 * row['clean']:.2f}%  robust {100 * row['robust']:.2f}%  "
                  f"worst {row['worst'][0]} {100 * row['worst'][1]:.2f}%")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
