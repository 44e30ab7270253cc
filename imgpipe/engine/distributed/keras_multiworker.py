"""A contained fix that lets Keras 3's `model.fit` train under `MultiWorkerMirroredStrategy`.

Keras 3's TensorFlow trainer fails in two places when several workers train
together (keras-team/keras#20585, tensorflow/tensorflow#72388):

1. `_maybe_symbolic_build` takes one distributed batch to learn the input
   shapes and averages it across workers with `strategy.reduce`, eagerly;
   the collective all-reduce cannot take a per-replica batch there and raises
   "Attempt to convert a value (PerReplica ...) to a Tensor". Only shapes and
   dtypes are needed, so this fix reads this worker's first local replica.
2. `reduce_per_replica` averages each step's logs with
   `strategy.reduce("MEAN", value, axis=0)`; the logs are scalars, which have
   no axis 0 ("Invalid reduction dimension 0 for input with 0 dimensions").
   This fix averages scalars across replicas (`axis=None`).

Both are applied only inside `multi_worker_fit(model, strategy)`: the first
with several replicas, the second only with several workers; everything else
is Keras' own code path.

A third difference is not a Keras bug but matters for "the same model on
every worker": batch normalisation's moving statistics are updated from each
replica's own batches and never synchronised, so workers end with different
ones. `AverageMovingStatistics` averages every non-trainable float variable
across the replicas at the end of each epoch, before checkpoints are written.
`tests/engine/test_multiworker.py::test_keras_still_has_the_code_the_multi_worker_fix_replaces` checks that
the Keras code still has the
shape this fix assumes, so an upgrade that changes it fails loudly.

Example:
    >>> with multi_worker_fit(model, strategy):
    ...     model.fit(train_ds, epochs=3, steps_per_epoch=10)
"""

import contextlib
import types

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as keras_tf_trainer


def is_multi_worker(strategy):
    """True for a `MultiWorkerMirroredStrategy` spanning more than one worker."""
    return bool(keras_tf_trainer._collective_all_reduce_multi_worker(strategy))


@contextlib.contextmanager
def multi_worker_fit(model, strategy):
    """Within the block, `model.fit`/`evaluate`/`predict` work under a multi-worker strategy.

    The shape fix (1) is also applied with several replicas on one machine: there
    the eager mean of a batch split unevenly over the replicas (3 images on 2
    devices) fails the same way ("Inputs to operation AddN ... must have the
    same size and shape").
    """
    if strategy.num_replicas_in_sync < 2 or "_maybe_symbolic_build" in vars(model):  # one replica, or nested
        yield
        return
    original_reduce = keras_tf_trainer.reduce_per_replica
    model._maybe_symbolic_build = types.MethodType(_symbolic_build_from_local_replica, model)
    if is_multi_worker(strategy):
        keras_tf_trainer.reduce_per_replica = _reducer_for_scalars(original_reduce)
    try:
        yield
    finally:
        keras_tf_trainer.reduce_per_replica = original_reduce
        del model._maybe_symbolic_build


def _symbolic_build_from_local_replica(model, iterator=None, data_batch=None):
    """Keras' `_maybe_symbolic_build`, reading shapes from a local replica instead of reducing across workers."""
    if model._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tree.map_structure(
                lambda value: model.distribute_strategy.experimental_local_results(value)[0]
                if isinstance(value, tf.distribute.DistributedValues) else value,
                next(batches))
            break
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=data_batch)


def _reducer_for_scalars(original_reduce):
    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=_batch_axis(value, strategy)),
                                      values)
        return original_reduce(values, strategy, reduction)
    return reduce_per_replica


def _batch_axis(value, strategy):
    local = strategy.experimental_local_results(value)[0] if isinstance(value, tf.distribute.DistributedValues) \
        else value
    return None if local.shape.rank == 0 else 0


class AverageMovingStatistics(keras.callbacks.Callback):
    """At each epoch's end, sets non-trainable float variables (batch-norm moving statistics) to their mean
    over all replicas, so every worker holds the same model. Put it before the checkpoint callbacks."""

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch, logs=None):
        average_non_trainable(self.model, self.strategy)


def average_non_trainable(model, strategy):
    """All-reduces (mean) the model's non-trainable float variables across replicas and assigns the result."""
    variables = [v for v in model.non_trainable_variables if v.dtype.startswith("float")]
    if not variables:
        return

    @tf.function
    def averaged():
        def replica_mean():
            context = tf.distribute.get_replica_context()
            return [context.all_reduce("MEAN", tf.identity(variable.value)) for variable in variables]
        return strategy.run(replica_mean)

    for variable, value in zip(variables, averaged()):
        variable.assign(strategy.experimental_local_results(value)[0]
                        if isinstance(value, tf.distribute.DistributedValues) else value)
