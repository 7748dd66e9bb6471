"""Reading a training run folder: config, classes, weights, metrics log, eval results.

A run folder (written by `fishscale train`) holds::

    config.yaml        resolved Config
    classes.json       class names, train counts, bin edges/names
    best.safetensors   fp32 state dict of the model (best val metric); last.safetensors likewise
    metrics.jsonl      one JSON object per line, "kind": train | val | summary
    summary.json       final numbers
    eval/<split>.json  written by `fishscale eval` (+ <split>.predictions.csv)

    run, weights = resolve_run("runs/quickstart")            # or ".../last.safetensors"
    model = build_run_model(run, weights)                     # eval mode, no download
    classes = run.classes()                                    # names, counts, bins

Shared by eval, report and export; nothing here writes to the run folder.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fishscale.data.bins import DEFAULT_BIN_EDGES, check_edges
from fishscale.config import Config, load_config
from fishscale.errors import FishscaleError

CONFIG_NAME = "config.yaml"
CLASSES_NAME = "classes.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
EVAL_DIR = "eval"
CHECKPOINTS = ("best", "last")


@dataclass
class RunClasses:
    """The class index a run was trained on (index order = label)."""
    names: list[str]
    counts: list[int]                 # training images per class
    bin_edges: list[int]
    bin_names: list[str]
    families: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)


@dataclass
class Run:
    path: Path
    config: Config

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def weights(self, checkpoint: str = "best") -> Path:
        if checkpoint not in CHECKPOINTS:
            raise FishscaleError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
        path = self.path / f"{checkpoint}.safetensors"
        if not path.is_file():
            raise FishscaleError(f"{path}: weights not found (has training written a checkpoint yet?)")
        return path

    def train_manifest_dir(self) -> Path:
        shards = Path(self.config.data.shards)
        if not shards.is_absolute():
            # a relative shards path in the resolved config is relative to where training ran;
            # try that first, then relative to the run folder's parent
            shards = shards if shards.exists() else self.path.parent / shards
        return shards / self.config.data.train_split

    def classes(self) -> RunClasses:
        return read_classes(self)

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path / METRICS_NAME)

    def summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY_NAME
        return _read_json(path) if path.is_file() else None

    def eval_results(self) -> dict[str, dict[str, Any]]:
        """`fishscale eval` results saved in the run: {file stem: result}, e.g. {"test": {...}}."""
        if not self.eval_dir.is_dir():
            return {}
        results = {p.stem: _read_json(p) for p in sorted(self.eval_dir.glob("*.json"))}
        # other JSON files a user drops here are not eval results
        return {stem: r for stem, r in results.items() if isinstance(r, dict) and "bins" in r and "bin_names" in r}


def load_run(path: str | Path) -> Run:
    """A run folder (must hold config.yaml)."""
    path = Path(path)
    if not path.exists():
        raise FishscaleError(f"{path}: run folder not found")
    if not path.is_dir():
        raise FishscaleError(f"{path}: not a run folder (expected a folder holding {CONFIG_NAME})")
    if not (path / CONFIG_NAME).is_file():
        raise FishscaleError(f"{path}: no {CONFIG_NAME} here, so not a fishscale run folder")
    return Run(path=path, config=load_config(path / CONFIG_NAME))


def resolve_run(run_or_checkpoint: str | Path, checkpoint: str = "best") -> tuple[Run, Path]:
    """(run, weights file) from a run folder (+ best|last) or a .safetensors file inside one."""
    path = Path(run_or_checkpoint)
    if path.is_file() or path.suffix == ".safetensors":
        if not path.is_file():
            raise FishscaleError(f"{path}: checkpoint file not found")
        if path.suffix != ".safetensors":
            raise FishscaleError(f"{path}: expected a run folder or a .safetensors file "
                                 "(DeepSpeed checkpoints/ are for resuming training, not for eval)")
        return load_run(path.parent), path
    run = load_run(path)
    return run, run.weights(checkpoint)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl as a list of dicts; a torn last line (training still writing) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise FishscaleError(f"{path}:{number}: not valid JSON: {e}") from None
        if not isinstance(record, dict):
            raise FishscaleError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FishscaleError(f"{path}: not valid JSON: {e}") from None


def _pick(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in data:
            return data[key]
    return None


def read_classes(run: Run) -> RunClasses:
    """classes.json of the run if present (self-contained), else the train manifest."""
    path = run.path / CLASSES_NAME
    if path.is_file():
        data = _read_json(path)
        if isinstance(data, dict):
            names = _pick(data, ("class_names", "names", "classes"))
            counts = _pick(data, ("train_class_counts", "train_counts", "counts"))
            if names is not None and counts is not None:
                if len(names) != len(counts):
                    raise FishscaleError(f"{path}: {len(names)} class names but {len(counts)} counts")
                edges, bin_names = check_edges(data.get("bin_edges") or DEFAULT_BIN_EDGES, data.get("bin_names"))
                families = _pick(data, ("class_families", "families"))
                return RunClasses(list(names), [int(c) for c in counts], edges, bin_names, families)
    return classes_from_manifest(run.train_manifest_dir())


def classes_from_manifest(folder: str | Path) -> RunClasses:
    from fishscale.shards.manifest import load_manifest
    m = load_manifest(folder)
    return RunClasses(list(m.class_names), [int(c) for c in m.train_class_counts], list(m.bin_edges),
                      list(m.bin_names), list(m.class_families))


def eval_config(config: Config) -> Config:
    """The run's config with pretrained weights off: eval loads its own weights, never downloads."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, pretrained="none",
                                                                 pretrained_file=None))


def load_weights(path: str | Path) -> dict[str, Any]:
    """A safetensors state dict (no pickle), with a clean error for a missing or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise FishscaleError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FishscaleError(f"{path}: cannot read safetensors weights: {e}") from None
    # a state dict saved from a DDP/DeepSpeed wrapper carries "module." on every key
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def build_run_model(run: Run, weights: str | Path, num_classes: int | None = None):
    """The run's model (fishscale.model.factory.build_model) with `weights` loaded strictly, eval mode."""
    from fishscale.model.factory import build_model
    cfg = eval_config(run.config)
    num_classes = num_classes if num_classes is not None else run.classes().num_classes
    model = build_model(cfg.model, num_classes, cfg.data.image_size)
    state = load_weights(weights)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:   # shape mismatch: another architecture or class count
        raise FishscaleError(f"{weights}: weights do not fit model {cfg.model.name} with {num_classes} classes: "
                             f"{str(e).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise FishscaleError(f"{weights}: weights do not fit model {cfg.model.name} with {num_classes} classes "
                             f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    return model.eval()
