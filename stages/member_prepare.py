"""Stage ``prepare@NAME`` of the committee pipeline (committee/dvc.yaml): a member's shards.

    python stages/member_prepare.py NAME     # from the repository root; dvc repro committee/dvc.yaml:prepare@NAME

Reads ``committee/members/NAME/params.yaml`` (written by the member's settings stage) as the main prepare
stage reads params.yaml, and writes ``committee/members/NAME/data/shards/``: hard links to the main
pipeline's ``data/shards`` when their manifest records this member's seed and prepare params (the same
bytes, no second build), else shards of its own, built from ``data/raw`` as the main prepare stage
builds them. One line says which, and why. The new folder is swapped in whole.
"""
from nnlib.mnist import members
from nnlib.mnist.config.params import PARAMS_FILE
from nnlib.mnist.data import shards
from nnlib.mnist.paths import RAW, SHARDS


def main() -> None:
    name = members.name_argument()
    members.check_document(name, members.load_committee().member(name))
    folder = members.member_dir(name)
    with members.relabelled(f"{members.PARAMS}: members.{name}", (folder / PARAMS_FILE, PARAMS_FILE)):
        seed, prepare = shards.load_params(folder / PARAMS_FILE)
    target = folder / SHARDS
    reason = members.own_shards_reason(seed, prepare)
    if reason is None:
        print(f"prepare@{name}: shares the main pipeline's {SHARDS} (same seed and prepare params): hard links in {target}")
        members.link_shards(SHARDS, target)
        return
    print(f"prepare@{name}: own shards ({reason}) -> {target}")
    manifest = shards.prepare(seed, prepare, raw_dir=RAW, out_dir=target, preview_path=None)
    print(f"prepare@{name}: {len(manifest['train_shards'])} train shards ({manifest['train_split_size']} x "
          f"{manifest['copies'] + 1} images), val {manifest['val']['count']}, test {manifest['test']['count']}")


if __name__ == "__main__":
    members.run_committee_stage(main)
