"""Metrics and calibration on scores, in NumPy (no torch, no scikit-learn).

Scores are P(synthetic); labels are 1 for synthetic (fake), 0 for authentic.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.int64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    return s, y


def roc_auc(scores: Any, labels: Any) -> float | None:
    """Area under the ROC curve (ties count half); None if one class is absent."""
    s, y = _arrays(scores, labels)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    ss = s[order]
    # Average ranks over ties (1-based).
    i = 0
    while i < ss.size:
        j = i
        while j + 1 < ss.size and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores: Any, labels: Any) -> float | None:
    """AP = sum over thresholds of (R_n - R_{n-1}) P_n, as scikit-learn defines it."""
    s, y = _arrays(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # One point per distinct score: the last index of each run of ties.
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def at_threshold(scores: Any, labels: Any, threshold: float) -> dict[str, Any]:
    """Confusion counts and rates when `score >= threshold` means synthetic."""
    s, y = _arrays(scores, labels)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    pos, neg = tp + fn, tn + fp
    tpr = tp / pos if pos else None
    fpr = fp / neg if neg else None
    tnr = tn / neg if neg else None
    bal = (tpr + tnr) / 2 if tpr is not None and tnr is not None else None
    return {
        "n": int(s.size), "real": neg, "fake": pos, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "accuracy": (tp + tn) / s.size if s.size else None,
        "balanced_accuracy": bal, "tpr": tpr, "fpr": fpr,
    }


def tpr_at_fpr(scores: Any, labels: Any, fpr: float) -> float | None:
    """The share of synthetic images caught at the lowest threshold whose false-positive
    rate on real images is at most `fpr`; None if one class is absent."""
    s, y = _arrays(scores, labels)
    real, fake = np.sort(s[y == 0])[::-1], s[y == 1]
    if real.size == 0 or fake.size == 0:
        return None
    allowed = int(np.floor(fpr * real.size))  # real images allowed at or above the threshold
    # Strictly above the (allowed+1)-th highest real score; everything when all may pass.
    cut = real[allowed] if allowed < real.size else -np.inf
    return float(np.mean(fake > cut))


def summarise(scores: Any, labels: Any, threshold: float) -> dict[str, Any]:
    out = at_threshold(scores, labels, threshold)
    out["threshold"] = threshold
    out["roc_auc"] = roc_auc(scores, labels)
    out["average_precision"] = average_precision(scores, labels)
    out["tpr_at_fpr_1pct"] = tpr_at_fpr(scores, labels, 0.01)
    out["tpr_at_fpr_5pct"] = tpr_at_fpr(scores, labels, 0.05)
    return out


def choose_threshold(scores: Any, labels: Any, target_fpr: float | None = None) -> tuple[float, str]:
    """The decision threshold, chosen on validation scores.

    With `target_fpr`, the lowest threshold whose false-positive rate on real
    images is at most the target (the most synthetic images caught under that
    promise). Without it, the threshold of maximum balanced accuracy. Thresholds
    sit halfway between adjacent distinct scores so they generalise a little.
    """
    s, y = _arrays(scores, labels)
    u = np.unique(s)
    cands = np.r_[u[0] - 1e-6, (u[:-1] + u[1:]) / 2.0, u[-1] + 1e-6] if u.size else np.array([0.5])
    cands = np.clip(cands, 0.0, 1.0)
    neg = s[y == 0]
    pos = s[y == 1]
    # Vectorised rates for every candidate via sorted search.
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    fpr = (neg.size - np.searchsorted(neg_sorted, cands, side="left")) / max(neg.size, 1)
    tpr = (pos.size - np.searchsorted(pos_sorted, cands, side="left")) / max(pos.size, 1)
    if target_fpr is not None:
        ok = np.nonzero(fpr <= target_fpr)[0]
        i = int(ok[0]) if ok.size else cands.size - 1
        return float(cands[i]), f"lowest threshold with validation FPR <= {target_fpr:g}"
    bal = (tpr + 1 - fpr) / 2
    i = int(np.argmax(bal))
    return float(cands[i]), "maximum balanced accuracy on validation"


def uncertainty_band(scores: Any, labels: Any, threshold: float, precision: float = 0.98) -> tuple[float, float]:
    """The band [lo, hi] around the threshold where verdicts are not trusted.

    hi is the lowest score above which the validation images called synthetic
    are at least `precision` synthetic; lo the highest score below which those
    called authentic are at least `precision` authentic. Where no such score
    exists, the band reaches 1.0 (or 0.0): no verdict on that side is trusted.
    """
    s, y = _arrays(scores, labels)
    hi, lo = 1.0, 0.0
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    # Precision of "score >= ss[k]" for every k, scanning from the top.
    prec_top = np.cumsum(yy) / np.arange(1, ss.size + 1)
    ok = np.nonzero((prec_top >= precision) & (ss >= threshold))[0]
    if ok.size:
        # The deepest point into the ranking that still holds the precision,
        # taken at a tie boundary so the rule is a clean "score >= hi".
        k = int(ok[-1])
        hi = float(ss[k])
    order = np.argsort(s, kind="mergesort")
    ss, yy = s[order], y[order]
    prec_bot = np.cumsum(1 - yy) / np.arange(1, ss.size + 1)
    ok = np.nonzero((prec_bot >= precision) & (ss < threshold))[0]
    if ok.size:
        lo = float(ss[int(ok[-1])])
    return (min(lo, threshold), max(hi, threshold))


def per_source(scores: Any, labels: Any, sources: list[str], threshold: float) -> dict[str, dict[str, Any]]:
    s, y = _arrays(scores, labels)
    src = np.asarray(sources)
    return {name: summarise(s[src == name], y[src == name], threshold) for name in sorted(set(sources))}
