"""Checkpoints: atomic, verified DeepSpeed checkpoints to resume from; safetensors for the rest.

    <out>/checkpoints/
        step00000120/                  a complete checkpoint (only a complete one carries this name)
            *_model_states.pt ...      engine.save_checkpoint (ZeRO partitions, optimizer state)
            fishscale_state.json       where training stands (Progress) + world size, ZeRO stage, config
            rng-rank0.json ...         python / numpy / torch RNG states of each rank
            start.safetensors          fp32 weights a resume builds the model from (the phase's start;
                                       at a phase boundary, the next phase's)
            manifest.json              every file above with its size and sha256; written last
        step00000125.partial/          a checkpoint being written, or cut short (ignored; removed)
        step00000120-2/                the same step written again (a replay): names are never reused
        latest.json                    {"tag": "step00000120"}: replaced atomically after each commit
        phase0_start.safetensors ...   the fp32 weights each phase started from (a record)
    <out>/last.safetensors, best.safetensors   consolidated fp32 state dict of the plain model

**Writing.** Every rank writes its files into ``<tag>.partial/``; after a barrier rank 0 hashes
them (fsync on the way), writes manifest.json, renames the folder to ``<tag>`` (atomic on POSIX
file systems, NFS and Lustre included), replaces latest.json, prunes to ``train.keep_checkpoints``,
and a last barrier lets every rank go on. The name is one no folder has yet, so a checkpoint is
never written over or renamed away. A kill at any moment leaves the previous checkpoints and at
most a ``.partial`` folder.

**Choosing one.** ``choose_checkpoint`` tries the ``step*`` folders newest first (by step, then
attempt); latest.json is only a hint (lost, empty or pointing elsewhere, it costs a note). A
checkpoint is taken when its manifest verifies (written for this folder; every file present, of
its size, with its sha256, none unlisted, none a link; the files a resume needs listed; the state
at the folder's step) and every torch file in it loads weights-only (fishscale.train.safe_load).
A damaged one is named with its reason and the next older one is tried; when none verifies, or
latest.json names a checkpoint and none is left, the error says so and nothing in the run folder
has been touched.

Resuming reads only JSON and safetensors of ours, and DeepSpeed's files weights-only.

**Another number of ranks.** ZeRO partitions optimizer state by rank, and DeepSpeed refuses to
load a checkpoint at another data-parallel size. Then rank 0 converts the checkpoint to
DeepSpeed's *universal* format (``deepspeed.checkpoint.ds_to_universal``, weights-only:
per-parameter fp32 weights and Adam moments) and the engine loads it with
``checkpoint.load_universal``; training continues with the same global batch, so the sampler
replays the same sample order. RNG states of ranks that did not exist before are derived from
the seed instead.
"""
from __future__ import annotations

import dataclasses
import json
import hashlib
import os
import random
import re
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
START_NAME = "start.safetensors"
MANIFEST_NAME = "manifest.json"
PARTIAL = ".partial"
UNIVERSAL_SUFFIX = "_universal"
TAG_PATTERN = re.compile(r"^step(\d{8})(?:-(\d+))?$")   # step00000120, or step00000120-2 when redone


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
    def path(self) -> Path:
        return self.folder / self.tag

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


def tag_order(tag: str) -> tuple[int, int]:
    """(step, attempt): step00000120 < step00000120-2 < step00000121."""
    match = TAG_PATTERN.match(tag)
    return int(match[1]), int(match[2] or 1)


def new_tag(folder: Path, step: int) -> str:
    """A name no folder has yet: a checkpoint is never written over, nor renamed away.
    The same step again (a replay after a fallback, an epoch end after a stop on its last step)
    gets the next attempt number."""
    base = step_tag(step)
    taken = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    attempt = 1
    while (base if attempt == 1 else f"{base}-{attempt}") in taken:
        attempt += 1
    return base if attempt == 1 else f"{base}-{attempt}"


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


