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
from imgpipe.data.images import UnreadableImage, load_image
from imgpipe.data.sources import LabelledFiles
from imgpipe.data.unlabelled import read_image_folder
from imgpipe.errors import DataError
from imgpipe.engine.client import write_produced_images
from imgpipe.models import MODELS
from imgpipe.models.colorizers import GreyFromLightness
from imgpipe.engine.serving import images_at_original_size, resize_float
from imgpipe.tasks.base import Task
from imgpipe.tasks.colorize.state import ColorizeState

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


def colour_at_truth_size(answer, truth):
    """A model answer's image, or a served answer's PNG decoded (what a client gets), checked against its truth's size.

    A served answer's size differing from the truth's is an image the model saw without its EXIF rotation.
    """
    if "image_png_bytes" not in answer:
        return answer["image"]
    height, width = truth.shape[:2]
    if (int(answer["height"]), int(answer["width"])) != (height, width):
        raise DataError(f"an image was decoded at {int(answer['width'])}x{int(answer['height'])} by the model but is "
                        f"{width}x{height} upright (EXIF rotation); rotate the file to evaluate it")
    return tf.io.decode_png(answer["image_png_bytes"], channels=3).numpy().astype(np.float32)


def same_size_groups(results, originals):
    """Yields (results [N, H, W, 3], originals [N, H, W, 3]) of consecutive images of one size, for batched metrics."""
    start = 0
    while start < len(originals):
        end = start + 1
        while end < len(originals) and originals[end].shape == originals[start].shape:
            end += 1
        yield np.stack(results[start:end]).astype(np.float32), np.stack(originals[start:end]).astype(np.float32)
        start = end


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
    state_class = ColorizeState
    pretrained_model = "unet_mobilenet_v2"
    scratch_model = "unet"

    # === Data ===
    def read_data(self, recipe):
        data = self.read_examples(recipe)
        settings = recipe.data
        bins = ab_bins()
        counts = bin_counts(data.train.paths, bins, settings.max_pixels)
        mix = recipe.options.color_uniform_mix
        data.state = ColorizeState(rebalancing_weights(counts, mix=mix, bins=bins).tolist())
        return data

    def read_examples(self, recipe):
        settings = recipe.data
        path = settings.path if settings.path is not None else str(demo_colorize_folder())
        return read_image_folder(path, settings.val_split, settings.seed, settings.max_pixels, settings.image_size,
                                 low=64, high=128, step=32, split_groups=settings.split_groups)

    def target_signature(self, data):
        return tf.int32, ()

    # === Model ===
    def build_model(self, recipe, data):
        build = MODELS.get(recipe.model.name, key="model.name")
        segmenter = build(tuple(data.image_size) + (3,), len(ab_bins()), weights=recipe.model.weights)
        model = ColorizationModel(segmenter, data.state.bin_weights, recipe.options.color_loss)
        model(tf.zeros([1] + list(data.image_size) + [3]))
        return model

    def compile_settings(self, recipe, data):
        return {}  # the loss lives in ColorizationModel.compute_loss

    # === Scoring ===
    def answers(self, model, images, metadata):
        images = tf.cast(images, tf.float32)
        results = colorized(model(images, training=False), rgb_to_lab(images)[..., :1], metadata["temperature"])
        return {"image": results.numpy()}

    def truth(self, image, target):
        # The image's own colours are the truth: the model sees its lightness only.
        return np.asarray(image, np.float32)

    def score(self, answers, truths, metadata):
        """PSNR, SSIM and colourfulness of the results, of the grey image (`_grey`), and the originals' colourfulness."""
        results = [colour_at_truth_size(answer, truth) for answer, truth in zip(answers, truths)]
        collected = {"": [], "_grey": [], "_true": []}
        for result, original in same_size_groups(results, truths):
            collected[""].append(colour_metrics(result, original))
            collected["_grey"].append(colour_metrics(grey_version(original), original))
            collected["_true"].append({"colorfulness": colorfulness(original).numpy()})
        return {f"{key}{suffix}": float(np.mean(np.concatenate([row[key] for row in rows])))
                for suffix, rows in collected.items() for key in rows[0]}

    def report_validation(self, model, val_ds, answers, truths, data, metadata, run_dir):
        images, titles = [], []
        for answer, original in list(zip(answers, truths))[:SAMPLES]:
            grey = grey_version(original[None])[0].numpy()
            images += [np.round(p).astype(np.uint8) for p in (grey, answer["image"], original)]
            titles += ["grey input", "result", "original"]
        plots.plot_image_grid(images, titles, pathlib.Path(run_dir) / "samples.png", columns=6,
                              title="validation: grey input | result | original")
        return {}

    def preview(self, samples, data, path):
        images = [image for image, _ in samples]
        return plots.plot_image_grid(images, ["training image"] * len(images), path,
                                      title="augmented training samples")

    # === Robustness ===
    robustness_metric_name = "psnr"
    robustness_skipped = {"illumination": "a colour cast or exposure change alters the very colours the model is "
                                          "asked to recover from lightness alone; PSNR would score the change, "
                                          "not the model"}

    # === Serving ===
    def serving_functions(self, model, data, recipe):
        size = list(data.image_size)
        temperature = TEMPERATURE[recipe.options.color_loss]

        def colour_at_original_size(images):
            probabilities = model(resize_float(images, size), training=False)
            return colorized(probabilities, rgb_to_lab(tf.cast(images, tf.float32))[..., :1], temperature)

        def serve_image_bytes(image_bytes):
            return images_at_original_size(image_bytes, lambda image: colour_at_original_size(image[None])[0],
                                           recipe.export.max_pixels)

        def serve_images(images):
            return {"image": colour_at_original_size(images)}

        return serve_image_bytes, serve_images

    def export_metadata(self, data, recipe):
        return {"color_loss": recipe.options.color_loss, "temperature": TEMPERATURE[recipe.options.color_loss],
                "ab_bins": len(ab_bins())}

    # === Using an export ===
    def evaluation_files(self, folder, metadata, max_pixels):
        paths = list_images(folder)
        if not paths:
            raise DataError(f"{folder}: no images")
        return LabelledFiles(paths, [load_image(path, max_pixels=max_pixels).astype(np.float32) for path in paths])

    def predict_export(self, loaded, metadata, paths, top_k, out_dir=None):
        return write_produced_images(loaded, paths, out_dir, "colour")
