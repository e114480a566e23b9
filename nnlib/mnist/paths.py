"""Where the pipeline keeps its files, relative to the repository root: the one module that names them.

``dvc.yaml`` names the same paths as each stage's deps and outs; ``tests/test_stage_deps.py`` checks
that the two agree, so a path is changed here and in dvc.yaml, nowhere else.
"""
from pathlib import Path

RAW = Path("data/raw")  # fetch: the four MNIST IDX files of RAW_FILES
#: The four MNIST IDX files in RAW (decompressed, under their official names), by role.
RAW_FILES = {
    "train_images": "train-images-idx3-ubyte",  # uint8 (60000, 28, 28)
    "train_labels": "train-labels-idx1-ubyte",  # uint8 (60000,), digits 0..9
    "test_images": "t10k-images-idx3-ubyte",  # uint8 (10000, 28, 28)
    "test_labels": "t10k-labels-idx1-ubyte",  # uint8 (10000,)
}
SHARDS = Path("data/shards")  # prepare: train-*.npz, val.npz, test.npz, manifest.json
MODEL = Path("models/model.npz")  # train
DRAWN = Path("data/drawn")  # digits drawn on nnlib serve's page, with labels.csv (a dependency of evaluate)
INIT = Path("models/init")  # train.init_from files (a dependency of train)
CHECKPOINTS = Path("models/checkpoints")  # train: per-epoch checkpoints of an unfinished run
METRICS = Path("metrics")  # the files below
TRAIN_METRICS = METRICS / "train.json"  # train: DVC metrics (best and selected epoch, their validation accuracy)
TRAIN_LOG = METRICS / "train_log.tsv"  # train: one row per epoch (losses, accuracies, learning rate)
TIMING = METRICS / "timing.json"  # train: seconds (not a DVC metric: it changes from run to run)
RUN_PARAMS = METRICS / "run_params.yaml"  # train: the effective values that ran, for `dvc exp show` / `dvc params diff`
LIVE_LOG = METRICS / "live" / "train_log.tsv"  # train: rewritten after every epoch
EVAL_METRICS = METRICS / "eval.json"  # evaluate: scalars only, each a column of `dvc exp show`
EVAL_DETAILS = METRICS / "eval_details.json"  # evaluate: per-class precision, recall, F1; top confusions; the model's SHA-256
PREDICTIONS = METRICS / "predictions.csv"  # evaluate: actual and predicted class of every test image
PLOTS = METRICS / "plots"  # evaluate's PNGs, and prepare's augmentation preview
PREVIEW = PLOTS / "augment_preview.png"
