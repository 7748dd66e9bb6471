"""The DeepSpeed side of training: config merge, engine build, precision, weights out.

    ds_config = deepspeed_config(cfg, world_size=4, on_gpu=True)   # JSON of the ZeRO stage + YAML
    engine = build_engine(model, param_groups(model, phase, cfg.optim), ds_config)
    optimizer_step(engine, skip=bad_loss)                          # one micro batch's step()
    weights = full_state_dict(engine, phase_start_weights)         # fp32, every rank, ZeRO-3 gathered

**Config merge.** The base is ``train.deepspeed_config`` or ``configs/deepspeed/zero{stage}.json``
(communication tuning: buckets, overlap, ZeRO-3 prefetch). The YAML owns, and overwrites, what
it also defines: ``train_batch_size`` (= ``train.batch_size``, the global batch),
``train_micro_batch_size_per_gpu`` (= global / (ranks x ``train.grad_accum``)),
``gradient_accumulation_steps``, ``gradient_clipping`` (``train.clip_grad``, null = off),
``zero_optimization.stage`` (``train.zero_stage``), the precision section, and the AdamW
optimizer's lr / betas / weight_decay. Anything else in the JSON is passed through untouched.

**Precision.** ``train.precision: auto`` is bf16 on GPUs and fp32 on the CPU; DeepSpeed keeps fp32
master weights and optimizer state either way. bf16 skips a step whose gradients are not finite
(``bf16.check_grad_overflow``); in fp32 ZeRO 1-3 do so on their own (the gradient norm check).

**Optimizer.** DeepSpeed's AdamW with ``torch_adam: true`` (torch.optim.AdamW, foreach): it works
with every ZeRO stage on the CPU accelerator and needs no compiled op on GPUs. A JSON that sets
``optimizer.params.torch_adam: false`` gets DeepSpeed's FusedAdam (JIT-built, needs nvcc).
Param groups keep their own ``lr``/``weight_decay``; fishscale.train.schedule rescales the lrs.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fishscale.config import REPO_ROOT, Config
from fishscale.errors import FishscaleError

DEEPSPEED_CONFIG_DIR = REPO_ROOT / "configs" / "deepspeed"
PRECISIONS = ("auto", "fp32", "bf16")
ZERO_STAGES = (0, 1, 2, 3)
ADAM_EPS = 1e-8


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """'fp32' or 'bf16' for ``train.precision`` on this device."""
    if precision not in PRECISIONS:
        raise FishscaleError(f"config: train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if on_gpu else "fp32"
    return precision


def base_config_path(cfg: Config) -> Path | None:
    """The DeepSpeed JSON this run starts from (None: no file, built-in defaults)."""
    if cfg.train.deepspeed_config:
        path = Path(cfg.train.deepspeed_config)
        if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
            path = REPO_ROOT / path
        if not path.is_file():
            raise FishscaleError(f"config: train.deepspeed_config {cfg.train.deepspeed_config!r}: file not found")
        return path
    path = DEEPSPEED_CONFIG_DIR / f"zero{cfg.train.zero_stage}.json"
    return path if path.is_file() else None


def read_base_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FishscaleError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise FishscaleError(f"{path}: a DeepSpeed config must be a JSON object")
    return data


def micro_batch_size(global_batch: int, world_size: int, grad_accum: int) -> int:
    """Per-rank micro batch: global = micro x ranks x accumulation, all whole numbers."""
    if grad_accum < 1:
        raise FishscaleError(f"config: train.grad_accum must be >= 1, got {grad_accum}")
    if global_batch < 1 or global_batch % (world_size * grad_accum):
        raise FishscaleError(f"config: train.batch_size {global_batch} (the global batch) must be a multiple of "
                             f"ranks x train.grad_accum = {world_size} x {grad_accum}")
    return global_batch // (world_size * grad_accum)


def deepspeed_config(cfg: Config, world_size: int, on_gpu: bool,
                     load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed config dict for this run: the stage's JSON with the YAML's values on top."""
    if cfg.train.zero_stage not in ZERO_STAGES:
        raise FishscaleError(f"config: train.zero_stage must be one of 0, 1, 2, 3, got {cfg.train.zero_stage}")
    merged = copy.deepcopy(read_base_config(base_config_path(cfg)))
    merged["train_batch_size"] = cfg.train.batch_size
    merged["train_micro_batch_size_per_gpu"] = micro_batch_size(cfg.train.batch_size, world_size,
                                                                cfg.train.grad_accum)
    merged["gradient_accumulation_steps"] = cfg.train.grad_accum
    merged["gradient_clipping"] = float(cfg.train.clip_grad or 0.0)
    merged.setdefault("zero_optimization", {})["stage"] = cfg.train.zero_stage
    precision = resolve_precision(cfg.train.precision, on_gpu)
    merged.pop("fp16", None)
    if precision == "bf16":
        merged["bf16"] = {**merged.get("bf16", {}), "enabled": True, "check_grad_overflow": True}
    else:
        merged.pop("bf16", None)
    optimizer = merged.setdefault("optimizer", {})
    optimizer["type"] = "AdamW"
    params = optimizer.setdefault("params", {})
    params.update(lr=cfg.phases[0].lr, betas=list(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    params.setdefault("eps", ADAM_EPS)
    params.setdefault("torch_adam", True)
    merged.setdefault("steps_per_print", 2**31 - 1)     # fishscale prints its own progress
    merged.setdefault("wall_clock_breakdown", False)
    if load_universal:
        merged.setdefault("checkpoint", {})["load_universal"] = True
    return merged


def _quiet_deepspeed() -> None:
    from deepspeed.utils import logger
    logger.setLevel(logging.WARNING)


def build_engine(model: nn.Module, groups: list[dict[str, Any]], ds_config: dict[str, Any]):
    """deepspeed.initialize over the trainable param groups (empty groups dropped)."""
    import deepspeed
    _quiet_deepspeed()
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise FishscaleError("no trainable parameters in this phase (is everything frozen?)")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    return engine


def optimizer_param_groups(engine) -> list[dict[str, Any]]:
    """The param groups whose ``lr`` the schedule sets (DeepSpeed's ZeRO wrappers expose them too)."""
    return engine.optimizer.param_groups


def optimizer_step(engine, skip: bool = False) -> None:
    """engine.step() for one micro batch; at the boundary of a bad window, no update.

    The caller has back-propagated a NaN loss for the bad micro batch, so the gradients are
    not finite: ZeRO 1-3 (and bf16) see that and skip the update themselves. Stage 0 in fp32
    runs the plain torch optimizer, which would apply NaNs, so its step() is stood down here.
    """
    if not (skip and engine.zero_optimization_stage() == 0 and engine.is_gradient_accumulation_boundary()):
        engine.step()
        return
    optimizer = engine.optimizer
    real_step = optimizer.step
    optimizer.step = lambda *args, **kwargs: None
    try:
        engine.step()          # keeps DeepSpeed's micro-step accounting and zeroes the gradients
    finally:
        optimizer.step = real_step
    engine.skipped_steps += 1


def full_state_dict(engine, phase_start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model's state dict in fp32 on the CPU, on every rank (a collective call).

    Trainable parameters come from DeepSpeed's fp32 master copy (assembled from the ZeRO
    partitions); frozen ones from `phase_start` (they did not change, and under bf16 the engine
    only holds a rounded copy); buffers from the module (ZeRO-3 does not partition them).
    """
    from deepspeed.utils import safe_get_full_fp32_param
    module = engine.module
    out: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            out[name] = phase_start[name].detach().clone()
            continue
        full = safe_get_full_fp32_param(param)
        if full is None:               # ZeRO 0 in fp32: the module holds the master weights
            full = param.detach()
        out[name] = full.detach().to("cpu", torch.float32).clone()
    for name, buffer in module.named_buffers():
        if name in phase_start:        # persistent buffers only (what state_dict() holds)
            out[name] = buffer.detach().to("cpu", phase_start[name].dtype).clone()
    missing = [k for k in phase_start if k not in out]
    if missing:
        raise FishscaleError(f"internal: consolidated weights miss {missing[:3]}")
    return {k: out[k] for k in phase_start}


def destroy_engine(engine) -> None:
    """Release hooks and partitions (ZeRO-3) before the next phase builds its own engine."""
    if hasattr(engine, "destroy"):
        engine.destroy()
