"""`fishscale bench train`: the DeepSpeed engine vs a plain PyTorch loop, the loader's share,
and per-rank memory of model states at ZeRO 0/1/2/3 against DeepSpeed's formulas.

    fishscale bench train [--config configs/quickstart.yaml] [--shards DIR] [--steps 20] [--ranks 2]

Speed (one rank, in this process, fp32 on the CPU): the same model (same initial weights),
the same batch, the same loader (fishscale.loader over the shards), the same loss and AdamW
hyper-parameters and gradient clipping, run as
  (a) a plain PyTorch loop: forward, loss, backward, clip_grad_norm_, AdamW.step;
  (b) the DeepSpeed engine at ZeRO-2 (fishscale.train.engine: the config fishscale trains with);
  (c) (b) fed from batches already in memory: the compute ceiling, so (b)/(c) shows what
      the loader costs the training loop (goal: ~1, the loader never the bottleneck).
The variants alternate for ``--rounds`` rounds of ``--steps`` timed steps (after
``--warmup`` steps), so drift on a shared machine hits them alike; each figure is the median
round; CPU milliseconds per image of this process (all its threads) are reported too, as they
suffer less from other tenants of a shared machine. The loader share is the time the loop waits
in next(loader) over the step time.

Memory (``--ranks`` processes under the deepspeed launcher, gloo; the full Swin-T, 28 M
parameters, at 224 px and micro batch 2, whatever the config's model): after two optimizer steps and
a third backward (gradients alive: the peak), every rank sums the bytes of the distinct tensor
storages alive in its process (parameters, gradients, optimizer states, DeepSpeed's flat
buffers), for ZeRO 0, 1, 2, 3 in turn (communication buckets capped at Psi/10 elements), next to
the formulas of the ZeRO paper for Psi parameters on N ranks. Mixed precision (GPUs: bf16
weights and gradients, fp32 master + Adam m, v = 2 + 2 + 12 bytes/param):
ZeRO-0 16 Psi, ZeRO-1 4 Psi + 12 Psi/N, ZeRO-2 2 Psi + 14 Psi/N, ZeRO-3 16 Psi/N. fp32
training, what runs here (weights 4 + gradients 4 + Adam m, v 8 = 16 bytes/param):
ZeRO-0 16 Psi, ZeRO-1 8 Psi + 8 Psi/N, ZeRO-2 4 Psi + 12 Psi/N, ZeRO-3 16 Psi/N; DeepSpeed's
ZeRO-1/2 also keep an fp32 copy of each rank's partition (+4 Psi/N) even in fp32 training.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import torch

from fishscale.config import REPO_ROOT, Config, load_config
from fishscale.errors import FishscaleError

DEFAULT_CONFIG = REPO_ROOT / "configs" / "quickstart.yaml"
MIB = 2**20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data and model

def tiny_shards(work: Path) -> Path:
    """Synthesize the tiny dataset and shard it under `work` (reused when already there)."""
    from fishscale.shards.shard import shard_dataset
    from fishscale.data.synth.write import synthesize
    shards = work / "shards"
    if not (shards / "train" / "manifest.json").is_file():
        log(f"making the tiny synthetic shards in {shards} ...")
        data = synthesize(work / "data", profile="tiny", seed=0)
        shard_dataset(data, shards, splits=["train"], max_side=256, samples_per_shard=200, workers=2, seed=0)
    return shards


def bench_config(config: Path, shards: Path, overrides: list[str]) -> Config:
    cfg = load_config(config, [f"data.shards={shards}", "train.grad_accum=1", *overrides])
    cfg.phases = [dataclasses.replace(cfg.phases[-1], freeze_backbone=False)]   # the full fine-tune phase
    return cfg


def fresh_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    from fishscale.model.factory import build_model
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model, num_classes, cfg.data.image_size).train()


def loader_batches(cfg: Config, manifest, epoch: int) -> Iterator:
    from fishscale.loader.build import build_loader
    while True:          # epochs back to back, so a round never runs dry
        yield from build_loader(cfg, manifest, train=True, epoch=epoch)
        epoch += 1


# ---------------------------------------------------------------- the two loops

def plain_step_fn(cfg: Config, model, loss_fn) -> Callable:
    from fishscale.model.factory import param_groups
    groups = param_groups(model, cfg.phases[0], cfg.optim)
    optimizer = torch.optim.AdamW(groups, lr=cfg.phases[0].lr, betas=cfg.optim.betas, eps=1e-8,
                                  weight_decay=cfg.optim.weight_decay)

    def step(images, labels):
        loss = loss_fn(model(images), labels)
        loss.backward()
        if cfg.train.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def engine_step_fn(cfg: Config, model, loss_fn, zero_stage: int):
    from fishscale.train.engine import build_engine, deepspeed_config
    from fishscale.model.factory import param_groups
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, zero_stage=zero_stage))
    engine = build_engine(model, param_groups(model, cfg.phases[0], cfg.optim), deepspeed_config(cfg, 1, False))

    def step(images, labels):
        loss = loss_fn(engine(images), labels)
        engine.backward(loss)
        engine.step()
    return step, engine


def cpu_seconds() -> float:
    """CPU time of this process, all its threads (DALI's and torch's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_round(step: Callable, batches: Iterator, steps: int, warmup: int, batch_size: int) -> dict[str, float]:
    wait = busy = cpu = 0.0
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), cpu_seconds()
        images, labels = next(batches)
        got = time.perf_counter()
        step(images, labels)
        done = time.perf_counter()
        if i >= warmup:
            wait, busy, cpu = wait + (got - start), busy + (done - start), cpu + (cpu_seconds() - cpu_start)
    return {"img_per_s": steps * batch_size / busy, "loader_share": wait / busy, "step_ms": 1000 * busy / steps,
            "cpu_ms_per_img": 1000 * cpu / (steps * batch_size)}


