"""A few hundred mutated real images through the serving decode, in a child process with a time limit:
no crash, no hang, bounded memory, and every image answered or refused with a reason.
`benchmarks/fuzz_serving.py` runs thousands."""

import pytest

from imgpipe.engine.image_header import status_reasons
from tests.serving_fuzz import MAX_PIXELS, decode_in_child, mutants, seed_images


@pytest.mark.slow
def test_mutated_images_are_each_answered_or_refused_with_a_reason_in_bounded_time_and_memory():
    seeds = seed_images()
    cases = mutants(seeds, count=320, seed=2026)
    report = decode_in_child(cases, timeout=600)
    assert report["problems"] == []
    assert len(report["statuses"]) == len(cases)
    assert report["statuses"][:len(seeds)] == ["ok"] * len(seeds)  # every seed, unmutated, is answered
    assert set(report["counts"]) <= set(status_reasons(MAX_PIXELS))
    assert {"truncated", "not an image", "corrupt", f"over max_pixels {MAX_PIXELS}"} <= set(report["counts"])
    # The seeds are 40 x 48 and a forged size is refused or fails to decode: nothing here needs much more than
    # the TensorFlow process itself (800 MiB measured). The long thin pair in test_serving.py is the shape case.
    assert report["peak_rss_mib"] < 1500, report["peak_rss_mib"]
