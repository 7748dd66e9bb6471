"""Training under real DeepSpeed on the CPU (gloo): ZeRO 1/2/3 over two ranks, gradient
accumulation equivalence, the phase switch, exact resume after SIGKILL, resume at another
world size, two "nodes" started by hand, bad configs; plus the pure pieces (config merge,
schedule).

Every launch trains a ~0.2 M-parameter Swin at 32 px for 2 phases x 8 steps (global batch 16)
on the `tiny_shards` fixture, in a subprocess, exactly as a user would start it. The runs are
cached per module, so a run several tests read is paid for once. Outputs are read back with
other readers than the writers: metrics.jsonl with pandas, weights with safetensors' numpy API.

Tolerances: a rank split changes only the order of floating-point sums, so 2 ranks vs 1 rank
with gradient accumulation 2 agree to 1e-5 relative on per-step losses and 5e-5 absolute on
every parameter after 16 AdamW steps (measured: 6e-6; Adam divides by sqrt(v), which magnifies
rounding on near-zero gradients; training moves weights by ~5e-2). A resume on the same world
size is bit-exact.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from fishscale.config import load_config
from fishscale.errors import FishscaleError
from trainkit import LAUNCH_TIMEOUT, REPO, STEPS, check_ok, fishscale_train, train_losses

@pytest.fixture(scope="module")
def config_file(tiny_train_config) -> Path:
    return tiny_train_config


@pytest.fixture(scope="module")
def runs(config_file, tmp_path_factory):
    """runs(name, *overrides, nproc=N) -> run folder; each distinct run launches once per module."""
    root = tmp_path_factory.mktemp("train_runs")
    cache: dict[str, Path] = {}

    def get(name: str, *overrides: str, nproc: int = 1) -> Path:
        if name not in cache:
            out = root / name
            check_ok(fishscale_train(config_file, out, *overrides, nproc=nproc))
            cache[name] = out
        return cache[name]
    return get


def expected_keys(run: Path) -> set[str]:
    from fishscale.model.factory import build_model
    cfg = load_config(run / "config.yaml")
    classes = json.loads((run / "classes.json").read_text())
    return set(build_model(cfg.model, len(classes["class_names"]), cfg.data.image_size).state_dict())


# ZeRO-3 validates in batches of 26: 105 val images split 53 / 52 give the ranks 3 and 2 batches,
# which the loop must even out (every ZeRO-3 forward is a collective)
ZERO_RUN_OPTIONS = {1: (), 2: ("train.checkpoint_every_steps=12",), 3: ("eval.batch_size=26",)}


def zero_run(runs, stage: int) -> Path:
    return runs(f"zero{stage}", f"train.zero_stage={stage}", *ZERO_RUN_OPTIONS[stage], nproc=2)


# ---------------------------------------------------------------- two ranks, ZeRO 1/2/3

@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_ranks_under_the_launcher_train_and_the_loss_falls(runs, stage):
    run = zero_run(runs, stage)
    losses = train_losses(run)
    assert list(losses.index) == list(range(1, STEPS + 1))
    assert np.isfinite(losses).all()
    # first step ~ ln(23 classes) = 3.1; a learning model ends well below it
    assert losses.iloc[-4:].mean() < losses.iloc[0] - 0.5, losses.tolist()
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["world_size"], summary["zero_stage"], summary["steps"]) == (2, stage, STEPS)
    frame = pd.read_json(run / "metrics.jsonl", lines=True)
    val = frame[frame["kind"] == "val"]
    assert len(val) == 2 and val["top1"].between(0, 1).all() and "bins" in val.columns
    assert (val["images"] == 105).all()                       # every val image once, over both ranks
    assert (frame["kind"] == "summary").sum() == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    tb_loss = {e.step: e.value for e in events.Scalars("train/loss")}
    np.testing.assert_allclose([tb_loss[s] for s in losses.index], losses.to_numpy(), rtol=1e-6)
    assert len(events.Scalars("val/macro_acc")) == 2 and len(events.Scalars("val/bin_acc/majority")) == 2
    # consolidated fp32 weights of the plain timm model (ZeRO-3: gathered from both ranks)
    for name in ("best", "last"):
        weights = load_file(str(run / f"{name}.safetensors"))
        assert set(weights) == expected_keys(run)
        assert all(w.dtype == np.float32 or w.dtype.kind == "i" for w in weights.values())
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["tag"]
    tag_dir = run / "checkpoints" / latest
    assert (tag_dir / "rng-rank0.json").is_file() and (tag_dir / "rng-rank1.json").is_file()
    assert load_config(run / "config.yaml").train.zero_stage == stage
    state = json.loads((tag_dir / "fishscale_state.json").read_text())
    assert state["config"]["train"]["zero_stage"] == stage and state["world_size"] == 2


def test_phase_switch_keeps_the_backbone_frozen_then_trains_it(runs):
    run = zero_run(runs, 3)
    start = load_file(str(run / "checkpoints" / "phase0_start.safetensors"))
    switch = load_file(str(run / "checkpoints" / "phase1_start.safetensors"))
    last = load_file(str(run / "last.safetensors"))
    head = {k for k in start if k.startswith("head.")}
    assert head == {"head.fc.weight", "head.fc.bias"}
    backbone = [k for k in start if k not in head and start[k].dtype == np.float32]
    assert all(np.array_equal(start[k], switch[k]) for k in backbone), "frozen phase changed the backbone"
    assert all(not np.array_equal(start[k], switch[k]) for k in head), "head phase did not train the head"
    changed = [k for k in backbone if not np.array_equal(switch[k], last[k])]
    assert len(changed) >= 0.9 * len(backbone), f"full phase trained only {len(changed)}/{len(backbone)}"


def test_two_ranks_equal_one_rank_with_gradient_accumulation(runs):
    two = zero_run(runs, 2)
    one = runs("one_rank_accum2", "train.zero_stage=2", "train.grad_accum=2")
    a, b = train_losses(two), train_losses(one)
    assert list(a.index) == list(b.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5)
    wa, wb = load_file(str(two / "last.safetensors")), load_file(str(one / "last.safetensors"))
    worst = max(float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wa)
    assert worst < 5e-5, f"largest parameter difference {worst}"
    moved = max(float(np.abs(wa[k].astype(np.float64) - load_file(str(two / "checkpoints" / "phase0_start.safetensors"))[k]).max())
                for k in wa)
    assert moved > 100 * worst        # training moved the weights far more than the tolerance


# ---------------------------------------------------------------- resume

def test_resume_after_sigkill_replays_the_same_losses(runs, config_file, tmp_path):
    reference = runs("one_rank_accum2", "train.zero_stage=2", "train.grad_accum=2")
    out = tmp_path / "killed"
    overrides = ["train.zero_stage=2", "train.grad_accum=2", "train.checkpoint_every_steps=3"]
    command = [sys.executable, "-m", "fishscale.cli", "train", "--config", str(config_file), f"train.out={out}",
               *overrides]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + LAUNCH_TIMEOUT
    try:
        # kill mid-epoch of phase 1 once a mid-epoch checkpoint exists (steps 3/6 checkpoint, 8 ends the epoch)
        while not (metrics.is_file() and '"step": 4,' in metrics.read_text()):
            assert process.poll() is None, process.stderr.read()[-4000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    tag = json.loads((out / "checkpoints" / "latest.json").read_text())["tag"]
    assert tag in ("step00000003", "step00000006")           # a mid-epoch checkpoint

    resumed = fishscale_train(config_file, out, *overrides)
    check_ok(resumed)
    assert f"checkpoint {tag}" in resumed.stderr and "resuming" in resumed.stderr
    a, b = train_losses(reference), train_losses(out)
    assert list(b.index) == list(range(1, STEPS + 1))          # replayed steps logged once
    assert a.to_list() == b.to_list()                          # bit-exact on the CPU in fp32
    wa, wb = load_file(str(reference / "last.safetensors")), load_file(str(out / "last.safetensors"))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_resume_at_another_world_size_keeps_the_order(runs, config_file, tmp_path):
    """The 2-rank ZeRO-2 run, restarted from its mid-phase checkpoint (step 12) on 1 rank:
    DeepSpeed's universal checkpoint re-partitions the optimizer state; same global batch,
    so the same samples in the same order, and the same losses up to summation order."""
    two = zero_run(runs, 2)
    out = tmp_path / "regrouped"
    shutil.copytree(two, out)
    shutil.rmtree(out / "checkpoints" / "step00000016")           # the newest whole checkpoint is step 12
    result = fishscale_train(config_file, out, "train.zero_stage=2")
    check_ok(result)
    assert "2 rank(s) then, 1 now" in result.stderr
    assert (out / "checkpoints" / "step00000012_universal" / "zero").is_dir()
    a, b = train_losses(two), train_losses(out)
    assert list(b.index) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(b.loc[13:].to_numpy(), a.loc[13:].to_numpy(), rtol=1e-4)
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1


# ---------------------------------------------------------------- nodes by hand

def test_two_nodes_started_by_hand_with_no_ssh(runs, config_file, tmp_path):
    from fishscale.train.distributed import free_port
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    out, port = tmp_path / "two_nodes", str(free_port())
    launchers = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
                   "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", port,
                   str(REPO / "launch" / "train.py"), "--config", str(config_file), f"train.out={out}",
                   "train.zero_stage=1"]
        launchers.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          cwd=tmp_path))
    logs = [p.communicate(timeout=LAUNCH_TIMEOUT)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    # the same 2-rank world as the single-launcher ZeRO-1 run: the same losses
    np.testing.assert_allclose(train_losses(out).to_numpy(), train_losses(zero_run(runs, 1)).to_numpy(), rtol=1e-6)


# ---------------------------------------------------------------- bad input

def test_bad_config_is_a_clear_error(config_file, tmp_path):
    from fishscale.cli import main
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--config", str(config_file), f"train.out={tmp_path / 'x'}",
                                  "train.bogus=1"])
    assert result.exit_code == 2
    assert "unknown key 'train.bogus'" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["train", "--config", str(config_file), "--nproc", "2", "train.batch_size=7",
                                  f"train.out={tmp_path / 'x'}"])
    assert result.exit_code == 2 and "train.batch_size 7" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_file.read_text().replace("zero_stage: 2", "zero_stage: 2\n  zero_stag: 3"))
    launched = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--config", str(bad)],
                              capture_output=True, text=True, timeout=120)
    assert launched.returncode == 2
    assert "unknown key 'train.zero_stag'" in launched.stderr and "Traceback" not in launched.stderr
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- non-finite losses

SKIP_SCRIPT = r"""
import json, sys, types
import torch
from fishscale.config import load_config
from fishscale.train.distributed import init_distributed
from fishscale.train.engine import build_engine, deepspeed_config
from fishscale.train.loop import train_step

