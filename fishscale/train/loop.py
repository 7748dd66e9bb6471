"""Fine-tune a timm model under a DeepSpeed ZeRO engine: phases, validation, checkpoints, resume.

One process (in-process, a DeepSpeed engine over a world of one; gloo on the CPU)::

    fishscale train --config configs/quickstart.yaml
    fishscale train --config configs/quickstart.yaml train.zero_stage=3 optim.warmup_steps=20

One node, several ranks (GPUs; on the CPU each rank is a process)::

    fishscale train --config configs/fishvista_swin_t.yaml --nproc 8
    deepspeed --num_gpus 8 launch/train.py --config configs/fishvista_swin_t.yaml

Several nodes, hostfile (``launch/hostfile.example``; passwordless ssh between nodes)::

    deepspeed --hostfile launch/hostfile --num_nodes 2 --num_gpus 8 launch/train.py --config configs/fishvista_swin_b.yaml

Nodes started by hand (no ssh; the same command on each node, I = 0..N-1; the hostfile lists the
nodes, and node 0's address is the master)::

    deepspeed --hostfile launch/hostfile --no_ssh --node_rank I --master_addr 10.0.0.1 --master_port 29500 \\
        launch/train.py --config configs/fishvista_swin_b.yaml

SLURM: ``sbatch launch/slurm.sbatch configs/fishvista_swin_b.yaml`` (one srun task per rank; a
preempted job checkpoints and requeues itself). A run folder that holds a checkpoint resumes where it
stopped (``--resume`` insists), if it is the same run (fishscale.train.identity); SIGTERM / SIGUSR1
stop every rank at the next step with a checkpoint and exit 75 (fishscale.train.preempt).

The loop, phase by phase: build the model (weights carried from the previous phase), freeze the
backbone if the phase says so, build the engine over the trainable parameter groups, then per
epoch: train (warm-up + cosine lr, gradient accumulation, non-finite steps skipped), validate,
save last/best weights and a DeepSpeed checkpoint. Layout of the run folder, and what survives
what: docs/training.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import click
import numpy as np
import torch

from fishscale.config import Config, load_config
from fishscale.data.bins import bin_index, check_edges
from fishscale.errors import FishscaleError
from fishscale.train import preempt
from fishscale.train.checkpoint import (START_NAME, Progress, ResumePoint, capture_rng, choose_checkpoint,
                                        load_engine_state, load_weights, phase_start_path, rank_seed, read_point,
                                        restore_captured, restore_rng, save_checkpoint, save_weights,
                                        seed_everything, universal_tag)
from fishscale.train.preempt import PREEMPTED_EXIT, Preempted

VAL_METRICS = ("macro_acc", "top1", "top5", "macro_f1", "loss")     # loss: lower is better
RESUME_MODES = ("auto", "always")


@dataclass
class RunData:
    """The manifests training reads, and the class index it trains on."""
    train: Any                      # fishscale.shards.manifest.Manifest
    val: Any | None
    class_counts: list[int]
    bin_edges: list[int]
    bin_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


@dataclass
class Ctx:
    """What every part of the loop reads: config, ranks, data, loss, log, where we are."""
    cfg: Config
    dist: Any                       # fishscale.train.distributed.DistInfo
    data: RunData
    out: Path
    loss_fn: torch.nn.Module
    log: Any                        # fishscale.train.runlog.RunLog
    progress: Progress
    precision: str
    input_dtype: torch.dtype
    phase_start: dict[str, torch.Tensor] | None = None    # weights the current phase began with


class RefusedOnRankZero(FishscaleError):
    """Rank 0's refusal, repeated on the other ranks (which print nothing: rank 0 says it)."""


@dataclass
class RunStart:
    """What rank 0 found in train.out, the same on every rank."""
    point: ResumePoint | None       # the checkpoint to resume from (None: start fresh)
    finished: bool                  # the run is complete: nothing to do
    lock: Any = None                # rank 0: the held fishscale.lock.FolderLock


# ---------------------------------------------------------------- setup

def load_run_data(cfg: Config) -> RunData:
    from fishscale.shards.manifest import load_manifest
    shards = Path(cfg.data.shards)
    train_dir, val_dir = shards / cfg.data.train_split, shards / cfg.data.val_split
    if not (train_dir / "manifest.json").is_file():
        raise FishscaleError(f"data.shards: {train_dir} holds no manifest.json (run `fishscale shard` first, "
                             f"or point data.shards at the folder holding {cfg.data.train_split}/)")
    train = load_manifest(train_dir)
    val = load_manifest(val_dir) if (val_dir / "manifest.json").is_file() else None
    if val is not None and list(val.class_names) != list(train.class_names):
        raise FishscaleError(f"{val_dir}: class names differ from {train_dir}'s (shard both splits together)")
    edges, names = check_edges(cfg.eval.bin_edges)
    return RunData(train=train, val=val, class_counts=[int(c) for c in train.train_class_counts],
                   bin_edges=edges, bin_names=names)


