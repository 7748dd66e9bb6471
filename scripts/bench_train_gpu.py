#!/usr/bin/env python
"""GPU training throughput of fishscale's DeepSpeed engine: Swin-T, 224 px, bf16, ZeRO-2, one GPU.

    python scripts/bench_train_gpu.py                       # random tensors already on the GPU
    python scripts/bench_train_gpu.py --shards shards       # the torch loader backend over real shards
    python scripts/bench_train_gpu.py --synth /tmp/fs       # make `small` synthetic shards there first

Prints training images/s (median of timed windows after warm-up) and the peak GPU memory
(torch.cuda.max_memory_allocated), for the reference fish-vista model: configs/fishvista_swin_t.yaml
(Swin-T with the 768->256 MLP head, focal loss) with random init (no download), the engine and
config merge fishscale trains with (fishscale.train.engine: bf16, ZeRO-2, AdamW via torch, clipping 1.0).
``--compare-torch`` also times a plain PyTorch loop (torch.autocast bf16, fused AdamW) on the same
model and batch. For scale: timm's published Swin-T training rate on an RTX 3090 is ~647 img/s
(AMP, batch 256). The torch loader backend is used because DALI may be absent on the GPU machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "fishvista_swin_t.yaml"))
    parser.add_argument("--shards", default=None, help="folder holding train/manifest.json (torch loader backend)")
    parser.add_argument("--synth", default=None, help="make `small` synthetic shards in this folder and use them")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=12, help="torch loader workers")
    parser.add_argument("--classes", type=int, default=1758, help="classes for random tensors (fish-vista: 1758)")
    parser.add_argument("--compare-torch", action="store_true", help="also time a plain PyTorch bf16 loop")
    return parser.parse_args()


def make_shards(folder: Path) -> Path:
    from fishscale.shards.shard import shard_dataset
    from fishscale.data.synth.write import synthesize
    shards = folder / "shards"
    if not (shards / "train" / "manifest.json").is_file():
        data = synthesize(folder / "data", profile="small", seed=0)
        shard_dataset(data, shards, splits=["train"], max_side=320, samples_per_shard=500, workers=16, seed=0)
    return shards


def batches(cfg, shards: Path | None, classes: int, batch: int):
    """(images bf16 on the GPU, labels) forever: the torch loader, or one random batch reused."""
    if shards is None:
        images = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
        labels = torch.randint(0, classes, (batch,), device="cuda")
        while True:
            yield images, labels
    from fishscale.loader.build import build_loader
    from fishscale.shards.manifest import load_manifest
    manifest = load_manifest(shards / "train")
    epoch = 0
    while True:
        for images, labels in build_loader(cfg, manifest, train=True, epoch=epoch):
            yield images.to("cuda", torch.bfloat16, non_blocking=True), labels.to("cuda", non_blocking=True)
        epoch += 1


def timed(step, source, steps: int, warmup: int, batch: int) -> tuple[float, float]:
    for _ in range(warmup):
        step(*next(source))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    rates, window = [], 10
    for _ in range(steps // window):
        start = time.perf_counter()
        for _ in range(window):
            step(*next(source))
        torch.cuda.synchronize()
        rates.append(window * batch / (time.perf_counter() - start))
    return statistics.median(rates), torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU visible (this benchmark is for GPUs; `fishscale bench train` is the CPU one)")
    from fishscale.config import load_config
    from fishscale.train.distributed import init_distributed
    from fishscale.train.engine import build_engine, deepspeed_config
    from fishscale.model.losses import build_loss
    from fishscale.model.factory import build_model, param_groups
    shards = make_shards(Path(args.synth)) if args.synth else (Path(args.shards) if args.shards else None)
    cfg = load_config(args.config, [
        "model.pretrained=none", "data.backend=torch", "data.device=gpu", f"data.num_workers={args.num_workers}",
        f"train.batch_size={args.batch_size}", "train.grad_accum=1", f"train.zero_stage={args.zero_stage}",
        "train.precision=bf16", *([f"data.shards={shards}"] if shards else [])])
    phase = dataclasses.replace(cfg.phases[-1], freeze_backbone=False)
    if shards is not None:
        from fishscale.shards.manifest import load_manifest
        counts = load_manifest(shards / "train").train_class_counts
    else:
        counts = [10] * args.classes
    dist = init_distributed()
    torch.manual_seed(0)
    model = build_model(cfg.model, len(counts), cfg.data.image_size)
    params = sum(p.numel() for p in model.parameters())
    loss_fn = build_loss(cfg.loss, counts).to(dist.device)
    engine = build_engine(model, param_groups(model, phase, cfg.optim), deepspeed_config(cfg, 1, on_gpu=True))

    def engine_step(images, labels):
        loss = loss_fn(engine(images), labels)
        engine.backward(loss)
        engine.step()

    source = batches(cfg, shards, len(counts), args.batch_size)
    rate, peak = timed(engine_step, source, args.steps, args.warmup, args.batch_size)
    gpu = torch.cuda.get_device_name()
    data = f"torch loader over {shards}" if shards else "random tensors on the GPU"
    print(f"{gpu}: {cfg.model.name} ({params / 1e6:.1f} M params, MLP head) 224 px, bf16, ZeRO-{args.zero_stage}, "
          f"batch {args.batch_size}, {data}")
    print(f"DeepSpeed engine: {rate:.0f} img/s, peak GPU memory {peak:.2f} GiB")
    if args.compare_torch:
        engine.destroy()
        del engine
        torch.cuda.empty_cache()
        torch.manual_seed(0)
        model = build_model(cfg.model, len(counts), cfg.data.image_size).cuda()
        optimizer = torch.optim.AdamW(param_groups(model, phase, cfg.optim), betas=cfg.optim.betas, fused=True)

        def torch_step(images, labels):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(images), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad or 1e9)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        rate_torch, peak_torch = timed(torch_step, source, args.steps, args.warmup, args.batch_size)
        print(f"plain PyTorch (autocast bf16, fused AdamW): {rate_torch:.0f} img/s, peak {peak_torch:.2f} GiB; "
              f"DeepSpeed / PyTorch = {rate / rate_torch:.2f}x")


if __name__ == "__main__":
    main()
