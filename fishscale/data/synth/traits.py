"""Synthetic fish-vista, what a fish looks like: family body plans, species variations, per-image noise.

Each family has a body plan (depth, head, fins, tail, colour, pattern); each species perturbs
its family's plan a little, so relatives are confusable; each image perturbs its species (pose,
scale, colour, pattern). Traits depend only on names and seeds (``stable_rng``), never on
``hash()``, so they are the same on every run and machine.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

TAIL_SHAPES = ("forked", "truncate", "rounded", "lunate", "pointed")
PATTERNS = ("plain", "stripes", "bars", "spots", "saddles")
FIN_COLOURS = ((0.0, 0.75, 0.8), (0.12, 0.8, 0.9), (0.6, 0.5, 0.6), (0.08, 0.3, 0.2))


@dataclass(frozen=True)
class FishTraits:
    """Everything needed to draw one fish. Positions and lengths along the body are fractions of
    the body length (snout to tail base); heights, as noted, are in half depths of the body."""
    elongation: float          # body length / body depth
    hump: float                # depth share above the midline (1 = symmetric; belly = 2 - hump)
    peak: float                # where the body is deepest (0..1 from the snout)
    snout: float               # snout depth relative to max depth
    peduncle: float            # tail-base depth relative to max depth
    head: float                # head length
    eye: float                 # eye radius, in half depths
    tail_shape: str
    tail_length: float
    tail_span: float           # tail half-span, in half depths
    dorsal: tuple[tuple[float, float, float], ...]   # (start, end, height) per dorsal fin
    anal: tuple[float, float, float]                 # (start, end, height)
    pelvic: float              # pelvic fin position
    adipose: bool
    barbels: int
    body_hsv: tuple[float, float, float]
    belly_light: float         # how much lighter the belly is (0..1)
    fin_hsv: tuple[float, float, float]
    pattern: str
    pattern_count: int
    pattern_size: float
    pattern_dark: float        # pattern darkness (negative = lighter than body)
    ear_spot: bool             # dark opercular flap, as in sunfishes
    caudal_spot: bool
    dorsal_spot: bool


def stable_rng(*keys: object) -> np.random.Generator:
    """A generator seeded from names/ints, stable across runs and machines (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


# Hand-set body plans of the families the small profiles use (others are drawn from their name).
FAMILY_PRESETS: dict[str, dict] = {
    "centrarchidae": dict(elongation=2.0, hump=1.08, peak=0.38, snout=0.3, peduncle=0.3, head=0.3,
                          tail_shape="forked", dorsal=((0.3, 0.82, 0.5),), anal=(0.6, 0.86, 0.45),
                          adipose=False, barbels=0, body_hsv=(0.25, 0.45, 0.55), pattern="bars",
                          ear_spot=True),
    "cyprinidae": dict(elongation=4.0, hump=1.0, peak=0.4, snout=0.35, peduncle=0.35, head=0.22,
                       tail_shape="forked", dorsal=((0.45, 0.58, 0.8),), anal=(0.68, 0.8, 0.55),
                       adipose=False, barbels=0, body_hsv=(0.14, 0.22, 0.72), pattern="stripes",
                       ear_spot=False),
    "ictaluridae": dict(elongation=4.3, hump=1.0, peak=0.3, snout=0.5, peduncle=0.4, head=0.24,
                        tail_shape="rounded", dorsal=((0.3, 0.38, 0.7),), anal=(0.62, 0.92, 0.4),
                        adipose=True, barbels=4, body_hsv=(0.09, 0.55, 0.45), pattern="plain",
                        ear_spot=False),
    "esocidae": dict(elongation=5.5, hump=0.95, peak=0.55, snout=0.15, peduncle=0.4, head=0.27,
                     tail_shape="forked", dorsal=((0.72, 0.86, 0.7),), anal=(0.72, 0.87, 0.6),
                     adipose=False, barbels=0, body_hsv=(0.22, 0.5, 0.45), pattern="bars",
                     ear_spot=False),
    "percidae": dict(elongation=3.6, hump=1.05, peak=0.38, snout=0.3, peduncle=0.3, head=0.27,
                     tail_shape="forked", dorsal=((0.28, 0.5, 0.7), (0.54, 0.74, 0.55)),
                     anal=(0.64, 0.78, 0.5), adipose=False, barbels=0, body_hsv=(0.15, 0.65, 0.7),
                     pattern="bars", ear_spot=False),
    "poeciliidae": dict(elongation=3.3, hump=0.95, peak=0.45, snout=0.3, peduncle=0.45, head=0.22,
                        tail_shape="rounded", dorsal=((0.55, 0.66, 0.6),), anal=(0.48, 0.58, 0.5),
                        adipose=False, barbels=0, body_hsv=(0.12, 0.25, 0.6), pattern="spots",
                        ear_spot=False),
    "salmonidae": dict(elongation=4.2, hump=1.0, peak=0.42, snout=0.3, peduncle=0.35, head=0.24,
                       tail_shape="truncate", dorsal=((0.4, 0.54, 0.75),), anal=(0.68, 0.8, 0.5),
                       adipose=True, barbels=0, body_hsv=(0.08, 0.35, 0.62), pattern="spots",
                       ear_spot=False),
    "cottidae": dict(elongation=3.8, hump=1.05, peak=0.25, snout=0.55, peduncle=0.3, head=0.33,
                     tail_shape="rounded", dorsal=((0.32, 0.48, 0.45), (0.5, 0.82, 0.55)),
                     anal=(0.55, 0.82, 0.45), adipose=False, barbels=0, body_hsv=(0.08, 0.4, 0.4),
                     pattern="saddles", ear_spot=False),
    "catostomidae": dict(elongation=4.2, hump=1.1, peak=0.4, snout=0.3, peduncle=0.4, head=0.23,
                         tail_shape="forked", dorsal=((0.4, 0.58, 0.7),), anal=(0.72, 0.82, 0.5),
                         adipose=False, barbels=0, body_hsv=(0.1, 0.3, 0.55), pattern="plain",
                         ear_spot=False),
    "moronidae": dict(elongation=3.0, hump=1.05, peak=0.4, snout=0.25, peduncle=0.3, head=0.28,
                      tail_shape="forked", dorsal=((0.3, 0.48, 0.7), (0.52, 0.72, 0.5)),
                      anal=(0.62, 0.78, 0.5), adipose=False, barbels=0, body_hsv=(0.55, 0.12, 0.75),
                      pattern="stripes", ear_spot=False),
    "lepisosteidae": dict(elongation=7.0, hump=1.0, peak=0.5, snout=0.1, peduncle=0.45, head=0.3,
                          tail_shape="rounded", dorsal=((0.82, 0.9, 0.7),), anal=(0.8, 0.9, 0.6),
                          adipose=False, barbels=0, body_hsv=(0.18, 0.4, 0.5), pattern="spots",
                          ear_spot=False),
}


@lru_cache(maxsize=None)
def family_plan(family: str) -> FishTraits:
    """The body plan shared by a family: a preset for common families, else drawn from the name."""
    key = family.strip().lower()
    rng = stable_rng("family", key)
    start = rng.uniform(0.3, 0.55)
    dorsal = [(start, start + rng.uniform(0.1, 0.3), rng.uniform(0.4, 0.9))]
    if rng.random() < 0.3:
        dorsal.append((dorsal[0][1] + 0.04, min(0.85, dorsal[0][1] + rng.uniform(0.12, 0.25)), rng.uniform(0.4, 0.7)))
    anal_start = rng.uniform(0.55, 0.72)
    plan = FishTraits(
        elongation=float(rng.uniform(1.8, 5.0)), hump=float(rng.uniform(0.9, 1.15)),
        peak=float(rng.uniform(0.3, 0.5)), snout=float(rng.uniform(0.15, 0.5)),
        peduncle=float(rng.uniform(0.2, 0.45)), head=float(rng.uniform(0.2, 0.32)),
        eye=0.28, tail_shape=str(rng.choice(TAIL_SHAPES, p=[0.4, 0.2, 0.2, 0.15, 0.05])),
        tail_length=float(rng.uniform(0.14, 0.26)), tail_span=float(rng.uniform(0.7, 1.2)),
        dorsal=tuple(dorsal), anal=(anal_start, anal_start + rng.uniform(0.08, 0.22), rng.uniform(0.35, 0.7)),
        pelvic=float(rng.uniform(0.3, 0.48)), adipose=bool(rng.random() < 0.15),
        barbels=int(rng.choice([0, 0, 0, 2, 4])),
        body_hsv=family_colour(rng),
        belly_light=float(rng.uniform(0.2, 0.6)), fin_hsv=(0.1, 0.2, 0.6),
        pattern=str(rng.choice(PATTERNS)), pattern_count=int(rng.integers(2, 8)),
        pattern_size=float(rng.uniform(0.15, 0.35)), pattern_dark=0.45,
        ear_spot=False, caudal_spot=False, dorsal_spot=False,
    )
    preset = FAMILY_PRESETS.get(key, {})
    return replace(plan, **preset)


def family_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """HSV base colour: mostly browns, olives and silvers, as most specimens are; some bright."""
    kind = rng.random()
    if kind < 0.6:
        return float(rng.uniform(0.04, 0.22)), float(rng.uniform(0.2, 0.65)), float(rng.uniform(0.4, 0.8))
    if kind < 0.8:
        return float(rng.uniform(0.5, 0.65)), float(rng.uniform(0.05, 0.3)), float(rng.uniform(0.55, 0.85))
    return float(rng.uniform(0, 1)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.45, 0.8))