def write_run_files(cfg: Config, data: RunData, out: Path) -> None:
    """config.yaml (resolved) and classes.json, rank 0, before anything trains."""
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    counts = np.asarray(data.class_counts)
    classes = {"class_names": list(data.train.class_names), "class_families": list(data.train.class_families),
               "train_class_counts": data.class_counts, "bin_edges": data.bin_edges, "bin_names": data.bin_names,
               "class_bins": [data.bin_names[b] for b in bin_index(counts, data.bin_edges)]}
    (out / "classes.json").write_text(json.dumps(classes, indent=1), encoding="utf-8")


def check_config(cfg: Config) -> None:
    """Fail before any rank starts work on a config that cannot train."""
    from fishscale.train.engine import resolve_precision
    resolve_precision(cfg.train.precision, on_gpu=False)
    metric = cfg.train.best_metric
    if metric not in VAL_METRICS:
        raise FishscaleError(f"config: train.best_metric must be one of {', '.join(VAL_METRICS)}, got {metric!r}")
    for i, phase in enumerate(cfg.phases):
        if phase.epochs < 1:
            raise FishscaleError(f"config: phases[{i}].epochs must be >= 1, got {phase.epochs} "
                                 f"(leave a phase out instead of giving it no epochs)")
    if cfg.train.max_nonfinite_steps < 1:
        raise FishscaleError("config: train.max_nonfinite_steps must be >= 1")
    if cfg.train.log_every_steps < 1:
        raise FishscaleError("config: train.log_every_steps must be >= 1")
    if cfg.train.keep_checkpoints < 1:
        raise FishscaleError(f"config: train.keep_checkpoints must be >= 1, got {cfg.train.keep_checkpoints}")
    if cfg.train.checkpoint_every_steps < 0:
        raise FishscaleError("config: train.checkpoint_every_steps must be >= 0 (0: only at epoch ends)")
    if cfg.train.out is None or not str(cfg.train.out).strip():
        raise FishscaleError("config: train.out is not set: give the run folder to write, e.g. train.out=runs/try1")


def open_run(cfg: Config, data: RunData, out: Path, resume: str, accept_new_shards: bool, extend: bool,
             echo) -> RunStart:
    """Rank 0: lock train.out, check that it may be written and that the run is the same run, choose
    the checkpoint. Refuses (FishscaleError) before writing a byte; a fresh run's files are written last."""
    from fishscale.lock import FolderLock
    from fishscale.train.identity import check_identity, check_out_folder, read_identity, run_identity, write_identity
    if resume not in RESUME_MODES:
        raise FishscaleError(f"resume mode must be one of {RESUME_MODES}, got {resume!r}")
    check_out_folder(out)                      # before the lock: nothing is created in a foreign folder
    lock = FolderLock(out, "fishscale train", echo).acquire()
    try:
        is_run = check_out_folder(out)         # again, now that nobody else can write it
        identity = run_identity(cfg.to_dict(), data)
        if is_run:
            check_identity(out, read_identity(out), identity, accept_new_shards, extend)
        point, notes = choose_checkpoint(out) if is_run else (None, [])
        for note in notes:
            echo(note)
        if is_run and point is None:
            refuse_restart(out)
        if resume == "always" and point is None:
            raise FishscaleError(f"--resume: {out} holds no checkpoint to resume from")
        finished = point is not None and point.progress.phase >= len(cfg.phases)
        if finished and (out / "summary.json").is_file():
            return RunStart(point=point, finished=True, lock=lock)
        if point is None:                      # fresh (or killed before its first checkpoint)
            write_identity(out, identity)
            write_run_files(cfg, data, out)
        return RunStart(point=point, finished=False, lock=lock)
    except BaseException:
        lock.release()
        raise


def refuse_restart(out: Path) -> None:
    """A run folder without a checkpoint starts again only if it holds nothing a restart would
    overwrite beyond the first steps' metrics (a run killed before its first checkpoint)."""
    folder = out / "checkpoints"
    if folder.exists() and not folder.is_dir():
        raise FishscaleError(f"{folder}: exists and is not a folder; fishscale writes nothing into {out}")
    results = [name for name in ("summary.json", "best.safetensors", "last.safetensors") if (out / name).exists()]
    if results:
        raise FishscaleError(f"{out} holds the results of a run ({', '.join(results)}) but no checkpoint; "
                             f"starting again would overwrite them: use another train.out (or move them away "
                             f"to train this folder again)")


