"""Host stages of the detector, exact by construction: anchors vs the Caffe table, "+1" NMS vs a brute-force loop,
proposals vs a straightforward per-anchor reference, lazy box selection vs brute-force per-class NMS (generate_tsv).
No torch, no graphs."""

from __future__ import annotations

import numpy as np
import pytest

from vsrt.detector_config import DetectorConfig
from vsrt.runtime.detector.anchors import caffe_anchors, shifted_anchors
from vsrt.runtime.detector.nms import descending_order, float32_threshold, iou_matrix, nms
from vsrt.runtime.detector.proposals import propose
from vsrt.runtime.detector.selection import apply_box_rule, object_labels, select, select_boxes

# generate_anchors.py (base 16, ratios 0.5/1/2, scales 4/8/16/32): widths × heights, ratio-major, centre 7.5
CAFFE_W = [92, 184, 368, 736, 64, 128, 256, 512, 44, 88, 176, 352]
CAFFE_H = [48, 96, 192, 384, 64, 128, 256, 512, 88, 176, 352, 704]
# what generate_anchors() returns for its default scales 8/16/32 (rows 1-3, 5-7, 9-11 of ours); note that the
# table in that file's own comment is one pixel off (left over from an older version of the code)
PY_FASTER_RCNN = [
    [-84, -40, 99, 55],
    [-176, -88, 191, 103],
    [-360, -184, 375, 199],
    [-56, -56, 71, 71],
    [-120, -120, 135, 135],
    [-248, -248, 263, 263],
    [-36, -80, 51, 95],
    [-80, -168, 95, 183],
    [-168, -344, 183, 359],
]


def test_anchors_match_caffe_table() -> None:
    a = caffe_anchors(DetectorConfig())
    assert a.shape == (12, 4)
    want = np.array(
        [[7.5 - (w - 1) / 2, 7.5 - (h - 1) / 2, 7.5 + (w - 1) / 2, 7.5 + (h - 1) / 2] for w, h in zip(CAFFE_W, CAFFE_H)]
    )
    np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(a[[1, 2, 3, 5, 6, 7, 9, 10, 11]], np.array(PY_FASTER_RCNN, float))
    np.testing.assert_array_equal(a[:, 2] - a[:, 0] + 1, CAFFE_W)
    np.testing.assert_array_equal(a[:, 3] - a[:, 1] + 1, CAFFE_H)


def test_shifted_anchor_order_is_y_x_a() -> None:
    cfg = DetectorConfig()
    s = shifted_anchors(cfg, 3, 5)
    cell = caffe_anchors(cfg)
    for y in range(3):
        for x in range(5):
            for a in range(12):
                np.testing.assert_array_equal(s[(y * 5 + x) * 12 + a], cell[a] + 16 * np.array([x, y, x, y]))


def brute_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """cpu_nms.pyx, literally: float32 scalars, suppressed flags, ``ovr >= thresh`` against a double."""
    b = boxes.astype(np.float32)
    areas = [(b[i, 2] - b[i, 0] + np.float32(1)) * (b[i, 3] - b[i, 1] + np.float32(1)) for i in range(len(b))]
    order = list(np.argsort(scores, kind="stable")[::-1])
    suppressed = [False] * len(b)
    keep = []
    for ii, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        for j in order[ii + 1 :]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + np.float32(1))
            h = max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + np.float32(1))
            inter = np.float32(w * h)
            ovr = np.float32(inter / np.float32(areas[i] + areas[j] - inter))
            if float(ovr) >= thresh:
                suppressed[j] = True
    return keep


def random_boxes(rng: np.random.Generator, n: int, size: float = 200.0, dup: bool = True) -> np.ndarray:
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    b = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    if dup and n > 3:  # exact duplicates and integer coordinates: IoU ties, IoU exactly 1
        b[1] = b[0]
        b[3] = np.round(b[2])
    return b


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force_with_ties(thresh: float) -> None:
    rng = np.random.default_rng(int(thresh * 10))
    for trial in range(25):
        n = int(rng.integers(1, 70))
        boxes = random_boxes(rng, n)
        scores = rng.random(n).astype(np.float32)
        if trial % 2:
            scores = np.round(scores * 8) / 8  # many exact ties
        got = nms(boxes, scores, thresh)
        assert got.dtype == np.int64
        want = brute_nms(boxes, scores, thresh)
        assert got.tolist() == want
        k = int(rng.integers(1, n + 1))
        assert nms(boxes, scores, thresh, max_keep=k).tolist() == want[:k]


