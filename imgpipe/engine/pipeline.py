"""From an `ImageSet` to batches for `model.fit`: decode, resize, cache, augment, batch.

    paths -> read+decode+resize (parallel) -> cache -> shuffle -> batch -> augment (parallel) -> float -> prefetch

Images stay uint8 until the last step, so the cache and the augmentation
work on a quarter of the bytes; the model sees float32 pixels in 0..255 and
does its own scaling. The cache sits after decode+resize and before
augmentation, so epochs after the first skip decoding and still see fresh
augmentation. Files that fail to decode mid-run are dropped with one warning
each, never a crash.

Where the time goes (benchmarks/README.md has the figures): plain JPEGs are
decoded by TensorFlow in the graph at a reduced DCT scale (no Python, no GIL),
other files by Pillow; shrinking is an area average; augmentation, which is
Python (albumentations) and so holds the GIL, runs once per batch rather than
once per image, which halves its overhead.

Example:
    >>> train_ds = make_dataset(data.train, [64, 64], batch_size=32, training=True,
    ...                         augmenter=Augmenter(), seed=1337)
"""

import logging
import os
import threading
import warnings

import numpy as np
import tensorflow as tf

from imgpipe.data.images import DEFAULT_MAX_PIXELS, JPEG_END_MARKER, UnreadableImage, decode_bytes, plain_jpeg_scale

log = logging.getLogger("imgpipe")

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 2048
DCT_SCALES = (1, 2, 4, 8)
NOT_A_PLAIN_JPEG = -1

# Files that fail to decode are filtered out, so a file-based dataset's length
# is unknown until it has been read once, and Keras warns at that first end.
warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)


class FileDecoder:
    """Decodes files in tf.data worker threads, remembering (and warning once about) failures.

    Each file is read once, in Python: its header says whether it is a plain
    JPEG (`plain_jpeg_scale`), whose bytes then go on to `tf.io.decode_jpeg`
    at a reduced DCT scale in the graph, or anything else, which Pillow
    decodes from the same bytes. Either way the pixels are those of `load_image`.

    Args:
        size: [height, width] every image is resized to.
        max_pixels: larger images are refused before decoding.
        load_target: optional `fn(target, size) -> array` for targets stored in
            files (segmentation masks); by default the target passes through.
        target_signature: (dtype, shape) of the target the pipeline carries.
    """

    def __init__(self, size, max_pixels, load_target=None, target_signature=(tf.int32, ())):
        self.size = list(size)
        self.max_pixels = max_pixels
        self.load_target = load_target
        self.target_dtype, self.target_shape = target_signature
        self.failed = set()
        self._lock = threading.Lock()

    def read(self, path, target):
        """Reads one file: (Pillow's pixels or an empty image, JPEG bytes or b"", DCT scale index, target, ok).

        A plain JPEG comes back as its bytes and the index of its scale in
        `DCT_SCALES`, for the graph to decode; anything else as Pillow's
        pixels and `NOT_A_PLAIN_JPEG`.
        """
        path = path.decode() if isinstance(path, bytes) else str(path)
        try:
            contents = _read_bytes(path)
            scale = plain_jpeg_scale(contents, self.size, self.max_pixels, name=path)
            if scale:
                image, jpeg, scale_index = np.zeros([0, 0, 3], np.uint8), contents, DCT_SCALES.index(scale)
            else:
                image = decode_bytes(contents, max_pixels=self.max_pixels, name=path, draft=self.size)
                jpeg, scale_index = b"", NOT_A_PLAIN_JPEG
            if self.load_target is not None:
                target = self.load_target(target, self.size)
            target = np.asarray(target, dtype=self.target_dtype.as_numpy_dtype)
            return image, jpeg, np.int32(scale_index), target, True
        except UnreadableImage as error:
            with self._lock:
                first_time = path not in self.failed
                self.failed.add(path)
            if first_time:
                log.warning("skipped %s", error)
            blank_target = np.zeros(
                [d if d is not None else 1 for d in self.target_shape], self.target_dtype.as_numpy_dtype
            )
            return np.zeros([1, 1, 3], np.uint8), b"", np.int32(NOT_A_PLAIN_JPEG), blank_target, False

    def tf_decode_either(self, path, target, in_graph):
        """`tf_decode`, or for a file the reader found to be an upright RGB/grey JPEG (`in_graph`) and
        whose bytes end as a complete JPEG does, no Python at all: read, DCT-scaled decode, resize."""
        def graph_only():
            contents = tf.io.read_file(path)
            complete = tf.equal(tf.strings.substr(contents, tf.strings.length(contents) - 2, 2), JPEG_END_MARKER)
            return tf.cond(complete, lambda: (resize_uint8(decode_jpeg_for_size(contents, self.size), self.size),
                                              tf.cast(target, self.target_dtype), tf.constant(True)),
                           lambda: self.tf_decode(path, target))
        return tf.cond(in_graph, graph_only, lambda: self.tf_decode(path, target))

    def tf_decode(self, path, target):
        image, jpeg, scale_index, target_out, ok = tf.numpy_function(
            self.read, [path, target], [tf.uint8, tf.string, tf.int32, self.target_dtype, tf.bool], stateful=False
        )
        image.set_shape([None, None, 3])
        jpeg.set_shape([])
        scale_index.set_shape([])
        image = tf.cond(scale_index == NOT_A_PLAIN_JPEG, lambda: image, lambda: decode_jpeg_scaled(jpeg, scale_index))
        # Resized in the graph, as the serving signature resizes.
        image = resize_uint8(image, self.size)
        target_out.set_shape(self.target_shape)
        ok.set_shape(())
        return image, target_out, ok