def start_run(cfg: Config, dist, data: RunData, out: Path, resume: str, accept_new_shards: bool,
              extend: bool, echo) -> RunStart:
    """open_run on rank 0, its answer (or refusal) on every rank."""
    from fishscale.train.distributed import broadcast_object
    start, message = None, None
    if dist.is_main:
        try:
            start = open_run(cfg, data, out, resume, accept_new_shards, extend, echo)
        except FishscaleError as e:
            message = str(e)
    answer = broadcast_object({"error": message, "tag": start.point.tag if start and start.point else None,
                               "finished": bool(start and start.finished)})
    if answer["error"] is not None:
        if dist.is_main:
            raise FishscaleError(answer["error"])
        raise RefusedOnRankZero(answer["error"])
    if dist.is_main:
        return start
    point = read_point(out / "checkpoints", answer["tag"]) if answer["tag"] else None
    return RunStart(point=point, finished=answer["finished"])


def after_state_loaded(ctx: Ctx, resumed: bool, accept_new_shards: bool, extend: bool) -> None:
    """Rewind metrics.jsonl / TensorBoard and bring config.yaml and run.json up to date: only now
    that the checkpoint has loaded, so a resume that fails leaves the run folder as it was."""
    from fishscale.train.identity import read_identity, run_identity, write_identity
    if ctx.log.opened:
        return
    ctx.log.open()
    if resumed and ctx.dist.is_main:
        ctx.cfg.save(ctx.out / "config.yaml")  # paths, backend, ranks may have changed
        if accept_new_shards or extend:
            recorded, now = read_identity(ctx.out), run_identity(ctx.cfg.to_dict(), ctx.data)
            write_identity(ctx.out, {**now, "created": recorded.get("created")})


def phase_epochs(cfg: Config) -> list[int]:
    """Global index of each phase's first epoch, plus the total at the end."""
    starts = [0]
    for phase in cfg.phases:
        starts.append(starts[-1] + phase.epochs)
    return starts


# ---------------------------------------------------------------- one phase's engine

def start_phase(ctx: Ctx, index: int, weights: dict[str, torch.Tensor] | None, point: ResumePoint | None,
                total_steps: int):
    """Model with the phase's starting weights, frozen per phase, inside a fresh engine.

    Returns (engine, phase_start weights, lr schedule). `point` (a checkpoint of this phase)
    restores the engine's weights and optimizer state on top.
    """
    from fishscale.train.engine import build_engine, deepspeed_config
    from fishscale.model.factory import build_model, param_groups, set_backbone_trainable
    from fishscale.train.schedule import PhaseSchedule
    cfg, dist, phase = ctx.cfg, ctx.dist, ctx.cfg.phases[index]
    seed_everything(cfg.train.seed)            # the same initial model on every rank
    model = build_model(cfg.model, ctx.data.num_classes, cfg.data.image_size)
    start_file = phase_start_path(ctx.out, index)
    if weights is not None:                    # the previous phase's, or the checkpoint's start.safetensors
        model.load_state_dict(weights)
    phase_start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if dist.is_main and point is None:
        save_weights(phase_start, start_file)
    set_backbone_trainable(model, not phase.freeze_backbone)
    other_world = point is not None and point.world_size != dist.world_size
    ds_config = deepspeed_config(cfg, dist.world_size, dist.on_gpu, load_universal=other_world)
    engine = build_engine(model, param_groups(model, phase, cfg.optim), ds_config)
    # peak lrs are read before a checkpoint overwrites the groups' lrs with scheduled ones
    schedule = PhaseSchedule(engine.optimizer, total_steps=total_steps,
                             warmup_steps=cfg.optim.warmup_steps, min_lr_ratio=cfg.optim.min_lr_ratio)
    if point is not None:
        tag = universal_tag(point, dist.rank) if other_world else point.tag
        load_engine_state(engine, point, tag)
    seed_everything(rank_seed(cfg.train.seed + ctx.progress.step, dist.rank))
    return engine, phase_start, schedule


def steps_per_epoch(ctx: Ctx, epoch: int) -> int:
    from fishscale.loader.build import build_loader
    cfg = ctx.cfg
    loader = build_loader(cfg, ctx.data.train, train=True, rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                          epoch=epoch, num_epochs=phase_epochs(cfg)[-1])
    steps = len(loader) // cfg.train.grad_accum
    if cfg.train.max_steps_per_epoch is not None:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    if steps < 1:
        raise FishscaleError(f"an epoch of split {cfg.data.train_split!r} gives no full global batch of "
                             f"{cfg.train.batch_size}; lower train.batch_size")
    return steps


# ---------------------------------------------------------------- train / validate

