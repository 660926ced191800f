"""Non-maximum suppression in numpy, per class.

Boxes are (N, 4) arrays of x1, y1, x2, y2 in any one coordinate system. A box suppresses another
of the same class when their IoU is strictly greater than the threshold.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes as an (N, M) array; empty boxes overlap nothing."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _check(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must be ({boxes.shape[0]},), got {scores.shape}")
    if classes is None:
        return np.zeros(boxes.shape[0], dtype=np.int64)
    classes = np.asarray(classes)
    if classes.shape != scores.shape:
        raise ValueError(f"classes must be ({boxes.shape[0]},), got {classes.shape}")
    return classes


def _greedy_clusters(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[np.ndarray]:
    """Greedy clustering of one class: each cluster is led by its highest-scoring box.

    Returns index arrays whose first element is the cluster's leader, leaders by falling score.
    """
    order = np.argsort(-scores, kind="stable")
    clusters = []
    while order.size:
        leader = order[0]
        overlaps = iou_matrix(boxes[leader], boxes[order])[0]
        members = overlaps > iou_threshold
        members[0] = True  # a leader with an empty box still forms its own cluster
        clusters.append(order[members])
        order = order[~members]
    return clusters


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    *,
    classes: np.ndarray | None = None,
    max_detections: int | None = None,
) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS within each class, by falling score.

    Raises ValueError for arrays of mismatched shapes.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    classes = _check(boxes, scores, classes)
    kept: list[int] = []
    for cls in np.unique(classes):
        idx = np.flatnonzero(classes == cls)
        kept.extend(
            int(idx[c[0]]) for c in _greedy_clusters(boxes[idx], scores[idx], iou_threshold)
        )
    result = np.array(sorted(kept, key=lambda i: (-scores[i], i)), dtype=np.int64)
    return result[:max_detections] if max_detections is not None else result


def weighted_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    *,
    classes: np.ndarray | None = None,
    max_detections: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blending NMS: each cluster becomes one box, the score-weighted mean of its members.

    The merged box keeps the leader's score and class. Anchor-based face detectors fire on
    several neighbouring anchors for one face; averaging them gives a steadier box than keeping
    only the best one. Returns (boxes, scores, classes) by falling score.
    Raises ValueError for arrays of mismatched shapes.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    classes = _check(boxes, scores, classes)
    out_boxes: list[np.ndarray] = []
    out_scores: list[float] = []
    out_classes: list[int] = []
    for cls in np.unique(classes):
        idx = np.flatnonzero(classes == cls)
        cls_boxes, cls_scores = boxes[idx], scores[idx]
        for members in _greedy_clusters(cls_boxes, cls_scores, iou_threshold):
            weights = cls_scores[members]
            total = weights.sum()
            if total > 0:
                merged = (cls_boxes[members] * weights[:, None]).sum(axis=0) / total
            else:
                merged = cls_boxes[members[0]]
            out_boxes.append(merged)
            out_scores.append(float(cls_scores[members[0]]))
            out_classes.append(int(cls))
    order = np.argsort(-np.asarray(out_scores, dtype=np.float64), kind="stable")
    if max_detections is not None:
        order = order[:max_detections]
    return (
        np.asarray(out_boxes, dtype=np.float64).reshape(-1, 4)[order],
        np.asarray(out_scores, dtype=np.float64)[order],
        np.asarray(out_classes, dtype=np.int64)[order],
    )
