"""What the training tests share: the tiny config, launching `fishscale train` as a user would,
and reading a run's per-step losses back (pandas reads what json.dumps wrote)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
STEPS = 16                      # 2 phases x 1 epoch x 8 steps
LAUNCH_TIMEOUT = 420


def tiny_config(shards: Path) -> dict:
    return {
        "data": {"shards": str(shards), "backend": "torch", "image_size": 32, "num_workers": 0},
        "augment": {"rotate_prob": 0.0, "color_jitter_prob": 0.0, "sharpness_prob": 0.0},
        "sampler": {"epoch_length": 128},
        "model": {"name": "swin_tiny_patch4_window7_224", "drop_path_rate": 0.0,
                  "kwargs": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4}},
        "loss": {"name": "ce"},
        "optim": {"warmup_steps": 0, "weight_decay": 0.0},
        "phases": [{"name": "head", "epochs": 1, "freeze_backbone": True, "lr": 1.0e-2},
                   {"name": "full", "epochs": 1, "freeze_backbone": False, "lr": 3.0e-3}],
        "train": {"batch_size": 16, "zero_stage": 2, "log_every_steps": 1, "clip_grad": 1.0},
        "eval": {"batch_size": 64},
    }


def fishscale_train(config: Path, out: Path, *overrides: str, nproc: int = 1) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fishscale.cli", "train", "--config", str(config), "--nproc", str(nproc),
               f"train.out={out}", *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, cwd=out.parent)


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def train_losses(run: Path) -> pd.Series:
    """step -> loss of every logged train step (pandas reads what json.dumps wrote)."""
    frame = pd.read_json(run / "metrics.jsonl", lines=True)
    train = frame[frame["kind"] == "train"]
    return train.set_index("step")["loss"].astype(float)


def folder_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder` (a byte-identical check)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