def capture_rng() -> tuple:
    """This process's RNG states as they are (cheap; to undo a step that is dropped)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def restore_captured(states: tuple) -> None:
    python, numpy_state, cpu, cuda = states
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """Distinct, reproducible per-rank seed (dropout / drop-path draws differ across ranks)."""
    return (int(seed) * 1_000_003 + 7919 * (rank + 1)) % 2**31


# ---------------------------------------------------------------- save

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any, durable: bool = False) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=1))
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
        try:
            os.fsync(f.fileno())            # flush the writer's pages before the manifest vouches for them
        except OSError:
            pass
    return digest.hexdigest()


def save_checkpoint(engine, out: Path, progress: Progress, engine_phase: int, config: dict[str, Any],
                    rank: int, world_size: int, start_weights: dict[str, torch.Tensor] | None, keep: int) -> str:
    """Write one checkpoint atomically; every rank calls it (a collective). Returns its tag.

    `start_weights` (rank 0): the weights a resume from here builds the model from."""
    from fishscale.train.distributed import barrier, broadcast_object
    folder = checkpoint_dir(out)
    tag = None
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        tag = new_tag(folder, progress.step)
        shutil.rmtree(folder / (tag + PARTIAL), ignore_errors=True)     # what a kill left of an earlier try
    tag = broadcast_object(tag)
    partial = folder / (tag + PARTIAL)
    meta = {"progress": progress.to_dict(), "engine_phase": engine_phase, "world_size": world_size,
            "zero_stage": engine.zero_optimization_stage()}
    engine.save_checkpoint(str(folder), tag=partial.name, client_state={"fishscale": meta, "config": config},
                           save_latest=False)
    _write_json(partial / f"rng-rank{rank}.json", rng_state())
    if rank == 0:
        _write_json(partial / STATE_NAME, {**meta, "config": config})
        save_weights(start_weights, partial / START_NAME)
    barrier()                                  # every rank's files are in place
    if rank == 0:
        commit_checkpoint(folder, partial, tag)
        prune_checkpoints(folder, keep=keep, newest=tag)
    barrier()                                  # nobody goes on (or exits) before the commit
    return tag


def commit_checkpoint(folder: Path, partial: Path, tag: str) -> None:
    """manifest.json (written last), then the rename that makes `tag` a checkpoint, then latest.json."""
    files = {}
    for path in sorted(p for p in partial.rglob("*") if p.is_file()):
        files[path.relative_to(partial).as_posix()] = {"bytes": path.stat().st_size, "sha256": _hash_file(path)}
    _write_json(partial / MANIFEST_NAME, {"tag": tag, "files": files}, durable=True)
    os.rename(partial, folder / tag)           # new_tag chose a name nothing has: never over a checkpoint
    _fsync_dir(folder)
    latest = folder / LATEST
    if latest.is_dir() and not latest.is_symlink():
        shutil.rmtree(latest)                  # a folder in our pointer's place
    _write_json(latest, {"tag": tag}, durable=True)


def checkpoint_tags(folder: Path) -> list[str]:
    """Folders named like checkpoints (symlinks are not checkpoints), oldest first."""
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if TAG_PATTERN.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(names, key=tag_order)


def prune_checkpoints(folder: Path, keep: int, newest: str) -> None:
    """After committing `newest`: keep the newest `keep` whole checkpoints; remove older whole ones,
    damaged ones older than `newest` (a resume would never choose them), partial folders and
    universal copies of removed checkpoints. "Whole" here is the cheap check (files and sizes)."""
    tags = checkpoint_tags(folder)
    whole = [t for t in tags if tag_order(t) <= tag_order(newest) and manifest_problem(folder / t, hashes=False) is None]
    kept = set(whole[-keep:]) | {newest}
    for tag in tags:
        if tag_order(tag) < tag_order(newest) and tag not in kept:
            shutil.rmtree(folder / tag, ignore_errors=True)
    remaining = set(checkpoint_tags(folder))
    for path in folder.iterdir():
        base = path.name.removesuffix(UNIVERSAL_SUFFIX)
        if path.is_dir() and not path.is_symlink() and (path.name.endswith(PARTIAL)
                                                        or (path.name.endswith(UNIVERSAL_SUFFIX) and base not in remaining)):
            shutil.rmtree(path, ignore_errors=True)


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


# ---------------------------------------------------------------- verify and choose

def manifest_problem(path: Path, hashes: bool = True) -> str | None:
    """None when every file of the checkpoint at `path` is as its manifest recorded (sizes, and
    sha256 when `hashes`), nothing else is there, and the manifest names this folder."""
    manifest = path / MANIFEST_NAME
    if not manifest.is_file():
        return f"no {MANIFEST_NAME} (its save never finished)"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        records = {str(k): (int(v["bytes"]), str(v["sha256"])) for k, v in data["files"].items()}
        tag = data["tag"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST_NAME} is unreadable ({type(e).__name__}: {e})"
    if tag != path.name:
        return f"{MANIFEST_NAME} was written for {tag!r}, not for this folder (a copy or a rename)"
    present = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file() or p.is_symlink()}
    for name, file in present.items():
        if name != MANIFEST_NAME and name not in records:
            return f"{name} is not in its {MANIFEST_NAME} (added after the save)"
        if file.is_symlink():
            return f"{name} is a symbolic link (a checkpoint holds its own files)"
    for name, (size, sha256) in records.items():
        file = present.get(name)
        if file is None:
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, {size} when written (truncated or overwritten)"
        if hashes and _hash_file(file) != sha256:
            return f"{name} does not match its sha256 (changed since it was written)"
    return None


def verify_checkpoint(path: Path) -> str | None:
    """None when the checkpoint at `path` is whole and safe to load; else the reason it is not."""
    from fishscale.train.safe_load import pickle_problem
    problem = manifest_problem(path)
    if problem:
        return problem
    records = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
    for name in (STATE_NAME, START_NAME):
        if name not in records:
            return f"{MANIFEST_NAME} does not list {name}"
    if not any(name.endswith("model_states.pt") for name in records):
        return f"{MANIFEST_NAME} lists no DeepSpeed model states"
    try:
        state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
        ranks = int(state["world_size"])
        step = Progress.from_dict(state["progress"]).step
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{STATE_NAME} is unreadable ({type(e).__name__}: {e})"
    if step != tag_order(path.name)[0]:
        return f"{STATE_NAME} is at step {step}, but the folder is named for step {tag_order(path.name)[0]}"
    for rank in range(ranks):
        if f"rng-rank{rank}.json" not in records:
            return f"rng-rank{rank}.json is missing (every one of its {ranks} ranks wrote one)"
    for name in records:
        if name.endswith(".pt"):
            problem = pickle_problem(path / name)
            if problem:
                return f"{name}: {problem}"
    return None


def read_latest(folder: Path) -> tuple[str | None, str | None]:
    """(tag latest.json names, problem with it)."""
    latest = folder / LATEST
    if not latest.exists():
        return None, f"{latest} is missing"
    if not latest.is_file():
        return None, f"{latest} is not a file"
    try:
        tag = json.loads(latest.read_text(encoding="utf-8"))["tag"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        return None, f"{latest} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
        return None, f"{latest} names no checkpoint ({tag!r})"
    return tag, None


def read_point(folder: Path, tag: str) -> ResumePoint:
    meta = json.loads((folder / tag / STATE_NAME).read_text(encoding="utf-8"))
    return ResumePoint(tag=tag, folder=folder, progress=Progress.from_dict(meta["progress"]),
                       engine_phase=int(meta["engine_phase"]), world_size=int(meta["world_size"]),
                       zero_stage=int(meta["zero_stage"]), config=meta.get("config", {}))


def choose_checkpoint(out: Path) -> tuple[ResumePoint | None, list[str]]:
    """The newest checkpoint of `out` that verifies (None: there is none), and what to tell the user.

    Raises FishscaleError, naming every checkpoint and its problem, when some exist but none verifies.
    Reads only; changes nothing."""
    folder = checkpoint_dir(out)
    tags = checkpoint_tags(folder)[::-1]
    hint, hint_problem = read_latest(folder)
    if not tags:
        if hint is not None or (folder / LATEST).is_file():
            raise FishscaleError(f"{folder / LATEST} names {hint or 'a checkpoint'}, but no checkpoint is left "
                                 f"in {folder}; starting again would overwrite the run's metrics and weights: "
                                 f"restore the checkpoints, or use another train.out")
        return None, []
    notes = [f"note: {hint_problem}; choosing among the step folders"] if hint_problem else []
    damaged = []
    for tag in tags:
        problem = verify_checkpoint(folder / tag)
        if problem is None:
            if damaged:
                notes.append(f"resuming from {tag} instead of {damaged[0][0]} (damaged)")
            elif hint is not None and hint != tag:
                notes.append(f"note: {folder / LATEST} names {hint}; {tag} is newer and whole: taking it")
            return read_point(folder, tag), notes
        damaged.append((tag, problem))
        notes.append(f"warning: checkpoint {folder / tag} is damaged: {problem}; skipped")
    listing = "; ".join(f"{tag}: {problem}" for tag, problem in damaged)
    raise FishscaleError(f"{folder}: no checkpoint can be resumed ({listing}); nothing was changed. Restore one "
                         f"from a backup, or start again in another train.out")


def universal_tag(point: ResumePoint, rank: int) -> str:
    """Convert the verified checkpoint to DeepSpeed's universal format (rank 0; every rank waits).

    Always converted afresh: a universal folder left from an earlier resume is not covered by
    the manifest, so it is not trusted."""
    from fishscale.train.distributed import any_rank, barrier
    tag = point.tag + UNIVERSAL_SUFFIX
    target = point.folder / tag
    failed = False
    if rank == 0:
        partial = point.folder / (tag + PARTIAL)
        shutil.rmtree(partial, ignore_errors=True)
        result = subprocess.run([sys.executable, "-m", "fishscale.train.safe_load", str(point.path), str(partial)],
                                capture_output=True, text=True)
        failed = result.returncode != 0
        if failed:
            sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
        else:
            shutil.rmtree(target, ignore_errors=True)
            os.rename(partial, target)
    if any_rank(failed):
        raise FishscaleError(f"{point.path}: conversion to a universal checkpoint failed "
                             f"(needed to resume {point.world_size} ranks' checkpoint at another world size)")
    barrier()
    return tag


def load_engine_state(engine, point: ResumePoint, tag: str) -> None:
    """Weights + optimizer state from the DeepSpeed checkpoint `tag` into a fresh engine, weights-only."""
    import pickle
    from fishscale.train.safe_load import load_checkpoint_safely, refusal
    try:
        path, _ = load_checkpoint_safely(engine, point.folder, tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
    except pickle.UnpicklingError as e:       # verified, then changed under us: still nothing runs
        raise FishscaleError(f"{point.folder / tag}: a file {refusal(e)}") from None
    except Exception as e:                    # verified files DeepSpeed still rejects: say so, no traceback
        reason = " ".join(str(e).split())[:400]
        raise FishscaleError(f"{point.folder / tag}: DeepSpeed could not load this checkpoint "
                             f"({type(e).__name__}: {reason})") from None
    if path is None:
        raise FishscaleError(f"{point.folder / tag}: DeepSpeed could not load this checkpoint")


def restore_rng(point: ResumePoint, rank: int, seed: int) -> None:
    """This rank's RNG states from the checkpoint; a rank that did not exist then is seeded afresh."""
    path = point.path / f"rng-rank{rank}.json"
    if rank < point.world_size:
        if not path.is_file():               # verify_checkpoint saw it: only a change since then
            raise FishscaleError(f"{path}: missing; resuming without it would reseed rank {rank}")
        set_rng_state(json.loads(path.read_text(encoding="utf-8")))
    else:
        seed_everything(rank_seed(seed + point.progress.step, rank))
