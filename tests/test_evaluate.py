"""Tests for hpajax.evaluate: every number against scikit-learn, edge cases, bad inputs."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics

from hpajax import classes, evaluate

AVERAGES = ("micro", "macro", "weighted", "samples")


def random_set(n: int = 300, c: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with rare to common classes and probabilities on a 0.01 grid (ties)."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.02, 0.5, c)
    y_true = (rng.random((n, c)) < rates).astype(np.uint8)
    y_prob = np.clip(np.round(rng.random((n, c)) * 0.7 + 0.3 * y_true, 2), 0, 1)
    return y_true, y_prob


def edge_classes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """6 classes: 0 no positives, 1 no predictions, 2 all positive, 3 tied scores,
    4 perfectly separated, 5 everything predicted."""
    rng = np.random.default_rng(1)
    y_true = (rng.random((40, 6)) < 0.4).astype(np.uint8)
    y_prob = rng.random((40, 6))
    y_true[:, 0], y_true[:, 2] = 0, 1
    y_prob[:, 3] = rng.choice([0.2, 0.5, 0.8], 40)
    y_prob[:, 4] = 0.25 + 0.5 * y_true[:, 4]
    y_prob[:, 5] = np.maximum(y_prob[:, 5], 0.01)
    thresholds = np.array([0.5, 1.0, 0.3, 0.5, 0.5, 0.0])
    pred = y_prob > thresholds
    assert not pred[:, 1].any() and pred[:, 5].all() and 0 < y_true[:, 3].sum() < 40
    return y_true, y_prob, thresholds


def edge_samples() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows 0-3 have no true label: 0-1 no prediction either, 2-3 some; row 4 has
    labels but no prediction."""
    rng = np.random.default_rng(2)
    y_true = (rng.random((30, 5)) < 0.5).astype(np.uint8)
    y_prob = rng.random((30, 5))
    y_true[:4] = 0
    y_true[4, :2] = 1
    y_prob[[0, 1, 4]] = 0.0
    y_prob[[2, 3], 1] = 0.9
    return y_true, y_prob, np.full(5, 0.5)


def assert_report_matches_sklearn(y_true, y_prob, thresholds) -> None:
    """Every per-class and average value of classification_report vs scikit-learn."""
    report = evaluate.classification_report(y_true, y_prob, thresholds)
    y_pred = (y_prob > thresholds).astype(int)
    rows = report["per_class"]
    col = lambda key: np.array([row[key] for row in rows], np.float64)  # noqa: E731
    p, r, f, s = metrics.precision_recall_fscore_support(y_true, y_pred, average=None,
                                                         zero_division=0)
    for key, ref in (("precision", p), ("recall", r), ("f1", f), ("support", s)):
        np.testing.assert_allclose(col(key), ref, rtol=0, atol=1e-9, err_msg=key)
    mcm = metrics.multilabel_confusion_matrix(y_true, y_pred)
    tn, fp, fn, tp = (mcm[:, i, j] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    for key, ref in (("tn", tn), ("fp", fp), ("fn", fn), ("tp", tp)):
        np.testing.assert_array_equal(col(key), ref, err_msg=key)
    ratio = lambda a, b: np.where(a + b > 0, a / np.maximum(a + b, 1), 0.0)  # noqa: E731
    np.testing.assert_allclose(col("specificity"), ratio(tn, fp), atol=1e-12)
    np.testing.assert_allclose(col("fpr"), ratio(fp, tn), atol=1e-12)
    np.testing.assert_allclose(col("fnr"), ratio(fn, tp), atol=1e-12)
    auc = [metrics.roc_auc_score(y_true[:, c], y_prob[:, c]) if 0 < s[c] < len(y_true)
           else np.nan for c in range(y_true.shape[1])]
    np.testing.assert_allclose(col("auc"), auc, rtol=0, atol=1e-9)
    assert report["macro"]["auc"] == pytest.approx(np.nanmean(auc), abs=1e-9)
    for avg in AVERAGES:
        ref = metrics.precision_recall_fscore_support(y_true, y_pred, average=avg,
                                                      zero_division=0)[:3]
        got = [report[avg][k] for k in ("precision", "recall", "f1")]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9, err_msg=avg)
    assert report["thresholds"] == list(thresholds)