def decode_jpeg_for_size(jpeg, size):
    """JPEG bytes -> uint8 [H, W, 3] at the largest DCT scale (1/2, 1/4, 1/8) that keeps it at least `size`.

    The scale `plain_jpeg_scale` picks from the header, worked out in the graph.
    """
    shape = tf.io.extract_jpeg_shape(jpeg)
    shrink = tf.minimum(shape[1] // size[1], shape[0] // size[0])
    scale_index = tf.reduce_sum(tf.cast(shrink >= tf.constant(DCT_SCALES[1:]), tf.int32))
    return decode_jpeg_scaled(jpeg, scale_index)


def decode_jpeg_scaled(jpeg, scale_index):
    """JPEG bytes -> uint8 [H, W, 3] decoded at `DCT_SCALES[scale_index]`, with Pillow's exact IDCT.

    Example:
        >>> decode_jpeg_scaled(tf.io.read_file("photo.jpg"), scale_index=1)   # half size
    """
    def at(scale):
        return lambda: tf.io.decode_jpeg(jpeg, channels=3, ratio=scale, dct_method="INTEGER_ACCURATE")

    return tf.switch_case(scale_index, [at(scale) for scale in DCT_SCALES])


def resize_uint8(image, size):
    """Resizes a uint8 image tensor to `size` ([height, width]) and keeps it uint8.

    Shrinking by more than 2x averages the covered source pixels (`area`), the
    anti-aliasing filter. Anything else, a shrink by at most 2x (what is left
    after a JPEG's DCT-scaled decode) or an enlargement, is plain bilinear: at
    2x exactly it is the same 2x2 average, and an enlargement needs no
    anti-aliasing. Two branches, not three: with a third (antialiased bilinear)
    the decode step ran at half the speed (610 against 1,200 JPEGs per second
    decoded and resized to 224 on 2 cores, the speed of Keras' own loader).

    Example:
        >>> resize_uint8(tf.zeros([480, 640, 3], tf.uint8), [224, 224]).shape
        TensorShape([224, 224, 3])
    """
    far = tf.reduce_any(tf.shape(image)[:2] > 2 * tf.constant(size))
    resized = tf.cond(far, lambda: tf.image.resize(image, size, method="area"),
                      lambda: tf.image.resize(image, size, method="bilinear"))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def cache_mode(count, size, requested, budget_bytes=None):
    """'memory', 'disk' or 'none': `auto` keeps decoded images in memory when they fit the budget."""
    if requested != "auto":
        return requested
    if budget_bytes is None:
        budget_bytes = min(4 * 2**30, _physical_memory() // 4)
    needed = count * size[0] * size[1] * 3
    return "memory" if needed <= budget_bytes else "disk"


def make_dataset(
    image_set,
    size,
    batch_size,
    training,
    augmenter=None,
    seed=1337,
    cache="auto",
    cache_dir=None,
    max_pixels=DEFAULT_MAX_PIXELS,
    decoder=None,
    drop_remainder=False,
    shard=None,
    repeat=False,
    deterministic=False,
):
    """Builds the tf.data pipeline for one split.

    Args:
        image_set: `ImageSet` of files (decoded here) or of a decoded `dataset`.
        size: [height, width] of the model input.
        batch_size: int, the global batch size.
        training: bool; shuffles and augments when true.
        augmenter: optional `Augmenter`, used only when training.
        seed: int, seed of the file order, shuffle and augmentation.
        cache: 'auto', 'memory', 'disk' or 'none'.
        cache_dir: folder for the 'disk' cache file.
        decoder: optional `FileDecoder` (for targets in files); one is made otherwise.
        drop_remainder: bool, leave out the last, smaller batch.
        shard: optional (count, index): keep every count-th file from `index` on, before decoding
            (one worker's share in multi-worker training).
        repeat: bool, repeat the data without end (the caller fixes the steps per epoch).
        deterministic: bool, keep the augmented batches in order (`train.deterministic`); out of order, a
            slow batch does not hold up the others.

    Returns:
        (dataset of (float32 images [B,H,W,3] in 0..255, targets), the decoder or None); the dataset
        runs without tf.data's tuner (`_fixed_parallelism`).
    """
    size = list(size)
    if image_set.is_files:
        decoder = decoder or FileDecoder(size, max_pixels)
        dataset = _decoded_files(image_set, decoder, training, seed, shard)
    else:
        decoder = None
        dataset = image_set.dataset if shard is None else image_set.dataset.shard(*shard)
        dataset = dataset.map(_resizer(size), num_parallel_calls=AUTOTUNE)
    dataset = _cache(dataset, cache_mode(image_set.count, size, cache), cache_dir, "train" if training else "val")
    if training:
        dataset = dataset.shuffle(min(image_set.count, SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    augmenting = training and augmenter is not None and not augmenter.is_identity
    if augmenting:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, seeds)
    dataset = dataset.batch(batch_size, num_parallel_calls=AUTOTUNE, drop_remainder=drop_remainder)
    if augmenting:
        # One Python call per batch: albumentations holds the GIL, and per image
        # the call overhead cost as much as the augmentation itself.
        dataset = dataset.map(_seeded(augmenter), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    dataset = dataset.map(_to_float, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE).with_options(_fixed_parallelism()), decoder


def _fixed_parallelism():
    """tf.data options that keep AUTOTUNE's parallelism (one call per core) and prefetching, without its tuner.

    With the tuner on, fine-tuning MobileNetV2 on 2 cores stalled at epoch boundaries: the five
    fine-tuning epochs of two 7-epoch runs on raccoon crops took 14.3, 9.7, 5.1, 5.1, 5.1 s and 17.8,
    10.2, 5.7, 10.3, 10.2 s, the waits inside Keras dropping and creating the epoch's iterators
    (py-spy); with it off, 16.1, 6.0, 5.3, 6.1, 5.6 and 15.9, 5.4, 5.5, 5.3, 5.5 s. The input
    pipeline's own rate was the same either way (benchmarks/README.md, "Transfer learning —
    2026-12-07 (stop 38)").
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def _decoded_files(image_set, decoder, training, seed, shard):
    """(image uint8 [H, W, 3], target) of the split's files, in a seeded order when training, decoded in parallel."""
    order = np.random.default_rng(seed).permutation(image_set.count) if training else np.arange(image_set.count)
    paths = np.array(image_set.paths, dtype=object)[order].astype(str)
    targets = np.asarray(image_set.targets)[order]
    if image_set.upright_jpeg is None or decoder.load_target is not None:  # targets need Python too
        dataset, decode = tf.data.Dataset.from_tensor_slices((paths, targets)), decoder.tf_decode
    else:
        in_graph = np.asarray(image_set.upright_jpeg, bool)[order]
        dataset, decode = tf.data.Dataset.from_tensor_slices((paths, targets, in_graph)), decoder.tf_decode_either
    if shard is not None:
        dataset = dataset.shard(*shard)
    dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE)
    # A plain JPEG whose entropy-coded data is corrupt (header and end marker intact)
    # fails in tf.io.decode_jpeg; it is dropped with TensorFlow's warning, not a crash.
    dataset = dataset.ignore_errors(log_warning=True)
    return dataset.filter(_decoded).map(_drop_flag)


def replica_safe_batch_size(count, batch_size, replicas):
    """The largest batch size <= `batch_size` whose last batch gives every replica at least one image.

    tf.distribute splits each global batch across replicas; a last batch of
    fewer images than replicas leaves a replica an empty batch, which oneDNN's
    convolution does not handle (it returns its input unchanged). Validation
    cannot drop images, so it takes a batch size that divides evenly enough.

    Example:
        >>> replica_safe_batch_size(count=9, batch_size=8, replicas=2)   # 9 % 8 = 1 image for 2 replicas
        7
    """
    if replicas <= 1:
        return batch_size
    for size in range(batch_size, replicas - 1, -1):
        if count % size == 0 or count % size >= replicas:
            return size
    return batch_size


def _decoded(image, target, ok):
    return ok


def _drop_flag(image, target, ok):
    return image, target


def _to_float(images, targets):
    return tf.cast(images, tf.float32), targets


def _resizer(size):
    def resize(image, target):
        return resize_uint8(image, size), target

    return resize


def _seeded(augmenter):
    def augment(elements, seeds):
        return augmenter.tf_map_batch(elements[0], elements[1], seeds)

    return augment


def _read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise UnreadableImage(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UnreadableImage(f"{path}: is a folder, not an image") from None
    except OSError as error:
        raise UnreadableImage(f"{path}: cannot read file ({error.strerror or error})") from None


def _cache(dataset, mode, cache_dir, split):
    if mode == "memory":
        return dataset.cache()
    if mode == "disk":
        if cache_dir is None:
            raise ValueError("cache_dir is required for the disk cache")
        os.makedirs(cache_dir, exist_ok=True)
        return dataset.cache(os.path.join(cache_dir, split))
    return dataset


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30
