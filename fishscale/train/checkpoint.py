"""Checkpoints: DeepSpeed's for resuming, consolidated safetensors for everything else.

    <out>/checkpoints/
        step00000120/                  engine.save_checkpoint (ZeRO partitions, optimizer state)
            fishscale_state.json       where training stands (Progress) + world size, ZeRO stage, config
            rng-rank0.json ...         python / numpy / torch RNG states of each rank
        latest.json                    {"tag": "step00000120"}: written last, so a kill mid-save
                                       leaves the previous checkpoint in charge
        phase1_start.safetensors       the fp32 weights each phase starts from
    <out>/last.safetensors, best.safetensors   consolidated fp32 state dict of the plain model

Resuming reads only JSON and safetensors of ours; DeepSpeed reads its own files. The DeepSpeed
client state holds the same Progress and resolved config (``client_state["fishscale"]``,
``client_state["config"]``), so the checkpoint alone says how it was made.

**Another number of ranks.** ZeRO partitions optimizer state by rank, and DeepSpeed refuses to
load a checkpoint at another data-parallel size. Then rank 0 converts the checkpoint to
DeepSpeed's *universal* format (``deepspeed.checkpoint.ds_to_universal``: per-parameter fp32
weights and Adam moments) and the engine loads it with ``checkpoint.load_universal``; training
continues with the same global batch, so the sampler replays the same sample order. RNG states
of ranks that did not exist before are derived from the seed instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fishscale.errors import FishscaleError

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
STATE_NAME = "fishscale_state.json"
KEEP_CHECKPOINTS = 2          # newest DeepSpeed checkpoints kept; older ones are deleted
UNIVERSAL_SUFFIX = "_universal"


@dataclass
class Progress:
    """Where training stands: the NEXT thing to do is (phase, epoch, batch)."""
    phase: int = 0                  # phase index
    epoch: int = 0                  # global epoch index (counted across phases)
    batch: int = 0                  # global batches (optimizer steps) already done in this epoch
    step: int = 0                   # optimizer steps done in the whole run
    phase_step: int = 0             # optimizer steps done in this phase (the schedule's clock)
    images: int = 0                 # training images seen (all ranks)
    nonfinite_steps: int = 0        # steps skipped for a non-finite loss, whole run
    nonfinite_in_row: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    metrics_lines: int = 0          # lines of metrics.jsonl that belong to this point
    train_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Progress":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ResumePoint:
    tag: str
    folder: Path                    # <out>/checkpoints
    progress: Progress
    engine_phase: int               # phase whose engine wrote the checkpoint
    world_size: int
    zero_stage: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_engine_state(self) -> bool:
        """False at a phase boundary: the next phase starts from weights alone."""
        return self.engine_phase == self.progress.phase


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / CHECKPOINT_DIR


def phase_start_path(out: Path, phase: int) -> Path:
    return checkpoint_dir(out) / f"phase{phase}_start.safetensors"


def step_tag(step: int) -> str:
    return f"step{step:08d}"


# ---------------------------------------------------------------- RNG states (JSON, no pickle)

def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """Distinct, reproducible per-rank seed (dropout / drop-path draws differ across ranks)."""
    return (int(seed) * 1_000_003 + 7919 * (rank + 1)) % 2**31


# ---------------------------------------------------------------- save

def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(engine, out: Path, progress: Progress, engine_phase: int, config: dict[str, Any],
                    rank: int, world_size: int) -> str:
    """engine.save_checkpoint + our JSON files; every rank calls it (a collective)."""
    from fishscale.train.distributed import barrier
    folder = checkpoint_dir(out)
    tag = step_tag(progress.step)
    meta = {"progress": progress.to_dict(), "engine_phase": engine_phase, "world_size": world_size,
            "zero_stage": engine.zero_optimization_stage()}
    engine.save_checkpoint(str(folder), tag=tag, client_state={"fishscale": meta, "config": config},
                           save_latest=False)
    _write_json(folder / tag / f"rng-rank{rank}.json", rng_state())
    if rank == 0:
        _write_json(folder / tag / STATE_NAME, {**meta, "config": config})
    barrier()                                  # every rank's files are in place before 'latest' moves
    if rank == 0:
        _write_json(folder / LATEST, {"tag": tag})
        prune_checkpoints(folder, keep=KEEP_CHECKPOINTS)
    return tag


def prune_checkpoints(folder: Path, keep: int) -> None:
    latest = json.loads((folder / LATEST).read_text())["tag"]
    tags = sorted(p.name for p in folder.glob("step*") if p.is_dir() and not p.name.endswith(UNIVERSAL_SUFFIX))
    for tag in tags[:-keep]:
        if tag != latest:
            shutil.rmtree(folder / tag, ignore_errors=True)
            shutil.rmtree(folder / (tag + UNIVERSAL_SUFFIX), ignore_errors=True)


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors, written to a temporary name and renamed (a reader never sees half a file)."""
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata or {"format": "pt"})
    os.replace(tmp, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    if not path.is_file():
        raise FishscaleError(f"{path}: weights not found (the run folder's checkpoints/ is incomplete)")
    return load_file(str(path))


# ---------------------------------------------------------------- resume

def find_resume_point(out: Path) -> ResumePoint | None:
    """The checkpoint `latest.json` points at, or None when the run folder has none."""
    folder = checkpoint_dir(out)
    latest = folder / LATEST
    if not latest.is_file():
        return None
    try:
        tag = json.loads(latest.read_text(encoding="utf-8"))["tag"]
        meta = json.loads((folder / tag / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise FishscaleError(f"{latest}: cannot read the checkpoint it points to: {e}") from None
    return ResumePoint(tag=tag, folder=folder, progress=Progress.from_dict(meta["progress"]),
                       engine_phase=int(meta["engine_phase"]), world_size=int(meta["world_size"]),
                       zero_stage=int(meta["zero_stage"]), config=meta.get("config", {}))


def universal_tag(point: ResumePoint, rank: int) -> str:
    """Convert the checkpoint to DeepSpeed's universal format once (rank 0); every rank waits."""
    from fishscale.train.distributed import any_rank, barrier
    tag = point.tag + UNIVERSAL_SUFFIX
    target = point.folder / tag
    failed = False
    if rank == 0 and not (target / "zero").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        result = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                                 "--input_folder", str(point.folder / point.tag), "--output_folder", str(target),
                                 "--inject_missing_state", "--num_extract_workers", "1", "--num_merge_workers", "1"],
                                capture_output=True, text=True)
        failed = result.returncode != 0
        if failed:
            sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
    if any_rank(failed):
        raise FishscaleError(f"{point.folder / point.tag}: conversion to a universal checkpoint failed "
                             f"(needed to resume {point.world_size} ranks' checkpoint at another world size)")
    barrier()
    return tag


def load_engine_state(engine, point: ResumePoint, tag: str) -> None:
    """Weights + optimizer state from the DeepSpeed checkpoint `tag` into a fresh engine."""
    path, _ = engine.load_checkpoint(str(point.folder), tag=tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise FishscaleError(f"{point.folder / tag}: DeepSpeed could not load this checkpoint")


def restore_rng(point: ResumePoint, rank: int, seed: int) -> None:
    """This rank's RNG states from the checkpoint (a rank that did not exist: seeded afresh)."""
    path = point.folder / point.tag / f"rng-rank{rank}.json"
    if path.is_file():
        set_rng_state(json.loads(path.read_text(encoding="utf-8")))
    else:
        seed_everything(rank_seed(seed + point.progress.step, rank))
