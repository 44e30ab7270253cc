"""metrics.json's provenance: versions, the data's file list digest, the seed and the devices."""

import importlib.metadata

import tensorflow as tf

from imgpipe.data.sources import ImageSet, TaskData
from imgpipe.engine.provenance import file_list_digest, library_versions


def task_data(train, val):
    return TaskData(train=ImageSet.from_files(train, [0] * len(train)), val=ImageSet.from_files(val, [0] * len(val)),
                    class_names=["a"], image_size=[8, 8], source="folder")


def test_the_digest_follows_the_file_list_and_not_where_the_folder_lies(tmp_path):
    for folder in ("one", "two"):
        for name in ("a.png", "b.png", "c.png"):
            (tmp_path / folder / "cls").mkdir(parents=True, exist_ok=True)
            (tmp_path / folder / "cls" / name).write_bytes(b"x" * len(name))
    one, two = (sorted(str(p) for p in (tmp_path / folder).rglob("*.png")) for folder in ("one", "two"))
    count, digest = file_list_digest(task_data(one[:2], one[2:]))
    assert count == 3
    assert file_list_digest(task_data(two[:2], two[2:]))[1] == digest  # the same files elsewhere
    assert file_list_digest(task_data(one[:1], one[1:]))[1] != digest  # a file moved across the split
    (tmp_path / "one" / "cls" / "a.png").write_bytes(b"changed size")
    assert file_list_digest(task_data(one[:2], one[2:]))[1] != digest
    assert file_list_digest(task_data(one[:2], one[2:3] + one[:1]))[0] == 4


def test_a_run_records_its_provenance(class_folder, fast_recipe_args):
    import imgpipe

    result = imgpipe.run("classify", [*fast_recipe_args, "export.enabled=false", "data.seed=7"], data=class_folder)
    record = result.metrics["provenance"]
    assert record["versions"]["tensorflow"] == importlib.metadata.version("tensorflow") == library_versions()[
        "tensorflow"]
    assert record["versions"]["keras"] is not None and record["versions"]["albumentations"] is not None
    assert record["data"]["files"] == 30 and len(record["data"]["file_list_sha256"]) == 64
    assert record["seed"] == 7
    assert record["devices"] == [tf.config.list_logical_devices("CPU")[0].name]  # the default strategy's device