class SometimesNaN(torch.nn.Module):
    bad = False       # the first micro batch of a step goes NaN, the second is fine
    calls = 0
    def forward(self, logits, labels):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss * float("nan") if self.bad and self.calls % 2 == 1 else loss

dist = init_distributed()
report = {}
for stage in (0, 2, 3):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    cfg = load_config(None, ["train.batch_size=4", "train.grad_accum=2", f"train.zero_stage={stage}"])
    engine = build_engine(model, [{"params": list(model.parameters()), "lr": 0.1}], deepspeed_config(cfg, 1, False))
    loss_fn = SometimesNaN()
    ctx = types.SimpleNamespace(cfg=cfg, dist=dist, loss_fn=loss_fn, input_dtype=torch.float32)
    batches = iter([(torch.randn(2, 4), torch.tensor([0, 2]))] * 6)
    def weights():
        from deepspeed.utils import safe_get_full_fp32_param
        return [float((safe_get_full_fp32_param(p) if safe_get_full_fp32_param(p) is not None else p).sum())
                for p in engine.module.parameters()]
    w0 = weights(); good = train_step(ctx, engine, batches); w1 = weights()
    loss_fn.bad = True; bad = train_step(ctx, engine, batches); w2 = weights()
    loss_fn.bad = False; again = train_step(ctx, engine, batches); w3 = weights()
    report[stage] = {"good": good[1], "bad": bad[1], "moved": w0 != w1, "held": w1 == w2, "moved_again": w2 != w3,
                     "again_finite": again[0] == again[0]}
