import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from imgpipe.tasks.stylize.optimize import stylize_image
from imgpipe.tasks.stylize.perceptual import content_targets, loss_network, perceptual_terms, style_grams


@pytest.mark.slow
def test_gatys_moves_the_pixels_to_the_style_and_keeps_the_content(tmp_path):
    # Content: grey vertical stripes. Style: green noise. 30 Adam steps on a random-feature VGG16 (no download).
    x = np.arange(32)[None, :].repeat(32, 0)
    content = np.repeat(np.where((x // 8) % 2 == 0, 200, 40)[..., None], 3, -1).astype(np.uint8)
    style = np.clip(np.random.default_rng(0).normal((40, 160, 60), 40, (32, 32, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(content).save(tmp_path / "content.png")
    Image.fromarray(style).save(tmp_path / "style.png")
    styled = stylize_image(tmp_path / "content.png", tmp_path / "style.png", steps=30, size=32,
                           loss_weights="random", verbose=0)
    assert styled.shape == (32, 32, 3) and styled.dtype == np.uint8

    features = loss_network("vgg16", "random", 1337)
    grams = style_grams(features, tf.constant(style, tf.float32))
    targets = content_targets(features, tf.constant(content[None], tf.float32))

    def style_term(pixels):
        return float(perceptual_terms(features, tf.constant(pixels[None], tf.float32), targets, grams)[1][0])

    # The style loss fell (measured: 0.37 -> 0.07), and independently of the network: the colours moved
    # most of the way to the style's (mean grey 120 -> about (70, 153, 94), the style's is (40, 161, 60)) ...
    assert style_term(styled) < 0.4 * style_term(content)
    mean = lambda pixels: pixels.reshape(-1, 3).astype(float).mean(0)  # noqa: E731
    assert np.linalg.norm(mean(styled) - mean(style)) < 0.5 * np.linalg.norm(mean(content) - mean(style))
    # ... while the stripes are still there (measured correlation 0.97).
    assert np.corrcoef(styled.mean(-1).ravel(), content.mean(-1).ravel())[0, 1] > 0.8


def test_imgpipe_stylize_looks_in_its_weights_folder(cli, tmp_path):
    for name in ("content", "style"):
        Image.fromarray(np.full([16, 16, 3], 128, np.uint8)).save(tmp_path / f"{name}.png")
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "vgg16_imagenet_notop.weights.h5").write_bytes(b"not an HDF5 file")
    code, _, err = cli("stylize", tmp_path / "content.png", "--style", tmp_path / "style.png", "--out",
                       tmp_path / "out.png", "--steps", "1", "--weights-dir", folder)
    assert code == 2 and "Traceback" not in err
    broken = folder / "vgg16_imagenet_notop.weights.h5"
    assert f"cannot load imagenet weights for the vgg16 loss network ({broken}" in err
