"""What every task provides to the engine, with the defaults most tasks share.

The engine (`imgpipe.engine.runner`) reads data, builds the pipeline, trains,
scores, plots and exports by calling these hooks; a task subclass overrides
only what differs (compare Ultralytics' `BaseTrainer` hooks). A task scores in
one place, `answers` + `score`: training's final metrics, `imgpipe evaluate`
on an export and the robustness card all call them.
"""

import keras


class Task:
    """Base of the tasks. Subclasses set the class attributes and the hooks below.

    Attributes:
        name: recipe name of the task (`classify`).
        target_kind: how augmentation treats the target ('label', 'mask').
        monitor: (metric, 'min' | 'max') for early stopping and the best checkpoint.
        monitor_ceiling: the best value `monitor` can take (1.0 for an accuracy), where training stops
            at once since no later epoch can improve on it; None where there is none (a loss).
        main_metric: the metric printed first and compared across runs.
    """

    name = None
    target_kind = "label"
    monitor = ("val_loss", "min")
    monitor_ceiling = None
    main_metric = "val_loss"
    # What `imgpipe explain` weighs: "class" (the predicted or named class), "region"
    # (the pixels of a class), or None when Grad-CAM does not apply to the task.
    explain_target = None
    # The type of `TaskData.state` (with to_json() and from_json()), or None when class names say all.
    state_class = None
    # `model.name: auto` picks `pretrained_model` when ImageNet weights are found for its backbone and
    # the images are at least `pretrained_min_side` px on their shorter side (imgpipe.engine.model_choice),
    # else `scratch_model`. 96 px is the smallest input Keras ships ImageNet weights for; a task that
    # measured a lower crossing sets its own.
    pretrained_model = None
    scratch_model = None
    pretrained_min_side = 96

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

    def monitor_for(self, recipe, multi_worker=False):
        """The (metric, mode) early stopping and the best checkpoint follow in a run of `recipe`.

        `monitor` by default; a task whose `callbacks` score its main metric during training can
        choose the epoch by that metric instead (detection's mAP50), though not in a multi-worker run:
        each worker computes such a score alone, where Keras all-reduces its metrics, and two workers
        that disagree by one box would stop at different epochs and hang.
        """
        return self.monitor

    # === Scoring: one path for training's final metrics, `imgpipe evaluate` and the robustness card ===
    def answers(self, model, images, metadata):
        """The trained Keras model's answers for float32 images [B, H, W, 3] (0..255, model size).

        numpy arrays keyed like the export's `serve_images` answers, so `score`
        scores a run's model and a loaded export alike. `metadata` is what the
        export's imgpipe.json holds (`imgpipe.engine.export.saved_model.export_metadata`).
        """
        raise NotImplementedError

    def truth(self, image, target):
        """What an answer for `image` is compared with, from a pipeline element (uint8 image, target)."""
        return target

    def score(self, answers, truths, metadata):
        """The task's metrics (flat, unprefixed keys) of per-image `answers` against per-image `truths`.

        Args:
            answers: list of one dict per image, as `answers` or the export's signatures give them.
            truths: list of what each answer is compared with (`truth`, or `evaluation_files`).
            metadata: the export metadata.
        """
        raise NotImplementedError

    def report_validation(self, model, val_ds, answers, truths, data, metadata, run_dir):
        """The task's pictures of the validation split in `run_dir`; returns any metrics that are not scores.

        After training, `model` is the trained model's `CompiledForward` (`imgpipe.engine.inference`).
        """
        return {}

    def preview(self, samples, data, path):
        """Writes `augment_preview.png` from a list of augmented (image, target) pairs."""
        raise NotImplementedError

    # === Robustness (imgpipe.understand.robustness) ===
    # The key of `score` the robustness card reports (higher is better); None: the card does not apply,
    # and `robustness_note` says why. `robustness_skipped` names families that do not apply, with why.
    robustness_metric_name = None
    robustness_note = "this task has no robustness metric"
    robustness_skipped = {}

    # === Suspect labels (imgpipe.understand.suspect_labels) ===
    # What a label is, for ranking the ones the model disputes: "class" (one class per image: confident
    # learning on class probabilities), "pixels" (a mask: cleanlab's per-image segmentation score; the task
    # draws them with `plot_predictions(samples, data, path, title)`), "boxes" (cleanlab's object-detection
    # score; the task gives `box_evidence(model, images, targets, metadata)`), or None (not ranked).
    suspect_labels = None

    # === Serving ===
    def serving_functions(self, model, data, recipe):
        """(serve_image_bytes, serve_images): what the export's two signatures run (see `make_archive`).

        They call `model(images, training=False)` on float32 images at the model's size, so a LiteRT, ONNX or
        OpenVINO file in its runtime can stand in for the Keras model (`imgpipe.engine.export.format_folder`).
        """
        raise NotImplementedError

    def export_archive(self, model, data, recipe):
        """A `keras.export.ExportArchive` with the task's serving signatures."""
        return self.make_archive(model, *self.serving_functions(model, data, recipe))

    def export_metadata(self, data, recipe):
        """What travels in assets.extra/imgpipe.json besides the defaults."""
        return {}

    def raw_output_contract(self, metadata):
        """What the network's raw output means, for the formats that carry only the network (LiteRT, ONNX,
        OpenVINO): {"meaning": ..., "to_answers": [steps a caller takes]}, written into their contract.json.

        None (the default): the task exports no such format, since its answers need more than its network.
        """
        return None

    # === Using an export ===
    def evaluation_files(self, folder, metadata, max_pixels):
        """The files of a labelled `folder` and each one's truth in the export's terms (`LabelledFiles`).

        Read with the task's own reader; truths are at the files' own size,
        as the export's `serving_default` answers.
        """
        raise NotImplementedError

    def export_answers(self, loaded, paths, metadata):
        """One answer dict per file from a loaded export: `serving_default` on the files' bytes."""
        from imgpipe.engine.client import run_signature

        return run_signature(loaded, paths)

    def plot_scores(self, answers, truths, metadata, folder):
        """Pictures of a scoring (a confusion matrix) written into `folder`."""

    def predict_export(self, loaded, metadata, paths, top_k, out_dir=None):
        """One result dict per file, in the user's terms (class names, boxes, masks); images go to `out_dir`.

        A file the export refused gets {"file", "status"} with its reason.
        """
        from imgpipe.engine.client import answer_status, run_signature

        results = []
        for path, answer in zip(paths, run_signature(loaded, paths)):
            status = answer_status(answer)
            results.append(self.predict_answer(path, answer, metadata, top_k, out_dir) if status == "ok"
                           else {"file": path, "status": status})
        return results

    def predict_answer(self, path, answer, metadata, top_k, out_dir):
        """One file's result in the user's terms, from its `serving_default` answer (see `predict_export`)."""
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