def cached(batches: list) -> Iterator:
    while True:
        yield from batches


def speed(cfg: Config, steps: int, warmup: int, rounds: int) -> dict[str, Any]:
    from fishscale.train.distributed import init_distributed
    from fishscale.train.engine import destroy_engine
    from fishscale.model.losses import build_loss
    from fishscale.shards.manifest import load_manifest
    init_distributed()
    manifest = load_manifest(Path(cfg.data.shards) / cfg.data.train_split)
    loss_fn = build_loss(cfg.loss, manifest.train_class_counts)
    num_classes = len(manifest.class_names)
    memory_batches = [b for _, b in zip(range(warmup + steps), loader_batches(cfg, manifest, epoch=1000))]
    results: dict[str, list[dict[str, float]]] = {"torch": [], "deepspeed": [], "deepspeed_cached": []}
    for r in range(rounds):
        for name in results:
            model = fresh_model(cfg, num_classes)
            engine = None
            if name == "torch":
                step = plain_step_fn(cfg, model, loss_fn)
            else:
                step, engine = engine_step_fn(cfg, model, loss_fn, zero_stage=2)
            batches = cached(memory_batches) if name.endswith("cached") else loader_batches(cfg, manifest, epoch=r)
            results[name].append(time_round(step, batches, steps, warmup, cfg.train.batch_size))
            log(f"round {r + 1}/{rounds} {name:17s} {results[name][-1]['img_per_s']:7.1f} img/s, "
                f"loader wait {100 * results[name][-1]['loader_share']:.1f}% of the step")
            if engine is not None:
                destroy_engine(engine)
            del step, engine, model, batches
            gc.collect()
    return {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in results.items()}


# ---------------------------------------------------------------- memory (one rank of several)

def live_tensor_bytes() -> int:
    """Bytes of the distinct tensor storages alive in this process."""
    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, ReferenceError):      # tensors without storage (meta, freed)
            continue
    storages.pop(0, None)
    return sum(storages.values())


def optimizer_state_bytes(engine) -> int:
    seen: dict[int, int] = {}
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(seen.values())


BUCKET_KEYS = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size")


def memory_ds_config(cfg: Config, stage: int, world_size: int, params: int) -> dict[str, Any]:
    """fishscale's DeepSpeed config for `stage`, communication buckets capped at a tenth of the
    model: DeepSpeed allocates buckets of their configured size whatever the model (the shipped
    JSONs' 5e7 elements = 200 MB in fp32, more than Swin-T's model states), which would bury
    the model states the formulas describe."""
    from fishscale.train.engine import deepspeed_config
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, zero_stage=stage))
    ds = deepspeed_config(cfg, world_size, False)
    zero = ds["zero_optimization"]
    for key in BUCKET_KEYS:
        cap = params // 10
        zero[key] = int(min(zero.get(key, cap), cap - cap % 2))   # even: DeepSpeed's alignment
    return ds


