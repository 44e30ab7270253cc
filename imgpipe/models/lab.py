"""CIE Lab in TensorFlow ops, quantised ab bins, and the colour metrics of the colorization recipe.

Lab (D65 white, sRGB primaries, the formulas scikit-image's `rgb2lab` uses) is
computed in the graph, so `tf.data`, the loss and the exported model share one
conversion. ab is quantised into 10-unit bins, keeping only the bins that sRGB
colours reach (Zhang, Isola, Efros 2016: "Colorful Image Colorization").

Example:
    >>> lab = rgb_to_lab(tf.constant([[[255.0, 0.0, 0.0]]]))   # pure red
    >>> lab.numpy().round(1)
    array([[[ 53.2,  80.1,  67.2]]], dtype=float32)
"""

import functools

import numpy as np
import tensorflow as tf

RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]], np.float32)
XYZ_TO_RGB = np.linalg.inv(RGB_TO_XYZ).astype(np.float32)
D65_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)
EPSILON = 0.008856  # (6/29)^3
KAPPA = 7.787  # 1 / (3 (6/29)^2)
BIN_SIZE = 10.0
AB_LIMIT = 110.0


def rgb_to_lab(rgb):
    """0..255 sRGB [..., 3] -> Lab [..., 3]: L in 0..100, a and b roughly -110..110."""
    rgb = tf.cast(rgb, tf.float32) / 255.0
    linear = tf.where(rgb > 0.04045, tf.pow((rgb + 0.055) / 1.055, 2.4), rgb / 12.92)
    xyz = tf.tensordot(linear, tf.constant(RGB_TO_XYZ.T), axes=1) / D65_WHITE
    f = tf.where(xyz > EPSILON, tf.pow(tf.maximum(xyz, EPSILON), 1.0 / 3.0), KAPPA * xyz + 16.0 / 116.0)
    fx, fy, fz = tf.unstack(f, axis=-1)
    return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab):
    """Lab [..., 3] -> 0..255 sRGB [..., 3] (float, clipped to the gamut)."""
    lab = tf.cast(lab, tf.float32)
    lightness, a, b = tf.unstack(lab, axis=-1)
    fy = (lightness + 16.0) / 116.0
    f = tf.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
    xyz = tf.where(f > 0.2068966, tf.pow(f, 3.0), (f - 16.0 / 116.0) / KAPPA) * D65_WHITE
    linear = tf.clip_by_value(tf.tensordot(xyz, tf.constant(XYZ_TO_RGB.T), axes=1), 0.0, 1.0)
    rgb = tf.where(linear > 0.0031308, 1.055 * tf.pow(tf.maximum(linear, 0.0031308), 1.0 / 2.4) - 0.055,
                   12.92 * linear)
    return tf.clip_by_value(rgb * 255.0, 0.0, 255.0)


@functools.lru_cache(maxsize=1)
def ab_bins():
    """[Q, 2] centres of the 10x10 ab bins that some sRGB colour falls into (Q is about 260 to 320)."""
    levels = np.linspace(0, 255, 48, dtype=np.float32)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    ab = rgb_to_lab(cube).numpy()[:, 1:]
    cells = np.unique(np.round(ab / BIN_SIZE).astype(np.int32), axis=0)
    return (cells * BIN_SIZE).astype(np.float32)


def _squared_distances(ab, bins):
    """[N, 2] x [Q, 2] -> [N, Q] squared distances, by one matrix product."""
    bins = tf.constant(bins) if isinstance(bins, np.ndarray) else bins
    return (tf.reduce_sum(tf.square(ab), axis=-1, keepdims=True) - 2.0 * tf.matmul(ab, bins, transpose_b=True)
            + tf.reduce_sum(tf.square(bins), axis=-1)[None])


def encode_ab(ab, bins, neighbours=5, sigma=5.0):
    """ab [..., 2] -> (soft targets [..., Q], nearest bin [...]).

    The targets put Gaussian weights (sigma in ab units) on the `neighbours`
    nearest bin centres and sum to one (Zhang et al.'s soft encoding).
    """
    shape = tf.shape(ab)
    flat = tf.reshape(tf.cast(ab, tf.float32), [-1, 2])
    count, classes = tf.shape(flat)[0], tf.shape(bins)[0]
    nearest, index = tf.math.top_k(-_squared_distances(flat, bins), k=neighbours)
    weights = tf.nn.softmax(nearest / (2 * sigma**2), axis=-1)
    rows = tf.repeat(tf.range(count), neighbours)
    dense = tf.scatter_nd(tf.stack([rows, tf.reshape(index, [-1])], axis=1), tf.reshape(weights, [-1]),
                          [count, classes])
    return (tf.reshape(dense, tf.concat([shape[:-1], [classes]], axis=0)),
            tf.reshape(index[:, 0], shape[:-1]))


def soft_encode(ab, bins, neighbours=5, sigma=5.0):
    """ab [..., 2] -> [..., Q] target distributions (see `encode_ab`)."""
    return encode_ab(ab, bins, neighbours, sigma)[0]


def nearest_bin(ab, bins):
    """ab [..., 2] -> [...] int32 index of the nearest bin centre."""
    shape = tf.shape(ab)
    flat = tf.reshape(tf.cast(ab, tf.float32), [-1, 2])
    return tf.reshape(tf.argmin(_squared_distances(flat, bins), axis=-1, output_type=tf.int32), shape[:-1])


def annealed_mean(logits, bins, temperature=0.38):
    """[..., Q] logits -> [..., 2] ab: the mean of the distribution sharpened by `temperature`.

    T=1 is the plain mean (desaturated), T->0 the mode (vivid but patchy);
    0.38 is Zhang et al.'s compromise.
    """
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)
    return tf.tensordot(probabilities, tf.convert_to_tensor(bins, tf.float32), axes=1)


def rebalancing_weights(bin_counts, mix=0.5, sigma=5.0, bins=None):
    """Per-bin loss weights that favour rare colours: ((1 - mix) p~ + mix / Q)^-1, mean 1 under p~.

    `p~` is the empirical bin distribution smoothed by a Gaussian of `sigma` in ab units.
    """
    bins = ab_bins() if bins is None else bins
    counts = np.asarray(bin_counts, np.float64)
    distance = np.sum((bins[:, None, :] - bins[None, :, :]) ** 2, axis=-1)
    smoothed = np.exp(-distance / (2 * sigma**2)) @ (counts / max(counts.sum(), 1))
    smoothed /= smoothed.sum()
    weights = 1.0 / ((1 - mix) * smoothed + mix / len(bins))
    return (weights / np.sum(smoothed * weights)).astype(np.float32)


def colorfulness(rgb):
    """Hasler and Süsstrunk's (2003) colourfulness of 0..255 RGB images [B, H, W, 3] -> [B]."""
    rgb = tf.cast(rgb, tf.float32)
    red, green, blue = tf.unstack(rgb, axis=-1)
    rg = red - green
    yb = 0.5 * (red + green) - blue
    mean_rg, var_rg = tf.nn.moments(rg, axes=[1, 2])
    mean_yb, var_yb = tf.nn.moments(yb, axes=[1, 2])
    return tf.sqrt(var_rg + var_yb) + 0.3 * tf.sqrt(tf.square(mean_rg) + tf.square(mean_yb))
