"""Model factory: any timm model, local pretrained weights, optional MLP head, optimizer groups.

    model = build_model(cfg.model, num_classes=len(manifest.class_names), image_size=cfg.data.image_size)
    set_backbone_trainable(model, not phase.freeze_backbone)
    optimizer = torch.optim.AdamW(param_groups(model, phase, cfg.optim), betas=cfg.optim.betas)

The model stays the plain timm module: with the linear head its ``state_dict()`` is exactly
what ``timm.create_model(name, num_classes=C)`` loads. The MLP head replaces the module that
``get_classifier()`` returns (``head.fc`` for Swin), so its keys are ``<classifier>.0.*`` and
``<classifier>.3.*``; ``get_classifier()`` and ``reset_classifier()`` keep working.

Pretrained weights (``model.pretrained``):
  * ``file``: ``model.pretrained_file`` (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
    ``torch.load(weights_only=True)``, so a pickle cannot run code) through timm's
    ``pretrained_cfg_overlay=dict(file=...)`` and ``load_pretrained`` with the architecture's own
    checkpoint filter (Swin: original-layout keys, relative-position tables resized to the
    window). Classifier tensors whose shape differs from this model's are dropped and stay
    freshly initialized; every other tensor must load exactly, or FishscaleError.
  * ``hub``: the weights timm's ``pretrained=True`` would fetch (Hugging Face hub / URL; needs
    the network), loaded the same way, with the same head and backbone rules.
  * ``none``: random init.

A tiny Swin for tests and the CPU quickstart (0.7 M parameters, 64 px images, 192 features)::

    model.kwargs: {embed_dim: 24, depths: [1, 1, 1, 1], num_heads: [1, 2, 3, 6], window_size: 4}
    data.image_size: 64

Patch 4 gives 16x16 tokens, halved by each of the 3 patch merges (16, 8, 4, 2); a window of 4
divides 16, 8 and 4 (timm pads other grids to a window multiple, which works but wastes compute)
and timm shrinks it to the 2x2 grid of the last stage. Each stage's width ``embed_dim * 2**i``
must divide by its ``num_heads[i]``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from timm.models import group_parameters, load_pretrained
from timm.optim import auto_group_layers
from torch import nn

from fishscale.config import ModelConfig, OptimConfig, PhaseConfig
from fishscale.errors import FishscaleError

PRETRAINED_SOURCES = ("none", "hub", "file")
HEAD_KINDS = ("linear", "mlp")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

TINY_SWIN_KWARGS: dict[str, Any] = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 6), window_size=4)
"""Swin kwargs for CPU tests and the quickstart at image size 64 (see the module docstring)."""


def build_model(model_cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """Create ``model_cfg.name`` from timm with ``num_classes`` outputs, head and weights per config.

    ``image_size`` is passed as ``img_size`` to models that take it (Swin, ViT, ...);
    ``model_cfg.kwargs`` go to ``timm.create_model`` last, so they win over both.
    """
    _check_model_cfg(model_cfg, num_classes)
    weights = _weights_file(model_cfg) if model_cfg.pretrained == "file" else None
    model = _create(model_cfg, num_classes, image_size, weights)
    if model_cfg.head == "mlp":
        install_mlp_head(model, num_classes, model_cfg.head_hidden, model_cfg.head_dropout)
    if model_cfg.pretrained != "none":
        # after the head swap, so that an MLP-head checkpoint loads its head too
        load_pretrained_weights(model, weights)
    return model


def _check_model_cfg(model_cfg: ModelConfig, num_classes: int) -> None:
    if num_classes < 1:
        raise FishscaleError(f"model: num_classes must be >= 1, got {num_classes}")
    if model_cfg.pretrained not in PRETRAINED_SOURCES:
        raise FishscaleError(
            f"config: model.pretrained must be one of {', '.join(PRETRAINED_SOURCES)}, got "
            f"{model_cfg.pretrained!r} (for a local file: model.pretrained=file model.pretrained_file=PATH)")
    if model_cfg.head not in HEAD_KINDS:
        raise FishscaleError(f"config: model.head must be one of {', '.join(HEAD_KINDS)}, got {model_cfg.head!r}")
    if model_cfg.head == "mlp" and model_cfg.head_hidden < 1:
        raise FishscaleError(f"config: model.head_hidden must be >= 1, got {model_cfg.head_hidden}")
    if not 0.0 <= model_cfg.head_dropout < 1.0:
        raise FishscaleError(f"config: model.head_dropout must be in [0, 1), got {model_cfg.head_dropout}")
    if not 0.0 <= model_cfg.drop_path_rate < 1.0:
        raise FishscaleError(f"config: model.drop_path_rate must be in [0, 1), got {model_cfg.drop_path_rate}")
    if not isinstance(model_cfg.kwargs, dict):
        raise FishscaleError(f"config: model.kwargs must be a mapping, got {model_cfg.kwargs!r}")
    if ":" not in model_cfg.name and not timm.is_model(model_cfg.name):   # "hf-hub:org/name" is resolved by timm
        close = timm.list_models(f"*{model_cfg.name.split('_')[0]}*")[:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise FishscaleError(f"config: model.name {model_cfg.name!r} is not a timm model{hint}")


def _weights_file(model_cfg: ModelConfig) -> Path:
    if not model_cfg.pretrained_file:
        raise FishscaleError("config: model.pretrained=file needs model.pretrained_file=PATH")
    path = Path(model_cfg.pretrained_file).expanduser()
    if not path.is_file():
        raise FishscaleError(f"{path}: model.pretrained_file not found")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise FishscaleError(
            f"{path}: model.pretrained_file must end in {', '.join(WEIGHT_SUFFIXES)} (a state dict)")
    return path


def _create(model_cfg: ModelConfig, num_classes: int, image_size: int, weights: Path | None) -> nn.Module:
    """timm.create_model without weights, retried without img_size for models (CNNs) that lack it."""
    kwargs: dict[str, Any] = dict(num_classes=num_classes, drop_path_rate=model_cfg.drop_path_rate)
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    kwargs.update(model_cfg.kwargs)
    try:
        return _create_or_explain(model_cfg.name, {"img_size": image_size, **kwargs})
    except TypeError as e:
        if "img_size" not in str(e) or "img_size" in model_cfg.kwargs:
            raise FishscaleError(f"config: model.kwargs {model_cfg.kwargs!r} rejected by "
                                 f"{model_cfg.name}: {e}") from None
    try:
        return _create_or_explain(model_cfg.name, kwargs)
    except TypeError as e:
        raise FishscaleError(f"config: model.kwargs {model_cfg.kwargs!r} / model.drop_path_rate rejected by "
                             f"{model_cfg.name}: {e}") from None


def _create_or_explain(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError:
        raise   # an argument the model does not take: the caller decides
    except Exception as e:  # noqa: BLE001 -- bad shapes surface as Assertion/Index/Value/RuntimeError
        if ":" in name:     # "hf-hub:org/name" fetches its config from the network
            raise FishscaleError(f"config: model.name {name!r}: cannot resolve ({type(e).__name__}: {e}); "
                                 f"offline, use a plain timm name with model.pretrained=file") from None
        raise FishscaleError(f"config: model {name} with {kwargs} is not a valid architecture "
                             f"(check model.kwargs): {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------- head

def classifier_name(model: nn.Module) -> str:
    """Qualified name of the module ``model.get_classifier()`` returns (``head.fc`` for Swin)."""
    if not hasattr(model, "get_classifier"):
        raise FishscaleError(f"model: {type(model).__name__} has no get_classifier() (not a timm classifier)")
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier and name:
            return name
    raise FishscaleError(f"model: {type(model).__name__}.get_classifier() is not a submodule")


def install_mlp_head(model: nn.Module, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    """Replace the linear classifier with Linear(F->hidden)-ReLU-Dropout-Linear(hidden->C), in place."""
    name = classifier_name(model)
    linear = model.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise FishscaleError(f"config: model.head=mlp needs a Linear classifier; {name} of "
                             f"{type(model).__name__} is a {type(linear).__name__}")
    mlp = nn.Sequential(
        nn.Linear(linear.in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes))
    mlp.to(device=linear.weight.device, dtype=linear.weight.dtype)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, mlp)
    return mlp


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier (linear or MLP head)."""
    return list(model.get_classifier().parameters())


