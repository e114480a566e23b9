"""Stage ``settings@NAME`` of the committee pipeline (committee/dvc.yaml): a member's own params.yaml.

    python stages/member_settings.py NAME    # from the repository root; dvc repro committee/dvc.yaml:settings@NAME

Checks members.NAME of committee/params.yaml with params.yaml's own schema and presets (a bad value is one
line naming the member and the key, exit code 2) and writes it as ``committee/members/NAME/params.yaml``,
every section present (null: the preset's value), which the member's prepare and train stages read as the
main stages read params.yaml. Their DVC params are its sections, so a change to a member's train section
re-trains it without rebuilding its shards.
"""
from nnlib.errors import ParamsError
from nnlib.files import OutputSet, write_text
from nnlib.mnist import members
from nnlib.mnist.config.params import PARAMS_FILE
from nnlib.mnist.config.schema import effective_params
from nnlib.mnist.data.augment import AugmentConfig


def main() -> None:
    name = members.name_argument()
    settings = members.load_committee().member(name)
    with OutputSet() as out:  # checked where it is written, by the loaders that will read it
        path = out.path(members.member_dir(name) / PARAMS_FILE)
        write_text(path, members.member_document(name, settings))
        with members.relabelled(f"{members.PARAMS}: members.{name}", (path, PARAMS_FILE)):
            effective = effective_params(path)
            AugmentConfig.from_params(effective["prepare"]["augment"])  # the checks across keys, as prepare's
            if effective["train"]["init_from"]:
                raise ParamsError(f"{PARAMS_FILE}: train.init_from must be '' for a committee member (members start "
                                  "afresh; their folders have no models/init/ that DVC tracks)")
    print(f"settings@{name}: seed {effective['seed']}, preset {effective['preset']}, {effective['train']['epochs']} epochs "
          f"-> {members.member_dir(name) / PARAMS_FILE}")


if __name__ == "__main__":
    members.run_committee_stage(main)