def train_epoch(ctx: Ctx, engine, schedule, epoch: int, steps: int, bar, rng_point: ResumePoint | None) -> None:
    """Optimizer steps progress.batch .. steps-1 of `epoch`; checkpoints every N steps."""
    from fishscale.loader.build import build_loader
    cfg, dist, progress = ctx.cfg, ctx.dist, ctx.progress
    loader = build_loader(cfg, ctx.data.train, train=True, rank=dist.rank, world_size=dist.world_size,
                          epoch=epoch, start_batch=progress.batch, num_epochs=phase_epochs(cfg)[-1])
    batches = isolated_iter(loader)
    if rng_point is not None:
        restore_rng(rng_point, dist.rank, cfg.train.seed)
    engine.train()
    window = {"loss": 0.0, "steps": 0, "start": time.perf_counter()}
    while progress.batch < steps:
        started = time.perf_counter()
        lr = schedule.apply(progress.phase_step)
        rng = capture_rng()
        try:
            loss, skipped, stop = train_step(ctx, engine, batches)
        except preempt.LoaderLost:
            restore_captured(rng)              # as if the dropped step had not begun: the last boundary
            tag = checkpoint(ctx, engine)      # (the optimizer has not moved)
            raise Preempted(preempt.signal_name(), tag, progress.step) from None
        progress.train_seconds += time.perf_counter() - started
        progress.step += 1
        progress.phase_step += 1
        progress.batch += 1
        progress.images += cfg.train.batch_size
        count_nonfinite(ctx, skipped, epoch)
        if not skipped:
            window["loss"] += loss
            window["steps"] += 1
        seconds = time.perf_counter() - window["start"]
        img_per_s = cfg.train.batch_size * max(1, window["steps"]) / max(seconds, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_per_s:.1f}")
        if progress.step % cfg.train.log_every_steps == 0 or progress.batch == steps:
            mean = window["loss"] / window["steps"] if window["steps"] else float("nan")
            ctx.log.write({"kind": "train", "phase": progress.phase, "epoch": epoch, "step": progress.step,
                           "batch": progress.batch, "loss": mean, "lr": lr, "img_per_s": img_per_s,
                           "skipped": skipped, "nonfinite_steps": progress.nonfinite_steps})
            window = {"loss": 0.0, "steps": 0, "start": time.perf_counter()}
        if stop:                               # every rank saw the same vote: stop here, all of us
            tag = checkpoint(ctx, engine)
            raise Preempted(preempt.signal_name(), tag, progress.step)
        every = cfg.train.checkpoint_every_steps
        if every and progress.step % every == 0 and progress.batch < steps:
            checkpoint(ctx, engine)


def isolated_iter(loader) -> Iterator:
    """Batches of `loader` drawn without touching the global RNG (a DataLoader takes its workers'
    base seed from it when it starts), so dropout / drop-path draws do not depend on when
    loaders start: a resumed run replays them exactly."""
    batches = iter(loader)
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def train_step(ctx: Ctx, engine, batches: Iterator) -> tuple[float, bool, bool]:
    """One optimizer step = grad_accum micro batches; (mean loss over ranks, skipped?, stop?).

    stop: some rank got SIGTERM / SIGUSR1 (fishscale.train.preempt); the vote rides on the
    all-reduce of the loss, so every rank gets the same answer in the same step."""
    from fishscale.train.distributed import all_reduce_sum
    from fishscale.train.engine import optimizer_step
    losses, bad, stop = [], False, False
    for _ in range(ctx.cfg.train.grad_accum):
        try:
            images, labels = next(batches)
        except Exception:
            if not preempt.pending():
                raise
            lost, loss, value = 1.0, None, 0.0      # the SIGTERM killed this rank's loader workers too
        else:
            lost = 0.0
            images = images.to(ctx.dist.device, ctx.input_dtype, non_blocking=True)
            labels = labels.to(ctx.dist.device, non_blocking=True)
            loss = ctx.loss_fn(engine(images), labels)
            value = float(loss.item())
        finite = math.isfinite(value)
        total, nonfinite, stops, losts = all_reduce_sum([value if finite else 0.0, 0.0 if finite else 1.0,
                                                         preempt.pending(), lost])
        if losts:                              # every rank: drop this step, stop at the boundary before it
            raise preempt.LoaderLost()
        stop = stop or stops > 0
        if nonfinite:                      # every rank agrees: poison the gradients so no update happens
            bad = True
            loss = loss * float("nan")
        engine.backward(loss)
        optimizer_step(engine, skip=bad)
        losses.append(total / ctx.dist.world_size)
    return (float("nan") if bad else sum(losses) / len(losses)), bad, stop