def memory_worker(config: Path, shards: Path, overrides: list[str], out: Path) -> None:
    """Run under the launcher: per ZeRO stage, model-state bytes on this rank after 2 steps."""
    from fishscale.train.distributed import barrier, init_distributed
    from fishscale.train.engine import build_engine, destroy_engine
    from fishscale.model.losses import build_loss
    from fishscale.shards.manifest import load_manifest
    from fishscale.model.factory import param_groups
    dist = init_distributed()
    cfg = bench_config(config, shards, overrides)
    manifest = load_manifest(Path(cfg.data.shards) / cfg.data.train_split)
    loss_fn = build_loss(cfg.loss, manifest.train_class_counts)
    micro = cfg.train.batch_size // dist.world_size
    size = cfg.data.image_size
    generator = torch.Generator().manual_seed(dist.rank)
    images = torch.randn(micro, 3, size, size, generator=generator)
    labels = torch.randint(0, len(manifest.class_names), (micro,), generator=generator)
    baseline = live_tensor_bytes() - images.nbytes - labels.nbytes
    rows = []
    for stage in (0, 1, 2, 3):
        model = fresh_model(cfg, len(manifest.class_names))
        params = sum(p.numel() for p in model.parameters())
        engine = build_engine(model, param_groups(model, cfg.phases[0], cfg.optim),
                              memory_ds_config(cfg, stage, dist.world_size, params))
        del model
        for step in range(3):
            loss = loss_fn(engine(images), labels)
            engine.backward(loss)
            if step == 2:       # gradients are alive between backward and step: the peak
                del loss
                total = live_tensor_bytes() - baseline - images.nbytes - labels.nbytes
            engine.step()
        rows.append({"stage": stage, "params": params, "bytes": total,
                     "optimizer_state_bytes": optimizer_state_bytes(engine)})
        destroy_engine(engine)
        del engine
        gc.collect()
        barrier()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"memory-rank{dist.rank}.json").write_text(json.dumps({"rank": dist.rank, "world_size": dist.world_size,
                                                                   "rows": rows}))


def formula_bytes(stage: int, params: int, ranks: int, mixed: bool) -> float:
    """ZeRO paper's model-state bytes per rank (mixed: 2+2+12 bytes/param; fp32: 4+4+8)."""
    weights, grads, optim = (2, 2, 12) if mixed else (4, 4, 8)
    if stage == 0:
        per = weights + grads + optim
    elif stage == 1:
        per = weights + grads + optim / ranks
    elif stage == 2:
        per = weights + (grads + optim) / ranks
    else:
        per = (weights + grads + optim) / ranks
    return per * params


MEMORY_MODEL_OVERRIDES = ["model.name=swin_tiny_patch4_window7_224", "model.kwargs={}", "data.image_size=224",
                          "model.head=linear"]


