"""The ``nnlib`` command: ``predict``, ``info``, ``export`` and ``serve`` on a trained model file (one network
or a committee); ``committee``, which joins model files into one committee file; ``params``.

A thin argparse layer: each subcommand parses its flags and calls library functions
(:mod:`nnlib.mnist.predict`, :mod:`nnlib.mnist.summary`, :mod:`nnlib.export`) that tests call directly.
Errors reach the user as one line and the exit code of :mod:`nnlib.errors` (1: bad input file,
2: bad flags, 130: Ctrl-C). ``python -m nnlib`` runs the same.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nnlib import __version__
from nnlib.errors import InputError, OutputError, ParamsError, run_stage
from nnlib.files import check_user_output
from nnlib.mnist.paths import DRAWN, EVAL_METRICS, MODEL, RAW, RAW_FILES

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


def _threads(text: str):
    """``--threads``: 'auto' or an integer >= 0 (0 = every core), as train.threads."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 0, got {text!r}")
    return value


def repository_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) holding dvc.yaml and params.yaml."""
    start = (start or Path.cwd()).resolve()
    return next((d for d in (start, *start.parents) if (d / "dvc.yaml").is_file() and (d / "params.yaml").is_file()), None)


def check_default_path(path: str, default: str) -> None:
    """A default path (models/model.npz, ...) is relative to the repository root: when it is missing
    because the working directory is not that root, say so instead of "re-train it"."""
    if path != default or Path(path).exists() or (Path.cwd() / "dvc.yaml").is_file():
        return
    root = repository_root()
    where = (f"the repository root is {root}: cd {os.path.relpath(root)}" if root else
             "run from the repository root (the folder with dvc.yaml), or name the file")
    raise InputError(f"{path} not found: the working directory {Path.cwd()} is not the repository root; {where}")


def cmd_predict(args) -> int:
    import numpy as np  # noqa: PLC0415

    from nnlib import threads  # noqa: PLC0415
    from nnlib.modelfile import check_outputs, load_model  # noqa: PLC0415 - each subcommand imports only what it needs
    from nnlib.mnist.predict import Failure, format_line, predict_paths, save_grid, to_json  # noqa: PLC0415

    if args.top > 10:
        raise ParamsError(f"--top must be between 1 and 10 (there are 10 digits), got {args.top}")
    if args.show:
        check_user_output(args.show, [args.model, *_input_files(args.paths)])
    check_default_path(args.model, DEFAULT_MODEL)
    model, _ = load_model(args.model)
    check_outputs(model, args.model)
    with threads.limit(args.threads, kind="predict", register=False):  # shares the cores, announces nothing
        results = predict_paths(model, args.paths, preprocess=not args.no_preprocess, batch_size=args.batch_size)
    probabilities = [r.probabilities for r in results if not isinstance(r, Failure)]
    if probabilities:  # finite weights can still overflow on these very images
        check_outputs(model, args.model, logits=np.stack(probabilities))
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


def _input_files(paths) -> list:
    """The files that the inputs name: each path, and the images of a directory."""
    from nnlib.mnist.images import expand  # noqa: PLC0415

    found = []
    for path in paths:
        try:
            found += expand(path)
        except Exception:  # noqa: BLE001 - an unreadable input is reported when it is read
            found.append(path)
    return found


def cmd_info(args) -> int:
    from nnlib.mnist.summary import describe, format_description  # noqa: PLC0415

    check_default_path(args.model, DEFAULT_MODEL)
    description = describe(args.model, eval_json=args.eval_json)
    print(json.dumps(description, indent=2) if args.json else format_description(description))
    return 0


def cmd_export(args) -> int:
    from nnlib.export import export_model_file  # noqa: PLC0415

    if args.out == "-":
        if sys.stdout is None or sys.stdout.isatty():
            raise ParamsError("nnlib export MODEL -: writes the ONNX bytes to stdout, which is a terminal or closed: "
                              "redirect it (> model.onnx) or give a file name")
        export_model_file(args.model, sys.stdout.buffer)
        return 0
    check_user_output(args.out, [args.model])
    export_model_file(args.model, args.out)
    print(f"export: wrote {args.out}", file=sys.stderr)
    return 0


def _weights(text: str) -> list[float]:
    """``--weights``: comma-separated numbers, one per member (their checks are the committee's)."""
    try:
        return [float(word) for word in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, one per member, got {text!r}") from None


def cmd_committee(args) -> int:
    from nnlib.mnist.joined import check_count, join  # noqa: PLC0415

    count = len(args.members)
    check_count(count)
    check_user_output(args.out, args.members)  # the destination first, before any member is read
    committee = join(args.out, args.members, args.weights)
    print(f"committee: wrote {args.out} ({count} members, {committee.num_parameters():,} parameters)", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from nnlib.mnist.serve import serve  # noqa: PLC0415

    serve(args.model, args.host, args.port, drawn_dir=args.drawn, eval_json=args.eval_json,
          log=lambda line: print(line, file=sys.stderr, flush=True))
    return 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535, got {text!r}")
    return value


def cmd_params(args) -> int:
    import yaml  # noqa: PLC0415

    from nnlib.mnist.config.schema import effective_params  # noqa: PLC0415

    from nnlib.footprint import check_fits  # noqa: PLC0415

    check_default_path(args.file, "params.yaml")
    params = effective_params(args.file)
    check_fits(params["train"]["model"], (1, 28, 28), params["train"]["batch_size"])
    print(yaml.safe_dump(params, sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nnlib", description="Use a model trained by the nnlib pipeline.",
                     epilog="Exit codes: 0 ok, 1 missing or corrupt input file, 2 bad flags, 130 interrupted, 143 terminated.")
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
               f"  nnlib predict {(RAW / RAW_FILES['test_images']).as_posix()} --json > predictions.jsonl")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image, directory, .npy/.npz or IDX file")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model or committee file (default: {DEFAULT_MODEL})")
    p.add_argument("--top", type=_positive_int, default=1, metavar="K", help="show the K most likely digits (default: 1)")
    p.add_argument("--json", action="store_true", help="print JSON Lines: file, index, digit, probability, probabilities")
    p.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="images per forward pass (default: 256)")
    p.add_argument("--threads", type=_threads, default="auto", metavar="N",
                   help="BLAS threads: auto (default) shares the cores with running nnlib trainings; 0 = every core")
    p.add_argument("--show", metavar="FILE.png", help="write a grid of what the network saw, with its predictions; with at most 30 "
                   "digits, each picture's preprocessing steps (paper, ink, dropped components) too")
    p.add_argument("--no-preprocess", action="store_true",
                   help="take images as they are: already 28x28, white digit on black, like MNIST")
    p.set_defaults(run=cmd_predict)

    p = commands.add_parser(
        "info", help="what a model file holds", formatter_class=raw,
        description="Show a model file's layers (output shape, parameter count) and the metadata saved with it:\n"
                    "training params, seed, the epoch kept, its validation accuracy, the test accuracy when\n"
                    f"{EVAL_METRICS.as_posix()} scored this very file, the shard manifest's SHA-256 and the nnlib version.",
        epilog="examples:\n  nnlib info models/model.npz\n  nnlib info models/model.npz --json")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help=f"model file (default: {DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.add_argument("--eval-json", default=EVAL_METRICS.as_posix(), metavar="FILE",
                   help=f"evaluation metrics to take the test accuracy from (default: {EVAL_METRICS.as_posix()})")
    p.set_defaults(run=cmd_info)

    p = commands.add_parser(
        "export", help="write the model as an ONNX graph", formatter_class=raw,
        description="Write the model as an ONNX graph (needs the export extra: pip install -e '.[export]').\n"
                    "Input: float32 (N, 1, 28, 28) in [0, 1], named 'input'. Output: logits (N, 10), named 'logits';\n"
                    "for a committee file, one graph of every member: their mean softmax probabilities (N, 10),\n"
                    "named 'probabilities'. Batch norm and dropout are exported in inference form.",
        epilog="example:\n  nnlib export models/model.npz model.onnx")
    p.add_argument("model", metavar="MODEL", help="model file")
    p.add_argument("out", metavar="OUT.onnx", help="where to write the ONNX graph")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser(
        "committee", help="join model files into one committee file", formatter_class=raw,
        description="Write one model file holding every MEMBER: a committee, whose answer is the mean of the\n"
                    "members' softmax probabilities. nnlib predict, info, export and serve take it like any\n"
                    "model file (docs/use-the-model.md). The members must take the same inputs and give the\n"
                    "same outputs; each keeps its own metadata (seed, training params).",
        epilog="exit codes: 0 written; 1 a member file missing or corrupt, or OUT cannot be written;\n"
               "2 members that do not fit together (other input or output shapes), a member that is a\n"
               "committee itself, fewer than 2 members, bad --weights, or OUT naming a member.\n\n"
               "example:\n  nnlib committee models/committee.npz seed0/model.npz seed1/model.npz seed2/model.npz")
    p.add_argument("out", metavar="OUT.npz", help="where to write the committee file")
    p.add_argument("members", nargs="+", metavar="MEMBER.npz", help="model files of the members (at least 2)")
    p.add_argument("--weights", type=_weights, metavar="W,W,...",
                   help="one positive number per member: a weighted mean (default: every member counts once)")
    p.set_defaults(run=cmd_committee)

    p = commands.add_parser(
        "serve", help="a local web page: draw a digit and watch the network read it", formatter_class=raw,
        description="Serve a page where you draw a digit (or upload a picture) and see the prediction, the\n"
                    "28x28 input after nnlib predict's preprocessing and the first layer's feature maps, with\n"
                    "a JSON API behind it (docs/serve.md). Needs the serve extra: pip install -e '.[serve]'.\n"
                    "Drawings you label on the page are saved in DRAWN (data/drawn/), which the evaluate\n"
                    "stage scores as drawn_accuracy.",
        epilog="examples:\n  nnlib serve\n  nnlib serve --model models/model.npz --port 8080")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model file (default: {DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=_port, default=8000, help="port (default: 8000)")
    p.add_argument("--drawn", default=DRAWN.as_posix(), metavar="DIR",
                   help=f"where labelled drawings are saved (default: {DRAWN.as_posix()})")
    p.add_argument("--eval-json", default="metrics/eval.json", metavar="FILE",
                   help="evaluation metrics for the model card's test accuracy (default: metrics/eval.json)")
    p.set_defaults(run=cmd_serve)

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
        if sys.stdout is None and not (args.command == "export" and args.out != "-"):
            raise OutputError("stdout is closed: nothing could be printed; run it with stdout open (or redirected to a file)")
        try:
            code = args.run(args)
            if sys.stdout is not None:
                sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (| head): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except OSError as err:
            if err.filename is not None:
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the rest of the buffer, too, is lost
            from nnlib.files import os_error_line  # noqa: PLC0415
            raise OutputError(os_error_line("stdout", err).replace("choose another location", "redirect it elsewhere")) from None
        return code

    run_stage(run)
