"""Several machines: who this process is in a `TF_CONFIG` cluster, and where it may write.

TensorFlow's multi-worker training is driven by the `TF_CONFIG` environment
variable (set by hand, by Kubernetes' TFJob, or from Slurm by
`tf.distribute.cluster_resolver.SlurmClusterResolver`). Every worker runs the
same `imgpipe run`; the chief (task `chief`, or worker 0 when there is none)
writes the run folder, the backups and the export; each other worker writes
its history and checkpoints to its own temporary folder `RUN_DIR/workers/<rank>`,
removed when it finishes, and a restarted worker resumes from the chief's
backup (`imgpipe.engine.trainer.ChiefBackupReader`), so all continue at one epoch.

Example:
    >>> os.environ["TF_CONFIG"] = '{"cluster": {"worker": ["a:2222", "b:2222"]}, "task": {"type": "worker", "index": 1}}'
    >>> cluster_from_environment()
    Cluster(workers=2, task_type='worker', index=1)
"""

import dataclasses
import hashlib
import json
import os
import pathlib

import numpy as np

from imgpipe.errors import RecipeError

TRAINING_TASK_TYPES = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker cluster.

    Attributes:
        workers: number of training processes (chief included).
        task_type: 'chief' or 'worker'.
        index: the task's index within its type.
    """

    workers: int
    task_type: str
    index: int
    has_chief: bool = False

    @property
    def is_chief(self):
        return self.task_type == "chief" or (not self.has_chief and self.task_type == "worker" and self.index == 0)

    @property
    def worker_rank(self):
        """0 for the chief, then 1.. for the workers, whichever way the cluster names them."""
        if self.task_type == "chief":
            return 0
        return self.index + (1 if self.has_chief else 0)


def cluster_from_environment(environ=None):
    """The `Cluster` described by `TF_CONFIG`, or None when training runs in one process.

    Raises `RecipeError` naming TF_CONFIG when it is not valid JSON or lacks the task.
    """
    text = (environ if environ is not None else os.environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError):
        raise RecipeError("TF_CONFIG: expected JSON with 'cluster' and 'task' {'type', 'index'}, "
                          f"got {text[:80]!r}") from None
    workers = sum(len(cluster.get(kind, [])) for kind in TRAINING_TASK_TYPES)
    if task_type not in TRAINING_TASK_TYPES:
        raise RecipeError(f"TF_CONFIG: task type {task_type!r} does not train; imgpipe runs as chief or worker")
    if index >= len(cluster.get(task_type, [])):
        raise RecipeError(f"TF_CONFIG: task {task_type} {index} is not in the cluster {cluster}")
    if workers < 2:
        return None
    return Cluster(workers, task_type, index, has_chief=bool(cluster.get("chief")))


def worker_run_dir(run_dir, cluster):
    """The chief writes the run folder itself; any other worker `RUN_DIR/workers/<rank>`, removed when done."""
    if cluster is None or cluster.is_chief:
        return run_dir
    return pathlib.Path(run_dir) / "workers" / str(cluster.worker_rank)


def weights_fingerprint(model):
    """A short hash of all weights: equal on every worker after synchronous training (logged for checking)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]
