"""The study's table and verdict from hand-made eval results (the training runs themselves
are what tests/test_train.py and tests/test_quickstart.py exercise)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fishscale.study import aggregate, markdown_table, verdict

BINS = ["ultra-rare", "minority", "neutral", "majority"]


def result(top1, macro, ultra, minority, neutral=0.8, majority=0.99):
    accs = dict(zip(BINS, (ultra, minority, neutral, majority)))
    return {"bin_names": BINS, "top1": top1, "macro_acc": macro, "bins": {b: {"acc": a} for b, a in accs.items()}}


def test_aggregate_mean_and_sample_std_over_seeds():
    bins, rows = aggregate({"focal": [result(0.70, 0.26, 0.04, 0.50), result(0.72, 0.28, 0.08, 0.52)]})
    assert bins == BINS
    mean, std = rows[0]["ultra-rare"]
    assert mean == pytest.approx(0.06) and std == pytest.approx(0.0282843, rel=1e-5)   # ddof=1
    assert "| focal | 71.0 ± 1.4 | 27.0 ± 1.4 | 6.0 ± 2.8 | 51.0 ± 1.4 |" in markdown_table(bins, rows)


def test_verdict_needs_both_rare_bins_outside_the_spread_and_overall_within_a_point():
    seeds = lambda *r: [result(*x) for x in r]   # noqa: E731
    _, rows = aggregate({
        "focal": seeds((0.70, 0.3, 0.05, 0.50), (0.70, 0.3, 0.07, 0.52)),
        "wins": seeds((0.695, 0.4, 0.30, 0.60), (0.695, 0.4, 0.32, 0.62)),
        "too-costly": seeds((0.60, 0.5, 0.50, 0.70), (0.60, 0.5, 0.52, 0.72)),
        "minority-overlaps": seeds((0.70, 0.4, 0.30, 0.50), (0.70, 0.4, 0.32, 0.56)),
    })
    lines = verdict(BINS, rows)
    assert len(lines) == 1 and lines[0].startswith("wins beats the reference")


def test_unknown_recipe_is_a_clean_error():
    done = subprocess.run([sys.executable, "-m", "fishscale.cli", "study", "--recipes", "bogus"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown recipe" in done.stderr and "Traceback" not in done.stderr
