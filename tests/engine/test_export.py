import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import imgpipe
from imgpipe.engine.export import saved_model as export_module
from imgpipe.errors import ExportError
from imgpipe.engine.export.saved_model import load_export, resolve_export, versions
from imgpipe.engine.serving import decode_batch

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny classification run, exported, shared by the tests of this module."""
    from tests.conftest import COLOURS, write_image

    root = tmp_path_factory.mktemp("export")
    for name, colour in COLOURS.items():
        for index in range(6):
            write_image(root / "images" / name / f"{index}.png", colour)
    result = imgpipe.run("classify", ["train.epochs=1", "train.batch_size=8", "train.verbose=0",
                                      "evaluate.robustness=false", "data.image_size=16x20", f"train.run_dir={root / 'run'}",
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

    images, sizes, _ = decode_batch(encoded, [16, 20], 25_000_000)
    assert sizes.numpy().tolist() == [[30, 40], [16, 20], [64, 33]]
    expected = result.model(images, training=False).numpy()
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(answer["score"].numpy(), expected.max(axis=1), atol=1e-5)
    assert names == [["blue", "green", "red"][i] for i in expected.argmax(axis=1)]

    floats = loaded.signatures["serve_images"](images=images)
    np.testing.assert_allclose(floats["probabilities"].numpy(), expected, atol=1e-5)


def test_jpeg_gif_webp_and_greyscale_bytes_are_decoded_inside(trained):
    result, _ = trained
    _, _, loaded = load_export(result.export_path)
    rng = np.random.default_rng(3)
    pictures = [np.kron(rng.integers(0, 256, (4, 5, 3)), np.ones((6, 6, 1))).astype(np.uint8) for _ in range(2)]
    payloads = [encode(pictures[0], "JPEG"), encode(pictures[0], "GIF"), encode(pictures[0], "BMP"),
                encode(pictures[0][..., 0], "PNG")]
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant(payloads))
    assert answer["probabilities"].shape == (4, 3)
    # Lossless WebP holds the PNG's very pixels, so the answers must be the PNG's.
    webp = [_webp(picture) for picture in pictures]
    png = [encode(picture, "PNG") for picture in pictures]
    from_webp = loaded.signatures["serving_default"](image_bytes=tf.constant(webp))
    from_png = loaded.signatures["serving_default"](image_bytes=tf.constant(png))
    np.testing.assert_allclose(from_webp["probabilities"].numpy(), from_png["probabilities"].numpy(), atol=1e-6)
    assert from_webp["class_name"].numpy().tolist() == from_png["class_name"].numpy().tolist()


def _webp(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "WEBP", lossless=True)
    assert buffer.getvalue()[8:12] == b"WEBP"
    return buffer.getvalue()


def test_top_k_scores_are_the_largest_probabilities_in_order_with_their_names(trained):
    result, _ = trained
    _, metadata, loaded = load_export(result.export_path)
    rng = np.random.default_rng(1)
    payloads = [encode(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(4)]
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant(payloads))
    probabilities = answer["probabilities"].numpy()
    scores, names = answer["top_k_scores"].numpy(), answer["top_k_names"].numpy()
    assert scores.shape == names.shape == (4, 3)
    order = np.argsort(-probabilities, axis=1, kind="stable")
    np.testing.assert_allclose(scores, np.take_along_axis(probabilities, order, axis=1), atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)
    class_names = np.array(metadata["class_names"])
    for row in range(4):
        assert [name.decode() for name in names[row]] == class_names[order[row]].tolist() or \
            len(set(scores[row])) < 3  # ties may come in either order
    np.testing.assert_allclose(scores[:, 0], answer["score"].numpy(), atol=1e-6)


def test_the_served_graph_has_its_batch_norms_folded_into_the_convolutions(trained):
    result, _ = trained
    _, _, loaded = load_export(result.export_path)
    graph = loaded.signatures["serve_images"].graph.as_graph_def()
    ops = [node.op for function in graph.library.function for node in function.node_def]
    assert "Conv2D" in ops  # the network's own graph, not only the decode's
    assert "Rsqrt" not in ops  # Keras' batch norm divides by sqrt(variance + epsilon) on every call


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


RACING_EXPORTER = """
import json, os, pathlib, shutil, sys, time
from imgpipe.engine.export.saved_model import write_export

source, root, index, writers, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
mode = sys.argv[6]


class CopyOfAnExport:
    # Stands in for a Keras ExportArchive: writes a real SavedModel (no TensorFlow start-up per process).
    def write_out(self, path, verbose=False):
        for name in ("saved_model.pb", "variables", "fingerprint.pb"):
            if os.path.isdir(os.path.join(source, name)):
                shutil.copytree(os.path.join(source, name), os.path.join(path, name), dirs_exist_ok=True)
            elif os.path.exists(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), path)


real_rename, waited = os.rename, []


def wait_until(condition, what):
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def rename_after_everyone_chose(staging, target):
    # "race": no writer renames before every writer has picked its first version number, so all pick
    # the same one and all but one must take the retry branch.
    # "stale": writer k renames after writers 0..k-1 have, with the number it chose from a listing
    # taken before any of them (version 1): a writer that cleared a taken number instead of retrying
    # would destroy another writer's version.
    if not waited:
        waited.append(1)
        if mode == "race":
            pathlib.Path(barrier, str(index)).touch()
            wait_until(lambda: len(os.listdir(barrier)) >= writers, "the other writers never reached the rename")
        else:
            wait_until(lambda: len([p for p in os.listdir(os.path.dirname(target)) if p.isdigit()]) >= index,
                       "the writers before this one never renamed")
    return real_rename(staging, target)