def test_nms_plus_one_convention_and_double_threshold() -> None:
    # two 10x10 boxes ([0,9] in "+1" pixels) shifted by 5: inter 5*10=50, union 150 -> 1/3
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], np.float32)
    assert iou_matrix(boxes)[0, 1] == np.float32(50) / np.float32(150)
    assert nms(boxes, np.array([0.9, 0.8], np.float32), 0.33).tolist() == [0]
    assert nms(boxes, np.array([0.9, 0.8], np.float32), 0.34).tolist() == [0, 1]
    # ovr == float32(0.7) < 0.7 (double): not suppressed, as the C code compares against a double
    f = np.float32(0.7)
    assert float(f) < 0.7
    boxes = np.array([[0, 0, 99, 0], [0, 0, 69, 0]], np.float32)  # 1-pixel tall: ovr = 70/100
    ovr = iou_matrix(boxes)[0, 1]
    assert ovr == f
    assert float32_threshold(0.7) > f and float32_threshold(0.3) == np.float32(0.3) and float32_threshold(0.5) == 0.5
    assert nms(boxes, np.array([0.9, 0.8], np.float32), 0.7).tolist() == [0, 1]
    # ties: higher index first
    assert descending_order(np.array([0.5, 0.5, 0.2, 0.5], np.float32)).tolist() == [3, 1, 0, 2]


def reference_proposals(
    prob: np.ndarray, delta: np.ndarray, hw: tuple[int, int], scale: float, cfg: DetectorConfig
) -> tuple[np.ndarray, int]:
    """proposal_layer.py written out per anchor with float32 scalars (exp taken on the whole map, as numpy does)."""
    a_n, fh, fw = prob.shape[1:]
    cell = caffe_anchors(cfg)
    ex = np.exp(delta[0].astype(np.float32))
    f32 = np.float32
    boxes, scores = [], []
    for y in range(fh):
        for x in range(fw):
            for a in range(a_n):
                x1, y1, x2, y2 = (f32(v) for v in cell[a] + cfg.feat_stride * np.array([x, y, x, y]))
                w, h = x2 - x1 + f32(1), y2 - y1 + f32(1)
                cx, cy = x1 + f32(0.5) * w, y1 + f32(0.5) * h
                dx, dy = delta[0, 4 * a, y, x], delta[0, 4 * a + 1, y, x]
                pcx, pcy = dx * w + cx, dy * h + cy
                pw, ph = ex[4 * a + 2, y, x] * w, ex[4 * a + 3, y, x] * h
                b = [
                    pcx - f32(0.5) * pw,
                    pcy - f32(0.5) * ph,
                    pcx + f32(0.5) * pw - f32(1),
                    pcy + f32(0.5) * ph - f32(1),
                ]
                lim = [f32(hw[1]) - 1, f32(hw[0]) - 1] * 2
                b = [max(min(v, m), f32(0)) for v, m in zip(b, lim)]
                ms = f32(cfg.rpn_min_size) * f32(scale)
                if b[2] - b[0] + f32(1) >= ms and b[3] - b[1] + f32(1) >= ms:
                    boxes.append(b)
                    scores.append(prob[0, a, y, x])
    boxes_a = np.array(boxes, np.float32).reshape(-1, 4)
    scores_a = np.array(scores, np.float32)
    order = np.argsort(scores_a, kind="stable")[::-1][: cfg.pre_nms_top_n]
    boxes_a, scores_a = boxes_a[order], scores_a[order]
    keep = brute_nms(boxes_a, scores_a, cfg.rpn_nms_thresh)[: cfg.num_rois] if len(order) else []
    rois = np.zeros((cfg.num_rois, 4), np.float32)
    rois[: len(keep)] = boxes_a[keep]
    return rois, len(keep)


@pytest.mark.parametrize("seed", range(4))
def test_proposals_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cfg = DetectorConfig.tiny(pre_nms_top_n=[600, 150, 40, 600][seed], num_rois=[32, 16, 32, 64][seed])
    fh, fw = [(5, 7), (7, 5), (4, 4), (6, 9)][seed]
    hw = (fh * 16 - int(rng.integers(0, 8)), fw * 16 - int(rng.integers(0, 8)))
    scale = float(rng.uniform(0.5, 2.5))
    prob = rng.random((1, 12, fh, fw)).astype(np.float32)
    if seed % 2:
        prob = np.round(prob * 16) / 16  # ties in the objectness order
    delta = (rng.standard_normal((1, 48, fh, fw)) * 0.3).astype(np.float32)
    rois, n = propose(prob, delta, hw, scale, cfg)
    want, n_ref = reference_proposals(prob, delta, hw, scale, cfg)
    assert rois.dtype == np.float32 and rois.shape == (cfg.num_rois, 4)
    assert n == n_ref and n > 0
    np.testing.assert_array_equal(rois, want)
    assert not rois[n:].any()
    assert (rois[:n, 2] <= hw[1] - 1).all() and (rois[:n, 3] <= hw[0] - 1).all() and (rois[:n] >= 0).all()


def test_proposals_reject_wrong_maps() -> None:
    from vsrt.errors import InputError

    cfg = DetectorConfig.tiny()
    with pytest.raises(InputError, match="rpn_delta"):
        propose(np.zeros((1, 12, 3, 3), np.float32), np.zeros((1, 47, 3, 3), np.float32), (48, 48), 1.0, cfg)
    rois, n = propose(np.zeros((1, 12, 1, 1), np.float32), np.zeros((1, 48, 1, 1), np.float32), (8, 8), 4.0, cfg)
    assert n == 0 and rois.shape == (cfg.num_rois, 4)  # everything below the minimum size: no proposal


