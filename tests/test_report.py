"""`fishscale report`: PNGs that decode, a page that links them, numbers that match the eval files."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from fishscale.cli import main
from fishscale.evaluate.eval import run_eval, save_outputs
from fishscale.evaluate.metrics import evaluate_predictions
from fishscale.evaluate.runs import load_run
from test_eval import make_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as img:
        img.load()                                   # decodes every pixel
        assert img.format == "PNG" and img.width > 100 and img.height > 100


@pytest.fixture(scope="module")
def runs(tiny_shards, tmp_path_factory) -> tuple[Path, Path]:
    """Run A evaluated on test (saved in the run), run B (other weights) not evaluated."""
    root = tmp_path_factory.mktemp("report-runs")
    a = make_run(root / "focal", tiny_shards, seed=0)
    b = make_run(root / "ce", tiny_shards, seed=1)
    run = load_run(a)
    out = run_eval(run, run.weights("best"), tiny_shards / "test", progress=False)
    save_outputs(out, run, save_in_run=True, json_path=None, csv_path=None, markdown_path=None,
                 plot_path=None, predictions_path=None)
    return a, b


def test_report_writes_pngs_page_and_comparison(runs, tmp_path):
    a, b = runs
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(a), str(b), "--out", str(out), "--top", "5"])
    assert result.exit_code == 0, result.output
    for name in ("per_bin_accuracy.png", "training_curves.png", "class_counts.png", "confusions_focal.png"):
        assert_png(out / name)
    assert not (out / "confusions_ce.png").exists()            # B has no predictions
    page = (out / "README.md").read_text()
    linked = [line.split("](")[1].rstrip(")") for line in page.splitlines() if line.startswith("![")]
    assert set(linked) == {"per_bin_accuracy.png", "training_curves.png", "class_counts.png", "confusions_focal.png"}
    assert "not evaluated on test" in page
    saved = json.loads((a / "eval" / "test.json").read_text())
    table = pd.read_csv(out / "comparison.csv").set_index("run")
    assert table.loc["focal", "top1"] == pytest.approx(saved["top1"])
    assert table.loc["focal", "ultra-rare_acc"] == pytest.approx(saved["bins"]["ultra-rare"]["acc"])
    assert pd.isna(table.loc["ce", "top1"])


def test_confused_pairs_match_the_predictions_file(runs, tmp_path):
    from fishscale.evaluate.report import confused_pairs
    a, _ = runs
    run = load_run(a)
    classes = run.classes()
    preds = pd.read_csv(a / "eval" / "test.predictions.csv")
    counts = np.array(classes.counts)
    wrong = preds[(preds["label"] != preds["pred1"]) & (counts[preds["label"]] < 100)]
    expected = Counter(zip(wrong["label"], wrong["pred1"]))
    pairs = confused_pairs(a / "eval" / "test.predictions.csv", classes, below=100, top=1000)
    assert sum(n for _, _, n in pairs) == len(wrong) > 0
    assert [n for _, _, n in pairs] == sorted(expected.values(), reverse=True)
    t, p, n = pairs[0]
    assert expected[(classes.names.index(t), classes.names.index(p))] == n


def test_report_evaluates_a_run_when_shards_given(runs, tiny_shards, tmp_path):
    _, b = runs
    result = CliRunner().invoke(main, ["report", str(b), "--out", str(tmp_path), "--shards",
                                       str(tiny_shards / "test"), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((b / "eval" / "test.json").read_text())
    assert saved["num_images"] == 153
    assert "not evaluated" not in (tmp_path / "README.md").read_text()
    assert_png(tmp_path / "confusions_ce.png")


def test_plots_handle_unseen_rows_and_empty_bins(tmp_path):
    from fishscale.evaluate import plots
    counts = [3, 30, 300, 3000]
    result = evaluate_predictions([0, 0, 1, -1], np.array([[0], [1], [1], [2]]), counts)   # neutral, majority empty
    assert result["bins"]["neutral"]["acc"] is None
    assert_png(plots.per_bin_accuracy([("x", result), ("y", result)], tmp_path / "bins.png"))
    assert_png(plots.class_counts(counts, result["bin_edges"], result["bin_names"], tmp_path / "counts.png"))
    assert_png(plots.confused_pairs([], tmp_path / "none.png", title="nothing"))
    assert_png(plots.training_curves([("x", [])], tmp_path / "curves.png"))


def test_report_errors_are_clean(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "run folder not found" in result.output, result.output
    bad = make_bad_metrics_run(tmp_path)
    result = CliRunner().invoke(main, ["report", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "metrics.jsonl:1: not valid JSON" in result.output, result.output


def make_bad_metrics_run(tmp_path: Path) -> Path:
    from fishscale.config import Config
    run = tmp_path / "bad"
    run.mkdir()
    Config().save(run / "config.yaml")
    (run / "classes.json").write_text(json.dumps({"class_names": ["a", "b"], "train_class_counts": [5, 50]}))
    (run / "metrics.jsonl").write_text('{"kind": "train", "loss": \n{"kind": "val"}\n')
    return run
