"""Faults: a training process killed with SIGKILL, a full disk, a read-only output folder.

The kill test runs a real `imgpipe run` in a child process and kills it
mid-epoch; the disk tests mount a tiny or read-only tmpfs (skipped where the
test may not mount file systems, with the reason).
"""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from imgpipe.engine.run_folder import load_run
from imgpipe.engine.trainer import read_history
from tests import corpus

TRAINING = ["--image-size", "32", "--batch-size", "4", "--set", "train.verbose=0", "--set", "train.patience=0",
            "--set", "augment.viewpoint=none", "--set", "augment.illumination=none", "--set", "augment.occlusion=none"]


def imgpipe_command(*args):
    return [sys.executable, "-m", "imgpipe", "-q", *map(str, args)]


def child_environment():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def bigger_class_folder(tmp_path_factory):
    """Enough images for an epoch to last about a second, so a kill lands inside one."""
    return corpus.photo_class_folder(tmp_path_factory.mktemp("kill") / "images", per_class=120)


def test_a_run_killed_mid_epoch_resumes_to_the_requested_epochs(bigger_class_folder, tmp_path):
    run_dir, epochs = tmp_path / "run", 5
    command = imgpipe_command("run", "classify", "--data", bigger_class_folder, "--epochs", epochs,
                              "--output", run_dir, "--export-dir", tmp_path / "models", *TRAINING)
    child = subprocess.Popen(command, env=child_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    history = run_dir / "history.csv"
    deadline = time.monotonic() + 300
    while len(read_history(history).get("epoch", [])) < 2:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "training did not reach epoch 2 in time"
        time.sleep(0.05)
    time.sleep(0.3)  # into the third epoch
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    completed = len(read_history(history)["epoch"])
    assert 2 <= completed < epochs and not (run_dir / "metrics.json").exists()
    # The interrupted run's last epoch can be exported: its weights come from the --resume backup.
    assert not (run_dir / "checkpoints" / "last.weights.h5").exists()
    assert load_run(run_dir, "last").model.count_params() > 0

    resumed = subprocess.run(imgpipe_command("run", "classify", "--resume", "--output", run_dir),
                             env=child_environment(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert read_history(history)["epoch"] == list(range(epochs))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == epochs and metrics["export_path"]
    assert (pathlib.Path(metrics["export_path"]) / "saved_model.pb").is_file()


@contextlib.contextmanager
def mounted_tmpfs(options):
    """A fresh tmpfs mounted with `options` (e.g. 'size=64k' or 'ro'), unmounted afterwards."""
    folder = tempfile.mkdtemp(prefix="imgpipe-fs-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder], capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(folder)
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); "
                    "needs root or CAP_SYS_ADMIN")
    try:
        yield pathlib.Path(folder)
    finally:
        subprocess.run(["umount", "-l", folder], check=False)
        os.rmdir(folder)


@pytest.mark.parametrize("where", ["output", "export"])
def test_a_full_disk_stops_with_the_folder_named_and_data_untouched(class_folder, tmp_path, where):
    """In a child process: the failed write must also not crash the interpreter on its way out."""
    before = corpus.tree_snapshot(class_folder)
    with mounted_tmpfs("size=96k") as small:
        output = small / "run" if where == "output" else tmp_path / "run"
        export_root = small / "models" if where == "export" else tmp_path / "models"
        child = subprocess.run(imgpipe_command("run", "classify", "--data", class_folder, "--epochs", "1",
                                               "--image-size", "16", "--output", output, "--export-dir", export_root,
                                               "--set", "train.verbose=0"),
                               env=child_environment(), capture_output=True, text=True, timeout=300)
        assert child.returncode == 2, child.stderr
        errors = [line for line in child.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in child.stderr
        assert "No space left on device" in errors[0] and str(small) in errors[0]
        if where == "export":
            assert not any(path.name.isdigit() for path in (small / "models" / "classify").glob("*"))
    assert corpus.tree_snapshot(class_folder) == before


def test_a_read_only_output_folder_is_refused_before_training(cli, class_folder):
    with mounted_tmpfs("ro") as read_only:
        code, _, err = cli("run", "classify", "--data", class_folder, "--epochs", "1",
                           "--output", read_only / "run")
        assert code == 2 and "Traceback" not in err
        assert str(read_only / "run") in err and "Read-only file system" in err
        code, _, err = cli("run", "classify", "--data", class_folder, "--epochs", "1",
                           "--export-dir", read_only / "models")
        assert code == 2 and str(read_only / "models") in err and "Read-only file system" in err
