"""Runs that survive: every fault is met for real (SIGKILL, SIGTERM, SIGUSR1, truncated and deleted
files, a planted pickle, two processes, other shards), under real DeepSpeed on gloo, 1 and 2 ranks.

Each case ends in one of two ways: the run continues and logs exactly the per-step losses of an
uninterrupted run (bit-exact on one rank; 2 ranks against 1 rank with gradient accumulation 2
agree to 1e-5, see tests/test_train.py), or the command refuses with one line naming the file or
key and the reason, and the run folder stays byte-identical (sha256 of every file).

The uninterrupted reference is one 1-rank run (grad_accum 2, a checkpoint every 3 steps, 5 kept:
steps 8, 9, 12, 15, 16 remain); every other run here copies it or replays it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainkit import LAUNCH_TIMEOUT, STEPS, check_ok, fishscale_train, folder_digest, train_losses

REFERENCE = ("train.grad_accum=2", "train.checkpoint_every_steps=3", "train.keep_checkpoints=5")
PREEMPTED_EXIT = 75


@pytest.fixture(scope="module")
def reference(tiny_train_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "reference"
    check_ok(fishscale_train(tiny_train_config, out, *REFERENCE))
    return out


def copy_run(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    out = tmp_path / name
    shutil.copytree(run, out)
    return out


def refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with a clean one-line error holding every needle; returns that line."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def wait_for_step(metrics: Path, step: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not (metrics.is_file() and f'"step": {step},' in metrics.read_text()):
        assert process.poll() is None, process.communicate()[1][-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def plant_pickle(checkpoint: Path, name: str, marker: Path, fix_manifest: bool) -> None:
    """Replace `name` with a torch file whose unpickling runs `touch marker`; optionally make the
    manifest vouch for it (an attacker who can write the folder can write the manifest too)."""
    script = (f"import os, torch\n"
              f"class Evil:\n"
              f"    def __reduce__(self):\n"
              f"        return (os.system, ('touch {marker}',))\n"
              f"torch.save({{'module': Evil(), 'buffer_names': []}}, {str(checkpoint / name)!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    if fix_manifest:
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        data = (checkpoint / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (checkpoint / "manifest.json").write_text(json.dumps(manifest))


# ---------------------------------------------------------------- checkpoints as written

def test_checkpoints_are_whole_verified_and_pruned(reference):
    folder = reference / "checkpoints"
    tags = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert tags == ["step00000008", "step00000009", "step00000012", "step00000015", "step00000016"]
    assert json.loads((folder / "latest.json").read_text()) == {"tag": "step00000016"}
    assert not list(folder.rglob("*.tmp")) and not list(folder.glob("*.partial"))
    for tag in tags:
        manifest = json.loads((folder / tag / "manifest.json").read_text())
        files = {p.relative_to(folder / tag).as_posix() for p in (folder / tag).rglob("*") if p.is_file()}
        assert set(manifest["files"]) == files - {"manifest.json"}
        for name, record in manifest["files"].items():     # hashed here with hashlib, not fishscale
            data = (folder / tag / name).read_bytes()
            assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, (tag, name)
        assert {"fishscale_state.json", "rng-rank0.json", "start.safetensors", "mp_rank_00_model_states.pt"} <= files
    # a mid-phase checkpoint restarts from the phase's start weights, a phase end from the next phase's
    from safetensors.numpy import load_file
    start1 = load_file(str(folder / "phase1_start.safetensors"))
    for tag in ("step00000008", "step00000009", "step00000015"):
        start = load_file(str(folder / tag / "start.safetensors"))
        assert all(np.array_equal(start[k], start1[k]) for k in start1), tag
    # every torch file loads with torch's weights-only unpickler, given DeepSpeed's three plain types
    from fishscale.train.safe_load import safe_globals
    with torch.serialization.safe_globals(safe_globals()):
        for path in folder.rglob("*.pt"):
            torch.load(path, weights_only=True, map_location="cpu")
    identity = json.loads((reference / "run.json").read_text())
    manifest = json.loads((reference / "classes.json").read_text())
    assert identity["class_names"] == manifest["class_names"] and len(identity["class_names"]) == 23
    assert identity["config"]["train.batch_size"] == 16 and identity["manifests"]["val"] is not None


# ---------------------------------------------------------------- resume: fall back, never guess

def test_damaged_checkpoints_and_a_lost_pointer_fall_back_to_the_newest_whole_one(reference, tiny_train_config,
                                                                                   tmp_path):
    out = copy_run(reference, tmp_path)
    folder = out / "checkpoints"
    marker = tmp_path / "PWNED"
    state = folder / "step00000016" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])            # truncated
    (folder / "step00000015" / "rng-rank0.json").unlink()                          # lost RNG state
    plant_pickle(folder / "step00000012", "mp_rank_00_model_states.pt", marker, fix_manifest=True)
    (folder / "step00000009" / "start.safetensors").unlink()                       # lost start weights
    (folder / "latest.json").unlink()                                              # lost pointer
    (out / "summary.json").unlink()

    result = fishscale_train(tiny_train_config, out, *REFERENCE)
    check_ok(result)
    assert not marker.exists(), "the planted pickle ran"
    log = result.stderr
    assert "latest.json is missing; choosing among the step folders" in log
    assert "step00000016 is damaged: zero_pp_rank_0_mp_rank_00_optim_states.pt is " in log and "truncated" in log
    assert "step00000015 is damaged: rng-rank0.json is missing" in log
    assert "step00000012 is damaged: mp_rank_00_model_states.pt: refused to unpickle it" in log
    assert "posix.system" in log
    assert "step00000009 is damaged: start.safetensors is missing" in log
    assert "resuming from step00000008 instead of step00000016 (damaged)" in log
    a, b = train_losses(reference), train_losses(out)
    assert list(b.index) == list(range(1, STEPS + 1))
    assert a.to_list() == b.to_list()
    # the replay wrote each step again under a new name (never over a folder); pruning to 5 whole ones
    # dropped the damaged ones behind it; step 12's forged manifest still passes the cheap check
    assert json.loads((folder / "latest.json").read_text()) == {"tag": "step00000016-2"}
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "step00000009-2", "step00000012", "step00000012-2", "step00000015-2", "step00000016-2"]
    from fishscale.train.checkpoint import verify_checkpoint
    assert [verify_checkpoint(folder / f"step{s:08d}-2") for s in (9, 12, 15, 16)] == [None] * 4


def test_no_whole_checkpoint_is_one_line_and_touches_nothing(reference, tiny_train_config, tmp_path):
    out = copy_run(reference, tmp_path)
    (out / "summary.json").unlink()
    for tag in ("step00000008", "step00000009", "step00000012", "step00000015"):
        (out / "checkpoints" / tag / "manifest.json").unlink()     # as if every save had been cut short
    (out / "checkpoints" / "step00000016" / "fishscale_state.json").write_text("{}")
    (out / "checkpoints" / "latest.json").write_text("[]")
    before = folder_digest(out)
    line = refused(fishscale_train(tiny_train_config, out, *REFERENCE), "no checkpoint can be resumed",
                   "step00000016: fishscale_state.json is 2 bytes",
                   "step00000008: no manifest.json (its save never finished)", "nothing was changed")
    assert "latest.json" not in line
    assert folder_digest(out) == before


def test_latest_pointer_of_any_shape_only_costs_a_note(reference, tmp_path):
    from fishscale.train.checkpoint import choose_checkpoint
    out = copy_run(reference, tmp_path)
    latest = out / "checkpoints" / "latest.json"
    for text, note in (("[]", "latest.json is unreadable"), ('{"tag": 20}', "latest.json names no checkpoint (20)"),
                       ('{"tag": "step00000012"}', "latest.json names step00000012; step00000016 is newer"),
                       ("", "latest.json is unreadable"), (None, "latest.json is not a file")):
        if text is None:
            latest.unlink()
            latest.mkdir()
        else:
            latest.write_text(text)
        point, notes = choose_checkpoint(out)
        assert point.tag == "step00000016" and point.progress.step == 16
        assert any(note in n for n in notes), (text, notes)


def test_copies_links_and_additions_are_not_taken_for_checkpoints(reference, tmp_path):
    """What a hostile hand can do to a checkpoint folder without breaking a sha256 is still refused."""
    from fishscale.train.checkpoint import choose_checkpoint
    out = copy_run(reference, tmp_path)
    folder = out / "checkpoints"
    shutil.copytree(folder / "step00000008", folder / "step99999999")            # an old one, renamed newest
    (folder / "step00000017").symlink_to("step00000016")                        # a link is not a checkpoint
    (folder / "step00000016" / "extra.pt").write_bytes(b"\0" * 10)              # added after the save
    point, notes = choose_checkpoint(out)
    assert point.tag == "step00000015", notes
    text = "\n".join(notes)
    assert "step99999999 is damaged: manifest.json was written for 'step00000008', not for this folder" in text
    assert "step00000016 is damaged: extra.pt is not in its manifest.json" in text
    assert "step00000017" not in text


def test_a_run_whose_checkpoints_are_all_gone_is_not_restarted(reference, tiny_train_config, tmp_path):
    out = copy_run(reference, tmp_path)
    (out / "summary.json").unlink()
    for path in (out / "checkpoints").glob("step*"):
        shutil.rmtree(path)
    before = folder_digest(out)
    refused(fishscale_train(tiny_train_config, out, *REFERENCE), "latest.json names step00000016, but no checkpoint "
            "is left", "starting again would overwrite")
    assert folder_digest(out) == before
    shutil.rmtree(out / "checkpoints")                 # disk space reclaimed after the run, say
    before = folder_digest(out)
    refused(fishscale_train(tiny_train_config, out, *REFERENCE), "holds the results of a run (best.safetensors, "
            "last.safetensors) but no checkpoint")
    (out / "checkpoints").write_text("not a folder")
    refused(fishscale_train(tiny_train_config, out, *REFERENCE), "checkpoints: exists and is not a folder")
    (out / "checkpoints").unlink()
    assert folder_digest(out) == before


def test_prune_keeps_the_newest_whole_checkpoints_and_never_reuses_a_name(tmp_path):
    from fishscale.train.checkpoint import MANIFEST_NAME, new_tag, prune_checkpoints

    def fake(tag: str, whole: bool = True) -> None:
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "a.bin").write_bytes(b"12345")
        record = {"bytes": 5 if whole else 6, "sha256": hashlib.sha256(b"12345").hexdigest()}
        (tmp_path / tag / MANIFEST_NAME).write_text(json.dumps({"tag": tag, "files": {"a.bin": record}}))

    for tag in ("step00000003", "step00000006", "step00000009", "step00000012-2"):
        fake(tag)
    fake("step00000012", whole=False)                  # damaged, behind a whole one of the same step
    fake("step00000020", whole=False)                  # damaged, ahead of the newest: not ours to judge
    (tmp_path / "step00000015.partial").mkdir()        # a cut-short save
    (tmp_path / "step00000003_universal").mkdir()      # a universal copy of a checkpoint to be removed
    assert new_tag(tmp_path, 12) == "step00000012-3" and new_tag(tmp_path, 13) == "step00000013"
    prune_checkpoints(tmp_path, keep=2, newest="step00000012-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step00000009", "step00000012-2", "step00000020"]


SAFE_LOAD_SCRIPT = r"""
import json, os, sys, torch
from pathlib import Path
from fishscale.config import load_config
from fishscale.train.checkpoint import Progress, ResumePoint, load_engine_state, save_checkpoint, verify_checkpoint
from fishscale.train.distributed import init_distributed
from fishscale.train.engine import build_engine, deepspeed_config
from fishscale.train.safe_load import forbid_pickles
out, marker = Path(sys.argv[1]), Path(sys.argv[2])
forbid_pickles()
init_distributed()
model = torch.nn.Linear(4, 3)
cfg = load_config(None, ["train.batch_size=4", "train.zero_stage=2"])
engine = build_engine(model, [{"params": list(model.parameters()), "lr": 0.1}], deepspeed_config(cfg, 1, False))
tag = save_checkpoint(engine, out, Progress(step=1), 0, {}, 0, 1, model.state_dict(), keep=3)
evil = "import os\nclass Evil:\n    def __reduce__(self):\n        return (os.system, ('touch %s',))\n" % marker
namespace = {}
exec(evil, namespace)
path = out / "checkpoints" / tag / "mp_rank_00_model_states.pt"
torch.save({"module": namespace["Evil"]()}, str(path), _use_new_zipfile_serialization=True)
report = {"verify": verify_checkpoint(out / "checkpoints" / tag)}
point = ResumePoint(tag=tag, folder=out / "checkpoints", progress=Progress(step=1), engine_phase=0, world_size=1,
                    zero_stage=2)
