"""Stage ``evaluate`` of the committee pipeline (committee/dvc.yaml): the main evaluate stage, on the committee.

    python stages/committee_evaluate.py      # from the repository root; dvc repro committee/dvc.yaml:evaluate

Scores ``committee/models/committee.npz`` (the mean of its members' probabilities) with ``stages/evaluate.py``'s
own code on the test set of ``data/shards`` and the drawings of ``data/drawn``, and writes the same report
under ``committee/metrics/``: eval.json (accuracy, robust_accuracy, drawn_accuracy when there are drawings,
...), eval_details.json, predictions.csv and plots/*.png. Its settings are committee/params.yaml's ``seed``
(the robustness suite's corruptions) and ``evaluate`` section.
"""
from nnlib.mnist import members

import evaluate  # stages/evaluate.py: this script's folder is on the import path


def main() -> None:
    params = members.load_committee()
    evaluate.run(params.seed, "", params.evaluate, root=members.COMMITTEE, model_path=members.MODEL)


if __name__ == "__main__":
    members.run_committee_stage(main)
