"""`fishscale export`: weights that plain timm loads with identical predictions, config.json, card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors import safe_open

from fishscale.cli import main
from fishscale.shards.manifest import load_manifest
from fishscale.evaluate.runs import build_run_model, load_run
from test_eval import make_run


def export(run: Path, out: Path) -> dict:
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "config.json").read_text())


def fishscale_logits(run: Path, images: torch.Tensor) -> torch.Tensor:
    r = load_run(run)
    with torch.inference_mode():
        return build_run_model(r, r.weights("best"))(images)


def run_card_snippet(out: Path, monkeypatch) -> torch.nn.Module:
    """Execute the model card's python block (our own generated file) in the export folder."""
    card = (out / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(compile(code, str(out / "README.md"), "exec"), scope)
    return scope["model"]


def test_linear_head_round_trip_through_plain_timm(tiny_shards, tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", tiny_shards, seed=3)
    # a saved eval result goes into the card (hand-written here, in eval's format)
    from fishscale.evaluate.metrics import evaluate_predictions
    manifest = load_manifest(tiny_shards / "train")
    labels = load_manifest(tiny_shards / "test").labels()
    result = evaluate_predictions(labels, labels[:, None], manifest.train_class_counts)
    (run / "eval").mkdir()
    (run / "eval" / "test.json").write_text(json.dumps({"split": "test", "checkpoint": "best", **result}))

    out = tmp_path / "export"
    cfg = export(run, out)
    c = cfg["num_classes"]
    assert c == manifest.num_classes and cfg["class_names"] == manifest.class_names
    assert cfg["image_size"] == 64 and cfg["pad_value"] == 255
    assert cfg["mean"] == pytest.approx([0.485, 0.456, 0.406]) and cfg["head"]["type"] == "linear"
    assert cfg["eval"]["test"]["top1"] == 1.0

    images = torch.randn(4, 3, 64, 64)
    timm_model = timm.create_model(cfg["architecture"], pretrained=True, num_classes=c,
                                   pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=c),
                                   **cfg["timm_kwargs"]).eval()
    with torch.inference_mode():
        plain = timm_model(images)
    assert torch.equal(plain, fishscale_logits(run, images))

    # why num_classes must be in the overlay: without it timm throws the trained head away
    headless = timm.create_model(cfg["architecture"], pretrained=True, num_classes=c,
                                 pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
                                 **cfg["timm_kwargs"]).eval()
    with torch.inference_mode():
        assert not torch.allclose(headless(images), plain)

    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:   # another reader
        assert set(f.keys()) == set(timm_model.state_dict())
    card = (out / "README.md").read_text()
    assert "| ultra-rare | <10 |" in card and "| 100.00 |" in card
    assert 'pretrained_cfg_overlay=dict(file="model.safetensors", num_classes=c)' in card
    with torch.inference_mode():
        assert torch.equal(run_card_snippet(out, monkeypatch)(images), plain)


def test_mlp_head_rebuilds_from_the_card_recipe(tiny_shards, tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", tiny_shards, head="mlp", seed=4, metrics=False)
    out = tmp_path / "export"
    cfg = export(run, out)
    head = cfg["head"]
    assert head["type"] == "mlp" and head["module"] == "head.fc" and head["hidden"] == 16
    assert "Not evaluated yet" in (out / "README.md").read_text()
    model = run_card_snippet(out, monkeypatch)   # plain timm + torch, as the card says
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model.eval()(images), fishscale_logits(run, images))


def test_export_errors_are_clean(tiny_shards, tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "run folder not found" in result.output, result.output
    run = make_run(tmp_path / "run", tiny_shards, metrics=False)
    (run / "best.safetensors").unlink()
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "best.safetensors: weights not found" in result.output, result.output