def test_report_matches_sklearn_on_random_data():
    y_true, y_prob = random_set()
    thresholds = np.random.default_rng(2).choice([0.2, 0.35, 0.5, 0.7], 28)
    assert_report_matches_sklearn(y_true, y_prob, thresholds)


@pytest.mark.parametrize("make", [edge_classes, edge_samples])
def test_report_matches_sklearn_on_edge_cases(make):
    assert_report_matches_sklearn(*make())


def test_report_edge_values():
    report = evaluate.classification_report(*edge_classes())
    rows = report["per_class"]
    assert np.isnan(rows[0]["auc"]) and np.isnan(rows[2]["auc"]) and rows[4]["auc"] == 1.0
    assert rows[0]["name"] == "class 0" and rows[0]["support"] == 0 and rows[0]["f1"] == 0.0
    assert rows[1]["precision"] == 0.0 and rows[1]["fnr"] == 1.0  # never predicted
    assert rows[2]["specificity"] == 0.0 and rows[2]["fpr"] == 0.0  # no negatives
    assert rows[5]["recall"] == 1.0 and rows[5]["specificity"] == 0.0
    named = evaluate.classification_report(*edge_classes(), class_names=list("abcdef"))
    assert [row["name"] for row in named["per_class"]] == list("abcdef")


def brute_force_thresholds(y_true, y_prob, grid) -> np.ndarray:
    """The seed paper's loop over sklearn's f1_score; 1.0 for classes without positives."""
    best_t = []
    for c in range(y_true.shape[1]):
        best = -1
        for t in grid:
            f = metrics.f1_score(y_true[:, c], y_prob[:, c] > t, zero_division=0)
            if f > best:
                best, bt = f, t
        best_t.append(bt if y_true[:, c].any() else 1.0)
    return np.array(best_t)


def test_search_thresholds_equals_brute_force():
    y_true, y_prob = random_set(c=8, seed=3)
    y_true[:, 0] = 0  # no positives
    y_true[:, 1] = 1  # all positive
    got = evaluate.search_thresholds(y_true, y_prob)
    reference = brute_force_thresholds(y_true, y_prob, evaluate.DEFAULT_GRID)
    np.testing.assert_array_equal(got, reference)
    assert got[0] == 1.0 and got.dtype == np.float64


def test_search_thresholds_custom_grid_float32():
    y_true, y_prob = random_set(n=200, c=6, seed=4)
    y_prob = y_prob.astype(np.float32)
    grid = [0.7, 0.1, 0.33, 0.1, 0.5, 0.0, 0.9]  # unsorted, duplicated: used sorted
    got = evaluate.search_thresholds(y_true, y_prob, grid)
    np.testing.assert_array_equal(got, brute_force_thresholds(y_true, y_prob, np.unique(grid)))


def test_search_thresholds_tie_rule_and_default_grid():
    # F1 is 1 for every t in [0.10, 0.89]: the smallest, 0.10, wins.
    got = evaluate.search_thresholds([[1, 0], [0, 0]], [[0.9, 0.3], [0.1, 0.6]])
    assert got.tolist() == [0.1, 1.0]
    grid = evaluate.DEFAULT_GRID
    assert len(grid) == 101 and grid[0] == 0.0 and grid[-1] == 1.0
    assert [str(v) for v in grid[[7, 29, 57]]] == ["0.07", "0.29", "0.57"]


def test_roc_curve_matches_sklearn():
    y_true, y_prob = random_set(c=3, seed=5)
    for c in range(3):
        got = evaluate.roc_curve(y_true[:, c], y_prob[:, c])
        ref = metrics.roc_curve(y_true[:, c], y_prob[:, c], drop_intermediate=False)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-12)
    with pytest.warns(metrics._ranking.UndefinedMetricWarning):  # sklearn warns; we give NaN
        ref = metrics.roc_curve(np.ones(4), [0.1, 0.4, 0.4, 0.9], drop_intermediate=False)
    got = evaluate.roc_curve(np.ones(4), np.array([0.1, 0.4, 0.4, 0.9]))
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


