"""Colorization: greyscale photos to plausible colour, learnt from any folder of colour images.

What is special here: no labels (each colour image is its own target), the
model sees CIE lightness only and classifies each pixel into quantised ab
bins with class rebalancing (Zhang et al. 2016), decoded by the annealed mean,
or regresses ab with L1 (`colorize.color_loss: l1`). Results always keep the
input's own full-resolution L: only the predicted ab is upsampled.

Example:
    >>> result = imgpipe.run("colorize", data="photos/")
    >>> result.metrics["val_psnr"], result.metrics["val_psnr_grey"]
"""

import pathlib

import keras
import numpy as np
import tensorflow as tf

from imgpipe.engine import plots
from imgpipe.models.lab import (ab_bins, annealed_mean, colorfulness, encode_ab, lab_to_rgb, nearest_bin,
                           rebalancing_weights, rgb_to_lab)
from imgpipe.data.demo import demo_colorize_folder
from imgpipe.data.folders import list_images
from imgpipe.data.images import UnreadableImage, decode_bytes, load_image
from imgpipe.data.unlabelled import read_image_folder
from imgpipe.errors import DataError
from imgpipe.engine.client import read_image_bytes, write_produced_images
from imgpipe.models import MODELS
from imgpipe.models.colorizers import GreyFromLightness
from imgpipe.engine.serving import images_at_original_size, resize_float
from imgpipe.tasks.base import Task

TEMPERATURE = {"classification": 0.38, "l1": 1.0}
REBALANCE_IMAGES = 256
REBALANCE_SIDE = 32
SAMPLES = 6
LOSS_POOL = 2


def bin_counts(paths, bins, max_pixels):
    """How often each ab bin occurs over up to REBALANCE_IMAGES images (read small)."""
    counts = np.zeros(len(bins), np.int64)
    for path in paths[:REBALANCE_IMAGES]:
        try:
            pixels = load_image(path, (REBALANCE_SIDE, REBALANCE_SIDE), max_pixels)
        except UnreadableImage:
            continue
        index = nearest_bin(rgb_to_lab(pixels.astype(np.float32))[..., 1:], bins).numpy()
        counts += np.bincount(index.reshape(-1), minlength=len(bins))
    return counts


def colorized(probabilities, lightness, temperature):
    """RGB 0..255 from predicted bin probabilities [B, h, w, Q] and lightness [B, H, W, 1] at any H, W."""
    ab = annealed_mean(tf.math.log(tf.maximum(probabilities, 1e-8)), ab_bins(), temperature)
    ab = tf.image.resize(ab, tf.shape(lightness)[1:3], method="bilinear")
    return lab_to_rgb(tf.concat([lightness, ab], axis=-1))


def grey_version(rgb):
    """The greyscale baseline: the image's own L with a = b = 0, as RGB."""
    lightness = rgb_to_lab(rgb)[..., :1]
    return lab_to_rgb(tf.concat([lightness, tf.zeros_like(lightness), tf.zeros_like(lightness)], axis=-1))


def colour_metrics(results, originals):
    """Per-image psnr, ssim, colourfulness of `results` against `originals` (0..255 float [B, H, W, 3])."""
    return {"psnr": tf.image.psnr(results, originals, 255.0).numpy(),
            "ssim": tf.image.ssim(results, originals, 255.0).numpy(),
            "colorfulness": colorfulness(results).numpy()}


