"""Losses: agreement with torch CE, kornia's focal loss and numpy references; weights; stability."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kornia.losses import focal_loss as kornia_focal_loss

from fishscale.config import LossConfig
from fishscale.errors import FishscaleError
from fishscale.model.losses import (FocalLoss, LDAMLoss, build_loss, effective_number_weights,
                              fishvista_alpha)

COUNTS = [500, 120, 30, 8, 2, 1]
ALL_LOSSES = [
    LossConfig(name="focal"),
    LossConfig(name="focal", gamma=0.5, alpha="fishvista"),
    LossConfig(name="focal", alpha="effective-number", beta=0.99),
    LossConfig(name="ce", label_smoothing=0.1, class_weights="fishvista"),
    LossConfig(name="logit-adjusted", tau=1.0),
    LossConfig(name="ldam", drw_epoch=0, ldam_scale=30.0),
]


def _batch(n: int = 64, classes: int = len(COUNTS), scale: float = 3.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


def _numpy_focal(logits: np.ndarray, labels: np.ndarray, gamma: float, alpha: np.ndarray | None) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    p_y = p[np.arange(len(labels)), labels]
    a = np.ones(logits.shape[1]) if alpha is None else alpha
    return float(np.mean(-a[labels] * (1 - p_y) ** gamma * np.log(p_y)))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_focal_gamma0_is_cross_entropy(reduction):
    logits, labels = _batch()
    ours = FocalLoss(gamma=0.0, reduction=reduction)(logits, labels)
    torch.testing.assert_close(ours.double(), F.cross_entropy(logits, labels, reduction=reduction), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.5])
def test_focal_matches_kornia(gamma):
    logits, labels = _batch(seed=int(gamma * 10))
    B = len(labels)
    # no alpha
    ref = kornia_focal_loss(logits, labels, alpha=None, gamma=gamma, reduction="sum") / B
    torch.testing.assert_close(FocalLoss(gamma)(logits, labels).double(), ref, rtol=1e-5, atol=1e-7)
    # kornia's scalar alpha weights class 0 by 1 - a and every other class by a
    a = 0.25
    per_class = torch.tensor([1 - a] + [a] * (logits.shape[1] - 1))
    ref = kornia_focal_loss(logits, labels, alpha=a, gamma=gamma, reduction="sum") / B
    torch.testing.assert_close(FocalLoss(gamma, alpha=per_class)(logits, labels).double(), ref, rtol=1e-5, atol=1e-7)
    # a per-class alpha against kornia's per-class `weight`
    alpha = torch.tensor(fishvista_alpha(COUNTS), dtype=torch.float32)
    ref = kornia_focal_loss(logits, labels, alpha=None, gamma=gamma, reduction="none", weight=alpha.double())
    torch.testing.assert_close(FocalLoss(gamma, alpha=alpha)(logits, labels).double(), ref.sum(1).mean(),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_per_class_alpha_matches_numpy(gamma):
    logits, labels = _batch(seed=3)
    alpha = effective_number_weights(COUNTS, 0.999)
    ours = FocalLoss(gamma, alpha=torch.tensor(alpha))(logits, labels)
    assert float(ours) == pytest.approx(_numpy_focal(logits.numpy(), labels.numpy(), gamma, alpha), rel=1e-5)


def test_fishvista_alpha_hand_computed():
    # N = 100, C = 3: w = ln(1 + 100 / (3 n)) = [0.315081, 1.548350, 3.536117], sum 5.399548, times 3 / sum
    np.testing.assert_allclose(fishvista_alpha([90, 9, 1]), [0.175060, 0.860267, 1.964674], atol=2e-6)
    assert fishvista_alpha([90, 9, 1]).sum() == pytest.approx(3.0)
    np.testing.assert_allclose(fishvista_alpha([7, 7, 7, 7]), [1, 1, 1, 1])


def test_effective_number_hand_computed():
    # beta 0.9: E_1 = 1, E_2 = (1 - 0.81) / 0.1 = 1.9; w = [1, 1/1.9] scaled to sum 2
    np.testing.assert_allclose(effective_number_weights([1, 2], 0.9), [2 * 1.9 / 2.9, 2 / 2.9])
    np.testing.assert_allclose(effective_number_weights([3, 50], 0.0), [1, 1])
    # beta -> 1 approaches inverse frequency without overflow
    np.testing.assert_allclose(effective_number_weights([10, 1000], 1 - 1e-9), [2 * 100 / 101, 2 / 101], rtol=1e-5)


def test_ce_label_smoothing_and_weights():
    logits, labels = _batch()
    loss = build_loss(LossConfig(name="ce", label_smoothing=0.2, class_weights="fishvista"), COUNTS)
    w = torch.tensor(fishvista_alpha(COUNTS))
    ref = F.cross_entropy(logits, labels, weight=w, label_smoothing=0.2)
    torch.testing.assert_close(loss(logits, labels).double(), ref, rtol=1e-5, atol=1e-6)


def test_logit_adjusted_tau0_is_ce_and_tau1_is_balanced_softmax():
    logits, labels = _batch()
    la0 = build_loss(LossConfig(name="logit-adjusted", tau=0.0), COUNTS)
    torch.testing.assert_close(la0(logits, labels).double(), F.cross_entropy(logits, labels), rtol=1e-5, atol=1e-6)
    # balanced softmax: -log(n_y e^{z_y} / sum_j n_j e^{z_j})
    z, n = logits.numpy(), np.asarray(COUNTS, dtype=np.float64)
    weighted = n * np.exp(z - z.max(axis=1, keepdims=True))
    ref = np.mean(-np.log(weighted[np.arange(len(labels)), labels.numpy()] / weighted.sum(axis=1)))
    la1 = build_loss(LossConfig(name="logit-adjusted", tau=1.0), COUNTS)
    assert float(la1(logits, labels)) == pytest.approx(ref, rel=1e-5)


def test_ldam_margins_and_deferred_reweighting():
    logits, labels = _batch()
    loss = build_loss(LossConfig(name="ldam", ldam_max_margin=0.5, ldam_scale=10.0, drw_epoch=2), COUNTS)
    margins = 0.5 * (np.asarray(COUNTS, dtype=np.float64) / min(COUNTS)) ** -0.25   # largest (0.5) for the rarest
    np.testing.assert_allclose(loss.margins.numpy(), margins, rtol=1e-6)
    shifted = logits.clone()
    shifted[torch.arange(len(labels)), labels] -= torch.tensor(margins)[labels]
    loss.set_epoch(1)
    torch.testing.assert_close(loss(logits, labels).double(), F.cross_entropy(10 * shifted, labels), rtol=1e-5, atol=1e-5)
    loss.set_epoch(2)
    drw = torch.tensor(effective_number_weights(COUNTS, 0.9999))
    torch.testing.assert_close(loss(logits, labels).double(), F.cross_entropy(10 * shifted, labels, weight=drw),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", ALL_LOSSES, ids=lambda c: f"{c.name}-{c.alpha}-{c.class_weights}")
def test_gradients_finite_at_extreme_logits_and_bf16(cfg):
    loss = build_loss(cfg, COUNTS)
    loss.set_epoch(5)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 5, 0])
    extreme = torch.full((8, 6), -1e4)
    extreme[torch.arange(8), (labels + torch.tensor([0, 1, 0, 2, 0, 1, 0, 3])) % 6] = 1e4   # half right, half wrong
    for logits in (extreme, extreme.bfloat16(), _batch(8)[0].bfloat16() * 20):
        logits = logits.clone().requires_grad_(True)
        value = loss(logits, labels)
        value.backward()
        assert torch.isfinite(value), (cfg.name, logits.dtype)
        assert logits.grad.dtype == logits.dtype and torch.isfinite(logits.grad).all(), (cfg.name, logits.dtype)
        assert logits.grad.abs().sum() > 0   # wrong rows must push back


@pytest.mark.parametrize("cfg", ALL_LOSSES, ids=lambda c: f"{c.name}-{c.alpha}-{c.class_weights}")
def test_buffers_move_with_to(cfg):
    loss = build_loss(cfg, COUNTS)
    buffers = dict(loss.named_buffers())
    if cfg.name != "focal" or cfg.alpha != "none":
        assert buffers, f"{cfg.name} should keep its constants as buffers"
    loss.to("meta")
    assert all(b.device.type == "meta" for b in loss.buffers())
    loss.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in loss.buffers())


@pytest.mark.parametrize("cfg, key", [
    (LossConfig(name="softmax"), "loss.name"),
    (LossConfig(name="focal", gamma=-1.0), "loss.gamma"),
    (LossConfig(name="focal", alpha="inverse"), "loss.alpha"),
    (LossConfig(name="focal", alpha="effective-number", beta=1.0), "loss.beta"),
    (LossConfig(name="ce", alpha="fishvista"), "loss.alpha"),
    (LossConfig(name="ce", label_smoothing=1.0), "loss.label_smoothing"),
    (LossConfig(name="focal", label_smoothing=0.1), "loss.label_smoothing"),
    (LossConfig(name="ldam", ldam_max_margin=0.0), "loss.ldam_max_margin"),
    (LossConfig(name="ldam", drw_epoch=-1), "loss.drw_epoch"),
    (LossConfig(name="ce", drw_epoch=3), "loss.drw_epoch"),
])
def test_bad_config_names_the_key(cfg, key):
    with pytest.raises(FishscaleError, match=key.replace(".", r"\.")):
        build_loss(cfg, COUNTS)


def test_bad_counts_rejected():
    with pytest.raises(FishscaleError, match="class_counts"):
        build_loss(LossConfig(name="logit-adjusted"), [10, -1])
    with pytest.raises(FishscaleError, match="class_counts"):
        build_loss(LossConfig(name="ce"), [])


def test_zero_count_class_gets_finite_weights():
    loss = LDAMLoss([100, 0, 5], drw_epoch=0)
    assert torch.isfinite(loss.margins).all() and torch.isfinite(loss.drw_weight).all()
    la = build_loss(LossConfig(name="logit-adjusted"), [100, 0, 5])
    assert torch.isfinite(la.adjustment).all()