try:
    load_engine_state(engine, point, tag)           # past verification, straight into DeepSpeed's loader
    report["engine"] = "loaded"
except Exception as e:
    report["engine"] = f"{type(e).__name__}: {e}"
try:
    torch.load(str(path), weights_only=False)       # what DeepSpeed's own code asks for
    report["direct"] = "loaded"
except Exception as e:
    report["direct"] = f"{type(e).__name__}: {e}"
report["ran"] = marker.exists()
print(json.dumps(report))
"""


def test_a_planted_pickle_runs_nothing_even_past_verification(tmp_path):
    marker = tmp_path / "PWNED"
    result = subprocess.run([sys.executable, "-c", SAFE_LOAD_SCRIPT, str(tmp_path / "run"), str(marker)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ran"] is False and not marker.exists()
    assert report["verify"].startswith("mp_rank_00_model_states.pt is ") and "when written" in report["verify"]
    assert report["engine"].startswith("FishscaleError: ") and "refused to unpickle it" in report["engine"]
    assert "weights_only` set to `False` will likely succeed" not in report["engine"]    # no advice to turn it off
    for key in ("engine", "direct"):
        assert "UNSUPPORTED GLOBAL POSIX.SYSTEM" in report[key].upper(), report[key]
    assert report["direct"].startswith("UnpicklingError")


# ---------------------------------------------------------------- one run, one identity

def edited_shards(shards: Path, tmp_path: Path, edit) -> Path:
    """A copy of the shards whose train (and val) manifest went through `edit(dict)`."""
    out = tmp_path / "other_shards"
    shutil.copytree(shards, out)
    for split in ("train", "val"):
        path = out / split / "manifest.json"
        data = json.loads(path.read_text())
        edit(data, split)
        path.write_text(json.dumps(data, indent=2))
    return out


def test_other_data_or_config_is_refused_before_a_byte_is_written(reference, tiny_train_config, tiny_shards,
                                                                  tmp_path):
    before = folder_digest(reference)

    def rename(data, split):
        data["class_names"][3] = "Fakeus notreal"

    def recount(data, split):
        data["train_class_counts"][5] += 1

    renamed = edited_shards(tiny_shards, tmp_path / "a", rename)
    refused(fishscale_train(tiny_train_config, reference, *REFERENCE, f"data.shards={renamed}"),
            "trains 23 classes and data.shards gives 23", "class 3:", "'Fakeus notreal' now", "another train.out")
    recounted = edited_shards(tiny_shards, tmp_path / "b", recount)
    refused(fishscale_train(tiny_train_config, reference, *REFERENCE, f"data.shards={recounted}"),
            "training counts of 1 class(es) differ", "class 5")
    resharded = edited_shards(tiny_shards, tmp_path / "c", lambda data, split: None)   # same content, new bytes
    refused(fishscale_train(tiny_train_config, reference, *REFERENCE, f"data.shards={resharded}"),
            "the train manifest differs", "--accept-new-shards")
    refused(fishscale_train(tiny_train_config, reference, *REFERENCE, "train.seed=7"),
            "config 'train.seed' differs from the run's (0 in the run, 7 now)")
    refused(fishscale_train(tiny_train_config, reference, *REFERENCE, "train.max_steps_per_epoch=4"),
            "config 'train.max_steps_per_epoch' differs from the run's (null in the run, 4 now)")
    refused(fishscale_train(tiny_train_config, reference, *REFERENCE, "model.name=resnet18"),
            "config 'model.name' differs from the run's")
    refused(fishscale_train(tiny_train_config, reference, *REFERENCE, "phases.1.lr=0.5"),
            "config 'phases.1.lr' differs from the run's (0.003 in the run, 0.5 now)", "--extend adds phases")
    assert folder_digest(reference) == before


def test_a_finished_run_says_so_and_stays_untouched(reference, tiny_train_config):
    before = folder_digest(reference)
    result = fishscale_train(tiny_train_config, reference, *REFERENCE)
    check_ok(result)
    assert "this run is finished (2 epoch(s), 16 steps" in result.stderr and "--extend" in result.stderr
    assert folder_digest(reference) == before


def test_new_shards_with_the_same_classes_resume_when_accepted(reference, tiny_train_config, tiny_shards,
                                                                tmp_path):
    out = copy_run(reference, tmp_path)
    shutil.rmtree(out / "checkpoints" / "step00000016")
    (out / "summary.json").unlink()
    resharded = edited_shards(tiny_shards, tmp_path, lambda data, split: None)
    result = fishscale_train(tiny_train_config, out, *REFERENCE, f"data.shards={resharded}", "--accept-new-shards")
    check_ok(result)
    assert train_losses(out).to_list() == train_losses(reference).to_list()
    identity = json.loads((out / "run.json").read_text())
    assert identity["manifests"]["train"] == hashlib.sha256((resharded / "train" / "manifest.json").read_bytes()).hexdigest()


def test_extend_adds_a_phase_after_a_finished_run(reference, tiny_train_config, tmp_path):
    import yaml
    out = copy_run(reference, tmp_path)
    config = yaml.safe_load(tiny_train_config.read_text())
    config["phases"].append({"name": "more", "epochs": 1, "freeze_backbone": False, "lr": 1.0e-3})
    longer = tmp_path / "longer.yaml"
    longer.write_text(yaml.safe_dump(config))
    refused(fishscale_train(longer, out, *REFERENCE), "config 'phases' differs", "--extend")
    result = fishscale_train(longer, out, *REFERENCE, "--extend")
    check_ok(result)
    losses = train_losses(out)
    assert list(losses.index) == list(range(1, STEPS + 8 + 1))
    assert losses.loc[:STEPS].to_list() == train_losses(reference).to_list()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["epochs"], summary["steps"], summary["phases"]) == (3, 24, ["head", "full", "more"])
    assert len(json.loads((out / "run.json").read_text())["config"]["phases"]) == 3


# ---------------------------------------------------------------- output paths

def test_train_out_must_be_set_and_a_foreign_folder_is_left_alone(tiny_train_config, tmp_path):
    refused(fishscale_train(tiny_train_config, tmp_path / "x", "train.out="), "train.out is not set")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("my own notes\n")
    before = folder_digest(foreign)
    refused(fishscale_train(tiny_train_config, foreign), "not a fishscale run folder", "config.yaml",
            "writes nothing into it")
    assert folder_digest(foreign) == before and sorted(os.listdir(foreign)) == ["config.yaml"]


# ---------------------------------------------------------------- locks

def test_a_second_train_on_the_same_folder_is_refused(reference, tiny_train_config, tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "-m", "fishscale.cli", "train", "--config", str(tiny_train_config),
                              f"train.out={out}", *REFERENCE], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    wait_for_step(out / "metrics.jsonl", 2, first)
    first.send_signal(signal.SIGSTOP)                  # hold the first one mid-run, whatever the machine's speed
    try:
        second = fishscale_train(tiny_train_config, out, *REFERENCE)
    finally:
        first.send_signal(signal.SIGCONT)
    refused(second, f"{out} is in use by `fishscale train` (pid {first.pid} on {socket.gethostname()}")
    assert first.wait(timeout=LAUNCH_TIMEOUT) == 0, first.stderr.read()[-4000:]
    assert train_losses(out).to_list() == train_losses(reference).to_list()
    assert not (out / ".fishscale.lock").exists()


def test_a_second_shard_on_the_same_folder_is_refused(tiny_dataset, tmp_path):
    out = tmp_path / "shards"
    command = [sys.executable, "-m", "fishscale.cli", "shard", str(tiny_dataset), "--out", str(out),
               "--max-side", "64", "--workers", "1"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / ".fishscale.lock").is_file() or not (out / ".fishscale.lock").read_text():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)                  # hold the first one mid-run, whatever the machine's speed
    try:
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    finally:
        first.send_signal(signal.SIGCONT)
    refused(second, f"is in use by `fishscale shard` (pid {first.pid} on {socket.gethostname()}")
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    for split in ("train", "val", "test"):
        verify = subprocess.run([sys.executable, "-m", "fishscale.cli", "verify", str(out / split)],
                                capture_output=True, text=True, timeout=120, check=False)
        assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]


def test_sigkill_leaves_a_stale_lock_that_is_taken_over_and_the_run_resumes(reference, tiny_train_config, tmp_path):
    """kill -9 of the rank alone: its 2 loader workers live on for a while as orphans, and must not
    keep the folder locked (they do not inherit the lock); the restart comes at once."""
    import psutil
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "fishscale.cli", "train", "--config", str(tiny_train_config),
                                f"train.out={out}", *REFERENCE, "data.num_workers=2"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_step(out / "metrics.jsonl", 10, process)
    workers = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    process.wait()
    holder = json.loads((out / ".fishscale.lock").read_text())
    assert holder["pid"] == process.pid
    result = fishscale_train(tiny_train_config, out, *REFERENCE, "data.num_workers=2")
    for worker in workers:                             # whatever is left of them
        try:
            worker.kill()
        except psutil.Error:
            pass
    check_ok(result)
    assert f"taking over the stale lock of `fishscale train` (pid {process.pid}" in result.stderr
    assert train_losses(out).to_list() == train_losses(reference).to_list()


# ---------------------------------------------------------------- preemption

def test_sigterm_twice_stops_at_a_step_boundary_and_resumes_exactly(reference, tiny_train_config, tmp_path):
    """SIGTERM to the whole process group, as SLURM sends it: the loader's 2 worker processes die
    with it, and the rank still stops at a step boundary (dropping the step it could not finish)."""
    out = tmp_path / "preempted"
    process = subprocess.Popen([sys.executable, "-m", "fishscale.cli", "train", "--config", str(tiny_train_config),
                                f"train.out={out}", *REFERENCE, "train.checkpoint_every_steps=0",
                                "data.num_workers=2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_step(out / "metrics.jsonl", 3, process)
    os.killpg(process.pid, signal.SIGTERM)
    os.killpg(process.pid, signal.SIGTERM)             # a second signal during the stop changes nothing
    stderr = process.communicate(timeout=LAUNCH_TIMEOUT)[1]
    assert process.returncode == PREEMPTED_EXIT, stderr[-3000:]
    stopped = json.loads((out / "checkpoints" / "latest.json").read_text())["tag"]
    step = int(stopped.removeprefix("step"))
    assert 3 <= step <= 8, stopped                     # in the first epoch, a step or so after the signal
    assert f"stopped by SIGTERM at step {step}: checkpoint {stopped} written" in stderr
    assert list(train_losses(out).index) == list(range(1, step + 1))
    resumed = fishscale_train(tiny_train_config, out, *REFERENCE)
    check_ok(resumed)
    assert f"checkpoint {stopped}" in resumed.stderr
    assert train_losses(out).to_list() == train_losses(reference).to_list()


def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the ranks the deepspeed launcher started under `launcher`."""
    import psutil
    ranks = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            env = child.environ()
            if "fishscale.train" in " ".join(child.cmdline()) and "RANK" in env:
                ranks[int(env["RANK"])] = child.pid
        except psutil.Error:
            pass
    return ranks


