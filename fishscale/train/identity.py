"""One run, one identity: what a run folder trains on, recorded once, checked on every start.

    <train.out>/run.json   {"format", "created", "class_names", "train_class_counts",
                            "manifests": {"train": sha256, "val": sha256 | null}, "config": {RESUME_KEYS}}

Written when a run starts fresh, before anything trains. Every later start on the folder compares
the data and config it was given with it and refuses, before a byte is written, when they would
make another run: other classes or training counts (the class index and the bins would change
under the weights), other shards (``--accept-new-shards`` allows a deliberate re-sharding that
keeps classes and counts), or another value of a resume key (RESUME_KEYS: everything that
changes what a step computes, what validation measures or which weights count as best).
``--extend`` allows phases to be added after the finished ones. Paths, the loader backend and
device, workers, ranks (with gradient accumulation: the global batch stays), eval batch size,
logging and checkpoint cadence may change.

A folder that exists, is not empty and holds no run.json is not a run folder: fishscale writes
nothing into it (not even a config.yaml).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from fishscale.errors import FishscaleError
from fishscale.lock import LOCK_NAME

RUN_FILE = "run.json"
FORMAT = "fishscale-run/1"
# config keys that must match the run's for a start to continue the same run
RESUME_KEYS = ("model", "phases", "loss", "sampler", "optim", "augment", "train.batch_size", "train.seed",
               "train.zero_stage", "train.precision", "train.clip_grad", "train.max_steps_per_epoch",
               "train.best_metric", "data.image_size", "data.train_split", "data.val_split", "data.mean",
               "data.std", "data.pad_value", "eval.bin_edges")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _get(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def run_identity(config: dict[str, Any], data) -> dict[str, Any]:
    """`data`: fishscale.train.loop.RunData (its manifests know the folder they were read from)."""
    manifests = {"train": file_sha256(Path(data.train.root) / "manifest.json"),
                 "val": file_sha256(Path(data.val.root) / "manifest.json") if data.val is not None else None}
    return {"format": FORMAT, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "class_names": list(data.train.class_names), "train_class_counts": list(data.class_counts),
            "manifests": manifests, "config": {key: _get(config, key) for key in RESUME_KEYS}}


def check_out_folder(out: Path) -> bool:
    """True when `out` is a run folder already; False when it is new or empty; else an error."""
    if not str(out).strip():
        raise FishscaleError("train.out is empty: set it to the run folder to write, e.g. train.out=runs/try1")
    if out.exists() and not out.is_dir():
        raise FishscaleError(f"train.out {out}: exists and is not a folder")
    if (out / RUN_FILE).is_file():
        return True
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) if out.is_dir() else []
    if others:
        old = (out / "checkpoints").is_dir() and (out / "classes.json").is_file()
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise FishscaleError(
            f"train.out {out}: " + ("a run folder of fishscale 0.1 (no run.json, so it cannot be checked "
                                    "that a resume continues the same run)" if old else
                                    f"not a fishscale run folder (it holds {shown} and no {RUN_FILE})")
            + "; fishscale writes nothing into it: choose another train.out")
    return False


def read_identity(out: Path) -> dict[str, Any]:
    path = out / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FishscaleError(f"{path}: unreadable ({e}); the run's identity is lost, so it cannot be resumed "
                             f"safely: use another train.out") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FishscaleError(f"{path}: not a fishscale run identity (format {FORMAT} expected)")
    shapes = {"class_names": list, "train_class_counts": list, "manifests": dict, "config": dict}
    for key, kind in shapes.items():
        if not isinstance(data.get(key), kind):
            raise FishscaleError(f"{path}: '{key}' is missing or not a {kind.__name__} (the file was edited or "
                                 f"damaged); the run cannot be checked: use another train.out")
    return data


def write_identity(out: Path, identity: dict[str, Any]) -> None:
    path = out / RUN_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(identity, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"class {i}: {x!r} in the run, {y!r} now"
    return f"{len(a)} classes in the run, {len(b)} now"


def extends(recorded: list[dict], now: list[dict]) -> bool:
    """`now` keeps every recorded phase unchanged and adds phases after them."""
    return len(now) > len(recorded) and now[:len(recorded)] == recorded


def check_identity(out: Path, recorded: dict[str, Any], now: dict[str, Any], accept_new_shards: bool,
                   extend: bool) -> None:
    """Refuse, naming the difference and the way out, when `now` would make `out` another run."""
    way_out = "use another train.out for a new run"
    if recorded["class_names"] != now["class_names"]:
        raise FishscaleError(f"{out} trains {len(recorded['class_names'])} classes and data.shards gives "
                             f"{len(now['class_names'])}: {_first_difference(recorded['class_names'], now['class_names'])}; "
                             f"point data.shards at the run's shards, or {way_out}")
    if recorded["train_class_counts"] != now["train_class_counts"]:
        counts = recorded["train_class_counts"]
        if len(counts) != len(now["train_class_counts"]):
            raise FishscaleError(f"{out}: run.json holds {len(counts)} training counts for "
                                 f"{len(recorded['class_names'])} classes (the file was edited); {way_out}")
        diffs = [i for i, (a, b) in enumerate(zip(counts, now["train_class_counts"])) if a != b]
        i = diffs[0]
        raise FishscaleError(f"{out}: the training counts of {len(diffs)} class(es) differ from the run's "
                             f"(class {i} {recorded['class_names'][i]!r}: {recorded['train_class_counts'][i]} in "
                             f"the run, {now['train_class_counts'][i]} now), which changes the bins and the "
                             f"sampler; point data.shards at the run's shards, or {way_out}")
    for split in ("train", "val"):
        a, b = recorded["manifests"].get(split), now["manifests"].get(split)
        if a != b and not accept_new_shards:
            raise FishscaleError(f"{out}: the {split} manifest differs from the one the run was trained on "
                                 f"(sha256 {str(a)[:12]} in the run, {str(b)[:12]} now), although classes and "
                                 f"counts are the same; after a deliberate re-sharding pass --accept-new-shards, "
                                 f"else point data.shards at the run's shards, or {way_out}")
    for key in RESUME_KEYS:
        if key not in recorded["config"]:      # a key a later fishscale checks: the run cannot say
            continue
        a, b = recorded["config"][key], now["config"].get(key)
        if a == b or (key == "phases" and extend and isinstance(a, list) and isinstance(b, list) and extends(a, b)):
            continue
        hint = " (--extend adds phases after the finished ones)" if key == "phases" else ""
        raise FishscaleError(f"{out}: config {'; '.join(differences(key, a, b)[:3])}{hint}; use the run's "
                             f"config, or {way_out}")


def differences(key: str, a: Any, b: Any) -> list[str]:
    """The leaves where `a` (the run's) and `b` (now) differ, as "'key.sub' is A in the run, B now"."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) for d in differences(f"{key}.{k}", a.get(k), b.get(k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) if x != y for d in differences(f"{key}.{i}", x, y)]
    return [f"'{key}' differs from the run's ({_short(a)} in the run, {_short(b)} now)"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
