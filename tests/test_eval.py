"""`fishscale eval`: files it writes, 2 ranks == 1 rank, clean CLI errors.

Runs are built directly (no training): a tiny timm Swin from fishscale.model.factory.build_model with
random weights as best.safetensors, config.yaml pointing at the tiny_shards fixture, classes.json
and a synthetic metrics.jsonl. `make_run` is imported by test_report.py and test_export.py.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fishscale.cli import main
from fishscale.shards.manifest import load_manifest

BATCH = 16   # the tiny test split has 153 samples: neither it nor a rank's half is a multiple of 16


def synthetic_metrics(phases=(("head", 2), ("full", 2)), steps_per_epoch=3) -> list[dict]:
    """metrics.jsonl records in training's format: train lines per step, a val line per epoch."""
    records, step, epoch = [], 0, 0
    for phase, epochs in phases:
        for _ in range(epochs):
            for _ in range(steps_per_epoch):
                step += 1
                records.append({"kind": "train", "epoch": epoch, "phase": phase, "step": step,
                                "loss": 3.0 / step, "lr": 1e-3, "img_per_s": 100.0})
            records.append({"kind": "val", "epoch": epoch, "phase": phase, "step": step, "loss": 2.0 - 0.1 * epoch,
                            "top1": 0.1 * epoch, "top5": 0.2 * epoch, "macro_acc": 0.05 * epoch,
                            "macro_f1": 0.04 * epoch, "bins": {}})
            epoch += 1
    records.append({"kind": "summary", "best_epoch": epoch - 1})
    return records


def make_run(folder: Path, shards: Path, *, head: str = "linear", seed: int = 0, last: bool = False,
             metrics: bool = True) -> Path:
    """A run folder as `fishscale train` writes it, with random weights."""
    import torch
    from safetensors.torch import save_file
    from fishscale.config import load_config
    from fishscale.model.factory import TINY_SWIN_KWARGS, build_model
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [f"data.shards={shards}", "data.image_size=64", "data.backend=torch",
                             f"model.kwargs={json.dumps(TINY_SWIN_KWARGS)}", f"model.head={head}",
                             "model.head_hidden=16", f"eval.batch_size={BATCH}", f"train.out={folder}",
                             "phases=[{name: head, epochs: 2, freeze_backbone: true}, {name: full, epochs: 2}]"])
    cfg.save(folder / "config.yaml")
    manifest = load_manifest(shards / "train")
    torch.manual_seed(seed)
    for name in ("best", "last") if last else ("best",):
        model = build_model(cfg.model, manifest.num_classes, cfg.data.image_size)
        save_file(model.state_dict(), str(folder / f"{name}.safetensors"))
    (folder / "classes.json").write_text(json.dumps({
        "class_names": manifest.class_names, "train_class_counts": manifest.train_class_counts,
        "bin_edges": manifest.bin_edges, "bin_names": manifest.bin_names}), encoding="utf-8")
    if metrics:
        lines = [json.dumps(r) for r in synthetic_metrics()]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def run_dir(tiny_shards, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "tiny-run", tiny_shards, last=True)


@pytest.fixture(scope="module")
def one_rank(run_dir, tiny_shards, tmp_path_factory):
    """`fishscale eval --bins` on one rank, in-process, with every output file requested."""
    out = tmp_path_factory.mktemp("eval1")
    files = {k: out / f"result.{k}" for k in ("json", "csv", "markdown", "plot", "predictions")}
    args = ["eval", str(run_dir), "--shards", str(tiny_shards / "test"), "--bins", "--batch-size", str(BATCH),
            "--no-progress"] + [a for k, p in files.items() for a in (f"--{k}", str(p))]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output, files


