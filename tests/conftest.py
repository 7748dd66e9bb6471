"""Shared fixtures: one tiny synthetic dataset and its shards per test session.

Everything is real (synth -> shard with the real code); tests that need data take these
fixtures instead of building their own, so the suite pays for them once.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """`fishscale synth --profile tiny --seed 0` output (fish-vista layout)."""
    from fishscale.data.synth.write import synthesize
    out = tmp_path_factory.mktemp("synth") / "tiny"
    synthesize(out, profile="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_shards(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset sharded (train, val, test): a folder holding <split>/manifest.json."""
    from fishscale.shards.shard import shard_dataset
    out = tmp_path_factory.mktemp("shards")
    shard_dataset(tiny_dataset, out, max_side=256, samples_per_shard=200, workers=2, seed=0)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real fish-vista CSVs); tests using it skip where it is absent."""
    path = Path(os.environ.get("FISHSCALE_SHARED_DATA", SHARED_DATA))
    if not path.is_dir():
        pytest.skip(f"{path} not present (real fish-vista CSVs live only in the team's shared folder)")
    return path


@pytest.fixture(scope="session")
def tiny_train_config(tiny_shards, tmp_path_factory) -> Path:
    """The training tests' config (tests/trainkit.py: a 0.2 M-parameter Swin at 32 px, 2 x 8 steps)."""
    import yaml
    from trainkit import tiny_config
    path = tmp_path_factory.mktemp("train_cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_shards)), encoding="utf-8")
    return path
