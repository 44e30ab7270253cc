"""`imgpipe run` killed with SIGKILL in its export, then finished with `--resume`: every requested epoch
once (none trained again), a complete export, no half-written version, data untouched. One moment only (each costs about 50 s
of CI); `test_faults.py` kills mid-epoch, and `benchmarks/kill_training.py` kills at 50 random moments
(every phase)."""

import pytest

from tests import corpus
from tests.kill_points import KillCase, folder_digest

EPOCHS = 3


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return corpus.photo_class_folder(tmp_path_factory.mktemp("kill_points") / "images", per_class=16)


@pytest.mark.slow
def test_a_run_killed_while_exporting_resumes_to_a_whole_run(photos, tmp_path):
    before = folder_digest(photos)
    case = KillCase(photos, tmp_path, EPOCHS)
    assert case.kill_when(case.exporting) == "export"
    assert case.finish() == "resumed"
    assert case.problems(before) == []
    assert case.retrained_epochs() == []  # training had finished: --resume goes straight to the export
