"""Checkpoint files never run code: every torch.load of a training process is weights-only.

DeepSpeed's own checkpoint engine and its universal-checkpoint code load with torch's full
unpickler (they pass weights_only as False), which builds anything: a planted ``*_states.pt`` whose
object has a ``__reduce__`` would run as soon as a run resumes. fishscale closes that three ways:

- ``forbid_pickles()``, at the start of every training process, sets
  ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``: torch then loads weights-only even where a call site asks
  for the full unpickler (DeepSpeed's universal loader, ``ds_to_universal`` in its subprocess),
  and allows the three plain DeepSpeed types its files hold (``safe_globals()``).
- ``SafeCheckpointEngine`` replaces the engine's checkpoint engine for loads, with an explicit
  ``weights_only=True``.
- ``pickle_problem(path)`` reads a file the same way before a checkpoint is chosen for resume,
  so a file that would run code marks its checkpoint as damaged (and resume falls back past it)
  instead of failing halfway through a load.

Anything else a file asks to build (an arbitrary class, ``os.system``, ``builtins.eval``) is
refused by torch's weights-only unpickler, which names the global.

    python -m fishscale.train.safe_load IN_FOLDER OUT_FOLDER     # ds_to_universal, weights-only
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def safe_globals() -> list:
    """The DeepSpeed types its checkpoint files carry (plain data: an enum, a dataclass, a scaler)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, ZeroStageEnum, fragment_address]


def forbid_pickles() -> None:
    """Make every torch.load of this process (and of processes it starts) weights-only."""
    os.environ[FORCE_ENV] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    allow_deepspeed_types()


def allow_deepspeed_types() -> None:
    """Allow SAFE_GLOBALS for good (torch's safe_globals() context would drop them again on exit,
    under a caller that still needs them)."""
    torch.serialization.add_safe_globals(safe_globals())


def safe_load(path: str | Path, map_location=None, mmap: bool = False):
    allow_deepspeed_types()
    return torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)


def refusal(error: Exception) -> str:
    """Why a torch file did not load, in one line (without torch's advice to turn the check off)."""
    text = " ".join(str(error).split())
    for marker in ("Trying to load unsupported GLOBAL", "Unsupported global:", "Unsupported operand"):
        if marker in text:
            reason = text[text.index(marker):].split(". Please")[0]
            return f"refused to unpickle it: it asks to run code or build a foreign object ({reason[:200]})"
    return f"not a readable torch file ({type(error).__name__}: {text[:200]})"


def pickle_problem(path: Path) -> str | None:
    """None when `path` loads weights-only; else why not (e.g. the global it would have run)."""
    try:
        safe_load(path, map_location="cpu", mmap=True)
    except Exception as e:                      # UnpicklingError, a torn zip, an unsupported format ...
        return refusal(e)
    return None


def make_safe_engine():
    """A DeepSpeed checkpoint engine whose loads are weights-only (saves unchanged)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return safe_load(path, map_location=map_location)

    return SafeCheckpointEngine()


def load_checkpoint_safely(engine, folder: Path, tag: str, **kwargs):
    """engine.load_checkpoint with its checkpoint engine swapped for the weights-only one (and the
    process-wide weights_only=True of forbid_pickles() for DeepSpeed's direct torch.load calls)."""
    allow_deepspeed_types()
    saved = engine.checkpoint_engine
    engine.checkpoint_engine = make_safe_engine()
    try:
        return engine.load_checkpoint(str(folder), tag=tag, **kwargs)
    finally:
        engine.checkpoint_engine = saved


def convert_to_universal(source: Path, target: Path) -> None:
    """deepspeed.checkpoint.ds_to_universal, with pickles forbidden (run as a subprocess)."""
    forbid_pickles()
    from deepspeed.checkpoint import ds_to_universal
    sys.argv = ["ds_to_universal", "--input_folder", str(source), "--output_folder", str(target),
                "--inject_missing_state", "--num_extract_workers", "1", "--num_merge_workers", "1"]
    ds_to_universal.main(ds_to_universal.parse_arguments())


if __name__ == "__main__":
    convert_to_universal(Path(sys.argv[1]), Path(sys.argv[2]))
