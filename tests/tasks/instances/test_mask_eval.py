"""Mask and box mAP by pycocotools on instance maps, against hand-computed values."""

import numpy as np

from imgpipe.tasks.instances.mask_eval import instance_map_scores


def touching_pair():
    """Two touching 10x10 squares of class 0 in a 20x30 image, numbers 1 and 2."""
    truth = np.zeros((20, 30, 2), np.int32)
    truth[5:15, 0:10, 0] = 1
    truth[5:15, 10:20, 0] = 2
    return truth


def test_a_perfect_answer_scores_one_and_merging_the_pair_scores_zero():
    truth = touching_pair()
    perfect = (truth[..., 0], np.array([[0, 5, 10, 15], [10, 5, 20, 15]]), np.array([0.9, 0.8]), np.array([0, 0]))
    scores = instance_map_scores([truth], [perfect], ["shape"], 100)
    assert scores["mask_map"] == 1.0 and scores["box_map50"] == 1.0 and scores["mask_ap50/shape"] == 1.0
    merged_map = (truth[..., 0] > 0).astype(np.int32)  # what connected components of a semantic mask give
    merged = (merged_map, np.array([[0, 5, 20, 15]]), np.array([0.9]), np.array([0]))
    # the merged mask's IoU with either square is 100 / 200 = 0.5: a match at 0.5, none above
    scores = instance_map_scores([truth], [merged], ["shape"], 100)
    assert abs(scores["mask_map50"] - 0.5) < 0.02 and scores["mask_map"] < 0.06


def test_max_detections_lifts_pycocotools_cap_of_100():
    truth = np.zeros((10, 300, 2), np.int32)
    for number in range(150):
        truth[2:8, 2 * number:2 * number + 2, 0] = number + 1
    boxes = np.array([[2 * n, 2, 2 * n + 2, 8] for n in range(150)], np.float32)
    answer = (truth[..., 0], boxes, np.linspace(0.9, 0.5, 150), np.zeros(150, np.int64))
    every = instance_map_scores([truth], [answer], ["cell"], 200)
    assert every["mask_map50"] == every["mask_map"] == every["box_map"] == 1.0
    capped = instance_map_scores([truth], [answer], ["cell"], 100)
    assert capped["mask_map50"] < 0.7 and capped["mask_map"] < 0.7