def count_nonfinite(ctx: Ctx, skipped: bool, epoch: int) -> None:
    progress, limit = ctx.progress, ctx.cfg.train.max_nonfinite_steps
    if not skipped:
        progress.nonfinite_in_row = 0
        return
    progress.nonfinite_steps += 1
    progress.nonfinite_in_row += 1
    ctx.log.echo(f"warning: non-finite loss at step {progress.step} (epoch {epoch}); step skipped "
                 f"({progress.nonfinite_in_row} in a row, limit {limit})")
    if progress.nonfinite_in_row >= limit:
        raise FishscaleError(f"training stopped: the loss was not finite for {limit} steps in a row "
                             f"(phase {progress.phase}, epoch {epoch}, step {progress.step}); lower the learning "
                             f"rate (phases[*].lr), raise optim.warmup_steps or set train.clip_grad; "
                             f"train.max_nonfinite_steps sets the limit")


def validate(ctx: Ctx, engine) -> dict[str, Any] | None:
    """Loss, top-1/5, macro accuracy/F1 and per-bin accuracy on the val split (None: no val split)."""
    from fishscale.train.distributed import broadcast_object, gather_objects, max_over_ranks
    from fishscale.loader.build import build_loader
    from fishscale.evaluate.metrics import evaluate_predictions
    if ctx.data.val is None:
        return None
    dist = ctx.dist
    loader = build_loader(ctx.cfg, ctx.data.val, train=False, rank=dist.rank, world_size=dist.world_size)
    # ZeRO-3 gathers parameters with collectives in every forward: ranks must run equally many
    rounds = max_over_ranks(len(loader)) if engine.zero_optimization_stage() == 3 else len(loader)
    k = min(5, ctx.data.num_classes)
    labels_out, topk_out, loss_sum, loss_count = [], [], 0.0, 0
    lost = False
    engine.eval()
    with torch.no_grad():
        batches = isolated_iter(loader)
        for _ in range(rounds):
            batch = None
            if not lost:
                try:
                    batch = next(batches, None)
                except Exception:          # a SIGTERM killed the loader's workers: finish without them
                    if not preempt.pending():
                        raise
                    lost = True
            if batch is None:              # this rank is done; keep the collectives in step
                if engine.zero_optimization_stage() != 3:
                    break
                size = ctx.cfg.data.image_size
                engine(torch.zeros(1, 3, size, size, device=dist.device, dtype=ctx.input_dtype))
                continue
            images, labels = batch
            logits = engine(images.to(dist.device, ctx.input_dtype)).float()
            labels = labels.to(dist.device)
            seen = labels >= 0             # species unseen in training have no loss
            if seen.any():
                loss_sum += float(ctx.loss_fn(logits[seen], labels[seen]).item()) * int(seen.sum())
                loss_count += int(seen.sum())
            labels_out.append(labels.cpu().numpy())
            topk_out.append(logits.topk(k, dim=1).indices.cpu().numpy())
    engine.train()
    from fishscale.train.distributed import any_rank
    if any_rank(lost):                     # every rank: no result; the caller checkpoints and stops
        raise preempt.LoaderLost()
    part = (np.concatenate(labels_out) if labels_out else np.zeros(0, np.int64),
            np.concatenate(topk_out) if topk_out else np.zeros((0, k), np.int64), loss_sum, loss_count)
    parts = gather_objects(part)
    result = None
    if parts is not None:
        labels = np.concatenate([p[0] for p in parts])
        topk = np.concatenate([p[1] for p in parts])
        result = evaluate_predictions(labels, topk, ctx.data.class_counts, ctx.data.bin_edges, ctx.data.bin_names)
        count = sum(p[3] for p in parts)
        result["loss"] = sum(p[2] for p in parts) / count if count else None
    return broadcast_object(result)


