"""What a trained network looks at: Grad-CAM heat maps, and the inputs that excite its filters.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a convolutional
feature map by the mean gradient of a class score with respect to it; the
weighted sum, kept where positive, shows the image regions that raise the
score. For segmentation, the score is the class's summed output over the
pixels predicted as that class, so the map shows what supports that region.

Filter visualisation ("what input activates this neuron most", Erhan et al.
2009; Olah et al. 2017): gradient ascent on the input pixels from a grey,
slightly noisy image, plus the real images with the highest mean activation.

Example:
    >>> heat = grad_cam(model, images)            # [B, H, W] in 0..1, for the predicted classes
    >>> overlay = heat_overlay(images[0], heat[0])
    >>> pattern, trace = maximise_filter(model, "stage3_b_conv", 5)
"""

import numpy as np
import tensorflow as tf
import keras

from imgpipe.errors import RecipeError

HEAT_ALPHA = 0.45
JITTER = 2  # pixels the image is shifted by, at most, before each ascent step
BLUR_EVERY = 4  # ascent steps between blurs


def feature_layers(model):
    """Layers of `model` with a spatial (4-D) output, in order, except input, preprocessing (image-shaped),
    pooling and output layers: the candidates for Grad-CAM and filter visualisation."""
    outputs = {id(tensor) for tensor in model.outputs}
    skipped = (keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.Normalization,
               keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    found = []
    for layer in model.layers:
        try:
            output = outer_output(layer)
        except (AttributeError, ValueError):
            continue
        image_like = tuple(output.shape[1:]) == tuple(model.inputs[0].shape[1:])  # preprocessing layers
        if len(output.shape) == 4 and not isinstance(layer, skipped) and id(output) not in outputs and not image_like:
            found.append(layer)
    return found


def outer_output(layer):
    """The layer's output in the model that calls it.

    For a nested model (a keras.applications backbone), `layer.output` is the
    inner graph's tensor, from which no gradient flows back to the outer input;
    the node of its call in the outer graph holds the connected one.
    """
    if isinstance(layer, keras.Model) and layer._inbound_nodes:
        return layer._inbound_nodes[-1].output_tensors[0]
    return layer.output


def feature_layer(model, name=None):
    """The layer called `name`, or the last spatial layer before the head (a nested backbone counts as one)."""
    layers = feature_layers(model)
    if name is not None:
        names = [layer.name for layer in layers]
        if name not in names:
            raise RecipeError(f"--layer: {name!r} is not a spatial layer of {model.name}; "
                              f"choose one of {', '.join(names[-8:])}")
        return layers[names.index(name)]
    if not layers:
        raise RecipeError(f"{model.name} has no convolutional layer to explain")
    return layers[-1]


def class_score(class_index=None):
    """Score of a classifier's output [B, C]: the given class, or each image's predicted class."""
    def score(outputs):
        chosen = tf.argmax(outputs, axis=-1) if class_index is None else tf.fill([tf.shape(outputs)[0]], class_index)
        return tf.gather(outputs, chosen, axis=-1, batch_dims=1), chosen
    return score


def region_score(class_index):
    """Score of a segmenter's output [B, H, W, C]: the class's output summed over the pixels predicted as it."""
    def score(outputs):
        region = tf.cast(tf.equal(tf.argmax(outputs, axis=-1), class_index), outputs.dtype)
        return tf.reduce_sum(outputs[..., class_index] * region, axis=[1, 2]), tf.fill([tf.shape(outputs)[0]],
                                                                                        class_index)
    return score


def grad_cam(model, images, score=None, layer=None):
    """Grad-CAM heat maps for a batch.

    Args:
        model: a functional Keras model taking float32 [B, H, W, 3] images.
        images: array-like [B, H, W, 3], as the model takes them (RGB 0..255 for imgpipe's models).
        score: fn(outputs) -> (score [B], class index [B]); `class_score()` (predicted class) by default.
        layer: a layer of `model` or its name; `feature_layer(model)` by default.

    Returns:
        (heat maps float32 [B, H, W] in 0..1 at the images' size, explained class index per image)
    """
    layer = layer if isinstance(layer, keras.layers.Layer) else feature_layer(model, layer)
    score = score or class_score()
    probe = keras.Model(model.inputs, [outer_output(layer), model.output])
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        features, outputs = probe(images, training=False)
        tape.watch(features)
        scores, chosen = score(tf.cast(outputs, tf.float32))
    gradients = tf.cast(tape.gradient(scores, features), tf.float32)
    features = tf.cast(features, tf.float32)  # mixed precision computes in (b)float16
    channel_weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    heat = tf.nn.relu(tf.reduce_sum(features * channel_weights, axis=-1))
    peak = tf.reduce_max(heat, axis=[1, 2], keepdims=True)
    heat = tf.math.divide_no_nan(heat, peak)
    heat = tf.image.resize(heat[..., None], tf.shape(images)[1:3], method="bilinear")[..., 0]
    return heat.numpy(), chosen.numpy()


def heat_overlay(image, heat, alpha=HEAT_ALPHA):
    """uint8 image with the heat map (0..1) blended over it in matplotlib's 'jet' colours."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
    blended = (1 - alpha) * np.asarray(image, np.float32) + alpha * colours
    return np.clip(blended, 0, 255).astype(np.uint8)


def maximise_filter(model, layer, filter_index, size=None, steps=60, step_size=6.0, seed=1337):
    """The input that most activates one filter, found by normalised gradient ascent on the pixels.

    Plain ascent finds high-frequency noise that a filter happens to like; as in
    Yosinski et al. (2015), the image is jittered by a pixel or two before each
    step and blurred every `BLUR_EVERY` steps, which leaves the patterns a filter
    responds to across positions.

    Args:
        model: a functional Keras model taking float32 RGB 0..255 images.
        layer: a spatial layer of `model` or its name.
        filter_index: int, the channel of `layer`'s output to maximise.
        size: (height, width) of the synthesised image; the model's input size by default.
        steps, step_size: gradient-ascent iterations, and pixels moved per step (gradient scaled to unit RMS).

    Returns:
        (uint8 image [H, W, 3], mean activation of the filter before each step and after the last)
    """
    layer = layer if isinstance(layer, keras.layers.Layer) else feature_layer(model, layer)
    probe = keras.Model(model.inputs, outer_output(layer))
    size = size or tuple(model.input_shape[1:3])
    rng = np.random.default_rng(seed)
    pixels = tf.Variable(128.0 + rng.normal(0.0, 10.0, (1, *size, 3)).astype(np.float32))

    def activation_of(image):
        return tf.reduce_mean(tf.cast(probe(image, training=False), tf.float32)[..., filter_index])

    trace = []
    for step in range(steps):
        shift = rng.integers(-JITTER, JITTER + 1, 2).tolist()
        with tf.GradientTape() as tape:
            tape.watch(pixels)
            activation = activation_of(tf.roll(pixels, shift, axis=[1, 2]))
        gradient = tape.gradient(activation, pixels)
        gradient = gradient / (tf.sqrt(tf.reduce_mean(tf.square(gradient))) + 1e-8)
        updated = pixels + step_size * gradient
        if step % BLUR_EVERY == BLUR_EVERY - 1 and step < steps - 1:
            updated = _blur(updated)
        pixels.assign(tf.clip_by_value(updated, 0.0, 255.0))
        trace.append(float(activation))
    trace.append(float(activation_of(pixels)))
    return pixels.numpy()[0].astype(np.uint8), trace


def _blur(images):
    """A 3x3 Gaussian blur per channel (sigma about 0.8 px)."""
    taps = np.array([1.0, 2.0, 1.0], np.float32)
    kernel = np.outer(taps, taps) / 16.0
    kernel = np.tile(kernel[:, :, None, None], (1, 1, 3, 1))
    return tf.nn.depthwise_conv2d(tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT"), kernel,
                                  strides=[1, 1, 1, 1], padding="VALID")


def strongest_filters(model, layer, images, count):
    """Indices of the `count` filters of `layer` with the highest mean activation over `images`."""
    layer = layer if isinstance(layer, keras.layers.Layer) else feature_layer(model, layer)
    activations = _mean_activations(keras.Model(model.inputs, outer_output(layer)), images)
    return np.argsort(-activations.mean(axis=0))[:count]


def top_activating(model, layer, filter_index, images, count):
    """Indices of the `count` images (of `images`) on which the filter's mean activation is highest."""
    layer = layer if isinstance(layer, keras.layers.Layer) else feature_layer(model, layer)
    activations = _mean_activations(keras.Model(model.inputs, outer_output(layer)), images)
    return np.argsort(-activations[:, filter_index])[:count]


def _mean_activations(probe, images, batch_size=32):
    """[N, channels]: each image's mean activation per channel."""
    means = []
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(np.asarray(images[start:start + batch_size]), tf.float32)
        means.append(tf.reduce_mean(tf.cast(probe(batch, training=False), tf.float32), axis=[1, 2]).numpy())
    return np.concatenate(means)


def write_grad_cam_grid(model, images, class_names, path, score=None, layer=None, labels=None):
    """Grad-CAM overlays of `images` in a PNG grid, captioned with the explained class (and the true one).

    Returns the path, or None when there are no images.
    """
    from imgpipe.engine import plots

    if not len(images):
        return None
    heat, chosen = grad_cam(model, images, score=score, layer=layer)
    overlays = [heat_overlay(image, heat_map) for image, heat_map in zip(images, heat)]
    titles = [class_names[int(index)] + ("" if labels is None else f" (true {class_names[int(labels[n])]})")
              for n, index in enumerate(chosen)]
    return plots.plot_image_grid(overlays, titles, path, columns=min(4, len(overlays)),
                                  title="Grad-CAM: where the evidence for the class lies")


def write_filter_grid(model, layer, images, path, filters=4, top=4, steps=40):
    """One row per filter of `layer` (the most active ones on `images`): the synthesised input, then the
    `top` images of `images` that activate it most. Returns the path."""
    from imgpipe.engine import plots

    layer = layer if isinstance(layer, keras.layers.Layer) else feature_layer(model, layer)
    images = np.asarray(images)
    tiles, titles = [], []
    for filter_index in strongest_filters(model, layer, images, filters):
        pattern, trace = maximise_filter(model, layer, int(filter_index), steps=steps)
        tiles.append(pattern)
        titles.append(f"filter {filter_index}: {trace[0]:.2g} -> {trace[-1]:.2g}")
        for rank, index in enumerate(top_activating(model, layer, int(filter_index), images, top)):
            tiles.append(images[index].astype(np.uint8))
            titles.append(f"top {rank + 1}")
    return plots.plot_image_grid(tiles, titles, path, columns=1 + min(top, len(images)),
                                  title=f"{layer.name}: synthesised input, then the images that excite it most")
