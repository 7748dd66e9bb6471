"""fishscale.evaluate.metrics: a hand-built case, scikit-learn agreement, bin edges, table formats."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, top_k_accuracy_score

from fishscale.data.bins import UNSEEN_BIN
from fishscale.errors import FishscaleError
from fishscale.evaluate.metrics import evaluate_predictions, format_table, to_csv, to_markdown, topk_indices

# classes 0..6; bins by count: 9 ultra-rare, 10 minority, 99 minority, 100 neutral, 499 neutral,
# 500 majority, 3 ultra-rare
COUNTS = [9, 10, 99, 100, 499, 500, 3]
LABELS = [0, 0, 6, 1, 1, 2, 3, 3, 3, 4, 5, 5, -1, -1]
PRED1 = [0, 1, 0, 1, 1, 1, 3, 3, 5, 0, 5, 5, 0, 3]
LABEL_IN_TOP5 = {1, 9}   # rows whose label sits at rank 3 although top-1 is wrong


def hand_topk() -> np.ndarray:
    rows = []
    for i, (label, first) in enumerate(zip(LABELS, PRED1)):
        others = [c for c in range(7) if c not in (first, label)]
        row = [first] + others[:4]
        if i in LABEL_IN_TOP5:
            row[2] = label
        rows.append(row)
    return np.array(rows)


def test_hand_built_case_known_numbers():
    r = evaluate_predictions(LABELS, hand_topk(), COUNTS)
    assert r["num_images"] == 14 and r["unseen_images"] == 2 and r["classes_evaluated"] == 7
    assert r["top1"] == pytest.approx(7 / 14)
    assert r["top5"] == pytest.approx(9 / 14)
    assert r["macro_acc"] == pytest.approx((1 / 2 + 1 + 0 + 2 / 3 + 0 + 1 + 0) / 7)
    assert r["macro_f1"] == pytest.approx((2 / 5 + 4 / 6 + 0 + 4 / 5 + 0 + 4 / 5 + 0) / 7)
    b = r["bins"]
    assert list(b) == ["ultra-rare", "minority", "neutral", "majority", UNSEEN_BIN]
    assert (b["ultra-rare"]["classes"], b["ultra-rare"]["images"]) == (2, 3)
    assert b["ultra-rare"]["acc"] == pytest.approx(1 / 3)
    assert b["ultra-rare"]["top5"] == pytest.approx(2 / 3)
    assert b["ultra-rare"]["class_mean_acc"] == pytest.approx((1 / 2 + 0) / 2)
    assert (b["minority"]["classes"], b["minority"]["images"]) == (2, 3)
    assert b["minority"]["acc"] == pytest.approx(2 / 3)
    assert b["minority"]["class_mean_acc"] == pytest.approx(0.5)
    assert (b["neutral"]["classes"], b["neutral"]["images"]) == (2, 4)
    assert b["neutral"]["acc"] == pytest.approx(0.5)
    assert b["neutral"]["top5"] == pytest.approx(3 / 4)
    assert b["neutral"]["class_mean_acc"] == pytest.approx((2 / 3 + 0) / 2)
    assert (b["majority"]["classes"], b["majority"]["images"], b["majority"]["acc"]) == (1, 2, 1.0)
    assert b[UNSEEN_BIN]["images"] == 2 and b[UNSEEN_BIN]["acc"] == 0.0
    # the unseen images are in no bin
    assert sum(b[n]["images"] for n in r["bin_names"]) == 12


def test_bin_assignment_at_edges():
    counts = [9, 10, 99, 100, 499, 500]
    expected = ["ultra-rare", "minority", "minority", "neutral", "neutral", "majority"]
    for cls, name in enumerate(expected):   # one image of one class at a time -> that bin only
        r = evaluate_predictions([cls], np.array([[cls]]), counts)
        assert r["bins"][name]["images"] == 1, (counts[cls], name)
        assert sum(v["images"] for v in r["bins"].values()) == 1
    r = evaluate_predictions(range(6), np.arange(6)[:, None], counts)
    assert [r["bins"][n]["train_classes"] for n in r["bin_names"]] == [1, 2, 2, 1]


def test_custom_edges_and_names():
    r = evaluate_predictions([0, 1, 2], np.array([[0], [0], [2]]), [1, 5, 50], bin_edges=(5, 50))
    assert r["bin_names"] == ["<5", "5-49", ">=50"]
    assert [r["bins"][n]["acc"] for n in r["bin_names"]] == [1.0, 0.0, 1.0]
    r = evaluate_predictions([0], np.array([[0]]), [1], bin_edges=(5,), bin_names=("rare", "common"))
    assert r["bins"]["rare"]["images"] == 1 and r["bins"]["common"]["acc"] is None


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sklearn_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    num_classes, n = 60, 2000
    counts = rng.integers(1, 800, num_classes)
    labels = rng.integers(0, num_classes - 10, n)          # the last 10 classes never appear as labels
    scores = rng.normal(size=(n, num_classes)).astype(np.float32)
    scores[np.arange(n), labels] += rng.normal(1.0, 1.0, n).astype(np.float32)   # better than chance
    labels[rng.random(n) < 0.05] = -1                       # unseen species
    r = evaluate_predictions(labels, scores, counts)
    pred = scores.argmax(1)
    seen = labels >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # sklearn warns about predicted-only classes
        assert r["macro_acc"] == pytest.approx(balanced_accuracy_score(labels[seen], pred[seen]))
        assert r["macro_f1"] == pytest.approx(f1_score(labels[seen], pred[seen], average="macro"))
    assert r["top1"] == pytest.approx(accuracy_score(labels, pred))
    top5_seen = top_k_accuracy_score(labels[seen], scores[seen], k=5, labels=np.arange(num_classes))
    assert r["top5"] == pytest.approx(top5_seen * seen.sum() / n)   # unseen images are wrong
    # the same numbers from top-k indices as from scores
    r_idx = evaluate_predictions(labels, topk_indices(scores), counts)
    assert r_idx == r
    # per bin: image accuracy and balanced accuracy of the images in the bin
    edges = np.array(r["bin_edges"])
    label_bin = np.searchsorted(edges, counts[np.maximum(labels, 0)], side="right")
    warnings.simplefilter("ignore")
    for b, name in enumerate(r["bin_names"]):
        m = seen & (label_bin == b)
        assert r["bins"][name]["images"] == m.sum()
        if not m.any():
            assert r["bins"][name]["acc"] is None and r["bins"][name]["class_mean_acc"] is None
            continue
        assert r["bins"][name]["acc"] == pytest.approx(accuracy_score(labels[m], pred[m]))
        assert r["bins"][name]["class_mean_acc"] == pytest.approx(balanced_accuracy_score(labels[m], pred[m]))


def test_torch_tensors_in_any_float_dtype():
    import torch
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(50, 8)).astype(np.float32)
    labels = rng.integers(0, 8, 50)
    expected = evaluate_predictions(labels, scores, [5] * 8)
    assert evaluate_predictions(torch.from_numpy(labels), torch.from_numpy(scores), torch.full((8,), 5)) == expected
    bf16 = evaluate_predictions(labels, torch.from_numpy(scores).bfloat16(), [5] * 8)
    assert bf16["num_images"] == 50 and 0 <= bf16["top1"] <= 1


def test_topk_indices_order_and_nan():
    scores = np.array([[0.1, 0.9, 0.3, np.nan, 0.5, 0.2, 0.0], [1, 2, 3, 4, 5, 6, 7]], dtype=np.float32)
    assert topk_indices(scores).tolist() == [[1, 4, 2, 5, 0], [6, 5, 4, 3, 2]]
    assert topk_indices(scores[:, :3]).tolist() == [[1, 2, 0], [2, 1, 0]]


def test_fewer_than_five_indices_gives_no_top5():
    r = evaluate_predictions([0, 1], np.array([0, 0]), [5] * 10)
    assert r["top1"] == 0.5 and r["top5"] is None and r["bins"]["ultra-rare"]["top5"] is None


def test_bad_input_is_a_clean_error():
    with pytest.raises(FishscaleError, match="labels must lie"):
        evaluate_predictions([0, 7], np.zeros((2, 3), np.float32), [1, 1, 1])
    with pytest.raises(FishscaleError, match="columns"):
        evaluate_predictions([0, 1], np.zeros((2, 4), np.float32), [1, 1, 1])
    with pytest.raises(FishscaleError, match="indices"):
        evaluate_predictions([0, 1], np.array([[0], [3]]), [1, 1, 1])
    with pytest.raises(FishscaleError, match="bin edges"):
        evaluate_predictions([0], np.array([[0]]), [1], bin_edges=(100, 10))


def test_table_csv_markdown_read_back():
    r = evaluate_predictions(LABELS, hand_topk(), COUNTS)
    table = format_table(r)
    assert "top-1 50.00%" in table and UNSEEN_BIN in table and "ultra-rare" in table
    df = pd.read_csv(io.StringIO(to_csv(r)))
    assert df["row"].tolist() == ["all", "ultra-rare", "minority", "neutral", "majority", UNSEEN_BIN]
    assert df["images"].tolist() == [14, 3, 3, 4, 2, 2]
    assert df.loc[0, "top1"] == pytest.approx(0.5)
    assert df.loc[0, "macro_f1"] == pytest.approx(r["macro_f1"])
    assert df.loc[2, "class_mean_acc"] == pytest.approx(0.5)
    assert pd.isna(df.loc[5, "class_mean_acc"])
    md = to_markdown(r).strip().splitlines()
    assert len(md) == 2 + 6 and md[1].startswith("|---")
    cells = [c.strip() for c in md[3].strip("|").split("|")]
    assert cells[:5] == ["ultra-rare", "<10", "2", "3", "33.33"]
