"""What a multi-worker run does differently, in one place: each worker's data, backups and end of training.

Every worker of a `TF_CONFIG` cluster runs the same `imgpipe run`
(`imgpipe.engine.runner`); the differences from a one-process run are here:

- each worker reads only its shard of the files, repeated for a fixed number of
  steps (`worker_datasets`), so the workers stay in step;
- workers other than the chief restore from the chief's backup
  (`backup_source`), so a restarted cluster continues at one epoch;
- after `fit`, the chief evaluates and exports a local copy of the model
  (`chief_model`, no collectives), and the other workers remove their
  temporary folder (`finish_worker`).

Example:
    >>> fit_train, fit_val, steps = worker_datasets(data, trainer, augmenter, common)
"""

import contextlib
import logging
import shutil

from imgpipe.engine.distributed.cluster import weights_fingerprint
from imgpipe.engine.pipeline import make_dataset

log = logging.getLogger("imgpipe")


def backup_source(cluster, run_dir):
    """The chief's checkpoint folder, which a worker other than the chief restores from; None otherwise."""
    if cluster is None or cluster.is_chief:
        return None
    return run_dir.parent.parent / "checkpoints"  # run_dir is RUN_DIR/workers/<rank>


def worker_datasets(data, trainer, augmenter, common):
    """Each worker's share of both splits, batched per replica and repeated, and the steps every worker takes.

    Shards are cut from the file list before decoding, so no worker decodes
    another's images. Repeating with a fixed number of steps keeps the workers
    in step even when their shards differ by an image or a file fails to decode.
    """
    global_batch = trainer.global_batch_size

    def distributed(image_set, training):
        def for_worker(context):
            dataset, _ = make_dataset(image_set, training=training, augmenter=augmenter if training else None,
                                      drop_remainder=True, repeat=True,
                                      shard=(context.num_input_pipelines, context.input_pipeline_id),
                                      **{**common, "batch_size": context.get_per_replica_batch_size(global_batch)})
            return dataset
        return trainer.strategy.distribute_datasets_from_function(for_worker)

    steps = (max(1, data.train.count // global_batch), max(1, -(-data.val.count // global_batch)))
    return distributed(data.train, True), distributed(data.val, False), steps


def chief_model(cluster, task, recipe, data, model):
    """After a multi-worker fit: the chief's local copy of the model to evaluate and export, or None on a worker.

    The copy is rebuilt outside the multi-worker strategy, so evaluating and
    exporting it needs no other worker.
    """
    log.info("worker %d: final weights %s", cluster.worker_rank, weights_fingerprint(model))
    if not cluster.is_chief:
        return None
    local = task.build_model(recipe.update(**{"model.weights": None}), data)
    local.set_weights(model.get_weights())
    local.compile(**task.compile_settings(recipe, data))
    return local


def finish_worker(run_dir):
    """A worker other than the chief: its temporary folder goes; the chief reports and exports."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        run_dir.parent.rmdir()  # RUN_DIR/workers, once the last worker is done
