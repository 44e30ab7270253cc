"""What every task provides to the engine, with the defaults most tasks share.

The engine (`imgpipe.engine.runner`) reads data, builds the pipeline, trains,
evaluates, plots and exports by calling these hooks; a task subclass
overrides only what differs (compare Ultralytics' `BaseTrainer` hooks).
"""

import keras


class Task:
    """Base of the tasks. Subclasses set the class attributes and the hooks below.

    Attributes:
        name: recipe name of the task (`classify`).
        target_kind: how augmentation treats the target ('label', 'mask').
        monitor: (metric, 'min' | 'max') for early stopping and the best checkpoint.
        main_metric: the metric printed first and compared across runs.
    """

    name = None
    target_kind = "label"
    monitor = ("val_loss", "min")
    main_metric = "val_loss"
    # What `imgpipe explain` weighs: "class" (the predicted or named class), "region"
    # (the pixels of a class), or None when Grad-CAM does not apply to the task.
    explain_target = None

    # === Data ===
    def read_data(self, recipe):
        """Returns a `TaskData` for the recipe's `data` section; raises `DataError` for unusable data."""
        raise NotImplementedError

    def read_examples(self, recipe):
        """The data as `read_data` reads it, without what training derives from it (`imgpipe check`).

        Tasks whose `read_data` also prepares training (loss networks, rebalancing
        weights) override this to stop at the examples themselves.
        """
        return self.read_data(recipe)

    def describe_data(self, recipe, data):
        """What `imgpipe check` reports for this task: {title: a value, or a table as a list of row dicts}."""
        return {}

    def target_signature(self, data):
        """(tf dtype, shape) of one target as the pipeline carries it."""
        raise NotImplementedError

    def saved_extras(self, data):
        """The JSON-able part of `data.extras` that `build_model` and the export need (kept in the run folder)."""
        return {}

    def restored_extras(self, saved):
        """`data.extras` rebuilt from `saved_extras`, for `imgpipe export RUN_DIR`."""
        return dict(saved)

    def load_target(self, data):
        """Optional `fn(target, size) -> array` for targets stored in files; None passes targets through."""
        return None

    # === Model ===
    def build_model(self, recipe, data):
        """The Keras model for the recipe's `model` section (called in the strategy scope)."""
        raise NotImplementedError

    def compile_settings(self, recipe, data):
        """dict of `loss` and `metrics` for `model.compile`."""
        raise NotImplementedError

    def callbacks(self, recipe, data, val_ds):
        """Extra Keras callbacks; they run before the history is written, so they may add to the logs."""
        return []

    def class_weight(self, recipe, data):
        """Optional {class index: weight} for `model.fit`."""
        return None

    # === Results ===
    def final_metrics(self, model, val_ds, data, run_dir):
        """Validation metrics after training (flat keys) and the task's plots in `run_dir`."""
        results = model.evaluate(val_ds, return_dict=True, verbose=0)
        return {f"val_{key}": float(value) for key, value in results.items()}

    def preview(self, samples, data, path):
        """Writes `augment_preview.png` from a list of augmented (image, target) pairs."""
        raise NotImplementedError

    # === Robustness (imgpipe.understand.robustness) ===
    # The metric the robustness card reports (higher is better); None: the card does not apply,
    # and `robustness_note` says why. `robustness_skipped` names families that do not apply, with why.
    robustness_metric_name = None
    robustness_note = "this task has no robustness metric"
    robustness_skipped = {}

    def robustness_answers(self, model, images, metadata):
        """The trained Keras model's answers for float32 images [B, H, W, 3] (0..255, model size).

        They are numpy arrays keyed like the export's `serve_images` answers, so
        `robustness_metric` scores a run's model and a loaded export alike.
        `metadata` is what the export's imgpipe.json holds (`export_metadata`).
        """
        raise NotImplementedError

    def robustness_metric(self, answers, images, targets, metadata):
        """The task's main metric (float) of `answers` for uint8 `images` [N, H, W, 3] and targets at model size."""
        raise NotImplementedError

    # === Serving ===
    def export_archive(self, model, data, recipe):
        """A `keras.export.ExportArchive` with the task's serving signatures."""
        raise NotImplementedError

    def export_metadata(self, data, recipe):
        """What travels in assets.extra/imgpipe.json besides the defaults."""
        return {}

    # === Using an export ===
    def evaluate_export(self, loaded, metadata, data_path, report_dir):
        """Metrics of a loaded export on the folder `data_path`; plots go to `report_dir`."""
        raise NotImplementedError

    def predict_export(self, loaded, metadata, paths, top_k, out_dir=None):
        """One result dict per file, in the user's terms (class names, boxes, masks); images go to `out_dir`."""
        raise NotImplementedError

    def make_archive(self, model, serve_image_bytes, serve_images):
        """The two signatures every task serves: `serving_default` on encoded bytes, `serve_images` on floats.

        Args:
            model: the Keras model (or layer) whose variables the functions use.
            serve_image_bytes: fn(string [None] of encoded images) -> dict of answers.
            serve_images: fn(float32 [None, H, W, 3], RGB 0..255) -> dict of answers.
        """
        import tensorflow as tf

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve_image_bytes,
                             [tf.TensorSpec([None], tf.string, name="image_bytes")])
        archive.add_endpoint("serve_images", serve_images,
                             [tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
        return archive
