"""The image transforms, PIL + torchvision.transforms.v2 (the torch backend and the reference).

Both backends share this geometry exactly (the DALI pipeline computes the same numbers):

* resize: longer side -> S, shorter side -> max(1, floor(short * S / long + 0.5)), bilinear
  with antialiasing (DALI: linear, antialias=True, the output size given explicitly);
* pad: to S x S with ``cfg.data.pad_value``, the image's top-left corner at
  ((S - h + 1) // 2, (S - w + 1) // 2) — centred, the odd pixel going to the top/left pad.

Train then rotates on the padded square (white fill, so an elongated fish keeps its ends),
flips, jitters colour, adjusts sharpness (a blend with a 3x3 Gaussian blur, sigma 1: factor
< 1 blurs, > 1 sharpens) and normalizes; eval stops after the pad. Each augmentation fires with
its probability from ``cfg.augment``; its random draws come from `draw_augment`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from fishscale.config import AugmentConfig, DataConfig
from fishscale.errors import FishscaleError

BLUR_WINDOW = 3          # sharpness: blend with this Gaussian blur (both backends)
BLUR_SIGMA = 1.0


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the longer side = size, aspect kept, rounded half up."""
    longer = max(height, width)
    return (max(1, int(np.floor(height * size / longer + 0.5))),
            max(1, int(np.floor(width * size / longer + 0.5))))


def pad_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of an h x w image centred on a size x size canvas (DALI's rounding)."""
    return (size - height + 1) // 2, (size - width + 1) // 2


@dataclass(frozen=True)
class AugmentDraw:
    """One sample's random augmentation parameters (None = that augmentation not applied)."""
    angle: float | None = None
    hflip: bool = False
    vflip: bool = False
    jitter: tuple[float, float, float, float] | None = None    # brightness, contrast, saturation, hue
    sharpness: float | None = None


def augment_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of one sample's augmentation: by (run seed, epoch, position in the plan)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(position), 7])


def draw_augment(aug: AugmentConfig, rng: np.random.Generator) -> AugmentDraw:
    """Draw every augmentation's coin and parameters (always all, so streams stay aligned)."""
    coins = rng.random(5)
    angle = rng.uniform(-aug.rotate_degrees, aug.rotate_degrees)
    jitter = (rng.uniform(1 - aug.brightness, 1 + aug.brightness),
              rng.uniform(1 - aug.contrast, 1 + aug.contrast),
              rng.uniform(1 - aug.saturation, 1 + aug.saturation),
              rng.uniform(-aug.hue, aug.hue))
    sharpness = rng.uniform(1 - aug.sharpness, 1 + aug.sharpness)
    return AugmentDraw(
        angle=angle if coins[0] < aug.rotate_prob else None,
        hflip=bool(coins[1] < aug.hflip_prob),
        vflip=bool(coins[2] < aug.vflip_prob),
        jitter=jitter if coins[3] < aug.color_jitter_prob else None,
        sharpness=sharpness if coins[4] < aug.sharpness_prob else None)


def decode(jpeg: bytes, where: str = "") -> torch.Tensor:
    """JPEG bytes -> uint8 RGB tensor [3, H, W] (PIL, libjpeg-turbo like DALI's CPU decoder)."""
    try:
        with Image.open(io.BytesIO(jpeg)) as img:
            return F.pil_to_tensor(img.convert("RGB"))
    except (OSError, ValueError) as e:
        raise FishscaleError(f"{where}: cannot decode image: {e}") from None


def resize_and_pad(img: torch.Tensor, size: int, pad_value: int) -> torch.Tensor:
    """Longer side -> size (aspect kept), centred on a size x size canvas of pad_value."""
    height, width = resized_size(img.shape[-2], img.shape[-1], size)
    img = F.resize(img, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)
    canvas = torch.full((3, size, size), pad_value, dtype=torch.uint8)
    top, left = pad_offsets(height, width, size)
    canvas[:, top:top + height, left:left + width] = img
    return canvas


def augment(img: torch.Tensor, draw: AugmentDraw, pad_value: int) -> torch.Tensor:
    """Apply one sample's drawn augmentations to the padded uint8 square, in pipeline order."""
    if draw.angle is not None:
        img = F.rotate(img, draw.angle, interpolation=InterpolationMode.BILINEAR, fill=[float(pad_value)] * 3)
    if draw.hflip:
        img = F.horizontal_flip(img)
    if draw.vflip:
        img = F.vertical_flip(img)
    if draw.jitter is not None:
        brightness, contrast, saturation, hue = draw.jitter
        img = F.adjust_brightness(img, brightness)
        img = F.adjust_contrast(img, contrast)
        img = F.adjust_saturation(img, saturation)
        img = F.adjust_hue(img, hue)
    if draw.sharpness is not None:
        img = sharpen(img, draw.sharpness)
    return img


def sharpen(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with a Gaussian-blurred copy: blurred + factor * (img - blurred), clamped to uint8."""
    blurred = F.gaussian_blur(img, [BLUR_WINDOW, BLUR_WINDOW], [BLUR_SIGMA, BLUR_SIGMA]).float()
    out = blurred + factor * (img.float() - blurred)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def normalize(img: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """uint8 [3,S,S] -> float32 CHW, (x/255 - mean) / std."""
    return F.normalize(F.to_dtype(img, torch.float32, scale=True), list(data.mean), list(data.std))