def test_roc_auc_nan_when_undefined():
    y_true = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 1]])
    y_prob = np.array([[0.2, 0.5, 0.5], [0.3, 0.5, 0.5], [0.4, 0.5, 0.9]])
    auc = evaluate.roc_auc(y_true, y_prob)
    assert np.isnan(auc[:2]).all()
    assert auc[2] == metrics.roc_auc_score(y_true[:, 2], y_prob[:, 2]) == 0.75


GOOD_T, GOOD_P = np.array([[0, 1], [1, 0]]), np.array([[0.1, 0.9], [0.8, 0.2]])


@pytest.mark.parametrize("y_true, y_prob, match", [
    (GOOD_T, GOOD_P[:1], r"shape mismatch: y_true \(2, 2\) vs y_prob \(1, 2\)"),
    (GOOD_T[0], GOOD_P[0], r"must be 2-D.*\(2,\)"),
    (np.zeros((0, 28)), np.zeros((0, 28)), r"empty inputs: shape \(0, 28\)"),
    (GOOD_T, [[0.1, np.nan], [np.inf, np.nan]],
     r"3 NaN or inf values, first at \(row 0, class 1\)"),
    (GOOD_T, [[0.1, 0.9], [0.8, 1.5]], r"outside \[0, 1\]: 1.5 at \(row 1, class 1\)"),
    (GOOD_T, [[-0.1, 0.9], [0.8, 0.2]], r"outside \[0, 1\]: -0.1 at \(row 0, class 0\)"),
    ([[0, 1], [2, 0]], GOOD_P, r"0/1: got 2 at \(row 1, class 0\)"),
    ([[0, 0.5], [1, 0]], GOOD_P, r"0/1: got 0.5 at \(row 0, class 1\)"),
])
def test_bad_inputs_raise(y_true, y_prob, match):
    for call in (evaluate.check_inputs, evaluate.search_thresholds, evaluate.roc_auc,
                 evaluate.f1_scores, lambda t, p: evaluate.classification_report(t, p, 0.5)):
        with pytest.raises(ValueError, match=match):
            call(y_true, y_prob)


@pytest.mark.parametrize("thresholds, match", [
    ([0.5, 0.5, 0.5], r"shape \(2,\), got \(3,\)"),
    ([0.5, 1.2], r"in \[0, 1\]: 1.2 for class 1"),
    ([np.nan, 0.5], r"in \[0, 1\]: nan for class 0"),
])
def test_bad_thresholds_raise(thresholds, match):
    with pytest.raises(ValueError, match=match):
        evaluate.check_thresholds(thresholds, 2)
    with pytest.raises(ValueError, match=match):
        evaluate.classification_report(GOOD_T, GOOD_P, thresholds)


def test_check_inputs_returns_bool_and_float64():
    y_true, y_prob = evaluate.check_inputs(GOOD_T.astype(np.float32), GOOD_P.astype(np.float32))
    assert y_true.dtype == bool and y_prob.dtype == np.float64
    assert y_true.tolist() == [[False, True], [True, False]]


def test_f1_scores_strict_rule_and_sklearn():
    y_true, y_prob = random_set(seed=6)
    y_prob[0, 0] = 0.5  # exactly at the threshold: negative
    y_pred = y_prob > 0.5
    got = evaluate.f1_scores(y_true, y_prob)
    assert got["macro_f1"] == pytest.approx(
        metrics.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)
    assert got["weighted_f1"] == pytest.approx(
        metrics.f1_score(y_true, y_pred, average="weighted", zero_division=0), abs=1e-12)
    assert evaluate.f1_scores([[1]], [[0.5]]) == {"macro_f1": 0.0, "weighted_f1": 0.0}
    per_class = np.linspace(0.1, 0.9, 28)
    assert evaluate.f1_scores(y_true, y_prob, per_class)["macro_f1"] == pytest.approx(
        metrics.f1_score(y_true, y_prob > per_class, average="macro", zero_division=0), abs=1e-12)