def brute_selection(
    rois: np.ndarray, cls_prob: np.ndarray, n_valid: int, scale: float, cfg: DetectorConfig
) -> tuple[np.ndarray, np.ndarray]:
    """generate_tsv.get_detections_from_im, literally (one brute-force NMS per class)."""
    cls_boxes = rois[:n_valid].astype(np.float32) / np.float32(scale)
    scores = cls_prob[:n_valid]
    max_conf = np.zeros(n_valid)
    for c in range(1, scores.shape[1]):
        cs = scores[:, c]
        keep = np.array(brute_nms(cls_boxes, cs, cfg.nms_thresh), np.int64)
        max_conf[keep] = np.where(cs[keep] > max_conf[keep], cs[keep], max_conf[keep])
    keep_boxes = np.where(max_conf >= cfg.conf_thresh)[0]
    order = np.argsort(max_conf, kind="stable")[::-1]
    if len(keep_boxes) < cfg.min_boxes:
        keep_boxes = order[: cfg.min_boxes]
    elif len(keep_boxes) > cfg.max_boxes:
        keep_boxes = order[: cfg.max_boxes]
    return keep_boxes, max_conf


def _random_case(rng: np.random.Generator, n: int, c: int, sharp: float, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rois = random_boxes(rng, n, size=300.0)
    rois = np.concatenate([rois, np.zeros((4, 4), np.float32)])  # padded rows must be ignored
    logits = rng.standard_normal((n + 4, c)) * sharp
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    if ties:
        p = (np.round(p * 32) / 32).astype(np.float32)
    return rois, p


def test_lazy_selection_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    branches = set()
    for trial in range(60):
        n = int(rng.integers(1, 45))
        c = int(rng.integers(3, 25))
        mn = int(rng.integers(1, 12))
        mx = mn if trial % 3 == 0 else int(rng.integers(mn, 20))
        cfg = DetectorConfig.tiny(num_classes=c, min_boxes=mn, max_boxes=mx, conf_thresh=float(rng.choice([0.2, 0.3])))
        rois, p = _random_case(rng, n, c, sharp=float(rng.choice([0.5, 2.0, 4.0])), ties=trial % 2 == 1)
        scale = float(rng.uniform(0.4, 3.0))
        want, want_conf = brute_selection(rois, p, n, scale, cfg)
        sel = select(rois, p, n, scale, cfg)
        assert sel.keep.tolist() == want.tolist(), f"trial {trial}"
        assert select_boxes(rois, p, n, scale, cfg).tolist() == want.tolist()
        # the values the rule read are exact (the others may be left unvisited)
        np.testing.assert_array_equal(sel.max_conf[sel.keep], want_conf[want])
        passing = int((want_conf >= cfg.conf_thresh).sum())
        branches.add("few" if passing < mn else "many" if passing > mx else "where")
    assert branches == {"few", "many", "where"}  # every branch of the ordering rule was exercised


def test_ordering_rule() -> None:
    cfg = DetectorConfig.tiny(min_boxes=2, max_boxes=3, conf_thresh=0.2)
    # exactly 2..3 pass: ascending index; more: descending score; fewer: descending score (ties: higher index)
    assert apply_box_rule(np.array([0.1, 0.9, 0.3, 0.05]), cfg).tolist() == [1, 2]
    assert apply_box_rule(np.array([0.5, 0.9, 0.3, 0.6]), cfg).tolist() == [1, 3, 0]
    assert apply_box_rule(np.array([0.1, 0.05, 0.1, 0.0]), cfg).tolist() == [2, 0]


def test_lazy_selection_full_size_visits_few_pairs() -> None:
    """300 proposals (full size) × 400 classes against one NMS call per class (vectorized NMS, which the
    brute-force loop checks above); near-uniform class probabilities, as a random-init model gives."""
    rng = np.random.default_rng(3)
    n, c = 300, 201
    cfg = DetectorConfig(min_boxes=36, max_boxes=36)
    rois, p = _random_case(rng, n, c, sharp=0.5, ties=False)
    boxes = rois[:n] / np.float32(1.25)
    max_conf = np.zeros(n)
    for k in range(1, c):
        keep = nms(boxes, p[:n, k], cfg.nms_thresh)
        max_conf[keep] = np.maximum(max_conf[keep], p[keep, k])
    want = apply_box_rule(max_conf, cfg)
    sel = select(rois, p, n, 1.25, cfg)
    assert sel.keep.tolist() == want.tolist()
    assert sel.visited < n * (c - 1) // 10
    ids, scores = object_labels(p, sel.keep)
    assert (ids >= 1).all() and np.array_equal(scores, p[sel.keep, ids])


def test_selection_with_no_proposals() -> None:
    cfg = DetectorConfig.tiny()
    sel = select(np.zeros((32, 4), np.float32), np.zeros((32, 31), np.float32), 0, 1.0, cfg)
    assert sel.keep.shape == (0,) and sel.boxes.shape == (0, 4)
