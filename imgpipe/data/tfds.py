"""Image-classification data sets from tensorflow-datasets: `--data tfds:NAME[:SPLIT]`.

Class names come from the data set's metadata. The data set's own validation
(or test) split is used when it has one; otherwise the tail of the training
split, in TFDS's fixed order, is held out. Downloads happen only when the
user asks for a data set that is not prepared yet.

Example:
    >>> data = read_tfds("tfds:cats_vs_dogs", val_split=0.2)
"""

from imgpipe.data.sources import ImageSet, TaskData
from imgpipe.errors import DataError

VAL_SPLIT_NAMES = ("validation", "test")


def parse_tfds_path(path):
    """'tfds:mnist:train[:10%]' -> ('mnist', 'train[:10%]'); no split -> ('mnist', None)."""
    _, _, rest = path.partition(":")
    name, _, split = rest.partition(":")
    if not name:
        raise DataError(f"{path}: expected tfds:NAME or tfds:NAME:SPLIT")
    return name, split or None


def read_tfds(path, val_split=0.2, image_size="auto", data_dir=None):
    """Reads a TFDS image-classification data set into a `TaskData`."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    name, split = parse_tfds_path(path)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises several types for unknown names
        raise DataError(f"{path}: unknown tensorflow-datasets name ({str(error).splitlines()[0]})") from None
    info = builder.info
    image_key, label_key = _supervised_keys(path, info)
    class_names = list(info.features[label_key].names)
    splits = list(info.splits.keys())
    train_split = split or "train"
    val_name = next((s for s in VAL_SPLIT_NAMES if s in splits and s != train_split), None)
    if val_name is None:
        percent = int(round(100 * (1 - val_split)))
        train_split, val_name = f"{train_split}[:{percent}%]", f"{train_split}[{percent}%:]"
    try:
        builder.download_and_prepare()
        train_ds, val_ds = builder.as_dataset(split=[train_split, val_name], as_supervised=True, shuffle_files=False)
    except Exception as error:
        raise DataError(f"{path}: cannot load split ({str(error).splitlines()[0]})") from None

    def to_rgb(image, label):
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.image.grayscale_to_rgb(image), lambda: image[..., :3])
        return image, tf.cast(label, tf.int32)

    shape = info.features[image_key].shape
    if image_size == "auto":
        side = shape[0] if shape and shape[0] else 224
        image_size = [int(min(max(side, 32), 224))] * 2
    train = ImageSet(dataset=train_ds.map(to_rgb), count=int(train_ds.cardinality()))
    val = ImageSet(dataset=val_ds.map(to_rgb), count=int(val_ds.cardinality()))
    return TaskData(train=train, val=val, class_names=class_names, image_size=list(image_size), source=path)


def _supervised_keys(path, info):
    keys = info.supervised_keys
    if not keys or len(keys) < 2:
        raise DataError(f"{path}: not a supervised image data set (no (image, label) keys)")
    image_key, label_key = keys[0], keys[1]
    if not hasattr(info.features[label_key], "names"):
        raise DataError(f"{path}: label {label_key!r} is not a class label")
    return image_key, label_key
