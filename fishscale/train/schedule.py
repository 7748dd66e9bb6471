"""Learning rate per phase: linear warm-up, then cosine down to a floor.

    schedule = PhaseSchedule(optimizer, total_steps=steps_per_epoch * phase.epochs,
                             warmup_steps=cfg.optim.warmup_steps, min_lr_ratio=cfg.optim.min_lr_ratio)
    schedule.apply(step)        # before optimizer step `step` (0-based, counted within the phase)

Each param group keeps its own peak lr (head, backbone, layer-decayed backbone layers), read
once from the group when the phase's optimizer is built; the schedule multiplies every peak by
the same factor. A pure function of the step, so a resumed run sets exactly the same lrs.
The groups are looked up on the optimizer at every step: loading a checkpoint replaces the
optimizer's group dicts (torch's load_state_dict), so holding on to the old ones would set
lrs nobody reads.
"""
from __future__ import annotations

import math
from typing import Any


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of a phase.

    Warm-up: (step + 1) / warmup_steps, so the first step already moves. Then cosine from 1 at
    the end of warm-up to `min_lr_ratio` at the last step.
    """
    if total_steps < 1:
        return 1.0
    warmup_steps = max(0, min(warmup_steps, total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 1:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (decay_steps - 1))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class PhaseSchedule:
    """Sets every param group's lr = its peak lr x lr_factor(step)."""

    def __init__(self, optimizer: Any, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
        self.optimizer = optimizer          # anything with .param_groups (DeepSpeed's ZeRO wrappers too)
        self.peak_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.total_steps, self.warmup_steps, self.min_lr_ratio = total_steps, warmup_steps, min_lr_ratio

    def apply(self, step: int) -> float:
        """Set the lrs for `step`; return the largest (the head's, for logging)."""
        factor = lr_factor(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)
        groups = self.optimizer.param_groups
        if len(groups) != len(self.peak_lrs):
            raise RuntimeError(f"optimizer has {len(groups)} param groups, the schedule {len(self.peak_lrs)}")
        for group, peak in zip(groups, self.peak_lrs):
            group["lr"] = peak * factor
        return max(self.peak_lrs) * factor