def head_parameter_names(model: nn.Module) -> set[str]:
    prefix = classifier_name(model) + "."
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (False) or unfreeze (True) every parameter except the head's; the head stays trainable."""
    head = {id(p) for p in head_parameters(model)}
    for param in model.parameters():
        param.requires_grad_(trainable or id(param) in head)


# ---------------------------------------------------------------- pretrained weights

def load_pretrained_weights(model: nn.Module, path: Path | None) -> list[str]:
    """Load pretrained weights into ``model`` with timm's ``load_pretrained``; returns the head keys
    left freshly initialized.

    ``path``: a local state dict (set as ``file`` in ``model.pretrained_cfg``, as
    ``pretrained_cfg_overlay`` does; ``.pth`` read with ``torch.load(weights_only=True)``);
    None: the model's hub / URL weights. Backbone tensors must all load; head tensors of another
    shape are dropped.
    """
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if path is not None:
        model.pretrained_cfg["file"] = str(path)
        model.pretrained_cfg.pop("source", None)   # source=hf-hub would make timm ignore the file
    # timm pops the classifier when num_classes differs from the cfg's; we decide by shape instead
    model.pretrained_cfg["num_classes"] = getattr(model, "num_classes", None)
    head_keys = {k for k in model.state_dict() if k.startswith(classifier_name(model) + ".")}
    dropped: list[str] = []
    arch_filter = _arch_checkpoint_filter(model)

    def keep_matching(state_dict: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
        if arch_filter is not None:
            state_dict = arch_filter(state_dict, net)
        return _drop_mismatched_head(state_dict, net, head_keys, dropped)

    result: dict[str, list[str]] = {}
    handle = model.register_load_state_dict_post_hook(
        lambda module, keys: result.update(missing=list(keys.missing_keys), unexpected=list(keys.unexpected_keys)))
    try:
        load_pretrained(model, num_classes=model.pretrained_cfg["num_classes"], filter_fn=keep_matching, strict=False)
    except Exception as e:  # noqa: BLE001 -- unpickling refusals, shape mismatches, network errors
        raise _load_error(model, path, e) from None
    finally:
        handle.remove()
    _check_exact_load(path or "model.pretrained=hub", result, set(dropped) | head_keys)
    return sorted(k for k in head_keys if k in set(result.get("missing", [])))


def _load_error(model: nn.Module, path: Path | None, error: Exception) -> FishscaleError:
    what = f"{type(error).__name__}: {error}"
    if path is not None:
        return FishscaleError(f"{path}: cannot load as pretrained weights for {type(model).__name__}: {what}")
    name = model.pretrained_cfg.get("architecture", type(model).__name__)
    return FishscaleError(
        f"model.pretrained=hub: could not fetch pretrained weights for {name!r} ({what}). "
        f"Offline machines: download the weights elsewhere and use model.pretrained=file "
        f"model.pretrained_file=PATH")


def _arch_checkpoint_filter(model: nn.Module) -> Callable | None:
    """The model module's ``checkpoint_filter_fn`` (timm's per-architecture key/shape converter)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _drop_mismatched_head(state_dict: dict[str, torch.Tensor], model: nn.Module, head_keys: set[str],
                          dropped: list[str]) -> dict[str, torch.Tensor]:
    """Drop classifier tensors that don't fit this head (other class count, linear vs MLP)."""
    own = model.state_dict()
    head_prefix = classifier_name(model) + "."
    out = {}
    for key, value in state_dict.items():
        is_head = key in head_keys or key.startswith(head_prefix)
        if is_head and (key not in own or own[key].shape != value.shape):
            dropped.append(key)
            continue
        out[key] = value
    return out


def _check_exact_load(path: Path | str, result: dict[str, list[str]], head_keys: set[str]) -> None:
    missing = [k for k in result.get("missing", []) if k not in head_keys]
    unexpected = [k for k in result.get("unexpected", []) if k not in head_keys]
    if missing or unexpected:
        raise FishscaleError(
            f"{path}: backbone does not match the model: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]} "
            f"(check model.name and model.kwargs)")


# ---------------------------------------------------------------- optimizer groups

def param_groups(model: nn.Module, phase: PhaseConfig, optim: OptimConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the trainable parameters.

    Head: lr ``phase.lr``; backbone: ``phase.backbone_lr`` (None = ``phase.lr``), times the
    layer scale ``optim.layer_decay ** (depth from the top)`` when layer decay is set (timm's
    layer grouping: ``group_matcher`` or ``auto_group_layers``). Weight decay
    ``optim.weight_decay``, but 0 for tensors with ndim <= 1 (norms, biases) and for
    ``model.no_weight_decay()`` (Swin's relative_position_bias_table, ViT's pos_embed).

    Each group has ``name`` (``head_decay``, ``backbone_no_decay``, ``backbone_L3_decay``, ...),
    ``lr`` (the peak lr, layer scale already applied) and ``weight_decay``; with layer decay also
    ``lr_scale`` (informational: do not multiply ``lr`` by it again, as timm's schedulers would).
    """
    _check_optim(phase, optim)
    backbone_lr = phase.backbone_lr if phase.backbone_lr is not None else phase.lr
    head_names = head_parameter_names(model)
    no_decay = _no_weight_decay_names(model)
    layer_of, top = _layer_ids(model, head_names) if optim.layer_decay is not None else ({}, 0)
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and name not in no_decay
        suffix = "decay" if decay else "no_decay"
        if name in head_names:
            key, lr = f"head_{suffix}", phase.lr
            scale = None if optim.layer_decay is None else 1.0
        elif optim.layer_decay is None:
            key, lr, scale = f"backbone_{suffix}", backbone_lr, None
        else:
            layer = layer_of[name]
            scale = optim.layer_decay ** (top - layer)
            key, lr = f"backbone_L{layer}_{suffix}", backbone_lr * scale
        group = groups.setdefault(key, dict(name=key, params=[], lr=lr,
                                            weight_decay=optim.weight_decay if decay else 0.0))
        if scale is not None:
            group["lr_scale"] = scale
        group["params"].append(param)
    return list(groups.values())


def _check_optim(phase: PhaseConfig, optim: OptimConfig) -> None:
    if phase.lr <= 0 or (phase.backbone_lr is not None and phase.backbone_lr < 0):
        raise FishscaleError(f"config: phase {phase.name!r}: lr must be > 0 and backbone_lr >= 0, "
                             f"got lr={phase.lr}, backbone_lr={phase.backbone_lr}")
    if optim.weight_decay < 0:
        raise FishscaleError(f"config: optim.weight_decay must be >= 0, got {optim.weight_decay}")
    if optim.layer_decay is not None and not 0.0 < optim.layer_decay <= 1.0:
        raise FishscaleError(f"config: optim.layer_decay must be in (0, 1] or null, got {optim.layer_decay}")


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names from the model's ``no_weight_decay()`` (may hold module-level names or patterns)."""
    declared = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    names = set()
    for name, _ in model.named_parameters():
        if name in declared or any(name.startswith(d + ".") or name.endswith("." + d) for d in declared):
            names.add(name)
    return names


def _layer_ids(model: nn.Module, head_names: set[str]) -> tuple[dict[str, int], int]:
    """Backbone depth per parameter (0 = stem) and the head's id, via timm's grouping."""
    if hasattr(model, "group_matcher"):
        layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    else:
        layer_of = auto_group_layers(model)
    backbone_top = max((layer_of[n] for n, _ in model.named_parameters() if n not in head_names), default=0)
    return {n: int(i) for n, i in layer_of.items()}, int(backbone_top) + 1