def is_better(value: float | None, best: float | None, metric: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


# ---------------------------------------------------------------- epoch end

def end_epoch(ctx: Ctx, engine, phase_start: dict[str, torch.Tensor], epoch: int, last_of_phase: bool) -> dict:
    """Validate, write last/best weights (+ the next phase's start), move on, checkpoint."""
    from fishscale.train.engine import full_state_dict
    cfg, progress = ctx.cfg, ctx.progress
    try:
        val = validate(ctx, engine)
    except preempt.LoaderLost:             # the epoch's training is done, its validation is not: a
        tag = checkpoint(ctx, engine)      # checkpoint here (batch == steps) validates again on resume
        raise Preempted(preempt.signal_name(), tag, progress.step) from None
    metric = cfg.train.best_metric
    value = val.get(metric) if val is not None else None
    improved = is_better(value, progress.best_value, metric) or (val is None)
    if val is not None:
        ctx.log.write({"kind": "val", "phase": progress.phase, "epoch": epoch, "step": progress.step,
                       "images": val["num_images"],
                       **{k: val.get(k) for k in ("loss", "top1", "top5", "macro_acc", "macro_f1")},
                       "bins": val["bins"]})
        ctx.log.echo(f"epoch {epoch}: val loss {_fmt(val.get('loss'))} top1 {_fmt(val.get('top1'))} "
                     f"macro_acc {_fmt(val.get('macro_acc'))}" + ("  (best so far)" if improved else ""))
    weights = full_state_dict(engine, phase_start)
    meta = {"phase": str(progress.phase), "epoch": str(epoch), "step": str(progress.step), "format": "pt"}
    if ctx.dist.is_main:
        save_weights(weights, ctx.out / "last.safetensors", meta)
        if improved:
            save_weights(weights, ctx.out / "best.safetensors", meta)
        if last_of_phase and progress.phase + 1 < len(cfg.phases):
            save_weights(weights, phase_start_path(ctx.out, progress.phase + 1))
    if improved:
        progress.best_value, progress.best_epoch = value, epoch
    engine_phase = progress.phase
    progress.epoch, progress.batch = epoch + 1, 0
    if last_of_phase:
        progress.phase, progress.phase_step = progress.phase + 1, 0
    # at a phase end a resume starts the next phase (or an --extend phase) from these weights
    tag = checkpoint(ctx, engine, engine_phase, start=weights if last_of_phase else None)
    from fishscale.train.distributed import any_rank
    if any_rank(preempt.pending() > 0):        # a signal during validation or the save
        raise Preempted(preempt.signal_name(), tag, progress.step)
    return weights


def checkpoint(ctx: Ctx, engine, engine_phase: int | None = None,
               start: dict[str, torch.Tensor] | None = None) -> str:
    """A checkpoint at the current step (collective); `start`: the weights a resume begins from
    (default: the phase's start weights; the engine state then restores the trained ones)."""
    from fishscale.train.distributed import broadcast_object
    ctx.progress.metrics_lines = broadcast_object(ctx.log.lines if ctx.dist.is_main else 0)
    return save_checkpoint(engine, ctx.out, ctx.progress,
                           ctx.progress.phase if engine_phase is None else engine_phase, ctx.cfg.to_dict(),
                           ctx.dist.rank, ctx.dist.world_size, start if start is not None else ctx.phase_start,
                           keep=ctx.cfg.train.keep_checkpoints)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------- the run

def main(cfg: Config, resume: str = "auto", accept_new_shards: bool = False, extend: bool = False) -> dict[str, Any]:
    """Train `cfg` on this process's rank; return the summary (the same on every rank).

    Raises Preempted after a SIGTERM / SIGUSR1 (checkpoint written), FishscaleError on refusal.
    The entry points (train_command, launch_main) install the signal handlers, first thing."""
    from fishscale.train.distributed import init_distributed
    from fishscale.train.runlog import RunLog
    from fishscale.train.safe_load import forbid_pickles

    check_config(cfg)
    forbid_pickles()
    dist = init_distributed()
    out = Path(cfg.train.out)
    data = load_run_data(cfg)
    log = RunLog(out, dist.is_main)
    start = start_run(cfg, dist, data, out, resume, accept_new_shards, extend, log.echo)
    try:
        if start.finished:
            return finished_summary(out, dist.is_main, log.echo)
        return train_run(cfg, dist, data, out, log, start.point, accept_new_shards, extend)
    finally:
        log.close()
        if start.lock is not None:
            start.lock.release()


def finished_summary(out: Path, is_main: bool, echo) -> dict[str, Any]:
    """A finished run started again: say so, touch nothing."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    if is_main:
        echo(f"{out}: this run is finished ({summary.get('epochs')} epoch(s), {summary.get('steps')} steps; "
             f"summary.json); nothing to do. To train it further add phases and pass --extend; to train "
             f"again, use another train.out")
    return summary


def train_run(cfg: Config, dist, data: RunData, out: Path, log, point: ResumePoint | None,
              accept_new_shards: bool, extend: bool) -> dict[str, Any]:
    from fishscale.train.engine import destroy_engine, resolve_precision
    from fishscale.model.losses import build_loss
    progress = point.progress if point is not None else Progress()
    if point is not None:                      # rewound in after_state_loaded, once the state is in
        log.resume_from(lines=progress.metrics_lines, purge_step=progress.step + 1)
    precision = resolve_precision(cfg.train.precision, dist.on_gpu)
    ctx = Ctx(cfg=cfg, dist=dist, data=data, out=out, loss_fn=build_loss(cfg.loss, data.class_counts).to(dist.device),
              log=log, progress=progress, precision=precision,
              input_dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    if point is not None:
        log.echo(f"resuming {out} at phase {progress.phase}, epoch {progress.epoch}, batch {progress.batch} "
                 f"(checkpoint {point.tag}, {point.world_size} rank(s) then, {dist.world_size} now)")
    first_epoch = phase_epochs(cfg)
    weights = load_weights(point.path / START_NAME) if point is not None else None
    for index, phase in enumerate(cfg.phases):
        if index < progress.phase:
            continue
        # mid-phase checkpoint: engine state + RNG; at a phase boundary the start weights are all
        resume_here = point if point is not None and point.needs_engine_state and point.engine_phase == index else None
        steps = steps_per_epoch(ctx, first_epoch[index])
        engine, ctx.phase_start, schedule = start_phase(ctx, index, weights, resume_here, steps * phase.epochs)
        after_state_loaded(ctx, point is not None, accept_new_shards, extend)
        for epoch in range(max(progress.epoch, first_epoch[index]), first_epoch[index + 1]):
            if hasattr(ctx.loss_fn, "set_epoch"):
                ctx.loss_fn.set_epoch(epoch)
            bar = log.progress(steps, f"{phase.name} {epoch - first_epoch[index] + 1}/{phase.epochs}",
                               initial=progress.batch)
            try:
                train_epoch(ctx, engine, schedule, epoch, steps, bar, resume_here)
            finally:
                bar.close()
            resume_here = None
            weights = end_epoch(ctx, engine, ctx.phase_start, epoch,
                                last_of_phase=epoch + 1 == first_epoch[index + 1])
        destroy_engine(engine)
    after_state_loaded(ctx, point is not None, accept_new_shards, extend)   # a run that was only left to finish
    return finish(ctx)


def finish(ctx: Ctx) -> dict[str, Any]:
    """summary.json, the summary line of metrics.jsonl, and a printed summary."""
    from fishscale.train.runlog import METRICS_NAME
    progress, cfg = ctx.progress, ctx.cfg
    summary = {"run": str(ctx.out), "model": cfg.model.name, "phases": [p.name for p in cfg.phases],
               "epochs": progress.epoch, "steps": progress.step, "images": progress.images,
               "train_seconds": round(progress.train_seconds, 2),
               "img_per_s": round(progress.images / progress.train_seconds, 2) if progress.train_seconds else None,
               "best_metric": cfg.train.best_metric, "best_value": progress.best_value,
               "best_epoch": progress.best_epoch, "nonfinite_steps": progress.nonfinite_steps,
               "world_size": ctx.dist.world_size, "zero_stage": cfg.train.zero_stage, "precision": ctx.precision,
               "global_batch": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
               "best_weights": str(ctx.out / "best.safetensors"), "last_weights": str(ctx.out / "last.safetensors")}
    if ctx.dist.is_main:
        ctx.log.write({"kind": "summary", **summary})
        (ctx.out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        ctx.log.echo(f"trained {summary['epochs']} epoch(s), {summary['steps']} steps, {summary['images']} images "
                     f"in {summary['train_seconds']:.0f} s ({summary['img_per_s'] or 0:.1f} img/s, "
                     f"{ctx.dist.world_size} rank(s), ZeRO-{cfg.train.zero_stage}, {ctx.precision}); "
                     f"best val {cfg.train.best_metric} {_fmt(progress.best_value)} at epoch {progress.best_epoch}; "
                     f"{progress.nonfinite_steps} non-finite step(s) skipped")
        ctx.log.echo(f"run folder {ctx.out}: best.safetensors last.safetensors {METRICS_NAME} tb/ checkpoints/")
    return summary


# ---------------------------------------------------------------- entry points

def launch_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`launch/train.py` / `python -m fishscale.train`: one rank, started by a launcher."""
    preempt.install()                          # first: a stop signal during startup is kept, not fatal
    parser = argparse.ArgumentParser(prog=prog, description="fishscale training, one rank (run it under `deepspeed`).")
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="insist on resuming from the run folder's checkpoint")
    parser.add_argument("--accept-new-shards", action="store_true",
                        help="resume although the shards' manifests changed (classes and counts must not)")
    parser.add_argument("--extend", action="store_true", help="continue a run with phases added after its own")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher (or use env)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from fishscale.train.distributed import pick_accelerator
    pick_accelerator()
    from fishscale.train.distributed import shutdown
    try:
        cfg = load_config(args.config, args.overrides)
        main(cfg, resume="always" if args.resume else "auto", accept_new_shards=args.accept_new_shards,
             extend=args.extend)
    except RefusedOnRankZero:
        return 2                               # rank 0 prints why
    except FishscaleError as e:
        # no goodbye barrier: the peers may be stuck in a collective; the launcher stops them
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:                     # every rank stopped at the same step: leave together
        preempt.ignore_from_now()
        if os.environ.get("RANK", "0") == "0":
            print(str(e), file=sys.stderr)
            preempt.record(e)
        shutdown()
        return PREEMPTED_EXIT
    finally:
        preempt.ignore_from_now()
    shutdown()
    return 0


