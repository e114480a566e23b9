"""Stage ``committee`` of the committee pipeline (committee/dvc.yaml): the members' models in one file.

    python stages/committee.py               # from the repository root; dvc repro committee/dvc.yaml:committee

Writes ``committee/models/committee.npz``: every member of committee/params.yaml, in its order, as one
committee model file (``nnlib committee`` writes the same kind; ``nnlib predict``, ``info``, ``export``
and ``serve`` take it), with the members' names; and ``committee/metrics/train_log.tsv``, the first
member's training log, which the committee's curves.png draws. Both are renamed into place together.
"""
from nnlib.errors import InputError
from nnlib.files import OutputSet, write_text
from nnlib.mnist import members
from nnlib.mnist.joined import join
from nnlib.mnist.paths import MODEL, TRAIN_LOG


def main() -> None:
    names = list(members.load_committee().members)
    paths = [members.member_dir(name) / MODEL for name in names]
    for name, path in zip(names, paths):
        if not path.is_file():
            raise InputError(f"{path} is missing: it is made by member {name}'s train stage "
                             f"(dvc repro committee/dvc.yaml:train@{name})")
    log = members.member_dir(names[0]) / TRAIN_LOG
    with OutputSet() as out:
        committee = join(out.path(members.MODEL), paths, metadata={"names": names})
        write_text(out.path(members.COMMITTEE / TRAIN_LOG), log.read_text())
    print(f"committee: {len(names)} members ({', '.join(names)}), {committee.num_parameters():,} parameters -> {members.MODEL}")


if __name__ == "__main__":
    members.run_committee_stage(main)