class ColorizationModel(keras.Model):
    """Trains a colorizer by `model.fit` on colour images alone: targets come from the images' own ab.

    Loss 'classification': cross-entropy against soft-encoded ab (5 nearest
    bins, Gaussian sigma 5) weighted per pixel by its bin's rebalancing weight;
    'l1': mean absolute error of the expected ab. Reports `ab_error` (mean
    absolute ab error of the decoded colours) besides the loss.
    """

    def __init__(self, segmenter, bin_weights, loss="classification", **kwargs):
        super().__init__(name=kwargs.pop("name", "colorization"), **kwargs)
        # Held side by side, not nested in one functional model: MirroredStrategy mis-wires a
        # functional model inside another on its second replica (Keras 3.15).
        self.lightness = GreyFromLightness(dtype="float32", name="lightness")
        self.segmenter = segmenter
        self.bins = tf.constant(ab_bins())
        self.bin_weights = tf.constant(np.asarray(bin_weights, np.float32))
        self.loss_kind = loss
        self.ab_error = keras.metrics.Mean(name="ab_error")

    def call(self, images, training=False):
        return self.segmenter(self.lightness(images), training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # At half resolution (probabilities averaged over 2x2 cells): a quarter of the target encoding
        # work, which otherwise costs as much as the network; Zhang et al. predict at a quarter.
        probabilities = tf.nn.avg_pool2d(tf.cast(y_pred, tf.float32), LOSS_POOL, LOSS_POOL, "VALID")
        true_ab = tf.image.resize(rgb_to_lab(x)[..., 1:], tf.shape(probabilities)[1:3], method="area")
        predicted_ab = annealed_mean(tf.math.log(tf.maximum(probabilities, 1e-8)), self.bins,
                                     TEMPERATURE[self.loss_kind])
        self.ab_error.update_state(tf.reduce_mean(tf.abs(predicted_ab - true_ab), axis=-1))
        if self.loss_kind == "l1":
            expected = tf.tensordot(probabilities, self.bins, axes=1)
            loss = tf.reduce_mean(tf.abs(expected - true_ab))
        else:
            targets, nearest = encode_ab(true_ab, self.bins)
            cross_entropy = -tf.reduce_sum(targets * tf.math.log(tf.maximum(probabilities, 1e-8)), axis=-1)
            weights = tf.gather(self.bin_weights, nearest)
            loss = tf.reduce_mean(weights * cross_entropy)
        return loss / tf.distribute.get_strategy().num_replicas_in_sync


class ColorizeTask(Task):
    name = "colorize"
    target_kind = "label"
    monitor = ("val_loss", "min")
    main_metric = "val_psnr"

    # === Data ===
    def read_data(self, recipe):
        data = self.read_examples(recipe)
        settings = recipe.data
        bins = ab_bins()
        counts = bin_counts(data.train.paths, bins, settings.max_pixels)
        mix = recipe.options.color_uniform_mix
        data.extras["bin_weights"] = rebalancing_weights(counts, mix=mix, bins=bins).tolist()
        return data

    def read_examples(self, recipe):
        settings = recipe.data
        path = settings.path if settings.path is not None else str(demo_colorize_folder())
        return read_image_folder(path, settings.val_split, settings.seed, settings.max_pixels, settings.image_size,
                                 low=64, high=128, step=32)

    def target_signature(self, data):
        return tf.int32, ()

    def saved_extras(self, data):
        return {"bin_weights": data.extras["bin_weights"]}

    # === Model ===
    def build_model(self, recipe, data):
        build = MODELS.get(recipe.model.name, key="model.name")
        segmenter = build(tuple(data.image_size) + (3,), len(ab_bins()), weights=recipe.model.weights)
        model = ColorizationModel(segmenter, data.extras["bin_weights"], recipe.options.color_loss)
        model(tf.zeros([1] + list(data.image_size) + [3]))
        return model

    def compile_settings(self, recipe, data):
        return {}  # the loss lives in ColorizationModel.compute_loss

    # === Results ===
    def final_metrics(self, model, val_ds, data, run_dir):
        metrics = super().final_metrics(model, val_ds, data, run_dir)
        temperature = TEMPERATURE[model.loss_kind]
        collected = {"": [], "_grey": [], "_true": []}
        samples = []
        for images, _ in val_ds:
            results = colorized(model(images, training=False), rgb_to_lab(images)[..., :1], temperature)
            greys = grey_version(images)
            collected[""].append(colour_metrics(results, images))
            collected["_grey"].append(colour_metrics(greys, images))
            collected["_true"].append({"colorfulness": colorfulness(images).numpy()})
            for grey, result, original in zip(greys.numpy(), results.numpy(), images.numpy()):
                if len(samples) < SAMPLES:
                    samples.append((grey, result, original))
        for suffix, batches in collected.items():
            for key in batches[0]:
                metrics[f"val_{key}{suffix}"] = float(np.mean(np.concatenate([b[key] for b in batches])))
        images, titles = [], []
        for grey, result, original in samples:
            images += [np.round(p).astype(np.uint8) for p in (grey, result, original)]
            titles += ["grey input", "result", "original"]
        plots.plot_image_grid(images, titles, pathlib.Path(run_dir) / "samples.png", columns=6,
                               title="validation: grey input | result | original")
        return metrics

    def preview(self, samples, data, path):
        images = [image for image, _ in samples]
        return plots.plot_image_grid(images, ["training image"] * len(images), path,
                                      title="augmented training samples")

    # === Robustness ===
    robustness_metric_name = "psnr"
    robustness_skipped = {"illumination": "a colour cast or exposure change alters the very colours the model is "
                                          "asked to recover from lightness alone; PSNR would score the change, "
                                          "not the model"}

    def robustness_answers(self, model, images, metadata):
        images = tf.cast(images, tf.float32)
        results = colorized(model(images, training=False), rgb_to_lab(images)[..., :1], metadata["temperature"])
        return {"image": results.numpy()}

    def robustness_metric(self, answers, images, targets, metadata):
        # The perturbed image's own colours are the truth: the model sees its lightness only.
        return float(np.mean(colour_metrics(answers["image"], np.asarray(images, np.float32))["psnr"]))

    # === Serving ===
    def export_archive(self, model, data, recipe):
        size = list(data.image_size)
        temperature = TEMPERATURE[recipe.options.color_loss]

        def colour_at_original_size(images):
            probabilities = model(resize_float(images, size), training=False)
            return colorized(probabilities, rgb_to_lab(tf.cast(images, tf.float32))[..., :1], temperature)

        def serve_image_bytes(image_bytes):
            return images_at_original_size(image_bytes, lambda image: colour_at_original_size(image[None])[0])

        def serve_images(images):
            return {"image": colour_at_original_size(images)}

        return self.make_archive(model, serve_image_bytes, serve_images)

    def export_metadata(self, data, recipe):
        return {"color_loss": recipe.options.color_loss, "temperature": TEMPERATURE[recipe.options.color_loss],
                "ab_bins": len(ab_bins())}

    # === Using an export ===
    def evaluate_export(self, loaded, metadata, data_path, report_dir):
        paths = list_images(data_path)
        if not paths:
            raise DataError(f"{data_path}: no images")
        serve = loaded.signatures["serving_default"]
        per_image = {"": [], "_grey": [], "_true": []}
        for path in paths:
            encoded = read_image_bytes(path)  # read once: the model and the reference see the same bytes
            original = tf.constant(decode_bytes(encoded, name=path)[None].astype(np.float32))
            answer = serve(image_bytes=tf.constant([encoded]))
            height, width = int(answer["height"][0]), int(answer["width"][0])
            if (height, width) != tuple(original.shape[1:3]):
                raise DataError(f"{path}: decoded at {width}x{height} by the model but {original.shape[2]}x"
                                f"{original.shape[1]} upright (EXIF rotation); rotate the file to evaluate it")
            result = answer["image"][:, :height, :width]
            per_image[""].append(colour_metrics(result, original))
            per_image["_grey"].append(colour_metrics(grey_version(original), original))
            per_image["_true"].append({"colorfulness": colorfulness(original).numpy()})
        metrics = {"images": len(paths)}
        for suffix, rows in per_image.items():
            for key in rows[0]:
                metrics[f"{key}{suffix}"] = float(np.mean(np.concatenate([row[key] for row in rows])))
        return metrics

    def predict_export(self, loaded, metadata, paths, top_k, out_dir=None):
        return write_produced_images(loaded, paths, out_dir, "colour")