os.rename = rename_after_everyone_chose
if mode == "stale":
    from imgpipe.engine.export import saved_model as export

    real_versions, listed = export.versions, []

    def versions_listed_before_anyone_wrote(folder):
        if not listed:
            listed.append(1)
            return []
        return real_versions(folder)

    export.versions = versions_listed_before_anyone_wrote
metadata = json.loads(pathlib.Path(source, "assets.extra", "imgpipe.json").read_text())
path = write_export(CopyOfAnExport(), root, "racing", {**metadata, "writer": index}, "writer: %d\\n" % index)
print(path)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["race", "stale"])
def test_concurrent_exports_from_separate_processes_get_distinct_loadable_versions(trained, tmp_path, mode):
    result, _ = trained
    # The race needs many writers at one rename; a stale listing is shown by three in a row.
    writers, barrier = (8 if mode == "race" else 3), tmp_path / "barrier"
    barrier.mkdir()
    script = tmp_path / "exporter.py"
    script.write_text(RACING_EXPORTER)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    children = [subprocess.Popen([sys.executable, str(script), str(result.export_path), str(tmp_path / "models"),
                                  str(index), str(writers), str(barrier), mode], env=environment, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for index in range(writers)]
    outputs = [child.communicate(timeout=180) for child in children]
    assert [child.returncode for child in children] == [0] * writers, [err for _, err in outputs]
    paths = [pathlib.Path(out.strip()) for out, _ in outputs]
    assert sorted(int(path.name) for path in paths) == list(range(1, writers + 1))
    assert versions(tmp_path / "models" / "racing") == list(range(1, writers + 1))
    assert not [p for p in (tmp_path / "models" / "racing").iterdir() if not p.name.isdigit()]  # no staging left
    probe = tf.constant([encode(np.full((16, 20, 3), 90, np.uint8))])
    expected = load_export(result.export_path)[2].signatures["serving_default"](image_bytes=probe)["probabilities"]
    for index, path in enumerate(paths):
        _, metadata, loaded = load_export(path)
        assert metadata["writer"] == index  # each version is its own writer's, whole
        assert (path / "assets.extra" / "recipe.yaml").read_text() == f"writer: {index}\n"
        answer = loaded.signatures["serving_default"](image_bytes=probe)
        np.testing.assert_allclose(answer["probabilities"].numpy(), expected.numpy(), atol=1e-6)


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


def test_a_real_400_megapixel_png_is_refused_by_its_header_and_answers_a_status(trained):
    """20000 x 20000 grey, every row there (389 KB compressed, 1.2 GB as RGB): never decoded."""
    from tests.engine.test_serving import grey_png

    result, _ = trained
    huge = grey_png(20000, 20000)
    assert len(huge) < 1_000_000
    _, _, loaded = load_export(result.export_path)
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant([huge, encode(np.full((16, 20, 3), 90,
                                                                                                np.uint8))]))
    assert answer["status"].numpy().tolist() == [b"over max_pixels 25000000", b"ok"]
    assert answer["class_name"].numpy()[0] == b"" and answer["class_name"].numpy()[1] != b""
    assert not answer["probabilities"].numpy()[0].any()


def test_one_corrupt_image_in_32_costs_only_its_own_answer(trained):
    from tests.engine.test_serving import broken_crc

    result, _ = trained
    _, _, loaded = load_export(result.export_path)
    serve = loaded.signatures["serving_default"]
    rng = np.random.default_rng(5)
    payloads = [encode(rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)) for _ in range(32)]
    payloads[13] = broken_crc(payloads[13])
    together = serve(image_bytes=tf.constant(payloads))
    statuses = together["status"].numpy().tolist()
    assert statuses == [b"ok"] * 13 + [b"corrupt"] + [b"ok"] * 18
    for index in (0, 12, 14, 31):
        alone = serve(image_bytes=tf.constant([payloads[index]]))
        np.testing.assert_allclose(together["probabilities"].numpy()[index], alone["probabilities"].numpy()[0],
                                   atol=1e-6)
        assert together["class_name"].numpy()[index] == alone["class_name"].numpy()[0]


def test_a_photo_stored_sideways_is_answered_as_its_upright_pixels(trained):
    result, _ = trained
    _, _, loaded = load_export(result.export_path)
    serve = loaded.signatures["serving_default"]
    upright = np.kron(np.random.default_rng(8).integers(0, 256, (4, 5, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees anticlockwise; shown turned back clockwise
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif.tobytes())
    sideways, plain = serve(image_bytes=tf.constant([buffer.getvalue()])), serve(image_bytes=tf.constant([encode(upright)]))
    np.testing.assert_allclose(sideways["probabilities"].numpy(), plain["probabilities"].numpy(), atol=1e-6)
    ignoring_exif = serve(image_bytes=tf.constant([encode(np.asarray(stored))]))
    assert not np.allclose(ignoring_exif["probabilities"].numpy(), plain["probabilities"].numpy(), atol=1e-6)


def test_reexport_with_a_smaller_pixel_budget_refuses_what_the_first_export_answered(trained, tmp_path, cli):
    result, _ = trained
    code, out, err = cli("export", result.run_dir, "--export-dir", tmp_path / "models", "--max-pixels", "319")
    assert code == 0, err
    _, metadata, loaded = load_export(tmp_path / "models" / "classify")
    assert metadata["max_pixels"] == 319
    picture = tf.constant([encode(np.full((16, 20, 3), 90, np.uint8)), encode(np.full((16, 19, 3), 90, np.uint8))])
    assert loaded.signatures["serving_default"](image_bytes=picture)["status"].numpy().tolist() == [
        b"over max_pixels 319", b"ok"]
    code, _, err = cli("export", result.run_dir, "--export-dir", tmp_path / "models", "--max-pixels", "0")
    assert code == 2 and "max_pixels" in err and "Traceback" not in err