print(json.dumps(report))
"""


def test_a_non_finite_step_is_skipped_without_an_update():
    result = subprocess.run([sys.executable, "-c", SKIP_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for stage, row in report.items():
        assert row == {"good": False, "bad": True, "moved": True, "held": True, "moved_again": True,
                       "again_finite": True}, (stage, row)


def test_too_many_non_finite_steps_in_a_row_stop_with_a_clear_error():
    import types
    from fishscale.train.checkpoint import Progress
    from fishscale.train.loop import count_nonfinite
    cfg = load_config(None, ["train.max_nonfinite_steps=3"])
    messages: list[str] = []
    ctx = types.SimpleNamespace(cfg=cfg, progress=Progress(step=7), log=types.SimpleNamespace(echo=messages.append))
    count_nonfinite(ctx, True, epoch=1)
    count_nonfinite(ctx, False, epoch=1)                 # a good step resets the run of bad ones
    count_nonfinite(ctx, True, epoch=1)
    count_nonfinite(ctx, True, epoch=1)
    with pytest.raises(FishscaleError, match="not finite for 3 steps in a row .*train.max_nonfinite_steps"):
        count_nonfinite(ctx, True, epoch=1)
    assert ctx.progress.nonfinite_steps == 4 and len(messages) == 4


# ---------------------------------------------------------------- pure pieces

def test_deepspeed_config_merges_the_yaml(tmp_path):
    from fishscale.train.engine import deepspeed_config
    cfg = load_config(None, ["train.batch_size=64", "train.grad_accum=2", "train.zero_stage=3", "train.clip_grad=null",
                             "optim.betas=[0.8, 0.9]", "optim.weight_decay=0.1"])
    ds = deepspeed_config(cfg, world_size=4, on_gpu=True)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (64, 8, 2)
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["stage3_prefetch_bucket_size"] > 0
    assert ds["gradient_clipping"] == 0.0 and ds["bf16"]["enabled"] is True
    assert ds["optimizer"]["params"]["betas"] == [0.8, 0.9] and ds["optimizer"]["params"]["weight_decay"] == 0.1
    cpu = deepspeed_config(cfg, world_size=1, on_gpu=False)
    assert "bf16" not in cpu and cpu["train_micro_batch_size_per_gpu"] == 32
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1, "overlap_comm": False}, "train_batch_size": 3,
                               "bf16": {"enabled": True}}))
    cfg = load_config(None, [f"train.deepspeed_config={own}", "train.zero_stage=2", "train.precision=fp32"])
    ds = deepspeed_config(cfg, world_size=2, on_gpu=True)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": False}     # YAML owns the stage
    assert ds["train_batch_size"] == 32 and "bf16" not in ds
    with pytest.raises(FishscaleError, match="multiple of ranks x train.grad_accum = 3 x 1"):
        deepspeed_config(load_config(None, ["train.batch_size=32"]), world_size=3, on_gpu=False)
    with pytest.raises(FishscaleError, match="train.precision"):
        deepspeed_config(load_config(None, ["train.precision=fp16"]), world_size=1, on_gpu=False)
    with pytest.raises(FishscaleError, match="deepspeed_config"):
        deepspeed_config(load_config(None, ["train.deepspeed_config=nope.json"]), world_size=1, on_gpu=False)


def test_schedule_warms_up_then_follows_the_cosine():
    import torch
    from fishscale.train.schedule import PhaseSchedule, lr_factor
    assert [lr_factor(s, 10, warmup_steps=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, warmup_steps=4) == 1.0
    assert lr_factor(9, 10, warmup_steps=4, min_lr_ratio=0.1) == pytest.approx(0.1)
    middle = lr_factor(4 + 5 / 2, 10, warmup_steps=4, min_lr_ratio=0.0)
    assert middle == pytest.approx(0.5)
    factors = [lr_factor(s, 10, 4, 0.1) for s in range(4, 10)]
    assert all(a > b for a, b in zip(factors, factors[1:]))
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param], "lr": 1.0}, {"params": [], "lr": 0.1}])
    schedule = PhaseSchedule(optimizer, total_steps=10, warmup_steps=4)
    optimizer.load_state_dict(optimizer.state_dict())     # replaces the group dicts, as a resume does
    assert schedule.apply(1) == 0.5
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.05]
