"""Style transfer: a feed-forward network that renders any photo in the style of one painting.

What is special here: there are no labels (a content image is its own target),
the loss is perceptual (`imgpipe.tasks.stylize.perceptual`: VGG content, Gram-matrix style and
total variation) and lives in the training model, the style image's Gram
matrices are computed once when the model is built, and serving answers with
the styled image, as PNG bytes and floats, at the input's own size.

Example:
    >>> result = imgpipe.run("stylize", data="photos/", style="starry_night.jpg", loss_weights="random")
    >>> result.metrics["val_style_loss"], result.metrics["val_style_loss_identity"]
"""

import dataclasses
import logging
import pathlib
import time

import numpy as np
import tensorflow as tf

from imgpipe.engine import plots
from imgpipe.data.demo import demo_stylize_data
from imgpipe.data.folders import list_images
from imgpipe.data.images import DEFAULT_MAX_PIXELS, load_image
from imgpipe.data.sources import LabelledFiles
from imgpipe.data.unlabelled import read_image_folder
from imgpipe.errors import DataError, RecipeError
from imgpipe.engine.client import write_produced_images
from imgpipe.engine.weights import resolve_weights
from imgpipe.models import MODELS
from imgpipe.tasks.stylize.perceptual import (LossWeights, StyleTransferModel, content_targets, identity_style_loss, loss_network,
                                perceptual_terms, style_grams)
from imgpipe.engine.serving import images_at_original_size
from imgpipe.tasks.base import Task
from imgpipe.tasks.stylize.settings import style_weight
from imgpipe.tasks.stylize.state import NETWORK_OUTPUT, StyleState

log = logging.getLogger("imgpipe")

SAMPLES = 6
TIMING_SIDE = 256
TIMING_RUNS = 10


def styled(transformer, images, max_side):
    """Styles uint8 or float images [B, H, W, 3] at their own size (at most `max_side` on the longer side)."""
    images = tf.cast(images, tf.float32)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    scale = tf.minimum(1.0, max_side / tf.cast(tf.maximum(height, width), tf.float32))
    working = tf.cast(tf.round(tf.cast(tf.stack([height, width]), tf.float32) * scale), tf.int32)
    smaller = tf.image.resize(images, working, method="area")
    result = transformer(smaller, training=False)
    result = tf.image.resize(result, [height, width], method="bilinear")
    return tf.clip_by_value(result, 0.0, 255.0)


def structure_ssim(result, content):
    """SSIM of the grey result against the grey content (0..255 float [H, W, 3] each): does the photo survive?

    The loss network scores the style, and a network optimised against it can
    satisfy it with pictures that keep nothing of the photo; plain structure,
    computed without any network, says whether the content is still there
    (1.0 for the unstyled photo, near 0 for a flat or unrelated picture).
    """
    grey = tf.image.rgb_to_grayscale(tf.stack([result, content]))
    side = min(int(grey.shape[1]), int(grey.shape[2]))
    return float(tf.image.ssim(grey[0], grey[1], 255.0, filter_size=min(11, side)))


def _loss_terms_key(network, weights, seed, style_path, image_size):
    """What the loss network and the style's Gram matrices depend on (`StylizeTask._loss_terms` keeps one)."""
    return network, weights, int(seed), str(style_path), tuple(image_size)


def content_at_size(path, size, max_pixels=DEFAULT_MAX_PIXELS):
    """A photo as float32 [H, W, 3] at the model's `size`, shrunk by area as the style loss expects."""
    image = load_image(path, max_pixels=max_pixels)[None].astype(np.float32)
    return tf.image.resize(image, size, method="area", antialias=True)[0].numpy()


def style_at_size(style, image_size):
    """The style image scaled (area) so its longer side matches the training images' longer side."""
    height, width = style.shape[:2]
    scale = max(image_size) / max(height, width)
    return tf.image.resize(style, [max(1, round(height * scale)), max(1, round(width * scale))], method="area",
                           antialias=True)