def launcher_command(config: Path, nproc: int, flags: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """`python -m deepspeed.launcher.runner --num_gpus N ... -m fishscale.train ...` for this machine."""
    from fishscale.train.distributed import free_port
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
            "--master_port", str(free_port()), "--no_local_rank", "--module", "fishscale.train",
            "--config", str(config), *flags, *overrides]


def run_launcher(command: list[str]) -> int:
    """Run the deepspeed launcher; SIGTERM / SIGUSR1 to this process reach its ranks as SIGUSR1.

    The launcher's own processes start with SIGUSR1 ignored (it would kill them; the ranks install
    their handler), and the deepspeed launcher would answer a SIGTERM by killing the ranks."""
    import signal
    import psutil

    def ignore_usr1() -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    def forward() -> None:
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                child.send_signal(signal.SIGUSR1)
            except psutil.Error:
                pass

    # its own session: a signal to this process group (a terminal, a batch system) reaches this
    # process only, which passes it on as a stop; the launcher would kill the ranks on SIGTERM
    process = subprocess.Popen(command, preexec_fn=ignore_usr1, start_new_session=True)

    def on_signal(signum, frame) -> None:
        preempt.record_signal(signum)
        forward()

    for sig in preempt.STOP_SIGNALS:
        signal.signal(sig, on_signal)          # train_command puts the previous handlers back
    # a signal that came before the launcher, or reached a rank before its handler was in place
    # (it then still ignores SIGUSR1), is not lost: it is sent again until the ranks are done
    try:
        while True:
            try:
                return process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if preempt.pending():
                    forward()
    except KeyboardInterrupt:                  # Ctrl-C: what it did before, stop the whole job now
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        raise


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="YAML training config (configs/quickstart.yaml, configs/fishvista_swin_t.yaml, ...).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ranks on this machine: 1 trains in this process (still a DeepSpeed engine); more start "
                   "the deepspeed launcher with --num_gpus N (GPUs, or CPU processes on a CPU machine).")