def test_no_skill_macro_f1_is_always_positive_f1():
    y_true, _ = random_set(seed=9)
    y_true[:, 3] = 0
    always = metrics.f1_score(y_true, np.ones_like(y_true), average="macro", zero_division=0)
    assert evaluate.no_skill_macro_f1(y_true) == pytest.approx(always, abs=1e-12)


def test_evaluate_imports_no_heavy_modules():
    code = ("import sys, hpajax.evaluate; bad = {'jax','flax','tensorstore','sklearn','matplotlib'}"
            " & {m.split('.')[0] for m in sys.modules}; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_is_json_and_csv_round_trips():
    y_true, y_prob = random_set(seed=7)
    y_true[:, 5] = 0  # one undefined AUC
    thresholds = evaluate.search_thresholds(y_true, y_prob)
    report = evaluate.classification_report(y_true, y_prob, thresholds)
    assert json.loads(json.dumps(report))["micro"] == report["micro"]
    assert all(type(v) in (int, float, str) for row in report["per_class"] for v in row.values())
    rows = list(csv.DictReader(io.StringIO(evaluate.to_csv(report))))
    assert tuple(rows[0]) == evaluate.CSV_COLUMNS and len(rows) == 28 + 4
    assert rows[3]["name"] == classes.CLASS_NAMES[3]
    assert int(rows[3]["tp"]) == report["per_class"][3]["tp"]
    assert float(rows[3]["f1"]) == report["per_class"][3]["f1"]
    assert float(rows[9]["threshold"]) == thresholds[9]
    assert np.isnan(float(rows[5]["auc"])) and rows[5]["threshold"] == "1.0"
    assert rows[28]["class"] == "micro avg" and rows[28]["tp"] == ""
    assert float(rows[29]["f1"]) == report["macro"]["f1"]
    assert float(rows[29]["auc"]) == report["macro"]["auc"]
    assert int(rows[31]["support"]) == int(y_true.sum())


def test_markdown_tables():
    y_true, y_prob = random_set(seed=8)
    report = evaluate.classification_report(y_true, y_prob, 0.5)
    lines = evaluate.to_markdown(report).splitlines()
    assert "| class | name | precision | recall | F1 | support |" in lines
    assert "| class | name | TP | FP | TN | FN | specificity | FPR | FNR | AUC |" in lines
    assert sum(line.startswith("**Table 5") for line in lines) == 1
    assert sum(line.startswith("**Table 7") for line in lines) == 1
    for c, name in enumerate(classes.CLASS_NAMES):
        assert sum(line.startswith(f"| {c} | {name} |") for line in lines) == 2
    row = report["per_class"][0]
    assert f"| 0 | Nucleoplasm | {row['precision']:.3f} | {row['recall']:.3f} | " \
           f"{row['f1']:.3f} | {row['support']} |" in lines
    assert any(line.startswith("| weighted avg |") for line in lines)


def count_above(y_prob, thresholds) -> np.ndarray:
    """Per class, how many samples the strict rule predicts positive."""
    return np.count_nonzero(np.asarray(y_prob) > thresholds, axis=0)


def test_rate_thresholds_predict_round_f_times_n_positives_without_ties():
    n = 128
    rng = np.random.default_rng(10)
    y_prob = rng.random((n, 28))  # continuous: no ties
    frequency = rng.random(28)
    frequency[:4] = [0.0, 1.0, 2.5 / n, 3.5 / n]  # none, all, halves (to even: 2 and 4)
    got = evaluate.rate_thresholds(y_prob, frequency)
    wanted = [round(f * n) for f in frequency]
    assert wanted[:4] == [0, n, 2, 4]
    assert count_above(y_prob, got).tolist() == wanted
    descending = -np.sort(-y_prob, axis=0)
    for c, k in enumerate(wanted):  # the (k+1)-th largest; never for k = 0, 0.0 for k = N
        assert got[c] == (1.0 if k == 0 else 0.0 if k == n else descending[k, c])


def test_rate_thresholds_with_ties_give_the_closest_count_then_the_fewer_positives():
    n = 90
    _, y_prob = random_set(n=n, seed=11)  # on a 0.01 grid: many ties
    frequency = np.random.default_rng(11).random(28)
    got = count_above(y_prob, evaluate.rate_thresholds(y_prob, frequency))
    for c in range(28):
        # The probabilities lie on the grid, so it gives every count a threshold can.
        counts = np.array([(y_prob[:, c] > t).sum() for t in evaluate.DEFAULT_GRID])
        distance = np.abs(counts - round(frequency[c] * n))
        assert got[c] == counts[distance == distance.min()].min(), c
    assert (got != [round(f * n) for f in frequency]).any()  # the ties did matter


@pytest.mark.parametrize("scores, frequency, threshold, count", [
    ([0.9, 0.5, 0.5, 0.5, 0.1], 0.4, 0.5, 1),  # k = 2: 1 (1 off) beats 4 (2 off)
    ([0.9, 0.5, 0.5, 0.5, 0.1], 0.6, 0.1, 4),  # k = 3: 4 (1 off) beats 1: more than k
    ([0.9, 0.5, 0.5, 0.1], 0.5, 0.5, 1),  # k = 2: 1 and 3 are as close: the fewer
    ([1.0, 1.0, 1.0, 0.2], 0.5, 0.2, 3),  # saturated probabilities: 3, not 0
    ([0.3, 0.0, 0.2], 1.0, 0.0, 2),  # k = N: threshold 0.0, an exact 0 stays negative
    ([0.3, 0.7, 0.2], 0.0, 1.0, 0),  # k = 0: never
    ([1.0, 1.0], 0.0, 1.0, 0),
])
def test_rate_thresholds_edge_cases(scores, frequency, threshold, count):
    scores = np.array(scores)
    got = evaluate.rate_thresholds(scores[:, None], [frequency])
    assert got.tolist() == [threshold] and (scores > got[0]).sum() == count


@pytest.mark.parametrize("frequency, match", [
    ([0.1, 0.2, 0.3], r"frequency must have shape \(2,\), got \(3,\)"),
    (0.5, r"frequency must have shape \(2,\), got \(\)"),
    ([0.1, 1.5], r"frequency must be in \[0, 1\]: 1.5 for class 1"),
    ([np.nan, 0.1], r"frequency must be in \[0, 1\]: nan for class 0"),
    ([-0.1, 0.1], r"frequency must be in \[0, 1\]: -0.1 for class 0"),
])
def test_rate_thresholds_refuse_bad_frequencies(frequency, match):
    with pytest.raises(ValueError, match=match):
        evaluate.rate_thresholds(GOOD_P, frequency)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]: 1.5 at \(row 1, class 1\)"):
        evaluate.rate_thresholds([[0.1, 0.9], [0.8, 1.5]], [0.5, 0.5])