def srun_like(config: Path, out: Path, preempted_file: Path, *overrides: str) -> list[subprocess.Popen]:
    """Two ranks started the way launch/slurm.sbatch starts them: no launcher, env from the task ids."""
    from fishscale.train.distributed import free_port
    port, ranks = str(free_port()), []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "FISHSCALE_PREEMPTED_FILE": str(preempted_file)}
        ranks.append(subprocess.Popen([sys.executable, "-m", "fishscale.train", "--config", str(config),
                                       f"train.out={out}", *overrides], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    return ranks


def test_two_ranks_stop_together_on_one_ranks_signal_and_on_slurms(reference, tiny_train_config, tmp_path):
    out, preempted_file = tmp_path / "two", tmp_path / "job.preempted"
    options = ("train.checkpoint_every_steps=0", "train.keep_checkpoints=5")
    # 1. under the deepspeed launcher: SIGTERM to rank 1 alone
    launcher = subprocess.Popen([sys.executable, "-m", "fishscale.cli", "train", "--config", str(tiny_train_config),
                                 "--nproc", "2", f"train.out={out}", *options],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(out / "metrics.jsonl", 2, launcher)
    os.kill(rank_pids(launcher)[1], signal.SIGTERM)
    stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT)[1]
    assert launcher.returncode == PREEMPTED_EXIT, stderr[-3000:]
    first = json.loads((out / "checkpoints" / "latest.json").read_text())["tag"]
    assert "stopped by SIGTERM or SIGUSR1 on another rank" in stderr
    assert {p.name for p in (out / "checkpoints" / first).iterdir()} >= {"rng-rank0.json", "rng-rank1.json"}
    # 1b. SIGTERM to the whole process group of `fishscale train --nproc 2` (a terminal, a batch system):
    # the command waits for its ranks' checkpoint and says 75, not the launcher's death
    launcher = subprocess.Popen([sys.executable, "-m", "fishscale.cli", "train", "--config", str(tiny_train_config),
                                 "--nproc", "2", f"train.out={out}", *options, "data.num_workers=2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_step(out / "metrics.jsonl", int(first.removeprefix("step")) + 1, launcher)
    os.killpg(launcher.pid, signal.SIGTERM)
    stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT)[1]
    assert launcher.returncode == PREEMPTED_EXIT, stderr[-3000:]
    first = json.loads((out / "checkpoints" / "latest.json").read_text())["tag"]
    # 2. started like launch/slurm.sbatch does, SIGUSR1 to every rank (SLURM's --signal=USR1@120)
    ranks = srun_like(tiny_train_config, out, preempted_file, *options)
    wait_for_step(out / "metrics.jsonl", int(first.removeprefix("step")) + 2, ranks[0])
    for rank in ranks:
        rank.send_signal(signal.SIGUSR1)
    logs = [rank.communicate(timeout=LAUNCH_TIMEOUT)[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [PREEMPTED_EXIT] * 2, logs[0][-3000:] + logs[1][-3000:]
    second = json.loads((out / "checkpoints" / "latest.json").read_text())["tag"]
    assert second > first and f"checkpoint {second} written" in preempted_file.read_text()
    # 3. the requeued job finishes; the per-step losses are the uninterrupted run's
    check_ok(fishscale_train(tiny_train_config, out, *options, nproc=2))
    a, b = train_losses(reference), train_losses(out)
    assert list(b.index) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-5)


def test_a_hand_edited_run_json_is_a_clean_refusal(reference, tmp_path):
    from fishscale.errors import FishscaleError
    from fishscale.train.identity import check_identity, read_identity
    out = copy_run(reference, tmp_path)
    good = json.loads((out / "run.json").read_text())
    for key, value in (("config", None), ("class_names", None), ("manifests", []), ("format", "other")):
        data = {k: v for k, v in good.items() if not (k == key and value is None)}
        if value is not None:
            data[key] = value
        (out / "run.json").write_text(json.dumps(data))
        with pytest.raises(FishscaleError, match="run.json"):
            read_identity(out)
    (out / "run.json").write_text("{not json")
    with pytest.raises(FishscaleError, match="unreadable"):
        read_identity(out)
    longer = {**good, "train_class_counts": good["train_class_counts"] + [5]}
    with pytest.raises(FishscaleError, match="holds 24 training counts for 23 classes"):
        check_identity(out, longer, good, accept_new_shards=False, extend=False)
    broken = {**good, "config": {**good["config"], "phases": None}}
    with pytest.raises(FishscaleError, match="'phases' differs"):
        check_identity(out, broken, good, accept_new_shards=False, extend=True)
