import numpy as np
import pytest
import tensorflow as tf

from imgpipe.engine.augment import Augmenter


def random_image(seed=0, size=(24, 32)):
    return np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)


@pytest.mark.parametrize("strength", ["light", "medium", "strong"])
def test_shapes_and_dtypes_are_kept(strength):
    augmenter = Augmenter(strength, strength, strength)
    image, label = augmenter.apply(random_image(), np.int32(2), seed=3)
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    assert label == 2


def test_same_seed_same_result_other_seed_other_result():
    augmenter = Augmenter("strong", "strong", "strong")
    first, _ = augmenter.apply(random_image(), 0, seed=11)
    again, _ = augmenter.apply(random_image(), 0, seed=11)
    fresh, _ = Augmenter("strong", "strong", "strong").apply(random_image(), 0, seed=11)
    other, _ = augmenter.apply(random_image(), 0, seed=12)
    assert np.array_equal(first, again) and np.array_equal(first, fresh)
    assert not np.array_equal(first, other)


def test_none_everywhere_is_the_identity():
    augmenter = Augmenter("none", "none", "none")
    assert augmenter.is_identity
    image = random_image()
    assert np.array_equal(augmenter.apply(image, 0, seed=5)[0], image)


def test_geometry_moves_the_mask_with_the_image_and_keeps_label_values():
    # Each 16x16 block's mask label is its grey level, so after any geometric
    # transform the mask must still match the (un-illuminated) image, up to
    # interpolation at block edges.
    rng = np.random.default_rng(0)
    mask = np.kron(rng.integers(0, 3, (4, 4)), np.ones((16, 16), int)).astype(np.int32)
    palette = np.array([[0, 0, 0], [120, 120, 120], [240, 240, 240]], np.uint8)
    image = palette[mask]
    augmenter = Augmenter("strong", "none", "none", target_kind="mask")
    changed = 0
    for seed in range(20):
        out_image, out_mask = augmenter.apply(image, mask, seed=seed)
        assert out_mask.dtype == np.int32 and set(np.unique(out_mask)) <= {0, 1, 2}
        agreement = np.mean(np.abs(out_image[..., 0].astype(int) - palette[out_mask][..., 0]) < 40)
        assert agreement > 0.93
        if not np.array_equal(out_mask, mask):
            changed += 1
            unmoved = np.mean(np.abs(out_image[..., 0].astype(int) - palette[mask][..., 0]) < 40)
            assert unmoved < agreement
    assert changed > 10


def test_occlusion_does_not_touch_the_mask():
    mask = np.ones((32, 32), np.int32)
    augmenter = Augmenter("none", "none", "strong", target_kind="mask")
    for seed in range(10):
        _, out_mask = augmenter.apply(random_image(seed, (32, 32)), mask, seed=seed)
        assert np.array_equal(out_mask, mask)


def test_bad_strength_is_refused_with_the_key():
    with pytest.raises(ValueError, match="augment.viewpoint"):
        Augmenter(viewpoint="extreme")


def test_runs_inside_tf_data_with_parallel_calls():
    augmenter = Augmenter("medium", "medium", "medium")
    images = np.stack([random_image(i) for i in range(6)])
    dataset = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices((images, np.arange(6, dtype=np.int32))),
        tf.data.Dataset.random(seed=1),
    ).map(lambda element, seed: augmenter.tf_map(element[0], element[1], seed), num_parallel_calls=4)
    outputs = list(dataset.as_numpy_iterator())
    assert len(outputs) == 6
    assert all(image.shape == (24, 32, 3) and image.dtype == np.uint8 for image, _ in outputs)
    assert dataset.element_spec[0].shape == (24, 32, 3)


@pytest.mark.parametrize("target_kind", ["label", "mask"])
def test_a_batch_gets_what_each_image_gets_alone(target_kind):
    augmenter = Augmenter("strong", "strong", "strong", target_kind=target_kind)
    images = np.stack([random_image(i) for i in range(4)])
    targets = np.arange(4, dtype=np.int32) if target_kind == "label" else np.ones((4, 24, 32), np.int32)
    seeds = np.array([3, 4, 5, 6])
    batch_images, batch_targets = augmenter.apply_batch(images, targets, seeds)
    alone = [augmenter.apply(image, target, seed) for image, target, seed in zip(images, targets, seeds)]
    assert np.array_equal(batch_images, np.stack([image for image, _ in alone]))
    assert np.array_equal(batch_targets, np.stack([target for _, target in alone]))
    assert batch_targets.dtype == np.int32


def test_pipelines_are_built_once_and_reused(monkeypatch):
    augmenter = Augmenter()
    built = []
    original = augmenter.build
    monkeypatch.setattr(augmenter, "build", lambda: built.append(1) or original())
    for seed in range(5):
        augmenter.apply(random_image(), 0, seed=seed)
    augmenter.apply_batch(np.stack([random_image()] * 2), np.zeros(2, np.int32), np.array([1, 2]))
    assert len(built) == 1


def test_runs_inside_tf_data_per_batch():
    augmenter = Augmenter("medium", "medium", "medium")
    images = np.stack([random_image(i) for i in range(6)])
    dataset = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices((images, np.arange(6, dtype=np.int32))),
        tf.data.Dataset.random(seed=1),
    ).batch(4).map(lambda element, seeds: augmenter.tf_map_batch(element[0], element[1], seeds), num_parallel_calls=2)
    outputs = list(dataset.as_numpy_iterator())
    assert [len(labels) for _, labels in outputs] == [4, 2]
    assert dataset.element_spec[0].shape.as_list() == [None, 24, 32, 3]
