import io
import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import imgpipe
from imgpipe.engine import export as export_module
from imgpipe.errors import ExportError
from imgpipe.engine.export import load_export, resolve_export, versions
from imgpipe.engine.serving import decode_batch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny classification run, exported, shared by the tests of this module."""
    from tests.conftest import COLOURS, write_image

    root = tmp_path_factory.mktemp("export")
    for name, colour in COLOURS.items():
        for index in range(6):
            write_image(root / "images" / name / f"{index}.png", colour)
    result = imgpipe.run("classify", ["train.epochs=1", "train.batch_size=8", "train.verbose=0",
                                      "data.image_size=16x20", f"train.run_dir={root / 'run'}",
                                      f"export.root={root / 'saved_models'}"], data=root / "images")
    return result, root


def encode(pixels, format="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def test_layout_is_versioned_for_tf_serving(trained):
    result, root = trained
    assert result.export_path == root / "saved_models" / "classify" / "1"
    assert (result.export_path / "saved_model.pb").is_file()
    metadata = json.loads((result.export_path / "assets.extra" / "imgpipe.json").read_text())
    assert metadata["class_names"] == ["blue", "green", "red"]
    assert metadata["task"] == "classify" and metadata["image_size"] == [16, 20]
    assert "train:" in (result.export_path / "assets.extra" / "recipe.yaml").read_text()
    assert not [p for p in result.export_path.parent.iterdir() if p.name.startswith(".export-")]


def test_bytes_in_names_out_and_parity_with_the_in_memory_model(trained):
    result, _ = trained
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((30, 40), (16, 20), (64, 33))]
    encoded = tf.constant([encode(p) for p in pictures])
    _, _, loaded = load_export(result.export_path)
    answer = loaded.signatures["serving_default"](image_bytes=encoded)
    names = [name.decode() for name in answer["class_name"].numpy()]
    assert set(names) <= {"blue", "green", "red"}
    assert answer["probabilities"].shape == (3, 3)
    assert answer["top_k_names"].shape == (3, 3)

    images, sizes = decode_batch(encoded, [16, 20])
    assert sizes.numpy().tolist() == [[30, 40], [16, 20], [64, 33]]
    expected = result.model(images, training=False).numpy()
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(answer["score"].numpy(), expected.max(axis=1), atol=1e-5)
    assert names == [["blue", "green", "red"][i] for i in expected.argmax(axis=1)]

    floats = loaded.signatures["serve_images"](images=images)
    np.testing.assert_allclose(floats["probabilities"].numpy(), expected, atol=1e-5)


def test_jpeg_gif_and_greyscale_bytes_are_decoded_inside(trained):
    result, _ = trained
    _, _, loaded = load_export(result.export_path)
    rgb = np.full((12, 12, 3), 200, np.uint8)
    payloads = [encode(rgb, "JPEG"), encode(rgb, "GIF"), encode(rgb, "BMP"), encode(rgb[..., 0], "PNG")]
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant(payloads))
    assert answer["probabilities"].shape == (4, 3)


def test_next_export_takes_the_next_version(trained, tmp_path):
    result, root = trained
    from imgpipe.engine.run_folder import export_run

    second = export_run(result.run_dir, export_dir=tmp_path / "models", name="shapes", weights="last")
    third = export_run(result.run_dir, export_dir=tmp_path / "models", name="shapes")
    assert (second.name, third.name) == ("1", "2")
    assert versions(tmp_path / "models" / "shapes") == [1, 2]
    assert resolve_export(tmp_path / "models" / "shapes") == third


def test_a_crash_mid_write_leaves_no_version_folder(trained, tmp_path, monkeypatch):
    result, _ = trained
    from imgpipe.engine.run_folder import export_run

    class Boom(RuntimeError):
        pass

    original = export_module.write_export

    def crash_half_way(archive, *args, **kwargs):
        class HalfWritten:
            def write_out(self, path, verbose=False):
                archive.write_out(path, verbose=verbose)
                shutil.rmtree(f"{path}/variables")
                raise Boom("disk went away")

        return original(HalfWritten(), *args, **kwargs)

    monkeypatch.setattr("imgpipe.engine.run_folder.write_export", crash_half_way)
    with pytest.raises(Boom):
        export_run(result.run_dir, export_dir=tmp_path / "models", name="crashy")
    assert list((tmp_path / "models" / "crashy").iterdir()) == []


def test_concurrent_exports_get_distinct_versions(trained, tmp_path):
    result, _ = trained
    from imgpipe.engine.run_folder import export_run

    paths, errors = [], []

    def export_one():
        try:
            paths.append(export_run(result.run_dir, export_dir=tmp_path / "models", name="racing"))
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=export_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(int(path.name) for path in paths) == [1, 2, 3]
    for path in paths:
        _, metadata, loaded = load_export(path)
        assert "serving_default" in loaded.signatures


def test_not_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="no such export"):
        resolve_export(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="not a SavedModel"):
        resolve_export(tmp_path / "empty")


def test_saved_model_cli_describes_both_signatures(trained):
    result, _ = trained
    cli = shutil.which("saved_model_cli") or str(__import__("pathlib").Path(sys.executable).parent / "saved_model_cli")
    if not __import__("os").path.exists(cli):
        pytest.skip("saved_model_cli is not installed with this TensorFlow")
    shown = subprocess.run([cli, "show", "--dir", str(result.export_path), "--all"], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "signature_def['serving_default']" in shown.stdout
    assert "signature_def['serve_images']" in shown.stdout
    assert "image_bytes" in shown.stdout and "class_name" in shown.stdout