@click.option("--resume", is_flag=True,
              help="Insist on resuming from the run folder's checkpoint (error if none). Without it a run "
                   "folder holding a checkpoint resumes anyway, and an empty one starts fresh.")
@click.option("--accept-new-shards", is_flag=True,
              help="Resume although data.shards' manifests differ from the run's (a deliberate re-sharding); "
                   "classes and training counts must still be the same.")
@click.option("--extend", is_flag=True,
              help="Continue a run (finished or not) with phases added after its own; the phases it has "
                   "must stay as they were.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def train_command(config_path: Path, nproc: int, resume: bool, accept_new_shards: bool, extend: bool,
                  overrides: tuple[str, ...]) -> None:
    """Fine-tune a timm model under DeepSpeed ZeRO: phases, validation, checkpoints, resume.

    OVERRIDES are dotted.key=value pairs on top of the config, e.g. train.zero_stage=3
    phases.0.epochs=2 train.out=runs/try2. Writes the run folder train.out: config.yaml,
    metrics.jsonl, tb/, checkpoints/, best.safetensors, last.safetensors, classes.json,
    summary.json. Clusters: deepspeed [--hostfile H] launch/train.py --config ... (docs/training.md).
    """
    previous = preempt.install()                    # first: a stop signal during startup is kept
    try:
        train(config_path, nproc, resume, accept_new_shards, extend, overrides)
    finally:
        preempt.restore(previous)                   # called in-process (tests, notebooks): as it was


def train(config_path: Path, nproc: int, resume: bool, accept_new_shards: bool, extend: bool,
          overrides: Sequence[str]) -> None:
    from fishscale.train.engine import micro_batch_size
    cfg = load_config(config_path, overrides)       # bad config: clean error before any rank starts
    check_config(cfg)
    micro_batch_size(cfg.train.batch_size, nproc, cfg.train.grad_accum)
    if nproc == 1:
        from fishscale.train.distributed import shutdown
        try:
            main(cfg, resume="always" if resume else "auto", accept_new_shards=accept_new_shards, extend=extend)
        except Preempted as e:
            preempt.ignore_from_now()
            click.echo(str(e), err=True)
            preempt.record(e)
            sys.exit(PREEMPTED_EXIT)
        finally:
            shutdown()
        return
    from fishscale.train.distributed import pick_accelerator
    pick_accelerator()
    flags = [flag for flag, on in (("--resume", resume), ("--accept-new-shards", accept_new_shards),
                                   ("--extend", extend)) if on]
    code = run_launcher(launcher_command(config_path, nproc, flags, overrides))
    if code == PREEMPTED_EXIT:
        click.echo(f"training stopped by a signal at a step boundary, checkpoint written; the same command "
                   f"resumes (exit {PREEMPTED_EXIT})", err=True)
        sys.exit(PREEMPTED_EXIT)
    if code != 0:
        raise FishscaleError(f"training failed (the deepspeed launcher exited {code}; "
                             f"each rank's error is printed above)")

