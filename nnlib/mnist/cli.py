"""The ``nnlib`` command: ``predict``, ``info`` and ``export`` on a trained model file; ``params``.

A thin argparse layer: each subcommand parses its flags and calls library functions
(:mod:`nnlib.mnist.predict`, :mod:`nnlib.mnist.summary`, :mod:`nnlib.export`) that tests call directly.
Errors reach the user as one line and the exit code of :mod:`nnlib.errors` (1: bad input file,
2: bad flags, 130: Ctrl-C). ``python -m nnlib`` runs the same.
"""
from __future__ import annotations

import argparse
import json
import sys

from nnlib import __version__
from nnlib.errors import ParamsError, run_stage
from nnlib.mnist.paths import MODEL

DEFAULT_MODEL = MODEL.as_posix()


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are a ParamsError (one line, exit code 2) instead of its own exit."""

    def error(self, message):
        raise ParamsError(f"{self.prog}: {message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def cmd_predict(args) -> int:
    from nnlib.modelfile import load_model  # noqa: PLC0415 - each subcommand imports only what it needs
    from nnlib.mnist.predict import Failure, format_line, predict_paths, save_grid, to_json  # noqa: PLC0415

    if args.top > 10:
        raise ParamsError(f"--top must be between 1 and 10 (there are 10 digits), got {args.top}")
    model, _ = load_model(args.model)
    results = predict_paths(model, args.paths, preprocess=not args.no_preprocess, batch_size=args.batch_size)
    failed = 0
    for result in results:
        if isinstance(result, Failure):
            failed += 1
            print(f"error: {result.message}", file=sys.stderr)
        elif args.json:
            print(json.dumps(to_json(result)))
        else:
            print(format_line(result, args.top))
    if args.show:
        save_grid([r for r in results if not isinstance(r, Failure)], args.show, show_steps=not args.no_preprocess)
    return 1 if failed else 0


def cmd_info(args) -> int:
    from nnlib.mnist.summary import describe, format_description  # noqa: PLC0415

    description = describe(args.model, eval_json=args.eval_json)
    print(json.dumps(description, indent=2) if args.json else format_description(description))
    return 0


def cmd_export(args) -> int:
    from nnlib.export import export_model_file  # noqa: PLC0415

    export_model_file(args.model, args.out)
    print(f"export: wrote {args.out}", file=sys.stderr)
    return 0


def cmd_params(args) -> int:
    import yaml  # noqa: PLC0415

    from nnlib.mnist.config.schema import effective_params  # noqa: PLC0415

    print(yaml.safe_dump(effective_params(args.file), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nnlib", description="Use a model trained by the nnlib pipeline.",
                     epilog="Exit codes: 0 ok, 1 missing or corrupt input file, 2 bad flags, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"nnlib {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter

    p = commands.add_parser(
        "predict", help="classify digit images, arrays or IDX files", formatter_class=raw,
        description="Classify handwritten digits with a trained model.\n\n"
                    "PATH may be a PNG/JPEG/BMP/GIF image (any size, dark ink on light paper or the reverse),\n"
                    "a directory of images, a .npy/.npz array of shape (28, 28) or (N, 28, 28), or an IDX file\n"
                    "(plain or .gz). Images are preprocessed the way MNIST was made (see README, 'Use the model').",
        epilog="examples:\n  nnlib predict my_digit.png\n  nnlib predict digits/ --top 3 --show seen.png\n"
               "  nnlib predict data/raw/t10k-images-idx3-ubyte --json > predictions.jsonl")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image, directory, .npy/.npz or IDX file")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model file (default: {DEFAULT_MODEL})")
    p.add_argument("--top", type=_positive_int, default=1, metavar="K", help="show the K most likely digits (default: 1)")
    p.add_argument("--json", action="store_true", help="print JSON Lines: file, index, digit, probability, probabilities")
    p.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="images per forward pass (default: 256)")
    p.add_argument("--show", metavar="FILE.png", help="write a grid of what the network saw, with its predictions; with at most 30 "
                   "digits, each picture's preprocessing steps (paper, ink, dropped components) too")
    p.add_argument("--no-preprocess", action="store_true",
                   help="take images as they are: already 28x28, white digit on black, like MNIST")
    p.set_defaults(run=cmd_predict)

    p = commands.add_parser(
        "info", help="what a model file holds", formatter_class=raw,
        description="Show a model file's layers (output shape, parameter count) and the metadata saved with it:\n"
                    "training params, seed, the epoch kept, its validation accuracy, the test accuracy when\n"
                    "metrics/eval.json scored this very file, the shard manifest's SHA-256 and the nnlib version.",
        epilog="examples:\n  nnlib info models/model.npz\n  nnlib info models/model.npz --json")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help=f"model file (default: {DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.add_argument("--eval-json", default="metrics/eval.json", metavar="FILE",
                   help="evaluation metrics to take the test accuracy from (default: metrics/eval.json)")
    p.set_defaults(run=cmd_info)

    p = commands.add_parser(
        "export", help="write the model as an ONNX graph", formatter_class=raw,
        description="Write the model as an ONNX graph (needs the export extra: pip install -e '.[export]').\n"
                    "Input: float32 (N, 1, 28, 28) in [0, 1], named 'input'. Output: logits (N, 10), named 'logits'.\n"
                    "Batch norm and dropout are exported in inference form.",
        epilog="example:\n  nnlib export models/model.npz model.onnx")
    p.add_argument("model", metavar="MODEL", help="model file")
    p.add_argument("out", metavar="OUT.onnx", help="where to write the ONNX graph")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser(
        "params", help="the values a run will use", formatter_class=raw,
        description="Print every section of params.yaml as the stages will use it: your values, then the\n"
                    "preset's, then the defaults, for every key left null (see nnlib/mnist/config/presets/).",
        epilog="examples:\n  nnlib params\n  nnlib params --file other-params.yaml")
    p.add_argument("--file", default="params.yaml", metavar="PARAMS", help="params file (default: params.yaml)")
    p.set_defaults(run=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nnlib`` console script."""
    def run() -> int:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        return args.run(args)

    run_stage(run)