def test_eval_prints_table_and_writes_every_file(one_rank, run_dir, tiny_shards):
    output, files = one_rank
    for name in ("ultra-rare", "minority", "neutral", "majority", "top-1"):
        assert name in output
    result = json.loads(files["json"].read_text())
    manifest = load_manifest(tiny_shards / "test")
    assert result["num_images"] == manifest.num_samples == 153
    assert result["split"] == "test" and result["world_size"] == 1
    assert sum(b["images"] for b in result["bins"].values()) == 153
    # predictions: every sample once, manifest order and labels; metrics agree with them
    preds = pd.read_csv(files["predictions"], keep_default_na=False)
    assert preds["sample_id"].tolist() == list(range(153))
    assert preds["key"].tolist() == [k for s in manifest.shards for k in s.keys]
    assert preds["label"].tolist() == manifest.labels().tolist()
    assert result["top1"] == pytest.approx((preds["pred1"] == preds["label"]).mean())
    top5 = (preds[[f"pred{i}" for i in range(1, 6)]].to_numpy() == preds[["label"]].to_numpy()).any(1)
    assert result["top5"] == pytest.approx(top5.mean())
    probs = preds[[f"prob{i}" for i in range(1, 6)]].to_numpy()
    assert (np.diff(probs, axis=1) <= 1e-6).all() and (probs.sum(1) <= 1 + 1e-4).all()
    names = json.loads((run_dir / "classes.json").read_text())["class_names"]
    assert preds["pred1_name"].tolist() == [names[i] for i in preds["pred1"]]
    # the CSV table agrees with the JSON
    table = pd.read_csv(files["csv"]).set_index("row")
    assert table.loc["all", "top1"] == pytest.approx(result["top1"])
    assert table.loc["minority", "images"] == result["bins"]["minority"]["images"]
    assert "| ultra-rare |" in files["markdown"].read_text()
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # saved into the run for report/export by default
    saved = json.loads((run_dir / "eval" / "test.json").read_text())
    assert saved["top1"] == result["top1"] and Path(saved["predictions"]).is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_give_the_same_numbers_as_one(one_rank, run_dir, tiny_shards, tmp_path):
    _, files = one_rank
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        cmd = [sys.executable, "-m", "fishscale.cli", "eval", str(run_dir), "--shards", str(tiny_shards / "test"),
               "--batch-size", str(BATCH), "--no-progress", "--no-save",
               "--json", str(tmp_path / f"r{rank}.json"), "--predictions", str(tmp_path / f"p{rank}.csv")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not (tmp_path / "r1.json").exists()          # only rank 0 writes
    one = json.loads(files["json"].read_text())
    two = json.loads((tmp_path / "r0.json").read_text())
    assert two["world_size"] == 2
    for key in ("num_images", "top1", "top5", "macro_acc", "macro_f1", "bins", "per_class"):
        assert two[key] == one[key], key
    p1, p2 = pd.read_csv(files["predictions"]), pd.read_csv(tmp_path / "p0.csv")
    assert p2["sample_id"].tolist() == list(range(153))     # nothing dropped or doubled at the short batches
    assert (p2[[f"pred{i}" for i in range(1, 6)]].to_numpy() == p1[[f"pred{i}" for i in range(1, 6)]].to_numpy()).all()
    np.testing.assert_allclose(p2["prob1"], p1["prob1"], rtol=1e-4)


def test_checkpoint_file_last_and_custom_edges(run_dir, tiny_shards):
    result = CliRunner().invoke(main, ["eval", str(run_dir / "last.safetensors"), "--shards",
                                       str(tiny_shards / "test"), "--bin-edges", "5,50", "--bins", "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "eval" / "test-last.json").read_text())
    assert saved["checkpoint"] == "last" and saved["bin_names"] == ["<5", "5-49", ">=50"]
    counts = np.array(json.loads((run_dir / "classes.json").read_text())["train_class_counts"])
    labels = load_manifest(tiny_shards / "test").labels()
    assert saved["bins"]["<5"]["images"] == int((counts[labels] < 5).sum())
    assert "5-49" in result.output


@pytest.mark.parametrize("args, message", [
    (["eval", "{tmp}/no-such-run"], "run folder not found"),
    (["eval", "{tmp}"], "no config.yaml"),
    (["eval", "{run}", "--bin-edges", "10,abc"], "--bin-edges"),
    (["eval", "{run}", "--bin-edges", "100,10"], "strictly increasing"),
    (["eval", "{run}", "--checkpoint", "last", "--shards", "{tmp}"], "manifest not found"),
    (["eval", "{tmp}/x.safetensors"], "checkpoint file not found"),
])
def test_cli_errors_are_clean(args, message, run_dir, tmp_path):
    args = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_mismatched_class_index_and_corrupt_weights(run_dir, tiny_shards, tmp_path):
    other = tmp_path / "other-test"
    other.mkdir()
    manifest = json.loads((tiny_shards / "test" / "manifest.json").read_text())
    manifest["class_names"] = manifest["class_names"][::-1]
    (other / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--shards", str(other)])
    assert result.exit_code == 2 and "class index differs" in result.output, result.output
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("eval"))
    (broken / "best.safetensors").write_bytes(b"not a safetensors file")
    result = CliRunner().invoke(main, ["eval", str(broken), "--shards", str(tiny_shards / "test")])
    assert result.exit_code == 2 and "cannot read safetensors" in result.output, result.output
