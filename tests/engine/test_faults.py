"""Faults: a training process killed with SIGKILL, a full disk, a read-only output folder.

The kill test runs a real `imgpipe run` in a child process and kills it
mid-epoch, then resumes in this process to see where the resumed fit starts.
The disk tests mount a tiny or read-only tmpfs (skipped where the test may not
mount file systems, with the reason in the run summary); each has an
unprivileged twin in which the operating system's answer is played by a patched
call (`mkdir` or a file's `write` raising EROFS or ENOSPC), so a skip never
leaves the claim unchecked.
"""

import builtins
import contextlib
import errno
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import pytest

import imgpipe
from imgpipe.engine.run_folder import load_run
from imgpipe.engine.trainer import read_history
from tests import corpus
from tests.engine.test_train import FitRecorder, raw_history_epochs, with_callback

TRAINING = ["--image-size", "32", "--batch-size", "4", "--set", "train.verbose=0", "--set", "train.patience=0",
            "--set", "augment.viewpoint=none", "--set", "augment.illumination=none", "--set", "augment.occlusion=none",
            "--no-robustness"]


def imgpipe_command(*args):
    return [sys.executable, "-m", "imgpipe", "-q", *map(str, args)]


def child_environment():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def bigger_class_folder(tmp_path_factory):
    """Enough images for an epoch to last about a second, so a kill lands inside one."""
    return corpus.photo_class_folder(tmp_path_factory.mktemp("kill") / "images", per_class=120)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_from_its_backup_to_the_requested_epochs(bigger_class_folder, tmp_path,
                                                                              monkeypatch):
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
    rows_before = raw_history_epochs(history)
    assert rows_before == list(range(len(rows_before))) and 2 <= len(rows_before) < epochs
    assert not (run_dir / "metrics.json").exists()
    # The interrupted run's last epoch can be exported: its weights come from the --resume backup.
    assert not (run_dir / "checkpoints" / "last.weights.h5").exists()
    backup_weights = load_run(run_dir, "last").model.get_weights()
    backed_up_epochs = json.loads((run_dir / "checkpoints" / "backup_train" / "training_metadata.json").read_text())
    assert backed_up_epochs["epoch"] == len(rows_before)  # the backup is written before the epoch's row

    recorder = FitRecorder()
    with_callback(monkeypatch, recorder)
    result = imgpipe.run("classify", resume=True, output=run_dir)
    assert recorder.epochs == list(range(len(rows_before), epochs))
    assert raw_history_epochs(history) == list(range(epochs))  # no epoch trained twice, none left out
    for restored, backed_up in zip(recorder.start_weights, backup_weights, strict=True):
        np.testing.assert_array_equal(restored, backed_up)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == epochs == result.metrics["epochs_run"] and metrics["export_path"]
    assert (pathlib.Path(metrics["export_path"]) / "saved_model.pb").is_file()


@contextlib.contextmanager
def mounted_tmpfs(options):
    """A fresh tmpfs mounted with `options` (e.g. 'size=64k' or 'ro'), unmounted afterwards."""
    folder = tempfile.mkdtemp(prefix="imgpipe-fs-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder], capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(folder)
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); "
                    "needs root or CAP_SYS_ADMIN; the patched_* twin of this test checks the same claim")
    try:
        yield pathlib.Path(folder)
    finally:
        subprocess.run(["umount", "-l", folder], check=False)
        os.rmdir(folder)


@pytest.mark.parametrize("where", ["output", "export"])
@pytest.mark.slow
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


def refuse_to_read_data(monkeypatch):
    """Any data read fails the test loudly: refusals must come before it."""
    from imgpipe.tasks.classify.task import ClassificationTask

    def read_data(self, recipe):
        raise AssertionError(f"the data folder {recipe.data.path} was read before the output was refused")

    monkeypatch.setattr(ClassificationTask, "read_data", read_data)


