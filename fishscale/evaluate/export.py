"""`fishscale export`: a run's best model as plain-timm weights, a config.json and a model card.

    fishscale export runs/quickstart --out exported/quickstart

Writes ``model.safetensors`` (the model's state dict, fp32, contiguous), ``config.json``
(architecture, timm kwargs, class names, image size, preprocessing, normalization, the eval
numbers if the run has them) and ``README.md`` (a model card with the per-bin table).

With the linear head the weights load in plain timm, no fishscale needed::

    cfg = json.load(open("config.json"))
    model = timm.create_model(cfg["architecture"], pretrained=True, num_classes=cfg["num_classes"],
                              pretrained_cfg_overlay=dict(file="model.safetensors", num_classes=cfg["num_classes"]),
                              **cfg["timm_kwargs"])

``num_classes`` must be in the overlay too: timm drops the classifier weights (and keeps a
random head) whenever the model's num_classes differs from its pretrained config's (1000).
The MLP head is not a timm module: see ``config.json["head"]`` and the card for the 5 lines
that rebuild it.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import click

from fishscale.errors import FishscaleError
from fishscale.evaluate.metrics import to_markdown
from fishscale.evaluate.runs import Run, RunClasses, build_run_model, resolve_run

EXPORT_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"


def timm_kwargs(run: Run, model) -> dict[str, Any]:
    """The timm.create_model kwargs (besides num_classes) that rebuild this architecture.

    fishscale.model.factory.build_model passes ``img_size=data.image_size`` to models whose
    constructor takes it, then ``model.kwargs`` (which win); drop_path only matters in training.
    """
    kwargs: dict[str, Any] = {}
    if "img_size" in inspect.signature(type(model).__init__).parameters:
        kwargs["img_size"] = run.config.data.image_size
    kwargs.update({k: list(v) if isinstance(v, tuple) else v for k, v in run.config.model.kwargs.items()})
    return kwargs


def head_description(run: Run, model) -> dict[str, Any]:
    from fishscale.model.factory import classifier_name
    head = {"type": run.config.model.head, "module": classifier_name(model)}
    if run.config.model.head == "mlp":
        head.update(hidden=run.config.model.head_hidden, dropout=run.config.model.head_dropout,
                    layers="Linear(features, hidden) -> ReLU -> Dropout -> Linear(hidden, num_classes)",
                    keys=f"{head['module']}.0.* and {head['module']}.3.*")
    return head


def export_config(run: Run, model, classes: RunClasses, weights: Path, eval_results: dict[str, Any]) -> dict[str, Any]:
    data = run.config.data
    size = data.image_size
    return {
        "format": "fishscale-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "architecture": run.config.model.name,
        "timm_kwargs": timm_kwargs(run, model),
        "num_classes": classes.num_classes,
        "head": head_description(run, model),
        "class_names": list(classes.names),
        "class_families": list(classes.families) if classes.families else None,
        "train_class_counts": list(classes.counts),
        "bin_edges": list(classes.bin_edges),
        "bin_names": list(classes.bin_names),
        "image_size": size,
        "mean": list(data.mean),
        "std": list(data.std),
        "pad_value": data.pad_value,
        "preprocess": {
            "resize": f"resize the longer side to {size} keeping the aspect ratio (shorter side rounded "
                      "half up), bilinear with antialiasing",
            "pad": f"then pad to {size}x{size} with value {data.pad_value} (white), image centred, "
                   "the odd pixel of padding at the top/left",
            "normalize": "RGB in [0, 1] (x / 255), then (x - mean) / std per channel",
        },
        # timm-style fields, so timm.data.resolve_data_config(model=...) and label lookup work
        "pretrained_cfg": {"architecture": run.config.model.name, "num_classes": classes.num_classes,
                           "input_size": [3, size, size], "mean": list(data.mean), "std": list(data.std),
                           "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
                           "classifier": head_description(run, model)["module"],
                           "label_names": list(classes.names)},
        "source": {"run": str(run.path), "weights": weights.name, "weights_sha256": _sha256(weights),
                   "loss": run.config.loss.name, "sampler": run.config.sampler.strategy},
        "eval": {split: {k: r.get(k) for k in ("num_images", "top1", "top5", "macro_acc", "macro_f1", "bins")}
                 for split, r in eval_results.items()},
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_card(cfg: dict[str, Any], eval_results: dict[str, Any]) -> str:
    """README.md: what the model is, how to load it, how it scores per frequency bin."""
    name, c = cfg["architecture"], cfg["num_classes"]
    lines = [f"# {name} fine-tuned on {c} species (fishscale)", "",
             f"- architecture: `{name}` (timm), kwargs `{cfg['timm_kwargs']}`",
             f"- classes: {c} (names in `config.json` -> `class_names`, index order = output order)",
             f"- head: {cfg['head']['type']}", f"- training: loss `{cfg['source']['loss']}`, sampler "
             f"`{cfg['source']['sampler']}`, weights `{cfg['source']['weights']}` of run `{cfg['source']['run']}`",
             "", "## Input", "",
             f"RGB, {cfg['image_size']}x{cfg['image_size']}: {cfg['preprocess']['resize']}; "
             f"{cfg['preprocess']['pad']}; {cfg['preprocess']['normalize']} with mean {cfg['mean']} "
             f"and std {cfg['std']}.", "", "## Accuracy", ""]
    if eval_results:
        for split, result in eval_results.items():
            lines += [f"On `{split}` ({result['num_images']} images). Bins by training images per class; "
                      "macro metrics leave out species unseen in training.", "", to_markdown(result)]
    else:
        lines += ["Not evaluated yet: run `fishscale eval RUN --shards shards/test` before exporting.", ""]
    lines += ["## Loading with timm", "", "```python", "import json, timm"]
    if cfg["head"]["type"] == "linear":
        lines += ["", 'cfg = json.load(open("config.json"))',
                  'c = cfg["num_classes"]',
                  'model = timm.create_model(cfg["architecture"], pretrained=True, num_classes=c,',
                  f'    pretrained_cfg_overlay=dict(file="{WEIGHTS_NAME}", num_classes=c), **cfg["timm_kwargs"])',
                  "model.eval()", "```", "",
                  "Keep `num_classes` in the overlay: without it timm discards the trained classifier "
                  f"(the model's {c} classes differ from the pretrained config's) and keeps a random head."]
    else:
        lines += ["import torch.nn as nn", "from safetensors.torch import load_file", "",
                  'cfg = json.load(open("config.json"))',
                  'c, head = cfg["num_classes"], cfg["head"]',
                  'model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=c, **cfg["timm_kwargs"])',
                  "fc = model.get_classifier()",
                  'mlp = nn.Sequential(nn.Linear(fc.in_features, head["hidden"]), nn.ReLU(), '
                  'nn.Dropout(head["dropout"]), nn.Linear(head["hidden"], c))',
                  'parent, _, child = head["module"].rpartition(".")',
                  "setattr(model.get_submodule(parent) if parent else model, child, mlp)",
                  f'model.load_state_dict(load_file("{WEIGHTS_NAME}"))',
                  "model.eval()", "```", "",
                  "The MLP head is not a timm module, so `pretrained=True` with the overlay cannot build it; "
                  "the lines above rebuild it and load every tensor strictly."]
    return "\n".join(lines) + "\n"


def export_run(run_or_checkpoint: str | Path, out: str | Path, checkpoint: str = "best") -> dict[str, Path]:
    """Write model.safetensors, config.json and README.md into `out`; returns their paths."""
    from safetensors.torch import save_file
    run, weights = resolve_run(run_or_checkpoint, checkpoint)
    classes = run.classes()
    model = build_run_model(run, weights, classes.num_classes)   # proves the weights fit the config
    # saved results of exactly these weights, by split (eval also saves <split>-last.json)
    eval_results = {r.get("split", stem): r for stem, r in run.eval_results().items()
                    if r.get("checkpoint", "best") == weights.stem}
    cfg = export_config(run, model, classes, weights, eval_results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().clone() if v.is_floating_point() else v.detach().contiguous().clone()
             for k, v in model.state_dict().items()}
    weights_path = out / WEIGHTS_NAME
    save_file(state, str(weights_path), metadata={"format": "pt", "architecture": cfg["architecture"],
                                                  "num_classes": str(cfg["num_classes"])})
    config_path = out / "config.json"
    config_path.write_text(json.dumps(cfg, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    card_path = out / "README.md"
    card_path.write_text(model_card(cfg, eval_results), encoding="utf-8")
    return {"weights": weights_path, "config": config_path, "card": card_path}


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for model.safetensors, config.json and README.md (created if missing).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which weights of the run folder to export.")
def export_command(run: Path, out: Path, checkpoint: str) -> None:
    """Export RUN's model: weights loadable with plain timm, config.json (architecture, class
    names, image size, preprocessing, normalization) and a model card README.md with the
    per-bin accuracy table from the run's saved eval (`fishscale eval` first)."""
    if out.exists() and not out.is_dir():
        raise FishscaleError(f"{out}: --out exists and is not a folder")
    written = export_run(run, out, checkpoint)
    for path in written.values():
        click.echo(f"wrote {path}", err=True)
