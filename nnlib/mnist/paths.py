"""Where the pipeline keeps its files, relative to the repository root: the one module that names them.

``dvc.yaml`` names the same paths as each stage's deps and outs; ``tests/test_stage_deps.py`` checks
that the two agree, so a path is changed here and in dvc.yaml, nowhere else.
"""
from pathlib import Path

RAW = Path("data/raw")  # fetch: the four MNIST IDX files
SHARDS = Path("data/shards")  # prepare: train-*.npz, val.npz, test.npz, manifest.json
MODEL = Path("models/model.npz")  # train
DRAWN = Path("data/drawn")  # digits drawn on nnlib serve's page, with labels.csv (a dependency of evaluate)
INIT = Path("models/init")  # train.init_from files (a dependency of train)
CHECKPOINTS = Path("models/checkpoints")  # train: per-epoch checkpoints of an unfinished run
METRICS = Path("metrics")  # train.json, train_log.tsv, timing.json, eval.json, eval_details.json, predictions.csv
LIVE_LOG = METRICS / "live" / "train_log.tsv"  # train: rewritten after every epoch
PLOTS = METRICS / "plots"  # evaluate's PNGs, and prepare's augmentation preview
PREVIEW = PLOTS / "augment_preview.png"
