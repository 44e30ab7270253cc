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

import numpy as np
import pytest

from imgpipe.engine.distributed.cluster import Cluster, cluster_from_environment
from imgpipe.errors import RecipeError
from imgpipe.engine.trainer import read_history
from tests import corpus
from tests.engine.test_train import raw_history_epochs

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
    workers[1].send_signal(signal.SIGKILL)  # a machine is lost
    rows_at_loss = len(raw_history_epochs(run_dir / "history.csv"))
    # The survivor cannot finish alone: it waits in its all-reduce (or fails), it never completes the run.
    lost_for = time.monotonic() + 15
    while time.monotonic() < lost_for and workers[0].poll() is None:
        time.sleep(0.2)
    assert workers[0].poll() is None or workers[0].returncode != 0
    assert not (run_dir / "metrics.json").exists()
    assert len(raw_history_epochs(run_dir / "history.csv")) <= rows_at_loss + 1  # at most the epoch in flight
    workers[0].send_signal(signal.SIGKILL)  # the cluster manager restarts the whole job
    finish(workers)
    rows_before = raw_history_epochs(run_dir / "history.csv")
    assert rows_before == list(range(len(rows_before))) and 2 <= len(rows_before) < epochs
    assert not (run_dir / "metrics.json").exists()
    backup = json.loads((run_dir / "checkpoints" / "backup_train" / "training_metadata.json").read_text())
    assert backup["epoch"] == len(rows_before)  # the backup is written before the epoch's row

    codes, outputs = finish(start_workers(cluster_data, run_dir, models, epochs, resume=True))
    assert codes == [0, 0], outputs
    assert fingerprint(outputs[0]) == fingerprint(outputs[1])
    # Every row as written: a restart from epoch 0 would have appended 0, 1, ... again.
    assert raw_history_epochs(run_dir / "history.csv") == list(range(epochs))
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


class _Pipeline:
    """The input context tf.distribute gives worker `index` of `count` (one replica each)."""

    def __init__(self, index, count):
        self.input_pipeline_id, self.num_input_pipelines = index, count

    def get_per_replica_batch_size(self, global_batch):
        return global_batch // self.num_input_pipelines


class _OneWorkersStrategy:
    """A strategy that builds only worker `index`'s dataset, as that worker's process would."""

    def __init__(self, index, count):
        self.pipeline = _Pipeline(index, count)

    def distribute_datasets_from_function(self, for_worker):
        return for_worker(self.pipeline)


def _worker_share(data, index, count=2, global_batch=4):
    from imgpipe.engine.distributed.worker_roles import worker_datasets
    from imgpipe.data.images import DEFAULT_MAX_PIXELS
    from imgpipe.engine.pipeline import FileDecoder

    trainer = type("Trainer", (), {"global_batch_size": global_batch, "strategy": _OneWorkersStrategy(index, count)})
    decoder = FileDecoder([8, 8], DEFAULT_MAX_PIXELS)
    common = dict(size=[8, 8], seed=3, cache="none", cache_dir=None, max_pixels=DEFAULT_MAX_PIXELS, decoder=decoder)
    train, val, steps = worker_datasets(data, trainer, None, common)
    return train, val, steps, decoder


def test_each_worker_decodes_only_its_shard_and_all_take_the_same_steps(tmp_path):
    from imgpipe.data.sources import ImageSet, TaskData
    from tests.conftest import write_image

    # 7 training images (shards of 4 and 3) and 6 validation files, of which 1.png is corrupt: it falls
    # in worker 1's shard (validation keeps the file order; worker 0 takes 0, 2, 4).
    train = [write_image(tmp_path / "train" / f"{i}.png", (30 * i, 0, 0), size=8) for i in range(7)]
    val = []
    for i in range(6):
        path = tmp_path / "val" / f"{i}.png"
        if i == 1:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not an image")
        else:
            write_image(path, (0, 30 * i, 0), size=8)
        val.append(path)
    data = TaskData(train=ImageSet.from_files(train, np.arange(7) % 2), val=ImageSet.from_files(val, np.zeros(6, int)),
                    class_names=["a", "b"], image_size=[8, 8], source=str(tmp_path))
    shares = [_worker_share(data, index) for index in (0, 1)]
    assert shares[0][2] == shares[1][2] == (1, 2)  # 7 // 4 training steps, ceil(6 / 4) validation steps

    seen_train, seen_val = [], []
    for train_ds, val_ds, (train_steps, val_steps), decoder in shares:
        # Repeated: a shard of 3 still gives its steps (and more), so no worker runs dry before the other.
        batches = list(train_ds.take(train_steps + 3).as_numpy_iterator())
        assert len(batches) == train_steps + 3 and all(len(images) == 2 for images, _ in batches)
        seen_train.append({int(images[k, 0, 0, 0]) for images, _ in batches for k in range(2)})
        greens = {int(image[0, 0, 1]) for images, _ in val_ds.take(val_steps).as_numpy_iterator() for image in images}
        seen_val.append((greens, sorted(os.path.basename(os.fsdecode(path)) for path in decoder.failed)))
    # The shards are disjoint and together hold every training image (red = 30 * i).
    assert seen_train[0].isdisjoint(seen_train[1]) and seen_train[0] | seen_train[1] == {30 * i for i in range(7)}
    # Each worker decoded only its own validation files: worker 0 never touched worker 1's corrupt one.
    assert seen_val == [({0, 60, 120}, []), ({90, 150}, ["1.png"])]
