"""`fishscale bench checkpoint`: what a whole, verified checkpoint costs next to DeepSpeed's bare save.

    fishscale bench checkpoint                       # Swin-T (28 M parameters), ZeRO-2, 1 rank, CPU
    fishscale bench checkpoint --model swin_base_patch4_window7_224 --rounds 3

One engine (the model's real size, AdamW state after one step), then per round, side by side:
(a) ``engine.save_checkpoint`` alone (what fishscale 0.1 wrote), (b) fishscale's
``save_checkpoint`` (the same files into ``.partial``, RNG JSON, start.safetensors, sha256
manifest with fsync, rename, latest.json), (c) ``verify_checkpoint`` (what a resume reads before
choosing it: sizes, sha256, a weights-only read of every torch file). Medians over rounds and the
ratios b/a and c/a; absolute times depend on the disk and page cache.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch


def measure(model_name: str, rounds: int, work: Path) -> dict[str, float]:
    import timm
    from fishscale.config import load_config
    from fishscale.train.checkpoint import Progress, save_checkpoint, verify_checkpoint
    from fishscale.train.distributed import init_distributed
    from fishscale.train.engine import build_engine, deepspeed_config
    from fishscale.train.safe_load import forbid_pickles
    forbid_pickles()
    init_distributed()
    model = timm.create_model(model_name, pretrained=False, num_classes=1758)
    cfg = load_config(None, ["train.batch_size=2", "train.zero_stage=2", "train.precision=fp32"])
    engine = build_engine(model, [{"params": list(model.parameters()), "lr": 1e-4}],
                          deepspeed_config(cfg, 1, on_gpu=False))
    loss = engine(torch.randn(2, 3, 224, 224)).logsumexp(1).mean()
    engine.backward(loss)
    engine.step()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    times: dict[str, list[float]] = {"deepspeed": [], "fishscale": [], "verify": []}
    for r in range(rounds):
        bare = work / f"bare{r}"
        began = time.perf_counter()
        engine.save_checkpoint(str(bare), tag="step", save_latest=False)
        times["deepspeed"].append(time.perf_counter() - began)
        shutil.rmtree(bare)
        out = work / f"run{r}"
        began = time.perf_counter()
        tag = save_checkpoint(engine, out, Progress(step=r + 1), 0, cfg.to_dict(), 0, 1, start, keep=3)
        times["fishscale"].append(time.perf_counter() - began)
        began = time.perf_counter()
        problem = verify_checkpoint(out / "checkpoints" / tag)
        times["verify"].append(time.perf_counter() - began)
        assert problem is None, problem
        size = sum(p.stat().st_size for p in (out / "checkpoints" / tag).rglob("*") if p.is_file())
        shutil.rmtree(out)
    medians = {k: statistics.median(v) for k, v in times.items()}
    medians["megabytes"] = size / 1e6
    medians["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return medians


@click.command(name="checkpoint")
@click.option("--model", "model_name", default="swin_tiny_patch4_window7_224", show_default=True,
              help="timm model at its real size (random weights, 1,758 classes).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Saves of each kind.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the checkpoints (default: a temporary folder; put it on the disk you train to).")
def bench_checkpoint_command(model_name: str, rounds: int, work: Path | None) -> None:
    """DeepSpeed's bare save vs fishscale's atomic, verified save vs the resume-time verification."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        m = measure(model_name, rounds, Path(tmp))
    click.echo(f"{model_name}: {m['params_m']:.1f} M parameters, checkpoint {m['megabytes']:.0f} MB "
               f"(ZeRO-2, fp32, AdamW state), median of {rounds}")
    click.echo(f"  (a) engine.save_checkpoint           {m['deepspeed']:7.2f} s")
    click.echo(f"  (b) fishscale save_checkpoint        {m['fishscale']:7.2f} s   b/a = {m['fishscale'] / m['deepspeed']:.2f}")
    click.echo(f"  (c) verify_checkpoint (at resume)    {m['verify']:7.2f} s   c/a = {m['verify'] / m['deepspeed']:.2f}")
