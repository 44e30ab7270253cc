"""Several machines, played by two worker processes on 127.0.0.1 with TF_CONFIG.

Each test starts real `imgpipe run` processes (TensorFlow configures
collectives once per process, so this cannot run inside pytest's own).
"""

import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from imgpipe.engine.distributed.cluster import Cluster, cluster_from_environment
from imgpipe.errors import RecipeError
from imgpipe.engine.trainer import read_history
from tests import corpus

FINGERPRINT = "final weights "


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_workers(data, run_dir, export_root, epochs, resume=False):
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    command = [sys.executable, "-m", "imgpipe", "run", "classify", "--output", str(run_dir)]
    command += ["--resume"] if resume else [
        "--data", str(data), "--epochs", str(epochs), "--export-dir", str(export_root), "--image-size", "16",
        "--batch-size", "4", "--set", "train.verbose=0", "--set", "train.patience=0",
        "--set", "evaluate.robustness=false"]
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        environment = {**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "3",
                       "CUDA_VISIBLE_DEVICES": ""}
        workers.append(subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True))
    return workers


def finish(workers, timeout=600):
    outputs = [worker.communicate(timeout=timeout)[0] for worker in workers]
    return [worker.returncode for worker in workers], outputs


def fingerprint(output):
    return next(line.split(FINGERPRINT)[1].strip() for line in output.splitlines() if FINGERPRINT in line)


@pytest.fixture(scope="module")
def cluster_data(tmp_path_factory):
    return corpus.photo_class_folder(tmp_path_factory.mktemp("cluster") / "images", per_class=24, size=16)


@pytest.mark.slow
def test_two_workers_train_to_the_end_with_identical_weights_and_the_chief_exports(cluster_data, tmp_path):
    run_dir, models = tmp_path / "run", tmp_path / "models"
    started = time.monotonic()
    codes, outputs = finish(start_workers(cluster_data, run_dir, models, epochs=2))
    assert codes == [0, 0], outputs
    print(f"two-worker run: {time.monotonic() - started:.1f} s")
    assert fingerprint(outputs[0]) == fingerprint(outputs[1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and (models / "classify" / "1" / "saved_model.pb").is_file()
    assert not (models / "classify" / "2").exists()  # the other worker did not export
    assert not (run_dir / "workers").exists()  # its temporary folder is gone
    assert read_history(run_dir / "history.csv")["epoch"] == [0, 1]


@pytest.mark.slow
def test_a_killed_worker_and_a_restarted_job_resume_from_the_backup(cluster_data, tmp_path):
    run_dir, models, epochs = tmp_path / "run", tmp_path / "models", 4
    workers = start_workers(cluster_data, run_dir, models, epochs)
    deadline = time.monotonic() + 300
    while len(read_history(run_dir / "history.csv").get("epoch", [])) < 2:
        assert all(worker.poll() is None for worker in workers), finish(workers)[1]
        assert time.monotonic() < deadline, "the workers did not reach epoch 2 in time"
        time.sleep(0.05)
    workers[1].send_signal(signal.SIGKILL)  # a machine is lost; the cluster manager restarts the job
    workers[0].send_signal(signal.SIGKILL)
    finish(workers)
    done = len(read_history(run_dir / "history.csv")["epoch"])
    assert 2 <= done < epochs and not (run_dir / "metrics.json").exists()

    codes, outputs = finish(start_workers(cluster_data, run_dir, models, epochs, resume=True))
    assert codes == [0, 0], outputs
    assert fingerprint(outputs[0]) == fingerprint(outputs[1])
    assert read_history(run_dir / "history.csv")["epoch"] == list(range(epochs))
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == epochs


def test_tf_config_is_read_for_chief_and_workers():
    def read(cluster, task_type, index):
        return cluster_from_environment({"TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": task_type, "index": index}})})

    two = {"worker": ["a:1", "b:1"]}
    assert read(two, "worker", 0) == Cluster(2, "worker", 0) and read(two, "worker", 0).is_chief
    assert not read(two, "worker", 1).is_chief and read(two, "worker", 1).worker_rank == 1
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    assert read(with_chief, "chief", 0).is_chief and read(with_chief, "worker", 0).worker_rank == 1
    assert read({"worker": ["a:1"]}, "worker", 0) is None  # one process: no cluster
    assert cluster_from_environment({}) is None
    with pytest.raises(RecipeError, match="TF_CONFIG: expected JSON"):
        cluster_from_environment({"TF_CONFIG": "{not json"})
    with pytest.raises(RecipeError, match="task worker 5 is not in the cluster"):
        read(two, "worker", 5)


def test_a_multi_worker_run_needs_an_explicit_output_folder(cli, class_folder, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    code, _, err = cli("run", "classify", "--data", class_folder)
    assert code == 2 and "need --output RUN_DIR" in err


def test_keras_still_has_the_code_the_multi_worker_fix_replaces():
    """If this fails, Keras changed `_maybe_symbolic_build` or `reduce_per_replica`: check whether
    imgpipe/engine/distributed/keras_multiworker.py is still needed (run test_two_workers_... without it) and update it."""
    from keras.src.backend.tensorflow import trainer

    symbolic_build = inspect.getsource(trainer.TensorFlowTrainer._maybe_symbolic_build)
    assert "self.distribute_strategy.reduce(" in symbolic_build
    assert 'strategy.reduce("MEAN", v, axis=0)' in inspect.getsource(trainer.reduce_per_replica)
