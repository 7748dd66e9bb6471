"""fishscale.config: YAML + dotted overrides -> one typed Config; unknown keys and wrong types
are errors that name the key. Also: every shipped config in configs/ loads, and the fish-vista
ones carry the reference recipe."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from fishscale.config import Config, PhaseConfig, apply_overrides, config_from_dict, load_config
from fishscale.errors import FishscaleError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_defaults_and_file_values_and_overrides(tmp_path):
    path = write(tmp_path, {"train": {"batch_size": 64}, "phases": [{"name": "a", "epochs": 2}, {"name": "b"}]})
    cfg = load_config(path, ["train.zero_stage=3", "phases.1.lr=1e-4", "optim.betas=[0.8, 0.95]",
                             "model.kwargs={embed_dim: 16}", "train.clip_grad=null", "data.shards=/x y/z"])
    assert cfg.train.batch_size == 64 and cfg.train.zero_stage == 3
    assert [p.name for p in cfg.phases] == ["a", "b"] and cfg.phases[0].epochs == 2
    assert isinstance(cfg.phases[1], PhaseConfig) and cfg.phases[1].lr == pytest.approx(1e-4)
    assert cfg.optim.betas == (0.8, 0.95) and cfg.model.kwargs == {"embed_dim": 16}
    assert cfg.train.clip_grad is None and cfg.data.shards == "/x y/z"
    assert cfg.train.seed == Config().train.seed                   # untouched default
    assert cfg.phases[1].epochs == PhaseConfig().epochs             # phase defaults fill a short phase


def test_yaml_1_1_exponent_strings_read_as_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("phases:\n  - {lr: 1e-3}\noptim:\n  min_lr_ratio: 5e-2\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.phases[0].lr == 1e-3 and cfg.optim.min_lr_ratio == 0.05


def test_round_trip_through_the_saved_yaml(tmp_path):
    cfg = load_config(None, ["train.batch_size=8", "eval.bin_edges=[5, 50]", "phases=[{name: x, epochs: 3}]"])
    saved = cfg.save(tmp_path / "run" / "config.yaml")
    again = load_config(saved)
    assert again == cfg
    assert yaml.safe_load(saved.read_text())["eval"]["bin_edges"] == [5, 50]   # plain YAML, no python tags
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


@pytest.mark.parametrize("data, key", [
    ({"trian": {}}, "trian"),
    ({"train": {"batch_sise": 3}}, "train.batch_sise"),
    ({"phases": [{"name": "a"}, {"name": "b", "lr_backbone": 1}]}, "phases[1].lr_backbone"),
    ({"model": {"kwargs": {"x": 1}, "heads": "mlp"}}, "model.heads"),
])
def test_unknown_keys_are_named(tmp_path, data, key):
    with pytest.raises(FishscaleError, match=re.escape(f"unknown key '{key}'")):
        load_config(write(tmp_path, data))


def test_unknown_override_key_is_named():
    with pytest.raises(FishscaleError, match="unknown key 'train.zero'"):
        load_config(None, ["train.zero=3"])
    with pytest.raises(FishscaleError, match="unknown key 'bogus'"):
        load_config(None, ["bogus.x=1"])


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=abc", "'train.batch_size' must be int"),
    ("train.batch_size=2.5", "'train.batch_size' must be int"),
    ("train.batch_size=true", "'train.batch_size' must be int"),
    ("phases.0.freeze_backbone=yes please", "'phases[0].freeze_backbone' must be true or false"),
    ("phases.0.lr=fast", "'phases[0].lr' must be float"),
    ("train.seed=null", "'train.seed' may not be null"),
    ("optim.betas=0.9", "'optim.betas' must be a list"),
    ("data.backend=3", "'data.backend' must be str"),
    ("phases=[]", "'phases' must be a non-empty list"),
])
def test_wrong_types_are_named(override, message):
    with pytest.raises(FishscaleError, match=re.escape(message)):
        load_config(None, [override])


def test_bad_override_syntax_and_paths():
    with pytest.raises(FishscaleError, match="must look like key.sub=value"):
        load_config(None, ["train.batch_size"])
    with pytest.raises(FishscaleError, match="no list item '5'"):
        load_config(None, ["phases.5.lr=1"])
    with pytest.raises(FishscaleError, match="'train.seed' is not a section"):
        load_config(None, ["train.seed.x=1"])


def test_bad_files(tmp_path):
    with pytest.raises(FishscaleError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n", encoding="utf-8")
    with pytest.raises(FishscaleError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n", encoding="utf-8")
    with pytest.raises(FishscaleError, match="top level must be a mapping"):
        load_config(scalar)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("train: !!python/object/apply:os.system ['echo hi']\n", encoding="utf-8")
    with pytest.raises(FishscaleError, match="not valid YAML"):          # safe_load refuses python tags
        load_config(unsafe)
    with pytest.raises(FishscaleError, match="config: train must be a mapping, got 3"):
        config_from_dict({"train": 3})


def test_apply_overrides_parses_values_as_yaml():
    data = apply_overrides({"a": {"b": 1}, "l": [1, 2]}, ["a.b=1e-3", "a.c=[1, 2]", "l.1=x", "a.d="])
    # PyYAML reads "1e-3" as a string (YAML 1.1); the typed Config turns it into a float later
    assert data == {"a": {"b": yaml.safe_load("1e-3"), "c": [1, 2], "d": ""}, "l": [1, "x"]}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.phases and all(p.epochs >= 1 for p in cfg.phases)
    assert cfg.train.batch_size % cfg.train.grad_accum == 0


@pytest.mark.parametrize("name, width", [("fishvista_swin_t", 768), ("fishvista_swin_b", 1024)])
def test_fishvista_configs_carry_the_reference_recipe(name, width):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert [(p.epochs, p.freeze_backbone) for p in cfg.phases] == [(30, True), (50, False)]
    assert (cfg.loss.name, cfg.loss.gamma) == ("focal", 2.0)
    assert (cfg.data.image_size, cfg.data.backend, cfg.data.device) == (224, "dali", "gpu")
    assert cfg.train.precision in ("auto", "bf16") and cfg.train.zero_stage == 2
    assert (cfg.model.head, cfg.model.head_hidden) == ("mlp", 256)
    import timm
    features = timm.create_model(cfg.model.name, pretrained=False, num_classes=0).num_features  # no download
    assert features == width


def test_repo_root_holds_the_built_in_configs():
    """Every built-in config path (quickstart, study, DeepSpeed JSON per ZeRO stage) resolves
    against one REPO_ROOT; a stage folder moving must not silently lose them."""
    from fishscale.config import REPO_ROOT
    from fishscale.quickstart import QUICKSTART_CONFIG
    from fishscale.study import STUDY_CONFIG, UPSTREAM_CONFIG
    from fishscale.train.engine import DEEPSPEED_CONFIG_DIR, ZERO_STAGES, base_config_path
    assert REPO_ROOT == REPO
    assert QUICKSTART_CONFIG.is_file() and STUDY_CONFIG.is_file() and UPSTREAM_CONFIG.is_file()
    for stage in ZERO_STAGES:
        cfg = load_config(None, [f"train.zero_stage={stage}"])
        assert base_config_path(cfg) == DEEPSPEED_CONFIG_DIR / f"zero{stage}.json" and DEEPSPEED_CONFIG_DIR.is_dir()


@pytest.mark.parametrize("override, key", [
    ("eval.batch_size=0", "eval.batch_size"), ("augment.hue=3", "augment.hue"), ("data.pad_value=300", "data.pad_value"),
    ("data.mean=[0.5, 0.5]", "data.mean"), ("data.std=[0.2, 0, 0.2]", "data.std"),
    ("optim.min_lr_ratio=5", "optim.min_lr_ratio"), ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("train.clip_grad=-1", "train.clip_grad"), ("data.num_workers=-3", "data.num_workers"),
    ("augment.rotate_prob=1.5", "augment.rotate_prob"), ("train.grad_accum=0", "train.grad_accum"),
])
def test_values_out_of_range_fail_at_load_naming_the_key(override, key):
    with pytest.raises(FishscaleError, match=f"config: '{key}' must be "):
        load_config(None, [override])
