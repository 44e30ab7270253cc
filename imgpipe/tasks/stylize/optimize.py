"""One-off style transfer by optimising the pixels of one image (Gatys, Ecker, Bethge 2016).

No network is trained: the image itself is the variable, moved by Adam to
lower the same perceptual loss the feed-forward recipe trains with
(`imgpipe.tasks.stylize.perceptual`). Slower per image than a trained network, but needs
nothing but the two pictures.

Example:
    >>> pixels = stylize_image("city.jpg", "starry_night.jpg", steps=200, loss_weights="random")
    >>> save_image(pixels, "city_starry.png")
"""

import keras
import numpy as np
import tensorflow as tf

from imgpipe.data.images import load_image
from imgpipe.errors import RecipeError
from imgpipe.tasks.stylize.perceptual import LossWeights, content_targets, loss_network, perceptual_terms, style_grams

# The per-image optimisation's own weights; a trained network's style weight is stylize.style_weight.
DEFAULT_WEIGHTS = LossWeights(content=1.0, style=2.0, tv=0.1)


def _fit(pixels, longest):
    height, width = pixels.shape[:2]
    scale = min(1.0, longest / max(height, width))
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    return tf.image.resize(pixels.astype(np.float32), size, method="area", antialias=True)


def stylize_image(content_path, style_path, steps=300, size=384, learning_rate=4.0, weights=DEFAULT_WEIGHTS,
                  network="vgg16", loss_weights="imagenet", seed=1337, verbose=1, weights_dir=None):
    """The content image re-rendered in the style image's style, uint8 [H, W, 3] at most `size` on its longer side.

    Args:
        content_path, style_path: image files.
        steps: Adam steps on the pixels.
        size: longest side of the working (and returned) image.
        learning_rate: Adam step size, in 0..255 pixel units.
        weights: `LossWeights` of content, style and total variation.
        network, loss_weights, seed, weights_dir: the loss network (see
            `imgpipe.tasks.stylize.perceptual.loss_network`).
        verbose: 1 shows a Keras progress bar with the three losses.
    """
    if steps < 1:
        raise RecipeError(f"--steps: must be at least 1, got {steps}")
    content = _fit(load_image(content_path), size)[None]
    style = _fit(load_image(style_path), size)
    features = loss_network(network, loss_weights, seed, weights_dir)
    grams = style_grams(features, style)
    targets = content_targets(features, content)  # once: the content image never changes
    image = tf.Variable(content)
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            content_term, style_term, tv_term = perceptual_terms(features, image, targets, grams)
            total = weights.content * content_term + weights.style * style_term + weights.tv * tv_term
        optimizer.apply_gradients([(tape.gradient(total, image), image)])
        image.assign(tf.clip_by_value(image, 0.0, 255.0))
        return total[0], content_term[0], style_term[0], tv_term[0]

    progress = keras.utils.Progbar(steps, verbose=verbose, stateful_metrics=["loss", "content", "style", "tv"])
    for index in range(steps):
        total, content_term, style_term, tv_term = step()
        progress.update(index + 1, [("loss", float(total)), ("content", float(content_term)),
                                    ("style", float(style_term)), ("tv", float(tv_term))])
    return np.round(image.numpy()[0]).astype(np.uint8)