def test_guarded_thresholds_keep_the_fallback_where_positives_are_few():
    y_true, y_prob = random_set(n=60, seed=12)  # rates 0.02 to 0.5: about 1 to 30 positives
    y_true[:, 0] = 0
    fallback = np.random.default_rng(12).random(28)
    few = y_true.sum(axis=0) < 5
    assert few.sum() >= 3 and (~few).sum() >= 3
    searched = evaluate.search_thresholds(y_true, y_prob)  # equals the brute force: above
    got = evaluate.guarded_thresholds(y_true, y_prob, fallback, min_positives=5)
    np.testing.assert_array_equal(got[few], fallback[few])
    np.testing.assert_array_equal(got[~few], searched[~few])
    assert got[0] == fallback[0] != evaluate.NEVER  # no positives: the fallback, not never
    np.testing.assert_array_equal(evaluate.guarded_thresholds(y_true, y_prob, 0.5, 0), searched)
    assert evaluate.guarded_thresholds(y_true, y_prob, 0.5, 61).tolist() == [0.5] * 28


@pytest.mark.parametrize("min_positives", [-1, 2.5, None])
def test_guarded_thresholds_refuse_a_bad_min_positives(min_positives):
    with pytest.raises(ValueError, match=r"min_positives must be an integer >= 0, got "):
        evaluate.guarded_thresholds(GOOD_T, GOOD_P, 0.5, min_positives)
    with pytest.raises(ValueError, match=r"thresholds must have shape \(2,\), got \(3,\)"):
        evaluate.guarded_thresholds(GOOD_T, GOOD_P, [0.5] * 3, 1)
