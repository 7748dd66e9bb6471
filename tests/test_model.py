"""Model factory on a tiny real timm Swin: pretrained-file round trips, heads, freezing, param groups."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from fishscale.config import ModelConfig, OptimConfig, PhaseConfig
from fishscale.errors import FishscaleError
from fishscale.model.factory import (TINY_SWIN_KWARGS, build_model, head_parameters, param_groups,
                             set_backbone_trainable)

SIZE = 64
NAME = "swin_tiny_patch4_window7_224"


def tiny_cfg(**overrides) -> ModelConfig:
    return ModelConfig(kwargs=dict(TINY_SWIN_KWARGS), drop_path_rate=0.0, **overrides)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    """A tiny Swin's weights with a 5-class head (a stand-in for ImageNet weights)."""
    torch.manual_seed(1)
    return build_model(tiny_cfg(), num_classes=5, image_size=SIZE).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_loads_backbone_and_reinits_mismatched_head(tmp_path, source_state, suffix):
    path = _save(source_state, tmp_path / f"weights{suffix}")
    written = load_file(str(path)) if suffix == ".safetensors" else torch.load(path, weights_only=True)
    model = build_model(tiny_cfg(pretrained="file", pretrained_file=str(path)), num_classes=7, image_size=SIZE)
    state = model.state_dict()
    backbone = [k for k in written if not k.startswith("head.")]
    assert len(backbone) > 50
    for key in backbone:
        assert torch.equal(state[key], written[key]), key
    assert state["head.fc.weight"].shape == (7, model.num_features) and state["head.fc.bias"].shape == (7,)
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 7)


def test_pretrained_file_with_matching_head_loads_everything(tmp_path, source_state):
    path = _save(source_state, tmp_path / "same.safetensors")
    model = build_model(tiny_cfg(pretrained="file", pretrained_file=str(path)), num_classes=5, image_size=SIZE)
    for key, value in model.state_dict().items():
        assert torch.equal(value, source_state[key]), key


def test_pretrained_file_with_missing_or_misshaped_backbone_fails(tmp_path, source_state):
    partial = {k: v for k, v in source_state.items() if k != "layers.2.blocks.0.mlp.fc1.weight"}
    cfg = tiny_cfg(pretrained="file", pretrained_file=str(_save(partial, tmp_path / "partial.safetensors")))
    with pytest.raises(FishscaleError, match="layers.2.blocks.0.mlp.fc1.weight"):
        build_model(cfg, num_classes=7, image_size=SIZE)
    other = build_model(ModelConfig(kwargs={**TINY_SWIN_KWARGS, "embed_dim": 12}), 5, SIZE).state_dict()
    cfg = tiny_cfg(pretrained="file", pretrained_file=str(_save(other, tmp_path / "other.pth")))
    with pytest.raises(FishscaleError, match="other.pth"):
        build_model(cfg, num_classes=7, image_size=SIZE)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pth_with_code_is_refused_without_running_it(tmp_path, source_state):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    state = dict(source_state)
    state["payload"] = _Payload(marker)
    torch.save(state, path, pickle_module=pickle)
    with pytest.raises(FishscaleError, match="evil.pth"):
        build_model(tiny_cfg(pretrained="file", pretrained_file=str(path)), num_classes=7, image_size=SIZE)
    assert not marker.exists()


def test_linear_head_state_dict_loads_into_plain_timm_model():
    model = build_model(tiny_cfg(), num_classes=9, image_size=SIZE)
    plain = timm.create_model(NAME, num_classes=9, img_size=SIZE, **TINY_SWIN_KWARGS)
    plain.load_state_dict(model.state_dict(), strict=True)
    model.eval(), plain.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(plain(x), model(x))


def test_mlp_head_shape_and_round_trip(tmp_path):
    model = build_model(tiny_cfg(head="mlp", head_hidden=48, head_dropout=0.25), num_classes=11, image_size=SIZE)
    head = model.get_classifier()
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[2].p, head[3].out_features) == (model.num_features, 48, 0.25, 11)
    assert model(torch.randn(3, 3, SIZE, SIZE)).shape == (3, 11)
    assert {id(p) for p in head_parameters(model)} == {id(p) for p in head.parameters()}
    path = _save(model.state_dict(), tmp_path / "mlp.safetensors")
    again = build_model(tiny_cfg(head="mlp", head_hidden=48, pretrained="file", pretrained_file=str(path)),
                        num_classes=11, image_size=SIZE)
    for key, value in again.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    # a linear-head checkpoint into the MLP model: backbone loads, MLP stays fresh
    linear = _save(build_model(tiny_cfg(), 11, SIZE).state_dict(), tmp_path / "linear.pth")
    build_model(tiny_cfg(head="mlp", pretrained="file", pretrained_file=str(linear)), 11, SIZE)


