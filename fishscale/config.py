"""The one config object: YAML defaults, command-line overrides, unknown keys rejected.

    cfg = load_config("configs/quickstart.yaml", ["phases.1.epochs=3", "loss.name=ce"])
    cfg.model.name, cfg.phases[0].epochs, cfg.to_dict()

Overrides are ``dotted.key=value``; the value is parsed as YAML (``1e-3``, ``true``,
``[1, 2]``, ``null``). Every section is a dataclass, so a typo is an error naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, get_type_hints

import yaml

from fishscale.errors import FishscaleError

# the checkout (or the editable install) that holds configs/: the built-in configs resolve against it
REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    shards: str = "shards"            # folder holding <split>/manifest.json
    train_split: str = "train"
    val_split: str = "val"
    backend: str = "dali"             # dali | torch
    device: str = "cpu"               # cpu | gpu  (dali decoder: cpu or mixed)
    image_size: int = 224             # S: longer side resized to S, padded to S x S
    num_workers: int = 2
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pad_value: int = 255              # white, like fish-vista's backgrounds


@dataclass
class AugmentConfig:
    rotate_prob: float = 0.5
    rotate_degrees: float = 15.0      # uniform in [-d, d], on the padded square, white fill
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    color_jitter_prob: float = 0.8
    brightness: float = 0.2           # factor in [1-b, 1+b]
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02                 # fraction of a full turn, in [-h, h]
    sharpness_prob: float = 0.3
    sharpness: float = 0.5            # factor in [1-s, 1+s]; <1 blurs, >1 sharpens


@dataclass
class SamplerConfig:
    strategy: str = "instance"        # instance | sqrt | balanced | repeat-factor | progressive
    epoch_length: int | None = None   # samples per epoch; None = the split's size
    window_shards: int = 4            # shards read together; shuffled within the window
    repeat_threshold: float = 0.1     # repeat-factor t (fraction of images)
    progressive_epochs: int | None = None   # epochs to go instance -> balanced; None = all


@dataclass
class ModelConfig:
    name: str = "swin_tiny_patch4_window7_224"
    pretrained: str = "none"          # none | hub | file
    pretrained_file: str | None = None
    head: str = "linear"              # linear | mlp
    head_hidden: int = 256
    head_dropout: float = 0.5
    drop_path_rate: float = 0.1
    kwargs: dict[str, Any] = field(default_factory=dict)   # passed to timm.create_model


@dataclass
class LossConfig:
    name: str = "focal"               # focal | ce | logit-adjusted | ldam
    gamma: float = 2.0
    alpha: str = "none"               # none | fishvista | effective-number
    beta: float = 0.999               # effective-number beta
    label_smoothing: float = 0.0
    class_weights: str = "none"       # ce: none | fishvista | effective-number
    tau: float = 1.0                  # logit-adjusted
    ldam_max_margin: float = 0.5
    ldam_scale: float = 1.0          # 30 in Cao et al. assumes a cosine (normalized) head; timm heads are linear
    drw_epoch: int | None = None      # ldam: epoch from which class re-weighting starts


@dataclass
class PhaseConfig:
    name: str = "full"
    epochs: int = 1
    freeze_backbone: bool = False
    lr: float = 1e-3                  # head learning rate
    backbone_lr: float | None = None  # None = lr


@dataclass
class OptimConfig:
    name: str = "adamw"
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float | None = None  # layer-wise lr decay for the backbone
    warmup_steps: int = 0             # per phase
    min_lr_ratio: float = 0.01        # cosine floor as a fraction of the peak


@dataclass
class TrainConfig:
    out: str = ""                     # the run folder (required: no default place to write)
    seed: int = 0
    batch_size: int = 32              # GLOBAL batch: micro x ranks x grad accumulation
    grad_accum: int = 1
    precision: str = "auto"           # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    zero_stage: int = 2
    deepspeed_config: str | None = None   # default: configs/deepspeed/zero{stage}.json
    clip_grad: float | None = 1.0
    checkpoint_every_steps: int = 0   # 0 = only at epoch ends
    keep_checkpoints: int = 3         # newest checkpoints kept; older ones are deleted
    max_nonfinite_steps: int = 5      # consecutive non-finite losses before stopping
    best_metric: str = "macro_acc"
    log_every_steps: int = 10
    max_steps_per_epoch: int | None = None


@dataclass
class EvalConfig:
    batch_size: int = 64
    bin_edges: tuple[int, ...] = (10, 100, 500)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys by their dotted name."""
    if not isinstance(data, dict):
        raise FishscaleError(f"config: {where or 'top level'} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise FishscaleError(f"config: unknown key '{key}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(hints[name], value, key)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if hint == list[PhaseConfig]:
        if not isinstance(value, list) or not value:
            raise FishscaleError(f"config: '{key}' must be a non-empty list of phases")
        return [_build(PhaseConfig, v, f"{key}[{i}]") for i, v in enumerate(value)]
    origin = getattr(hint, "__origin__", None)
    text = str(hint)
    if value is None:
        if "None" not in text:
            raise FishscaleError(f"config: '{key}' may not be null")
        return None
    if origin is tuple or text.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise FishscaleError(f"config: '{key}' must be a list, got {value!r}")
        return tuple(value)
    for typ in (bool, int, float, str):
        if hint is typ or text in (f"{typ.__name__} | None", f"typing.Optional[{typ.__name__}]"):
            return _scalar(typ, value, key)
    return value


def _scalar(typ: type, value: Any, key: str) -> Any:
    if typ is bool:
        if not isinstance(value, bool):
            raise FishscaleError(f"config: '{key}' must be true or false, got {value!r}")
        return value
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):
        try:
            return float(value)   # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ is str and isinstance(value, str):
        return value
    raise FishscaleError(f"config: '{key}' must be {typ.__name__}, got {value!r}")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise FishscaleError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        parts = dotted.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise FishscaleError(f"override {item!r}: no list item {part!r} in '{'.'.join(parts[:i])}'")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise FishscaleError(f"override {item!r}: '{'.'.join(parts[:i + 1])}' is not a section")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise FishscaleError(f"override {item!r}: no list item {last!r}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data or {}, "")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (safe_load), apply overrides, validate into a Config."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FishscaleError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise FishscaleError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise FishscaleError(f"{path}: top level must be a mapping")
    # overrides address the full tree, so start from the defaults merged with the file
    full = _merge(Config().to_dict(), data)
    cfg = config_from_dict(apply_overrides(full, overrides))
    check_ranges(cfg)
    return cfg


def check_ranges(cfg: Config) -> None:
    """Values of the right type but outside what they can mean fail here, naming the key, instead
    of late (an eval batch of 0 after the first epoch) or never (a hue shift of 3 turns)."""
    def need(ok: bool, key: str, value: Any, what: str) -> None:
        if not ok:
            raise FishscaleError(f"config: '{key}' must be {what}, got {value!r}")

    for key in ("train.batch_size", "train.grad_accum", "eval.batch_size", "data.image_size"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        need(value >= 1, key, value, ">= 1")
    need(cfg.data.num_workers >= 0, "data.num_workers", cfg.data.num_workers, ">= 0 (0: load in the main process)")
    need(0 <= cfg.data.pad_value <= 255, "data.pad_value", cfg.data.pad_value, "a pixel value in 0..255")
    need(len(cfg.data.mean) == 3, "data.mean", list(cfg.data.mean), "3 values (R, G, B)")
    need(len(cfg.data.std) == 3 and all(v > 0 for v in cfg.data.std), "data.std", list(cfg.data.std),
         "3 values (R, G, B), each > 0")
    for name in ("rotate_prob", "hflip_prob", "vflip_prob", "color_jitter_prob", "sharpness_prob"):
        value = getattr(cfg.augment, name)
        need(0.0 <= value <= 1.0, f"augment.{name}", value, "a probability in [0, 1]")
    for name in ("brightness", "contrast", "saturation", "sharpness"):
        value = getattr(cfg.augment, name)
        need(0.0 <= value <= 1.0, f"augment.{name}", value, "in [0, 1] (a factor in [1 - v, 1 + v])")
    need(0.0 <= cfg.augment.hue <= 0.5, "augment.hue", cfg.augment.hue, "in [0, 0.5] (a fraction of a full turn)")
    need(0.0 <= cfg.augment.rotate_degrees <= 180.0, "augment.rotate_degrees", cfg.augment.rotate_degrees,
         "in [0, 180]")
    need(0.0 <= cfg.optim.min_lr_ratio <= 1.0, "optim.min_lr_ratio", cfg.optim.min_lr_ratio,
         "in [0, 1] (the cosine floor as a fraction of the peak)")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", cfg.optim.warmup_steps, ">= 0")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", cfg.optim.weight_decay, ">= 0")
    need(cfg.train.clip_grad is None or cfg.train.clip_grad > 0, "train.clip_grad", cfg.train.clip_grad,
         "> 0, or null for no clipping")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out
