import numpy as np
import pytest

from imgpipe.data.tfds import parse_tfds_path, read_tfds
from imgpipe.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")


def test_parse_tfds_path():
    assert parse_tfds_path("tfds:mnist") == ("mnist", None)
    assert parse_tfds_path("tfds:mnist:train[:10%]") == ("mnist", "train[:10%]")
    with pytest.raises(DataError):
        parse_tfds_path("tfds:")


def test_tfds_reader_uses_metadata_names_and_own_test_split():
    with tfds.testing.mock_data(num_examples=6):
        data = read_tfds("tfds:mnist")
        assert data.class_names == [str(digit) for digit in range(10)]
        assert data.image_size == [32, 32]
        image, label = next(iter(data.train.dataset))
        assert image.shape == (28, 28, 3) and image.dtype.name == "uint8"
        assert label.dtype.name == "int32" and 0 <= int(label) < 10
        assert data.val.count == 6


def test_tfds_pipeline_resizes_and_batches():
    from imgpipe.engine.pipeline import make_dataset

    with tfds.testing.mock_data(num_examples=6):
        data = read_tfds("tfds:mnist", image_size=[20, 24])
        dataset, _ = make_dataset(data.train, [20, 24], batch_size=4, training=True, cache="memory")
        images, labels = next(iter(dataset))
    assert images.shape == (4, 20, 24, 3) and images.dtype.name == "float32"
    assert np.all((images.numpy() >= 0) & (images.numpy() <= 255))


def test_unknown_tfds_name_is_a_data_error():
    with pytest.raises(DataError, match="no_such_dataset_xyz"):
        read_tfds("tfds:no_such_dataset_xyz")