def _jitter(rng: np.random.Generator, value: float, sigma: float, low: float, high: float) -> float:
    return float(np.clip(value * math.exp(rng.normal(0, sigma)), low, high))


def _shift(rng: np.random.Generator, value: float, sigma: float, low: float, high: float) -> float:
    return float(np.clip(value + rng.normal(0, sigma), low, high))


@lru_cache(maxsize=None)
def species_traits(species: str, family: str) -> FishTraits:
    """A species: its family's plan, perturbed a little (fine-grained: relatives stay similar)."""
    plan = family_plan(family)
    rng = stable_rng("species", species.strip().lower())
    hue, sat, val = plan.body_hsv
    pattern = plan.pattern if rng.random() < 0.75 else str(rng.choice(PATTERNS))
    fin_hsv = (FIN_COLOURS[int(rng.integers(len(FIN_COLOURS)))] if rng.random() < 0.3
               else (hue, sat * 0.6, min(1.0, val * 1.1)))
    dorsal = tuple((s, e, _jitter(rng, h, 0.15, 0.2, 1.2)) for s, e, h in plan.dorsal)
    return replace(
        plan,
        elongation=_jitter(rng, plan.elongation, 0.08, 1.5, 7.5),
        hump=_shift(rng, plan.hump, 0.04, 0.85, 1.2), peak=_shift(rng, plan.peak, 0.04, 0.22, 0.6),
        snout=_jitter(rng, plan.snout, 0.15, 0.08, 0.6), head=_jitter(rng, plan.head, 0.08, 0.16, 0.36),
        eye=_jitter(rng, plan.eye, 0.2, 0.15, 0.45), tail_span=_jitter(rng, plan.tail_span, 0.12, 0.5, 1.5),
        tail_length=_jitter(rng, plan.tail_length, 0.1, 0.1, 0.32), dorsal=dorsal,
        anal=(plan.anal[0], plan.anal[1], _jitter(rng, plan.anal[2], 0.15, 0.2, 1.0)),
        body_hsv=((hue + rng.normal(0, 0.035)) % 1.0, float(np.clip(sat + rng.normal(0, 0.08), 0.05, 0.9)),
                  float(np.clip(val + rng.normal(0, 0.07), 0.25, 0.9))),
        belly_light=_shift(rng, plan.belly_light, 0.1, 0.0, 0.8), fin_hsv=fin_hsv,
        pattern=pattern, pattern_count=int(np.clip(plan.pattern_count + rng.integers(-2, 3), 1, 10)),
        pattern_size=_jitter(rng, plan.pattern_size, 0.2, 0.08, 0.5),
        pattern_dark=float(rng.choice([0.55, 0.4, 0.3, -0.35])),
        ear_spot=plan.ear_spot and rng.random() < 0.8,
        caudal_spot=bool(rng.random() < 0.2), dorsal_spot=bool(rng.random() < 0.2),
    )


def specimen_traits(traits: FishTraits, rng: np.random.Generator) -> FishTraits:
    """One specimen: the species with pose/shape/colour noise (smaller than species differences)."""
    hue, sat, val = traits.body_hsv
    fade = rng.uniform(0.0, 0.45)   # preserved specimens lose colour
    return replace(
        traits,
        elongation=_jitter(rng, traits.elongation, 0.05, 1.4, 8.0),
        hump=_shift(rng, traits.hump, 0.02, 0.8, 1.25), peak=_shift(rng, traits.peak, 0.02, 0.2, 0.62),
        eye=_jitter(rng, traits.eye, 0.06, 0.12, 0.5),
        tail_span=_jitter(rng, traits.tail_span, 0.06, 0.4, 1.6),
        dorsal=tuple((s, e, _jitter(rng, h, 0.08, 0.15, 1.3)) for s, e, h in traits.dorsal),
        body_hsv=((hue + rng.normal(0, 0.02)) % 1.0, float(np.clip(sat * (1 - fade), 0.0, 1.0)),
                  float(np.clip(val * math.exp(rng.normal(0, 0.1)), 0.15, 0.95))),
        pattern_size=_jitter(rng, traits.pattern_size, 0.06, 0.05, 0.6),
    )