def assert_read_only_refused(cli, class_folder, read_only):
    code, _, err = cli("run", "classify", "--data", class_folder, "--epochs", "1", "--output", read_only / "run")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(read_only / "run") in err and "Read-only file system" in err
    code, _, err = cli("run", "classify", "--data", class_folder, "--epochs", "1",
                       "--export-dir", read_only / "models")
    assert code == 2 and str(read_only / "models") in err and "Read-only file system" in err, err
    code, _, err = cli("run", "classify", "--data", class_folder, "--resume", "--output", read_only / "run")
    assert code == 2 and "Traceback" not in err, err


def test_a_read_only_output_folder_is_refused_before_any_data_is_read(cli, class_folder, monkeypatch):
    with mounted_tmpfs("ro") as read_only:
        refuse_to_read_data(monkeypatch)
        assert_read_only_refused(cli, class_folder, read_only)


@contextlib.contextmanager
def read_only_folder(monkeypatch, folder):
    """`folder` answers every mkdir and file creation below it with EROFS, as a read-only mount does."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    real_mkdir, real_open = os.mkdir, os.open

    def below(path):
        return pathlib.Path(os.path.abspath(os.fsdecode(path))).is_relative_to(folder)

    def refused(path):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def mkdir(path, *args, **kwargs):
        if below(path):
            raise refused(path)
        return real_mkdir(path, *args, **kwargs)

    def open_descriptor(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and below(path):
            raise refused(path)
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "mkdir", mkdir)
        patch.setattr(os, "open", open_descriptor)
        yield folder


def test_patched_read_only_output_folder_is_refused_before_any_data_is_read(cli, class_folder, tmp_path,
                                                                           monkeypatch):
    """The unprivileged twin of the tmpfs test: no mount needed, the same claim."""
    refuse_to_read_data(monkeypatch)
    with read_only_folder(monkeypatch, tmp_path / "read_only") as read_only:
        assert_read_only_refused(cli, class_folder, read_only)


class FillingFile:
    """A file whose writes fail with ENOSPC, as on a disk that has just filled up."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._handle.name)

    def writelines(self, lines):
        self.write("")

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __iter__(self):
        return iter(self._handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()


@contextlib.contextmanager
def disk_full_at(monkeypatch, file_name):
    """Writes to files named `file_name` fail with ENOSPC: the disk fills up when the run first writes one."""
    real_open = builtins.open

    def open_file(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        is_path = isinstance(file, (str, bytes, os.PathLike))
        if is_path and os.path.basename(os.fsdecode(file)) == file_name and any(c in mode for c in "wax+"):
            return FillingFile(handle)
        return handle

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", open_file)
        patch.setattr(io, "open", open_file)
        yield


@pytest.mark.parametrize("where, file_name", [("output", "history.csv"), ("export", "imgpipe.json")])
def test_patched_full_disk_stops_with_the_folder_named_and_data_untouched(cli, class_folder, tmp_path, where,
                                                                          file_name, monkeypatch):
    """The unprivileged twin of the tmpfs test: the disk fills while the first epoch's history row is
    written (output), or while the export's metadata is written (export)."""
    before = corpus.tree_snapshot(class_folder)
    # After a failed write the CLI leaves with os._exit (h5py would crash the interpreter's clean-up);
    # in this process it must leave as the cli fixture expects.
    monkeypatch.setattr("imgpipe.cli._exit_now", sys.exit)
    with disk_full_at(monkeypatch, file_name):
        code, _, err = cli("run", "classify", "--data", class_folder, "--epochs", "2", "--image-size", "16",
                           "--output", tmp_path / "run", "--export-dir", tmp_path / "models",
                           "--set", "train.verbose=0", "--no-robustness")
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    named = tmp_path / "run" if where == "output" else tmp_path / "models" / "classify"
    assert errors[0].startswith(f"error: {named}: cannot write (No space left on device)"), errors[0]
    assert "--resume" in errors[0] if where == "output" else "imgpipe export" in errors[0]
    assert not (tmp_path / "run" / "metrics.json").exists()
    if where == "export":
        assert not any(path.name.isdigit() for path in (tmp_path / "models" / "classify").iterdir())
        assert (tmp_path / "run" / "checkpoints" / "best.weights.h5").is_file()  # `imgpipe export` can finish
    assert corpus.tree_snapshot(class_folder) == before
