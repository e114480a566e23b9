"""Stage ``train@NAME`` of the committee pipeline (committee/dvc.yaml): the main train stage, in the member's folder.

    python stages/member_train.py NAME       # from the repository root; dvc repro committee/dvc.yaml:train@NAME

Runs ``stages/train.py`` unchanged in ``committee/members/NAME/``, which is laid out as the repository root:
it reads params.yaml and data/shards/ there (both written by the member's prepare stage) and writes
models/model.npz, metrics/train.json, train_log.tsv, timing.json and run_params.yaml there, all together;
its checkpoints go to models/checkpoints/ there, so a killed member resumes as the main training does.
"""
from nnlib.mnist import members

import train  # stages/train.py: this script's folder is on the import path


def main() -> None:
    name = members.name_argument()
    members.check_document(name, members.load_committee().member(name))
    with members.working_in(name):
        train.main()


if __name__ == "__main__":
    members.run_committee_stage(main)
