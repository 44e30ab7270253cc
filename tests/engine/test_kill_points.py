"""`imgpipe run` killed with SIGKILL in an epoch, in the robustness card and in the export, then finished
with `--resume`: every requested epoch once, a complete export, no half-written version, data untouched.
`benchmarks/kill_training.py` does this at 50 random moments."""

import pytest

from tests import corpus
from tests.kill_points import KillCase, folder_digest

EPOCHS = 3


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return corpus.photo_class_folder(tmp_path_factory.mktemp("kill_points") / "images", per_class=16)


@pytest.mark.slow
@pytest.mark.parametrize("moment, phase", [
    ("an epoch's row is written", "epoch 2"),
    ("the last epoch's row is written", "evaluation and robustness card"),
    ("the export's staging folder appears", "export"),
])
def test_a_run_killed_at_this_moment_resumes_to_a_whole_run(photos, tmp_path, moment, phase):
    before = folder_digest(photos)
    case = KillCase(photos, tmp_path, EPOCHS)
    condition = {"an epoch's row is written": lambda: case.epochs_done() >= 1,
                 "the last epoch's row is written": lambda: case.epochs_done() >= EPOCHS,
                 "the export's staging folder appears": case.exporting}[moment]
    assert case.kill_when(condition) == phase
    assert case.finish() == "resumed"
    assert case.problems(before) == []