def memory(config: Path, shards: Path, overrides: list[str], ranks: int, work: Path) -> list[dict[str, Any]]:
    from fishscale.train.distributed import free_port
    out = work / "memory"
    # the full Swin-T (28 M parameters, 224 px) at micro batch 2: big enough that per-tensor
    # effects (ZeRO-3 keeps tensors under 1e5 elements whole) do not dominate
    overrides = [*overrides, *MEMORY_MODEL_OVERRIDES, f"train.batch_size={2 * ranks}"]
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port",
               str(free_port()), "--no_local_rank", "--module", "fishscale.benchmarks.train", "--memory-worker",
               "--config", str(config), "--shards", str(shards), "--out", str(out), *overrides]
    log(f"memory: {ranks} ranks under the deepspeed launcher, ZeRO 0/1/2/3 ...")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FishscaleError(f"memory benchmark ranks failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    per_rank = [json.loads((out / f"memory-rank{r}.json").read_text()) for r in range(ranks)]
    rows = []
    for i, stage_row in enumerate(per_rank[0]["rows"]):
        params = stage_row["params"]
        measured = [rank["rows"][i]["bytes"] for rank in per_rank]
        rows.append({"stage": stage_row["stage"], "params": params, "ranks": ranks,
                     "measured_mib": max(measured) / MIB, "measured_bytes_per_param": max(measured) / params,
                     "optimizer_state_mib": max(rank["rows"][i]["optimizer_state_bytes"] for rank in per_rank) / MIB,
                     "fp32_formula_mib": formula_bytes(stage_row["stage"], params, ranks, mixed=False) / MIB,
                     "mixed_formula_mib": formula_bytes(stage_row["stage"], params, ranks, mixed=True) / MIB})
    return rows


# ---------------------------------------------------------------- report

def markdown(speeds: dict[str, Any], rows: list[dict[str, Any]], cfg: Config, command: str) -> str:
    torch_rate, ds, ds_cached = speeds["torch"], speeds["deepspeed"], speeds["deepspeed_cached"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"`{command}` — {date.today().isoformat()}, {platform.processor() or platform.machine()}, "
             f"{cores} cores, torch {torch.__version__}, {cfg.model.name} {cfg.model.kwargs or ''} at "
             f"{cfg.data.image_size} px, batch {cfg.train.batch_size}, {cfg.data.backend} loader, fp32", "",
             "| loop (1 rank) | img/s | step ms | loader wait / step | CPU ms / img (this process) |",
             "|---|---:|---:|---:|---:|"]
    names = {"torch": "plain PyTorch (AdamW, clip)", "deepspeed": "DeepSpeed ZeRO-2 engine",
             "deepspeed_cached": "DeepSpeed ZeRO-2, batches in memory"}
    lines += [f"| {label} | {speeds[key]['img_per_s']:.1f} | {speeds[key]['step_ms']:.0f} | "
              f"{100 * speeds[key]['loader_share']:.1f}% | {speeds[key]['cpu_ms_per_img']:.2f} |"
              for key, label in names.items()]
    lines += ["", f"DeepSpeed / plain PyTorch: **{ds['img_per_s'] / torch_rate['img_per_s']:.2f}x** img/s, "
                  f"**{torch_rate['cpu_ms_per_img'] / ds['cpu_ms_per_img']:.2f}x** by CPU time (goal >= 0.9); "
                  f"with the loader / from memory: **{ds['img_per_s'] / ds_cached['img_per_s']:.2f}x** "
                  f"(1.0 = the loader costs the training loop nothing)."]
    if rows:
        ranks = rows[0]["ranks"]
        lines += ["", f"Model states per rank, {rows[0]['params'] / 1e6:.2f} M parameters, {ranks} ranks "
                      f"(measured: bytes of live tensor storages after 2 steps and a backward, fp32 on the CPU; the largest rank):", "",
                  "| ZeRO | measured MiB | bytes/param | of which Adam m, v MiB | fp32 formula MiB | mixed-precision formula MiB |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['stage']} | {r['measured_mib']:.1f} | {r['measured_bytes_per_param']:.1f} | "
                  f"{r['optimizer_state_mib']:.1f} | {r['fp32_formula_mib']:.1f} | {r['mixed_formula_mib']:.1f} |"
                  for r in rows]
    return "\n".join(lines)


@click.command(name="train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG,
              show_default=True, help="Training config whose model, image size, batch, loss and optimizer to use.")
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding train/manifest.json (default: tiny synthetic shards made in --work).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Scratch folder (default: a temporary one).")
@click.option("--steps", type=click.IntRange(min=1), default=15, show_default=True, help="Timed steps per round.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed steps first.")
@click.option("--rounds", type=click.IntRange(min=1), default=4, show_default=True,
              help="Alternating rounds per variant; the median counts.")
@click.option("--ranks", type=click.IntRange(min=0), default=2, show_default=True,
              help="Ranks for the ZeRO memory table (full Swin-T at 224 px, micro batch 2; 0 skips it).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the numbers as JSON here.")
@click.option("--memory-worker", is_flag=True, hidden=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, hidden=True)
@click.argument("overrides", nargs=-1)
def bench_train_command(config_path, shards, work, steps, warmup, rounds, ranks, json_out, memory_worker, out,
                        overrides):
    """DeepSpeed engine vs a plain PyTorch loop (img/s), the loader's share of the step, and
    per-rank memory of model states at ZeRO 0/1/2/3 vs DeepSpeed's formulas.

    OVERRIDES (dotted.key=value) change the config, e.g. train.batch_size=64 data.backend=torch.
    """
    if memory_worker:
        memory_worker_main(config_path, shards, list(overrides), out)
        return
    with tempfile.TemporaryDirectory(prefix="fishscale-bench-train-") as tmp:
        work_dir = Path(work or tmp)
        shards = Path(shards) if shards else tiny_shards(work_dir)
        cfg = bench_config(config_path, shards, list(overrides))
        speeds = speed(cfg, steps, warmup, rounds)
        rows = memory(config_path, shards, list(overrides), ranks, work_dir) if ranks else []
    command = "fishscale bench train " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "fishscale bench train"
    text = markdown(speeds, rows, cfg, command.strip())
    click.echo(text)
    if json_out:
        Path(json_out).write_text(json.dumps({"speed": speeds, "memory": rows}, indent=1))


def memory_worker_main(config: Path, shards: Path, overrides: list[str], out: Path) -> None:
    from fishscale.train.distributed import shutdown
    memory_worker(config, shards, overrides, out)
    shutdown()


if __name__ == "__main__":
    bench_train_command(standalone_mode=True)
