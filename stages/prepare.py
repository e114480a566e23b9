"""Stage `prepare`: data/raw -> data/shards (train shards, val, test, manifest) + augmentation preview.

Run from the repository root: ``python stages/prepare.py``. Reads ``seed`` and the ``prepare``
section of params.yaml only; see nnlib/mnist/data/shards.py for the schema, the layout of the outputs and how a
run replaces them (everything checked first, the new set built beside the old one, then swapped in).
SIGTERM unwinds it like Ctrl-C (see nnlib.errors.run_stage), so a terminated run, too, leaves
data/shards as it was (exit 143).
"""

from nnlib.mnist.data import shards
from nnlib.errors import run_stage


def main() -> None:
    seed, params = shards.load_params()
    manifest = shards.prepare(seed, params)
    n_train = sum(entry["count"] for entry in manifest["train_shards"])
    print(
        f"prepare: {len(manifest['train_shards'])} train shards ({n_train} images: "
        f"{manifest['train_split_size']} x {manifest['copies'] + 1}), "
        f"val {manifest['val']['count']}, test {manifest['test']['count']} -> {shards.SHARDS_DIR}"
    )


if __name__ == "__main__":
    run_stage(main)