class StylizeTask(Task):
    name = "stylize"
    target_kind = "label"
    monitor = ("val_loss", "min")
    main_metric = "val_style_loss"
    state_class = StyleState
    scratch_model = "johnson_light"

    # === Data ===
    def read_data(self, recipe):
        data = self.read_examples(recipe)
        loss_weights = self._loss_weights(recipe, demo=recipe.data.path is None)
        data.state = dataclasses.replace(data.state, loss_weights=loss_weights,
                                         style_weight=style_weight(recipe.options, loss_weights))
        log.info("loss network: %s, weights %s; style weight %g%s", recipe.options.loss_network, loss_weights,
                 data.state.style_weight, " (auto)" if recipe.options.style_weight == "auto" else "")
        return data

    def read_examples(self, recipe):
        settings = recipe.data
        content, style = settings.path, recipe.options.style
        if content is None and style is None:
            content, style = demo_stylize_data()
        elif content is None or style is None:
            missing = "data.path (--data CONTENT_DIR)" if content is None else "stylize.style (--style IMAGE)"
            raise DataError(f"{missing}: style transfer needs both a content folder and a style image")
        style_path = pathlib.Path(style)
        if not style_path.is_file():
            raise DataError(f"{style_path}: style image not found")
        style_pixels = load_image(style_path, max_pixels=settings.max_pixels)
        data = read_image_folder(content, settings.val_split, settings.seed, settings.max_pixels, settings.image_size,
                                 split_groups=settings.split_groups)
        data.state = StyleState(style_pixels, str(style_path.resolve()), loss_weights=recipe.options.loss_weights)
        return data

    def target_signature(self, data):
        return tf.int32, ()

    # === Model ===
    @staticmethod
    def _loss_weights(recipe, demo):
        """The loss network's weights file (resolved once, so scoring later uses the same file) or 'random'.

        The demo falls back to the fixed random-feature network when no ImageNet VGG weights are found.
        """
        weights = recipe.options.loss_weights
        if weights != "imagenet":
            return weights
        network = recipe.options.loss_network
        # The demo never downloads: the weights folder or what an earlier run fetched, else random features.
        resolved = resolve_weights(network, "auto" if demo else "imagenet", recipe.model.weights_dir, download=not demo)
        if resolved.path is None:
            log.info("demo: no ImageNet %s weights; using the fixed random-feature loss network", network)
            return "random"
        return resolved.path

    def build_model(self, recipe, data):
        if recipe.model.weights not in (None, "none") and not pathlib.Path(recipe.model.weights).is_file():
            raise RecipeError("model.weights: the style network trains from scratch; give a weights file of an "
                              "earlier stylize run to start from it, or none")
        if data.state.network_output != NETWORK_OUTPUT:
            raise RecipeError(f"this stylize run's network outputs {data.state.network_output}, as imgpipe's did "
                              f"before it became the {NETWORK_OUTPUT}; this version cannot rebuild it: train it "
                              "again (or export it with the imgpipe version that trained it)")
        transformer = MODELS.get(recipe.model.name, key="model.name")((None, None, 3), 0)
        if recipe.model.weights not in (None, "none"):
            transformer.load_weights(recipe.model.weights)
        features = loss_network(recipe.options.loss_network, data.state.loss_weights, recipe.data.seed)
        options = recipe.options
        model = StyleTransferModel(transformer, features,
                                   style_grams(features, style_at_size(data.state.style, data.image_size)),
                                   LossWeights(options.content_weight, data.state.style_weight, options.tv_weight))
        model(tf.zeros([1] + list(data.image_size) + [3]))
        # The run's final scores use this very loss network: no second VGG is built for them.
        self._loss_key = _loss_terms_key(options.loss_network, data.state.loss_weights, recipe.data.seed,
                                         data.state.style_path, data.image_size)
        self._loss = features, model.grams
        return model

    def compile_settings(self, recipe, data):
        return {}  # the loss lives in StyleTransferModel.compute_loss

    # === Scoring ===
    def answers(self, model, images, metadata):
        return {"image": styled(model.transformer, images, metadata["max_side"]).numpy()}

    def truth(self, image, target):
        return np.asarray(image, np.float32)

    def score(self, answers, truths, metadata):
        """Content and style loss of the results, the style loss of the unstyled photos (`_identity`), and
        the results' structure SSIM against their photos (`structure_ssim`), which no loss network computes,
        beside the SSIM a flat picture of each photo's mean colour gets (`structure_ssim_flat`): smooth
        regions make even that one score above 0 (0.17 to 0.30 on raccoon photos at 128 px)."""
        features, grams = self._loss_terms(metadata)
        totals = {"content_loss": [], "style_loss": [], "style_loss_identity": [], "structure_ssim": [],
                  "structure_ssim_flat": []}
        for answer, content in zip(answers, truths):
            image, result = tf.constant(content[None]), tf.constant(answer["image"][None])
            content_term, style_term, _ = perceptual_terms(features, result, content_targets(features, image), grams)
            totals["content_loss"].append(float(content_term[0]))
            totals["style_loss"].append(float(style_term[0]))
            totals["style_loss_identity"].append(float(identity_style_loss(features, image, grams)[0]))
            totals["structure_ssim"].append(structure_ssim(tf.constant(answer["image"]), tf.constant(content)))
            flat = tf.fill(tf.shape(content), float(np.mean(content)))
            totals["structure_ssim_flat"].append(structure_ssim(flat, tf.constant(content)))
        return {key: float(np.mean(values)) for key, values in totals.items()}

    def _loss_terms(self, metadata):
        """The loss network and the style's Gram matrices of an export's metadata, built once per task object."""
        key = _loss_terms_key(metadata["loss_network"], metadata["loss_weights"], metadata["loss_seed"],
                              metadata["style_image"], metadata["image_size"])
        if getattr(self, "_loss_key", None) != key:
            style_path = pathlib.Path(metadata["style_image"])
            if not style_path.is_file():
                raise DataError(f"{style_path}: the style image this model was trained on is needed to score it")
            features = loss_network(metadata["loss_network"], metadata["loss_weights"], metadata["loss_seed"])
            self._loss_key = key
            self._loss = features, style_grams(features, style_at_size(load_image(style_path), metadata["image_size"]))
        return self._loss

    def report_validation(self, model, val_ds, answers, truths, data, metadata, run_dir):
        samples = [(content, answer["image"]) for content, answer in list(zip(truths, answers))[:SAMPLES]]
        self.plot_samples(samples, data, pathlib.Path(run_dir) / "samples.png")
        return {"val_content_loss_identity": 0.0,  # an unstyled image has its own content exactly
                "ms_per_image_256": self.milliseconds_per_image(model.transformer),
                # `weights` in metrics.json is the style network's (none: it trains from scratch).
                "loss_network_weights": data.state.loss_weights}

    @staticmethod
    def milliseconds_per_image(transformer, side=TIMING_SIDE, runs=TIMING_RUNS):
        """Median wall time of one side×side image through the compiled network, on this machine."""
        forward = tf.function(lambda images: transformer(images, training=False))
        image = tf.random.uniform([1, side, side, 3], 0, 255, seed=0)
        forward(image)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            forward(image).numpy()
            times.append(time.perf_counter() - start)
        return round(1000 * float(np.median(times)), 1)

    def plot_samples(self, samples, data, path):
        style = np.asarray(data.state.style)
        images, titles = [], []
        for content, result in samples:
            height, width = content.shape[:2]
            style_thumb = tf.image.resize(style, (height, width), method="area").numpy()
            images += [content.astype(np.uint8), style_thumb.astype(np.uint8), np.clip(result, 0, 255).astype(np.uint8)]
            titles += ["content", "style", "result"]
        plots.plot_image_grid(images, titles, path, columns=6, title="validation: content | style | result")

    def preview(self, samples, data, path):
        images = [image for image, _ in samples]
        return plots.plot_image_grid(images, ["content"] * len(images), path, title="augmented content images")

    # === Robustness ===
    robustness_note = ("style transfer has no right answer to lose: a perturbed photo is styled into another "
                       "picture, and no metric says whether it was styled worse; the card does not apply")

    # === Serving ===
    def export_archive(self, model, data, recipe):
        transformer = model.transformer
        max_side = recipe.options.max_side

        def serve_image_bytes(image_bytes):
            return images_at_original_size(image_bytes, lambda image: styled(transformer, image[None], max_side)[0],
                                           recipe.export.max_pixels)

        def serve_images(images):
            return {"image": styled(transformer, images, max_side)}

        return self.make_archive(transformer, serve_image_bytes, serve_images)

    def export_metadata(self, data, recipe):
        return {"style_image": data.state.style_path, "max_side": recipe.options.max_side,
                "loss_network": recipe.options.loss_network, "loss_weights": data.state.loss_weights,
                "loss_seed": recipe.data.seed,
                "loss_weighting": {"content": recipe.options.content_weight,
                                   "style": data.state.style_weight,
                                   "tv": recipe.options.tv_weight}}

    # === Using an export ===
    def evaluation_files(self, folder, metadata, max_pixels):
        paths = list_images(folder)
        if not paths:
            raise DataError(f"{folder}: no images")
        return LabelledFiles(paths, [content_at_size(path, metadata["image_size"], max_pixels) for path in paths])

    def export_answers(self, loaded, paths, metadata):
        """`serve_images` on each photo at the model's size: the losses are defined at the size it trained at."""
        serve = loaded.signatures["serve_images"]
        return [{"image": serve(images=content_at_size(path, metadata["image_size"])[None])["image"][0].numpy()}
                for path in paths]

    def predict_export(self, loaded, metadata, paths, top_k, out_dir=None):
        return write_produced_images(loaded, paths, out_dir, "styled")