def test_cnn_without_img_size_and_mlp_head():
    model = build_model(ModelConfig(name="resnet10t", head="mlp", head_hidden=16), num_classes=4, image_size=SIZE)
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 4)
    groups = param_groups(model, PhaseConfig(lr=1e-3), OptimConfig(layer_decay=0.8))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_freezing_leaves_backbone_unchanged_while_head_learns():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), num_classes=6, image_size=SIZE)
    set_backbone_trainable(model, False)
    head_ids = {id(p) for p in head_parameters(model)}
    assert all(p.requires_grad == (id(p) in head_ids) for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = param_groups(model, PhaseConfig(lr=1e-2, freeze_backbone=True), OptimConfig())
    assert {g["name"] for g in groups} == {"head_decay", "head_no_decay"}
    optimizer = torch.optim.AdamW(groups)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, SIZE, SIZE)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.fc.weight", "head.fc.bias"}
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())


def test_param_groups_lrs_and_no_decay_on_norms_biases_and_position_tables():
    model = build_model(tiny_cfg(), num_classes=6, image_size=SIZE)
    groups = param_groups(model, PhaseConfig(lr=1e-3, backbone_lr=1e-4), OptimConfig(weight_decay=0.05))
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"head_decay", "head_no_decay", "backbone_decay", "backbone_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(names.values())                  # every parameter exactly once
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in no_decay
    assert {"norm.weight", "layers.1.downsample.norm.bias", "head.fc.bias", "patch_embed.proj.bias"} <= no_decay
    assert {"layers.0.blocks.0.attn.qkv.weight", "head.fc.weight"}.isdisjoint(no_decay)
    assert by_name["backbone_decay"]["weight_decay"] == 0.05
    assert by_name["head_decay"]["lr"] == 1e-3 and by_name["backbone_no_decay"]["lr"] == 1e-4
    defaulted = param_groups(model, PhaseConfig(lr=3e-4), OptimConfig())
    assert {g["lr"] for g in defaulted} == {3e-4}                     # backbone_lr None = lr


def test_layer_decay_lrs_rise_with_depth():
    model = build_model(tiny_cfg(), num_classes=6, image_size=SIZE)
    groups = param_groups(model, PhaseConfig(lr=1e-3, backbone_lr=1e-4), OptimConfig(layer_decay=0.5))
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    assert all("lr_scale" in g for g in groups)
    order = ["patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight", "layers.1.blocks.0.mlp.fc1.weight",
             "layers.2.blocks.0.attn.qkv.weight", "layers.3.blocks.0.mlp.fc2.weight"]
    lrs = [lr_of[n] for n in order]
    assert all(a < b for a, b in zip(lrs, lrs[1:])), lrs
    assert lrs[-1] == pytest.approx(1e-4 * 0.5) and lr_of["norm.weight"] == pytest.approx(1e-4 * 0.5)
    assert lr_of["head.fc.weight"] == 1e-3


def test_hub_offline_gives_clear_error(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # the hub's offline switch
    with pytest.raises(FishscaleError, match="model.pretrained=file"):
        build_model(tiny_cfg(pretrained="hub"), num_classes=3, image_size=SIZE)


@pytest.mark.parametrize("cfg, match", [
    (ModelConfig(name="swin_nonexistent"), "model.name"),
    (ModelConfig(pretrained="weights.pth"), "model.pretrained"),
    (ModelConfig(pretrained="file"), "model.pretrained_file"),
    (ModelConfig(pretrained="file", pretrained_file="/nonexistent/w.safetensors"), "not found"),
    (ModelConfig(head="conv"), "model.head"),
    (ModelConfig(kwargs={"no_such_arg": 1}), "model.kwargs"),
    (ModelConfig(kwargs={**TINY_SWIN_KWARGS, "num_heads": [1, 2]}), "model.kwargs"),   # 4 stages need 4
])
def test_bad_model_config(cfg, match):
    with pytest.raises(FishscaleError, match=match):
        build_model(cfg, num_classes=3, image_size=SIZE)
