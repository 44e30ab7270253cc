"""A few hundred mutated real images through the serving decode, in a child process with a time limit:
no crash, no hang, and every image answered or refused with a reason. `benchmarks/fuzz_serving.py` runs
thousands and reports the children's peak memory, which is not bounded yet: the original-size path pads
a batch to its largest height and its largest width (a 1 x 8000 and an 8000 x 1 image make 1.5 GB)."""

import pytest

from imgpipe.engine.image_header import status_reasons
from tests.serving_fuzz import MAX_PIXELS, decode_in_child, mutants, seed_images


@pytest.mark.slow
def test_mutated_images_are_each_answered_or_refused_with_a_reason_in_bounded_time():
    seeds = seed_images()
    cases = mutants(seeds, count=320, seed=2026)
    report = decode_in_child(cases, timeout=600)
    assert report["problems"] == []
    assert len(report["statuses"]) == len(cases)
    assert report["statuses"][:len(seeds)] == ["ok"] * len(seeds)  # every seed, unmutated, is answered
    assert set(report["counts"]) <= set(status_reasons(MAX_PIXELS))
    assert {"truncated", "not an image", "corrupt", f"over max_pixels {MAX_PIXELS}"} <= set(report["counts"])
