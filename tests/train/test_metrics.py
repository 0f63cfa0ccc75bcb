import numpy as np
import pytest

from mai_train import metrics


def test_auc_by_hand():
    # pairs (pos, neg): (0.8>0.1) (0.8>0.4) (0.35<0.4) (0.35>0.1) -> 3 of 4
    assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert metrics.roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts half
    assert metrics.roc_auc([0.2, 0.3], [1, 1]) is None


def test_average_precision_by_hand():
    # ranked: 0.8(+) 0.4(-) 0.35(+) 0.1(-): AP = 0.5*1 + 0.5*(2/3)
    assert metrics.average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.5 + 1 / 3)


def test_rates_at_threshold():
    r = metrics.at_threshold([0.1, 0.6, 0.7, 0.2, 0.9], [0, 0, 1, 1, 1], 0.5)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 1, 1, 1)
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["tpr"] == pytest.approx(2 / 3) and r["fpr"] == pytest.approx(1 / 2)
    assert r["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_threshold_for_target_fpr_and_balanced_accuracy():
    rng = np.random.default_rng(0)
    s = np.r_[rng.uniform(0, 0.6, 1000), rng.uniform(0.4, 1, 1000)]
    y = np.r_[np.zeros(1000), np.ones(1000)]
    t, how = metrics.choose_threshold(s, y, target_fpr=0.01)
    assert metrics.at_threshold(s, y, t)["fpr"] <= 0.01 and "FPR" in how
    assert t == pytest.approx(0.594, abs=0.01)
    t2, _ = metrics.choose_threshold(s, y)
    best = metrics.at_threshold(s, y, t2)["balanced_accuracy"]
    grid = [metrics.at_threshold(s, y, g)["balanced_accuracy"] for g in np.linspace(0, 1, 501)]
    assert best >= max(grid) - 1e-12 and 0.4 <= t2 <= 0.6


def test_uncertainty_band_holds_precision_outside():
    rng = np.random.default_rng(1)
    s = np.r_[rng.uniform(0, 0.6, 2000), rng.uniform(0.4, 1, 2000)]
    y = np.r_[np.zeros(2000), np.ones(2000)]
    lo, hi = metrics.uncertainty_band(s, y, 0.5, precision=0.98)
    assert lo < 0.5 < hi
    assert y[s >= hi].mean() >= 0.98 and (1 - y[s <= lo]).mean() >= 0.98
    assert lo == pytest.approx(0.41, abs=0.02) and hi == pytest.approx(0.59, abs=0.02)


def test_band_spans_everything_when_precision_is_unreachable():
    s = np.linspace(0, 1, 100)
    y = np.arange(100) % 2
    assert metrics.uncertainty_band(s, y, 0.5, precision=0.99) == (0.0, 1.0)


def test_tpr_at_fpr_by_hand():
    scores = [0.1, 0.2, 0.3, 0.9, 0.5, 0.95, 0.25]
    labels = [0, 0, 0, 0, 1, 1, 1]
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == pytest.approx(1 / 3)  # above every real: 0.95
    assert metrics.tpr_at_fpr(scores, labels, 0.25) == pytest.approx(2 / 3)  # one real (0.9) may pass
    assert metrics.tpr_at_fpr(scores, labels, 1.0) == 1.0
    assert metrics.tpr_at_fpr([0.5], [1], 0.01) is None
    rep = metrics.summarise(scores, labels, 0.5)
    assert rep["tpr_at_fpr_1pct"] == pytest.approx(1 / 3) and rep["tpr_at_fpr_5pct"] == pytest.approx(1 / 3)
