"""SIGKILL an `imgpipe run` at a chosen moment, finish it as a user would, and check what is left.

A user whose run was killed types `imgpipe run classify --resume --output RUN`
(or, if it died before recording its recipe, the original command again). After
that the run must hold every requested epoch once, its metrics and a complete
export; no version folder may be half-written; the data folder must be
byte-identical. Used by `tests/engine/test_kill_points.py` (a few moments
chosen by what the run folder shows) and `benchmarks/kill_training.py`
(50 moments at random times).

Example:
    >>> case = KillCase(data, tmp_path, epochs=3)
    >>> phase = case.kill_when(lambda: case.epochs_done() >= 1)
    >>> case.finish(); case.problems(data_before)
    []
"""

import csv
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from imgpipe.engine.trainer import read_history

REPO = pathlib.Path(__file__).resolve().parents[1]
# Small and fast, but every phase: data reading, epochs with checkpoints, the robustness card, the export.
TINY = ["--image-size", "32", "--batch-size", "8", "--set", "train.verbose=0", "--set", "train.patience=0",
        "--weights", "none"]


def folder_digest(folder):
    """{relative path: sha256} of every file under `folder`, to show it was not touched."""
    folder = pathlib.Path(folder)
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def environment():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "IMGPIPE_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


class KillCase:
    """One run in `workdir/run`, exporting to `workdir/models`, that is killed once and then finished."""

    def __init__(self, data, workdir, epochs):
        self.data, self.epochs = pathlib.Path(data), epochs
        self.run_dir, self.models = pathlib.Path(workdir) / "run", pathlib.Path(workdir) / "models"
        self.finished_by = None

    def command(self, resume=False):
        base = [sys.executable, "-m", "imgpipe", "-q", "run", "classify", "--output", str(self.run_dir)]
        if resume:
            return base + ["--resume"]
        return base + ["--data", str(self.data), "--epochs", str(self.epochs), "--export-dir", str(self.models), *TINY]

    def epochs_done(self):
        return len(read_history(self.run_dir / "history.csv").get("epoch", []))

    def exporting(self):
        return any(path.name.startswith(".export-") for path in self.models.glob("*/.export-*"))

    def phase(self):
        """Where the run was, read from what it had written."""
        if (self.run_dir / "metrics.json").exists():
            return "finished"
        if self.exporting() or any(path.name.isdigit() for path in self.models.glob("*/*")):
            return "export"
        if (self.run_dir / "robustness.json").exists() or self.epochs_done() >= self.epochs:
            return "evaluation and robustness card"
        if self.epochs_done() or (self.run_dir / "checkpoints").exists():
            return f"epoch {self.epochs_done() + 1}"
        if (self.run_dir / "recipe.yaml").exists():
            return "before the first epoch"
        return "start-up and data reading"

    def kill_after(self, seconds):
        """Starts the run and kills it `seconds` later (if still running); returns the phase it was in."""
        return self.kill_when(lambda: False, seconds)

    def kill_when(self, condition, seconds=300.0, poll=0.005):
        """Starts the run and kills it once `condition()` is true (or after `seconds`); returns the phase."""
        child = subprocess.Popen(self.command(), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + seconds
        while child.poll() is None and time.monotonic() < deadline and not condition():
            time.sleep(poll)
        if child.poll() is not None:
            error = child.stderr.read().decode()
            child.stderr.close()
            if child.returncode != 0:
                raise RuntimeError(f"the run failed on its own ({child.returncode}): {error[-1500:]}")
            return "finished"
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
        return self.phase()

    def finish(self, timeout=600):
        """Finishes the killed run as a user would; returns how ("resumed", "rerun" or "already finished")."""
        if (self.run_dir / "metrics.json").exists():
            self.finished_by = "already finished"
            return self.finished_by
        resumable = (self.run_dir / "recipe.yaml").is_file()
        command = self.command(resume=resumable)
        finished = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=timeout)
        if finished.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({finished.returncode}): {finished.stderr[-1500:]}")
        self.finished_by = "resumed" if resumable else "rerun"
        return self.finished_by

    def retrained_epochs(self):
        """Epochs with two rows in history.csv: logged, but killed before their backup, so trained again."""
        with open(self.run_dir / "history.csv", newline="") as handle:
            rows = [row["epoch"] for row in csv.DictReader(handle)]
        return sorted({int(epoch) for epoch in rows if rows.count(epoch) > 1})

    def problems(self, data_digest):
        """What is wrong after `finish`: [] when all is well."""
        found = []
        if folder_digest(self.data) != data_digest:
            found.append("the data folder changed")
        epochs = [int(epoch) for epoch in read_history(self.run_dir / "history.csv").get("epoch", [])]
        if epochs != list(range(self.epochs)):
            found.append(f"history holds epochs {epochs}, not 0..{self.epochs - 1}")
        metrics = json.loads((self.run_dir / "metrics.json").read_text())
        if metrics.get("epochs_run") != self.epochs:
            found.append(f"metrics.json says {metrics.get('epochs_run')} epochs")
        export = pathlib.Path(metrics.get("export_path") or "")
        if not (export / "saved_model.pb").is_file():
            found.append(f"metrics.json names no export ({export})")
        for version in self.models.glob("*/*"):
            if version.name.isdigit() and not all((version / part).is_file() for part in (
                    "saved_model.pb", "variables/variables.index", "assets.extra/imgpipe.json")):
                found.append(f"{version} is half-written")
        return found
