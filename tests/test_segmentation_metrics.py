"""GlaS challenge metrics on hand-made masks with known answers, and prediction post-processing."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import directed_hausdorff

from qexp.tasks.segmentation import (
    Segmentation,
    glas_metrics,
    glas_set_metrics,
    hausdorff,
    object_dice,
    object_f1,
    object_hausdorff,
    pixel_scores,
    soft_dice_loss,
    to_instances,
)


def canvas(shape=(20, 20)):
    return np.zeros(shape, dtype=np.int32)


def two_squares():
    g = canvas()
    g[2:6, 2:6] = 1  # 4x4 at columns 2..5
    g[2:6, 12:16] = 2  # 4x4 at columns 12..15
    return g


def test_perfect_match_with_other_label_ids():
    g = two_squares()
    s = np.where(g == 1, 7, np.where(g == 2, 3, 0))  # same objects, different ids
    m = glas_metrics(s, g)
    assert m["f1"] == 1.0 and m["object_dice"] == 1.0 and m["object_hausdorff"] == 0.0
    assert m["pixel_dice"] == 1.0 and m["pixel_iou"] == 1.0
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)


def test_one_missed_object():
    g = two_squares()
    s = np.where(g == 1, 1, 0)
    assert object_f1(s, g) == pytest.approx(2 / 3)  # TP 1, FP 0, FN 1
    # segmented side: Dice 1 (weight 1); ground-truth side: 1 * 1/2 + 0 * 1/2
    assert object_dice(s, g) == pytest.approx(0.5 * (1 + 0.5))
    # the missed square is paired with the nearest segmented object: Hausdorff 10 (columns 2 -> 12)
    assert object_hausdorff(s, g) == pytest.approx(0.5 * (0 + 0.5 * 10))
    assert pixel_scores(s, g)[0] == pytest.approx(2 * 16 / (16 + 32))


def test_one_split_object():
    g = canvas()
    g[0:4, 0:8] = 1  # 32 pixels
    s = canvas()
    s[0:4, 0:5] = 1  # 20 px = 62.5 % of the gland: true positive
    s[0:4, 5:8] = 2  # 12 px = 37.5 %: false positive
    assert object_f1(s, g) == pytest.approx(2 / 3)  # TP 1, FP 1, FN 0
    d_left, d_right = 2 * 20 / (20 + 32), 2 * 12 / (12 + 32)
    seg_side = 20 / 32 * d_left + 12 / 32 * d_right
    assert object_dice(s, g) == pytest.approx(0.5 * (seg_side + d_left))
    # Hausdorff: left part to gland 3 (column 7 -> 4), right part to gland 5 (column 0 -> 5)
    assert object_hausdorff(s, g) == pytest.approx(0.5 * ((20 / 32 * 3 + 12 / 32 * 5) + 3))


def test_gland_split_exactly_in_half_has_no_true_positive():
    g = canvas()
    g[0:4, 0:8] = 1
    s = canvas()
    s[0:4, 0:4] = 1  # exactly 50 % each: a detection needs MORE than 50 % (official "> 0.5")
    s[0:4, 4:8] = 2
    assert glas_metrics(s, g)["tp"] == 0
    assert object_f1(s, g) == 0.0  # TP 0, FP 2, FN 1
    s[0, 4] = 1  # 17 of 32 pixels: now the left segment counts
    assert object_f1(s, g) == pytest.approx(2 / 3)  # TP 1, FP 1, FN 0


def test_empty_prediction_and_empty_image():
    g = two_squares()
    empty = canvas()
    m = glas_metrics(empty, g)
    assert m["f1"] == 0.0 and m["object_dice"] == 0.0 and m["pixel_dice"] == 0.0
    assert m["object_hausdorff"] == pytest.approx(math.hypot(20, 20))  # the diagonal, not infinity
    both = glas_metrics(empty, empty)
    assert both["f1"] == 1.0 and both["object_dice"] == 1.0 and both["object_hausdorff"] == 0.0


def test_hausdorff_matches_scipy_point_sets():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.random((30, 25)) < 0.05
        b = rng.random((30, 25)) < 0.05
        a[0, 0] = b[-1, -1] = True
        pa, pb = np.argwhere(a), np.argwhere(b)
        want = max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])
        assert hausdorff(a, b) == pytest.approx(want)


def test_to_instances_contour_separates_touching_glands():
    classes = canvas((12, 20))
    classes[2:10, 2:18] = 2  # one blob of gland + contour
    classes[3:9, 3:9] = 1  # two interiors separated by a contour column
    classes[3:9, 11:17] = 1
    merged = to_instances(np.where(classes > 0, 1, 0))
    assert merged.max() == 1
    inst = to_instances(classes, contour=True)
    assert inst.max() == 2
    assert (inst > 0).sum() == (classes > 0).sum()  # contour pixels grown back onto the glands


def test_to_instances_min_size_and_holes():
    classes = canvas()
    classes[2:10, 2:10] = 1
    classes[5:7, 5:7] = 0  # a lumen-like hole
    classes[15, 15] = 1  # speck
    inst = to_instances(classes, min_size=5)
    assert inst.max() == 1 and inst[5, 5] == 1 and inst[15, 15] == 0


def test_task_evaluate_perfect_logits():
    """A 'model' that returns the ground truth as logits scores F1 = Dice = 1."""
    g = torch.from_numpy(two_squares()).to(torch.int16)
    target = (g > 0).long()
    batch = {"image": target[None, None].float(), "target": target[None], "instances": g[None],
             "size": torch.tensor([[20, 20]]), "orig_size": torch.tensor([[20, 20]])}

    def model(x):
        fg = x[:, 0]
        return torch.stack([1 - fg, fg], 1) * 10

    task = Segmentation(num_classes=2)
    out = task.evaluate(model, [batch], torch.device("cpu"))
    assert out["f1"] == 1.0 and out["object_dice"] == 1.0 and out["object_hausdorff"] == 0.0
    assert out["f1_image_mean"] == 1.0


def test_soft_dice_loss_ignores_padding():
    target = torch.tensor([[[1, 0], [-100, -100]]])
    logits = torch.stack([1 - target.clamp_min(0), target.clamp_min(0)], 1).float() * 50
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-3)


# ---- pooled over the test set (the challenge's definition) vs per-image means ---------------


def square(shape, r, c, size, label=1, into=None):
    out = canvas(shape) if into is None else into
    out[r:r + size, c:c + size] = label
    return out


def pooled_vs_mean_images():
    """Image A: two 4x4 glands, only the first one segmented.  Image B: one 8x8 gland, found."""
    g_a = square((20, 20), 2, 2, 4, 1)
    square((20, 20), 2, 12, 4, 2, into=g_a)
    s_a = square((20, 20), 2, 2, 4, 5)
    g_b = square((20, 20), 2, 2, 8, 1)
    s_b = square((20, 20), 2, 2, 8, 3)
    return [s_a, s_b], [g_a, g_b]


def test_set_metrics_pool_objects_over_images_not_average_per_image_scores():
    preds, truths = pooled_vs_mean_images()
    m = glas_set_metrics(preds, truths)
    # per image: A has TP 1, FN 1 -> F1 2/3; Dice 1/2 (1 + (16*1 + 16*0)/32) = 3/4;
    # Hausdorff 1/2 (0 + (16*0 + 16*10)/32) = 5/2 (the missed gland's nearest is 10 columns away).
    # B is perfect: F1 1, Dice 1, Hausdorff 0.
    assert m["f1_image_mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["object_dice_image_mean"] == pytest.approx((3 / 4 + 1) / 2)
    assert m["object_hausdorff_image_mean"] == pytest.approx((5 / 2 + 0) / 2)
    # pooled: TP 2, FP 0, FN 1 -> F1 4/5.  Ground-truth areas 16, 16, 64 (96 in all) with Dice
    # 1, 0, 1 -> 80/96; segmented areas 16, 64 with Dice 1 -> 1.  Hausdorff: ground-truth side
    # (16*0 + 16*10 + 64*0)/96 = 5/3, segmented side 0.
    assert m["f1"] == pytest.approx(4 / 5)
    assert m["object_dice"] == pytest.approx(0.5 * (1 + 80 / 96))
    assert m["object_hausdorff"] == pytest.approx(0.5 * (0 + 160 / 96))
    assert m["f1"] != pytest.approx(m["f1_image_mean"])


def test_touching_glands_merged_into_one_segment():
    g = square((20, 20), 0, 0, 4, 1)
    square((20, 20), 0, 4, 4, 2, into=g)  # two 4x4 glands sharing an edge
    s = canvas()
    s[0:4, 0:8] = 1  # one segment covering both
    m = glas_set_metrics([s], [g])
    assert m["f1"] == pytest.approx(2 / 3)  # it covers all of (and is matched to) one: TP 1, FN 1
    assert m["object_dice"] == pytest.approx(2 / 3)  # every pair: 2*16 / (32 + 16)
    assert m["object_hausdorff"] == pytest.approx(4.0)  # the segment reaches 4 columns past either


def test_unmatched_segment():
    g = square((20, 20), 2, 2, 4, 1)
    s = square((20, 20), 2, 2, 4, 1)
    square((20, 20), 2, 12, 4, 2, into=s)  # a false positive 10 columns away
    m = glas_set_metrics([s], [g])
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["object_dice"] == pytest.approx(0.5 * (0.5 + 1))
    assert m["object_hausdorff"] == pytest.approx(0.5 * (0.5 * 10 + 0))


def test_images_with_objects_on_one_side_only_use_the_nearest_object_of_the_set():
    shape = (20, 20)
    g_c, s_c = square(shape, 2, 2, 4), canvas(shape)  # a gland nobody found
    g_d, s_d = canvas(shape), square(shape, 2, 6, 4)  # a segment with no gland
    m = glas_set_metrics([s_c, s_d], [g_c, g_d])
    assert m["f1"] == 0.0 and m["object_dice"] == 0.0  # TP 0, FP 1, FN 1
    # each is compared with the other (one pixel frame): 4 columns apart
    assert m["object_hausdorff"] == pytest.approx(4.0)
    # per image, a one-sided image scores its diagonal
    assert m["object_hausdorff_image_mean"] == pytest.approx(math.hypot(20, 20))


def test_a_whole_empty_side_gives_finite_scores():
    truths = [square((20, 20), 2, 2, 4), square((10, 30), 1, 1, 3)]
    preds = [canvas((20, 20)), canvas((10, 30))]
    m = glas_set_metrics(preds, truths)
    assert m["f1"] == 0.0 and m["object_dice"] == 0.0
    assert m["object_hausdorff"] == pytest.approx(math.hypot(20, 30))  # the largest frame's diagonal
    assert all(math.isfinite(v) for v in m.values())
    empty = glas_set_metrics(preds, preds)
    assert empty["f1"] == 1.0 and empty["object_dice"] == 1.0 and empty["object_hausdorff"] == 0.0


def test_task_evaluate_reports_the_pooled_scores():
    preds, truths = pooled_vs_mean_images()
    fg = torch.from_numpy(np.stack(preds) > 0).float()
    batch = {"image": fg[:, None], "target": torch.from_numpy(np.stack(truths) > 0).long(),
             "instances": torch.from_numpy(np.stack(truths)).to(torch.int16),
             "size": torch.tensor([[20, 20], [20, 20]]), "orig_size": torch.tensor([[20, 20], [20, 20]])}

    def model(x):
        return torch.stack([1 - x[:, 0], x[:, 0]], 1) * 10

    out = Segmentation(num_classes=2).evaluate(model, [batch], torch.device("cpu"))
    assert out["f1"] == pytest.approx(4 / 5) and out["f1_image_mean"] == pytest.approx(5 / 6)
    assert out["object_dice"] == pytest.approx(0.5 * (1 + 80 / 96))
