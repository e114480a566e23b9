"""What the second core gives one training: a preset at 1 thread and at 2, this checkout against another.

    python bench/scaling.py --baseline ../old-checkout --rounds 4 --json bench/scaling.json

Each training is a child process of ``bench/compare.py`` (its thread rows' children: warm-up, then
``--seconds`` of steps on MNIST batches, registered as a run), one at a time, in the order
baseline 1 thread, baseline 2 threads, this checkout 1, this checkout 2, then the reverse order in the next
round, and so on for ``--rounds`` rounds, so that the machine's drift, and whatever a run leaves to the
next, falls on both. Printed and recorded: images/s of every run, and per checkout
the median 2-vs-1 ratio over the rounds (each round's own pair) and the ratio of the medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import compare

HERE = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="another checkout's root (its nnlib/ is timed); none: this checkout alone")
    p.add_argument("--config", default="cnn", help="preset (default cnn)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per training (default 10)")
    p.add_argument("--rounds", type=int, default=4, help="rounds (default 4)")
    p.add_argument("--json", metavar="PATH", help="write every figure here")
    args = p.parse_args(argv)
    roots = ([("baseline", str(Path(args.baseline).resolve()))] if args.baseline else []) + [("this", str(HERE))]
    child_args = compare.parse_args([])
    runs = {(name, t): [] for name, _ in roots for t in (1, 2)}
    print(f"{compare.load_note()} at the start", flush=True)
    with tempfile.TemporaryDirectory(prefix="scaling_registry_") as registry:
        for r in range(args.rounds):
            order = [(name, root, threads) for name, root in roots for threads in (1, 2)]
            for name, root, threads in (order if r % 2 == 0 else order[::-1]):
                child_args.nnlib_root = root
                spec = {"framework": "nnlib", "config": args.config, "threads": threads, "seconds": args.seconds,
                        "warmup": child_args.warmup}
                out = compare.together([spec], child_args, env={"NNLIB_REGISTRY": registry, "NNLIB_JOBS": ""})
                runs[(name, threads)].append(out[0]["img_s"])
                print(f"  round {r + 1}, {name}, {threads} thread(s): {out[0]['img_s']:,.0f} img/s", flush=True)
    result = {"config": args.config, "seconds": args.seconds, "rounds": args.rounds, "load_end": compare.load_note(),
              "checkouts": {}}
    for name, root in roots:
        one, two = runs[(name, 1)], runs[(name, 2)]
        row = {"root": root, "img_s_1_thread": one, "img_s_2_threads": two,
               "paired_ratios": [b / a for a, b in zip(one, two)],
               "median_paired_ratio": statistics.median(b / a for a, b in zip(one, two)),
               "ratio_of_medians": statistics.median(two) / statistics.median(one)}
        result["checkouts"][name] = row
        print(f"{name}: 1 thread {statistics.median(one):,.0f} img/s, 2 threads {statistics.median(two):,.0f} img/s, "
              f"2 vs 1 {row['ratio_of_medians']:.2f}x (paired {', '.join(f'{x:.2f}' for x in row['paired_ratios'])})")
    print(f"{result['load_end']} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
