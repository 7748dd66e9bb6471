"""Synthetic fish-vista: procedurally drawn fish in fish-vista's exact layout and schema.

    fishscale synth OUT [--profile tiny|small|fishvista] [--seed N] [--workers N] [--scale F]

writes ``OUT/classification_{train,val,test}.csv`` (the 15 published columns, in order) and a flat
``OUT/Images/`` of JPEGs, so every stage can run without the real download. See docs/synth.md.

- Species and counts come from a *profile*: ``tiny`` and ``small`` are hand-made long tails over
  real fish-vista species that span all four frequency bins; ``fishvista`` is all 1,758 real
  species with the real families and the real shape of the distribution (train counts estimated,
  see scripts/derive_species_table.py), shrunk by ``scale``.
- Each family has a body plan (depth, head, fins, tail, colour, pattern); each species perturbs
  its family's plan a little, so relatives are confusable; each image perturbs its species
  (pose, scale, rotation, colour, pattern) and is drawn on a white background.
- Deterministic: species traits depend only on names, each image only on (seed, image id), so the
  bytes are identical whatever the number of workers.
"""
from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

import click
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from fishscale import __version__
from fishscale.bins import DEFAULT_BIN_EDGES, DEFAULT_BIN_NAMES, assign_bins
from fishscale.dataset import COLUMNS, SPLITS, csv_path
from fishscale.errors import FishscaleError

PROFILES: tuple[str, ...] = ("tiny", "small", "fishvista", "upstream")
MARKER = ".fishscale-synth.json"   # provenance; also what lets a rerun replace the folder safely
SYNTH_ENTRIES = {MARKER, "Images", *(f"classification_{split}.csv" for split in SPLITS)}
SPECIES_TABLE = "fishvista_species.csv"
MIN_COUNTS = {"train": 2, "val": 1, "test": 1}
# longer image side in pixels per profile (real specimens are larger; these keep generation fast)
IMAGE_SIDES = {"tiny": (96, 256), "small": (128, 320), "fishvista": (160, 448), "upstream": (128, 320)}
SUPERSAMPLE = 2   # draw at 2x and reduce: cheap anti-aliasing

# ---------------------------------------------------------------------------------------------
# Profiles: which species, how many images per split
# ---------------------------------------------------------------------------------------------

# tiny: 23 real species in 6 families; one majority class (>=500 train), 2 neutral, 11 minority,
# 9 ultra-rare; every family has a common species and rare relatives.
TINY_SPECIES: tuple[tuple[str, str, int], ...] = (
    ("lepomis macrochirus", "Centrarchidae", 500),
    ("lepomis cyanellus", "Centrarchidae", 120),
    ("lepomis gibbosus", "Centrarchidae", 40),
    ("lepomis humilis", "Centrarchidae", 6),
    ("lepomis auritus", "Centrarchidae", 3),
    ("notropis stramineus", "Cyprinidae", 160),
    ("notropis blennius", "Cyprinidae", 60),
    ("notropis hudsonius", "Cyprinidae", 25),
    ("luxilus cornutus", "Cyprinidae", 14),
    ("notropis atherinoides", "Cyprinidae", 8),
    ("notropis boops", "Cyprinidae", 4),
    ("noturus gyrinus", "Ictaluridae", 50),
    ("noturus flavus", "Ictaluridae", 30),
    ("noturus miurus", "Ictaluridae", 5),
    ("noturus exilis", "Ictaluridae", 2),
    ("esox americanus", "Esocidae", 35),
    ("esox lucius", "Esocidae", 18),
    ("esox niger", "Esocidae", 3),
    ("perca flavescens", "Percidae", 70),
    ("etheostoma rupestre", "Percidae", 12),
    ("etheostoma olmstedi", "Percidae", 7),
    ("salmo trutta", "Salmonidae", 20),
    ("oncorhynchus mykiss", "Salmonidae", 9),
)
# small: the most frequent real species of these families (how many of each), ~100 species,
# given a designed long tail in the order of their real frequency.
SMALL_FAMILIES: tuple[tuple[str, int], ...] = (
    ("cyprinidae", 30), ("centrarchidae", 12), ("ictaluridae", 10), ("percidae", 8),
    ("poeciliidae", 8), ("salmonidae", 8), ("cottidae", 6), ("catostomidae", 6),
    ("esocidae", 4), ("moronidae", 4), ("lepisosteidae", 4),
)


def small_train_counts(n: int = 100) -> list[int]:
    """A designed long tail: 2 majority, 8 neutral, 40 minority, the rest ultra-rare."""
    majority = [800, 550]
    neutral = np.geomspace(420, 100, 8)
    minority = np.geomspace(95, 10, 40)
    rare = [9 - (i % 8) for i in range(n - 50)]          # 9, 8, ..., 2, 9, ...
    return [int(round(c)) for c in (*majority, *neutral, *minority)] + rare


def held_out_counts(train: int) -> tuple[int, int]:
    """val/test counts for the designed profiles: ~1/12 and ~1/8 of train, at least one each."""
    return max(1, round(train / 12)), max(1, round(train / 8))


def fishvista_table() -> pd.DataFrame:
    """The shipped table of real species: species, family, train (estimated), val, test."""
    with resources.files("fishscale").joinpath("data", SPECIES_TABLE).open("r", encoding="utf-8") as f:
        return pd.read_csv(f, dtype={"species": str, "family": str}, keep_default_na=False)


def species_table(profile: str, scale: float = 1.0) -> pd.DataFrame:
    """Species, family and image counts per split for a profile, counts multiplied by ``scale``
    (rounded; at least 2 train, 1 val, 1 test per species)."""
    if profile not in PROFILES:
        raise FishscaleError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if not (scale > 0 and math.isfinite(scale)):
        raise FishscaleError(f"scale must be a positive number, got {scale}")
    if profile == "fishvista":
        table = fishvista_table()
    elif profile == "tiny":
        table = pd.DataFrame(TINY_SPECIES, columns=["species", "family", "train"])
    elif profile == "upstream":
        table = _upstream_table()
    else:
        table = _small_table()
    if profile != "fishvista":
        held = [held_out_counts(int(n)) for n in table["train"]]
        table["val"], table["test"] = [v for v, _ in held], [t for _, t in held]
    for split, minimum in MIN_COUNTS.items():
        table[split] = np.maximum(minimum, np.rint(table[split].to_numpy() * scale)).astype(int)
    return table[["species", "family", "train", "val", "test"]].reset_index(drop=True)


def _small_table() -> pd.DataFrame:
    real = fishvista_table()
    real["key"] = real["family"].str.lower()
    picked = [real[real["key"] == family].sort_values(["train", "species"], ascending=[False, True]).head(n)
              for family, n in SMALL_FAMILIES]
    table = pd.concat(picked).sort_values(["train", "species"], ascending=[False, True])
    table = table.reset_index(drop=True)[["species", "family"]]
    table["train"] = small_train_counts(len(table))
    return table


def _upstream_table(n_species: int = 80, per_class: int = 40) -> pd.DataFrame:
    """A balanced "pretraining" set of species from families in neither tiny nor small: fish,
    but none of the classes (or families) the long-tail study evaluates on. It stands in for the
    ImageNet weights fish-vista's reference fine-tune starts from, which cannot be downloaded here."""
    real = fishvista_table()
    excluded = {f for f, _ in SMALL_FAMILIES} | {f.lower() for _, f, _ in TINY_SPECIES}
    real = real[~real["family"].str.lower().isin(excluded)]
    table = real.sort_values(["train", "species"], ascending=[False, True]).head(n_species)
    table = table.reset_index(drop=True)[["species", "family"]]
    table["train"] = per_class
    return table


# ---------------------------------------------------------------------------------------------
# Traits: family body plans, species variations, per-image noise
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------

def _rgb(hsv: Sequence[float], value_scale: float = 1.0) -> tuple[int, int, int]:
    h, s, v = hsv
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v * value_scale, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _mix(a: Sequence[int], b: Sequence[int], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


class BodyShape:
    """The body outline in fish units: x from snout (0) to tail base (1), y down, half depth hd."""

    def __init__(self, t: FishTraits):
        self.t = t
        self.hd = 0.5 / t.elongation

    def profile(self, x: np.ndarray) -> np.ndarray:
        t = self.t
        x = np.clip(x, 0.0, 1.0)
        front = t.snout + (1 - t.snout) * np.sin(np.pi / 2 * np.minimum(x / t.peak, 1.0)) ** 0.7
        back = t.peduncle + (1 - t.peduncle) * np.cos(np.pi / 2 * np.clip((x - t.peak) / (1 - t.peak), 0, 1))
        return np.where(x <= t.peak, front, back)

    def top(self, x):
        return -self.hd * self.t.hump * self.profile(np.asarray(x, dtype=float))

    def bottom(self, x):
        return self.hd * (2 - self.t.hump) * self.profile(np.asarray(x, dtype=float))

    def outline(self, n: int = 48) -> np.ndarray:
        x = np.linspace(0, 1, n)
        return np.concatenate([np.stack([x, self.top(x)], 1), np.stack([x[::-1], self.bottom(x[::-1])], 1)])


def tail_polygon(body: BodyShape) -> np.ndarray:
    t, hd = body.t, body.hd
    top, bottom = float(body.top(1.0)), float(body.bottom(1.0))
    tl, ts = t.tail_length, hd * t.tail_span
    x0 = 0.985
    if t.tail_shape == "forked":
        pts = [(x0, top), (1 + tl, -ts), (1 + tl * 0.45, 0), (1 + tl, ts), (x0, bottom)]
    elif t.tail_shape == "lunate":
        pts = [(x0, top), (1 + tl * 0.9, -ts * 1.15), (1 + tl * 0.55, -ts * 0.3), (1 + tl * 0.5, 0),
               (1 + tl * 0.55, ts * 0.3), (1 + tl * 0.9, ts * 1.15), (x0, bottom)]
    elif t.tail_shape == "truncate":
        pts = [(x0, top), (1 + tl, -ts * 0.85), (1 + tl * 0.97, 0), (1 + tl, ts * 0.85), (x0, bottom)]
    elif t.tail_shape == "rounded":
        a = np.linspace(-np.pi / 2, np.pi / 2, 13)
        pts = [(x0, top)] + [(1 + tl * 0.15 + tl * 0.85 * math.cos(v), ts * 0.8 * math.sin(v)) for v in a] + [(x0, bottom)]
    else:  # pointed
        pts = [(x0, top), (1 + tl, 0), (x0, bottom)]
    return np.asarray(pts, dtype=float)


def fin_polygons(body: BodyShape) -> list[np.ndarray]:
    """Dorsal fin(s), anal fin, pelvic fin and adipose fin, as polygons in fish units."""
    t, hd = body.t, body.hd
    fins = []
    for start, end, height in t.dorsal:
        w = end - start
        fins.append(np.array([(start, body.top(start) + 0.002), (start + 0.3 * w, body.top(start + 0.3 * w) - height * hd),
                              (end + 0.08 * w, body.top(end) - 0.3 * height * hd), (end, body.top(end) + 0.002)]))
    start, end, height = t.anal
    w = end - start
    fins.append(np.array([(start, body.bottom(start) - 0.002), (start + 0.3 * w, body.bottom(start + 0.3 * w) + height * hd),
                          (end + 0.08 * w, body.bottom(end) + 0.3 * height * hd), (end, body.bottom(end) - 0.002)]))
    p = t.pelvic
    fins.append(np.array([(p, body.bottom(p) - 0.002), (p + 0.09, body.bottom(p + 0.09) + 0.55 * hd),
                          (p + 0.07, body.bottom(p + 0.07) - 0.002)]))
    if t.adipose:
        a = np.linspace(0, np.pi, 8)
        fins.append(np.stack([0.86 + 0.05 * np.cos(a), body.top(0.86) - 0.3 * hd * np.sin(a) + 0.003], 1))
    return fins


class Canvas:
    """Maps fish units to pixels of a supersampled image, turning the fish by ``angle`` degrees
    (rotating coordinates, not pixels: cheaper and sharper)."""

    def __init__(self, extent: np.ndarray, longer_side: int, margin: float, angle: float = 0.0):
        self.cos, self.sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        self.centre = extent.mean(0)
        extent = self.turn(extent)
        (x0, y0), (x1, y1) = extent.min(0), extent.max(0)
        pad = margin * min(x1 - x0, y1 - y0)   # tight crops, as fish-vista's specimens are
        x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
        width, height = x1 - x0, y1 - y0
        # keep the image aspect within fish-vista's range (1.5:1 .. 5:1) by padding the short side
        if width < 1.5 * height:
            x0, width = x0 - (1.5 * height - width) / 2, 1.5 * height
        elif width > 5.0 * height:
            y0, height = y0 - (width / 5.0 - height) / 2, width / 5.0
        self.scale = SUPERSAMPLE * longer_side / max(width, height)
        self.origin = np.array([x0, y0])
        self.size = (max(int(round(width * self.scale)), 8), max(int(round(height * self.scale)), 8))

    def turn(self, pts) -> np.ndarray:
        # element-wise rather than a matmul: no BLAS call in forked workers
        x, y = (np.asarray(pts, dtype=float).reshape(-1, 2) - self.centre).T
        return np.stack([self.cos * x - self.sin * y, self.sin * x + self.cos * y], 1) + self.centre

    def px(self, pts) -> list[tuple[float, float]]:
        pts = (self.turn(pts) - self.origin) * self.scale
        return [tuple(p) for p in pts]

    def length(self, v: float) -> float:
        return v * self.scale


def draw_fish(traits: FishTraits, rng: np.random.Generator, longer_side: int) -> Image.Image:
    """Draw one specimen, lateral view facing left, on an off-white background."""
    body = BodyShape(traits)
    outline, tail, fins = body.outline(), tail_polygon(body), fin_polygons(body)
    extent = np.concatenate([outline, tail, *fins, [(-0.07 if traits.barbels else 0.0, 0.0)]])
    angle = float(np.clip(rng.normal(0, 3.0), -8, 8))
    canvas = Canvas(extent, longer_side, margin=float(rng.uniform(0.05, 0.2)), angle=angle)
    grey = int(rng.integers(238, 254))   # white to light grey, a faint tint at most
    background = tuple(int(min(255, grey + v)) for v in rng.integers(-2, 3, 3))
    image = Image.new("RGB", canvas.size, background)
    draw = ImageDraw.Draw(image)

    body_rgb = _rgb(traits.body_hsv)
    fin_rgb = _mix(_rgb(traits.fin_hsv), background, 0.25)
    for fin in fins:
        draw.polygon(canvas.px(fin), fill=fin_rgb)
    draw.polygon(canvas.px(tail), fill=_mix(fin_rgb, body_rgb, 0.5))
    if traits.dorsal_spot:
        s, e, h = traits.dorsal[-1]
        _ellipse(draw, canvas, ((s + e) / 2, body.top((s + e) / 2) - 0.35 * h * body.hd), 0.25 * h * body.hd, (25, 25, 30))

    skin = _skin(traits, body, canvas, rng)
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon(canvas.px(outline), fill=255)
    image.paste(skin, (0, 0), mask)
    _draw_head(draw, traits, body, canvas)
    if traits.caudal_spot:
        _ellipse(draw, canvas, (0.95, 0.0), 0.45 * body.hd * traits.peduncle, (30, 28, 30))

    if rng.random() < 0.05:   # a few specimens were photographed facing right
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image.reduce(SUPERSAMPLE)


def _ellipse(draw: ImageDraw.ImageDraw, canvas: Canvas, centre, radius: float, fill, ry: float | None = None) -> None:
    (cx, cy), = canvas.px([centre])
    rx, ry = canvas.length(radius), canvas.length(radius if ry is None else ry)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _skin(t: FishTraits, body: BodyShape, canvas: Canvas, rng: np.random.Generator) -> Image.Image:
    """Body colour with a dark back / light belly gradient, then the species' pattern."""
    width, height = canvas.size
    back = np.array(_rgb(t.body_hsv, 0.8), dtype=float)
    belly = np.array(_mix(_rgb(t.body_hsv, 1.15), (245, 240, 225), t.belly_light), dtype=float)
    (_, y_top), (_, y_bottom) = canvas.px([(0, -body.hd * t.hump), (0, body.hd * (2 - t.hump))])
    ramp = np.clip((np.arange(height) - y_top) / max(y_bottom - y_top, 1.0), 0, 1)[:, None]
    rows = (back * (1 - ramp) + belly * ramp).astype(np.uint8)
    skin = Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows[:, None, :], (height, width, 3))))
    draw = ImageDraw.Draw(skin)
    tone = _rgb(t.body_hsv, 1 - t.pattern_dark) if t.pattern_dark > 0 else _mix(_rgb(t.body_hsv), (250, 250, 240), -t.pattern_dark)
    PATTERN_PAINTERS.get(t.pattern, lambda *a: None)(draw, t, body, canvas, rng, tone)
    return skin


def _paint_bars(draw, t: FishTraits, body: BodyShape, canvas: Canvas, rng, tone) -> None:
    n = t.pattern_count + 2
    xs = np.linspace(t.head + 0.05, 0.95, n) + rng.normal(0, 0.012, n)
    width = (0.95 - t.head) / n * (0.25 + 0.5 * t.pattern_size)
    hd = body.hd
    for x in xs:
        draw.polygon(canvas.px([(x - width / 2, -2 * hd), (x + width / 2, -2 * hd),
                                (x + width / 2 - 0.02, 2 * hd), (x - width / 2 - 0.02, 2 * hd)]), fill=tone)


def _paint_stripes(draw, t: FishTraits, body: BodyShape, canvas: Canvas, rng, tone) -> None:
    n = min(t.pattern_count, 4)
    x = np.linspace(t.head * 0.8, 1.0, 24)
    width = max(1, int(canvas.length(body.hd * (0.12 + 0.35 * t.pattern_size))))
    for level in np.linspace(-0.5, 0.45, n) if n > 1 else [-0.05]:
        level += rng.normal(0, 0.03)
        y = np.where(level < 0, -level * body.top(x), level * body.bottom(x))
        draw.line(canvas.px(np.stack([x, y], 1)), fill=tone, width=width, joint="curve")


def _paint_spots(draw, t: FishTraits, body: BodyShape, canvas: Canvas, rng, tone) -> None:
    n = 6 * t.pattern_count
    xs = rng.uniform(t.head * 0.7, 1.0, n)
    ys = rng.uniform(-1, 1, n) * body.hd
    for x, y in zip(xs, ys):
        _ellipse(draw, canvas, (x, y), body.hd * 0.35 * t.pattern_size * rng.uniform(0.7, 1.3), tone)


def _paint_saddles(draw, t: FishTraits, body: BodyShape, canvas: Canvas, rng, tone) -> None:
    n = max(2, min(t.pattern_count, 5))
    for x in np.linspace(t.head + 0.08, 0.92, n) + rng.normal(0, 0.01, n):
        _ellipse(draw, canvas, (x, float(body.top(x))), 0.5 / n, tone, ry=body.hd * (0.6 + t.pattern_size))


PATTERN_PAINTERS = {"bars": _paint_bars, "stripes": _paint_stripes, "spots": _paint_spots,
                    "saddles": _paint_saddles}


def _draw_head(draw: ImageDraw.ImageDraw, t: FishTraits, body: BodyShape, canvas: Canvas) -> None:
    """Eye, gill cover, mouth, barbels, ear spot, pectoral fin and lateral line."""
    hd = body.hd
    dark = _rgb(t.body_hsv, 0.45)
    gill_x = t.head
    u = np.linspace(-1, 1, 9)   # the gill cover's edge: an arc bulging backwards
    gill = np.stack([gill_x + 0.025 * (1 - u ** 2), np.where(u < 0, -u * body.top(gill_x), u * body.bottom(gill_x)) * 0.8], 1)
    draw.line(canvas.px(gill), fill=dark, width=max(1, int(canvas.length(hd * 0.06))))
    pect = np.array([(gill_x + 0.01, 0.2 * hd), (gill_x + 0.12, 0.05 * hd), (gill_x + 0.11, 0.35 * hd)])
    draw.polygon(canvas.px(pect), fill=_mix(_rgb(t.fin_hsv), dark, 0.3))
    draw.line(canvas.px([(gill_x, -0.15 * hd), (0.98, float(body.top(0.98)) * 0.1)]),
              fill=_rgb(t.body_hsv, 0.7), width=max(1, int(canvas.length(hd * 0.03))))
    eye_x = t.head * 0.33
    eye_y = float(body.top(eye_x)) * 0.45
    _ellipse(draw, canvas, (eye_x, eye_y), t.eye * hd, (225, 215, 170))
    _ellipse(draw, canvas, (eye_x, eye_y), t.eye * hd * 0.6, (15, 15, 20))
    mouth_y = float(body.bottom(0.0)) * 0.25
    draw.line(canvas.px([(0.0, mouth_y), (t.head * 0.25, mouth_y + 0.1 * hd)]), fill=dark,
              width=max(1, int(canvas.length(hd * 0.04))))
    for i in range(t.barbels):
        tip = (-0.06 + 0.02 * (i % 2), mouth_y + hd * (0.25 + 0.3 * (i // 2)))
        draw.line(canvas.px([(0.01, mouth_y), tip]), fill=dark, width=max(1, int(canvas.length(hd * 0.04))))
    if t.ear_spot:
        _ellipse(draw, canvas, (gill_x - 0.01, -0.12 * hd), 0.05, (20, 20, 35), ry=0.16 * hd)


# ---------------------------------------------------------------------------------------------
# Metadata: plausible fish-vista rows (sources, owners, licences, file names, ark ids, URLs)
# ---------------------------------------------------------------------------------------------

ARK_ALPHABET = "0123456789bcdfghjkmnpqrstvwxz"
# (source, owner, license, weight, extension): shares as in the real FV-1758 val+test CSVs
SOURCES: tuple[tuple[str, str, str, float, str], ...] = (
    ("GLIN", "INHS", "CC BY-NC", 0.254, ".jpg"), ("GLIN", "INHS", "CC BY-NC", 0.006, ".JPG"),
    ("GLIN", "FMNH", "CC BY-NC", 0.156, ".jpg"), ("GLIN", "JFBM", "CC0 1.0", 0.118, ".jpg"),
    ("GLIN", "UWZM", "CC0 1.0", 0.054, ".JPG"), ("GLIN", "OSUM", "CC0 1.0", 0.008, ".jpg"),
    ("iDigBio", "usnm", "Usage Conditions Apply", 0.079, ".jpg"), ("iDigBio", "usnm", "CC0", 0.02, ".jpg"),
    ("iDigBio", "mnhn", "CC BY", 0.069, ".jpg"), ("iDigBio", "mnhn", "CC BY-NC-ND", 0.016, ".jpg"),
    ("iDigBio", "nhmuk", "CC BY 4.0", 0.046, ".jpg"), ("iDigBio", "uf", "CC BY-NC", 0.036, ".jpg"),
    ("iDigBio", "mcz", "CC BY-NC-SA 3.0", 0.022, ".jpg"), ("iDigBio", "cas", "CC0", 0.022, ".jpg"),
    ("Morphbank", "", "CC BY-NC-SA 3.0", 0.074, ".jpeg"), ("Morphbank", "", "CC BY-NC-SA 3.0", 0.017, ".jpg"),
)
SOURCE_WEIGHTS = np.array([s[3] for s in SOURCES]) / sum(s[3] for s in SOURCES)


def _hexid(seed: int, image_id: int) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def file_names(source: str, owner: str, ext: str, species: str, image_id: int, seed: int,
               rng: np.random.Generator) -> tuple[str, str]:
    """(filename, source_filename) in the style of the real data; unique per image id."""
    n, h = 10000 + image_id, _hexid(seed, image_id)
    genus, _, epithet = species.partition(" ")
    crop = f"#{int(rng.integers(0, 4))}" if rng.random() < 0.15 else ""   # several fish cut from one photo
    if source == "Morphbank":
        base = f"{100000 + image_id}"
        return (f"mb{base}{ext}" if ext == ".jpeg" else f"mb{base}#{int(rng.integers(0, 3))}{ext}"), f"{base}.jpeg"
    names = {
        "INHS": f"INHS_FISH_{n}", "FMNH": f"{n}_lat_FMNH_FZ{rng.choice(['', '_l', '_a'])}",
        "JFBM": f"JFBM-FISH-{n:07d}", "UWZM": f"UWZM-F-{n:07d}", "OSUM": f"OSUM{n:07d}",
        "usnm": f"ark-_65665_m3{h[:32]}" if int(h[32], 16) < 8 else f"m3{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}",
        "mnhn": f"{1406000000000 + image_id}{h[:16]}", "uf": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}",
        "nhmuk": f"{1850 + image_id % 150}.{1 + image_id % 12}.{1 + image_id % 28}.{n}_{genus.capitalize()} {epithet}_d-S",
        "mcz": f"{n}_{genus.capitalize()}_{epithet}_PLT", "cas": f"{n}-p",
    }
    stem = names[owner]
    source_ext = ".JPG" if owner == "OSUM" else ext
    return f"{stem}{crop}{ext}", f"{stem}{source_ext}"


def metadata_row(species: str, family: str, image_id: int, seed: int) -> dict[str, str]:
    """All 15 published columns for one image."""
    rng = np.random.default_rng([seed, image_id, 1])
    source, owner, license_, _, ext = SOURCES[int(rng.choice(len(SOURCES), p=SOURCE_WEIGHTS))]
    filename, source_filename = file_names(source, owner, ext, species, image_id, seed, rng)
    digest = hashlib.sha256(f"ark:{seed}:{image_id}".encode()).digest()
    arkid = "".join(ARK_ALPHABET[b % len(ARK_ALPHABET)] for b in digest[:8])
    original_format = ext.lstrip(".").lower() if source != "Morphbank" else "jpeg"
    folder = {"GLIN": f"GLIN/{owner}", "iDigBio": f"iDigBio/{owner}", "Morphbank": "morphbank"}[source]
    traits = species_traits(species, family)
    # the fin columns are empty in the real FV-1758 CSVs; a minority of rows carry them here
    # (0/1, matching what is drawn) so readers are exercised on both
    annotated = rng.random() < 0.25
    flag = (lambda v: "1" if v else "0") if annotated else (lambda v: "")
    return {
        "filename": filename, "source_filename": source_filename, "original_format": original_format,
        "arkid": arkid, "family": family, "source": source, "owner": owner,
        "standardized_species": species,
        "original_url": f"https://fishair.org/hdr-share/ftp/ark/89609/{folder}/{arkid}.{original_format}",
        "license": license_, "adipose_fin": flag(traits.adipose), "pelvic_fin": flag(True),
        "barbel": flag(traits.barbels > 0), "multiple_dorsal_fin": flag(len(traits.dorsal) > 1),
        # the hub leaves file_name empty for the no-derivatives rows
        "file_name": "" if license_ == "CC BY-NC-ND" else f"Images/chunk_{int(rng.integers(1, 7))}/{filename}",
    }


# ---------------------------------------------------------------------------------------------
# Plan and write
# ---------------------------------------------------------------------------------------------

def plan_dataset(profile: str = "tiny", seed: int = 0, scale: float = 1.0) -> pd.DataFrame:
    """The label table of a synthetic dataset, without drawing anything.

    One row per image: ``split``, ``image_id`` (what the image is seeded from) and the 15
    published columns. Rows are shuffled within each split, as in the real CSVs.
    """
    if seed < 0:
        raise FishscaleError(f"seed must be >= 0, got {seed}")
    table = species_table(profile, scale)
    rows, image_id = [], 0
    for split in SPLITS:
        for species, family, count in zip(table["species"], table["family"], table[split]):
            for _ in range(int(count)):
                rows.append({"split": split, "image_id": image_id, **metadata_row(species, family, image_id, seed)})
                image_id += 1
    plan = pd.DataFrame(rows)
    plan = _dedupe_filenames(plan)
    order = np.random.default_rng([seed, 2]).permutation(len(plan))
    plan = plan.iloc[order].sort_values("split", key=lambda s: s.map(SPLITS.index), kind="stable")
    return plan.reset_index(drop=True)


def _dedupe_filenames(plan: pd.DataFrame) -> pd.DataFrame:
    """Filenames are unique by construction; this guards the '#k' crop suffixes anyway."""
    seen = plan["filename"].duplicated(keep="first")
    for i in np.flatnonzero(seen.to_numpy()):
        stem, dot, ext = plan.at[i, "filename"].rpartition(".")
        name = f"{stem}_{plan.at[i, 'image_id']}.{ext}"
        plan.at[i, "filename"] = name
        if plan.at[i, "file_name"]:
            plan.at[i, "file_name"] = plan.at[i, "file_name"].rsplit("/", 1)[0] + "/" + name
    return plan


@dataclass(frozen=True)
class ImageJob:
    image_id: int
    path: str
    species: str
    family: str
    sides: tuple[int, int]
    seed: int


def render_image(job: ImageJob) -> int:
    """Draw and save one image; returns its size in bytes. Depends only on the job's fields."""
    rng = np.random.default_rng([job.seed, job.image_id, 0])
    traits = specimen_traits(species_traits(job.species, job.family), rng)
    longer_side = int(rng.integers(job.sides[0], job.sides[1] + 1))
    image = draw_fish(traits, rng, longer_side)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(86, 96)))
    data = buffer.getvalue()
    with open(job.path, "wb") as f:
        f.write(data)
    return len(data)


def _render_chunk(jobs: list[ImageJob]) -> int:
    return sum(render_image(job) for job in jobs)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def prepare_output(out: Path, provenance: dict) -> None:
    """Create OUT, or clear an earlier synth output there (it carries our marker file); refuse to
    touch anything else: a real fish-vista root has the same layout and must never be deleted."""
    if out.exists() and not out.is_dir():
        raise FishscaleError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            entries = ", ".join(sorted(p.name for p in out.iterdir())[:3])
            raise FishscaleError(f"{out}: folder is not empty ({entries} ...) and is not an earlier synth output "
                                 f"(no {MARKER}); choose a new or empty folder")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in SYNTH_ENTRIES)
        if foreign:
            raise FishscaleError(f"{out}: earlier synth output holds other files too ({', '.join(foreign[:3])}); "
                                 "remove them or choose a new folder")
        shutil.rmtree(out / "Images", ignore_errors=True)
        for split in SPLITS:
            csv_path(out, split).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # written first, so that an interrupted run can be replaced by the next one
    (out / MARKER).write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    (out / "Images").mkdir()


def write_dataset(plan: pd.DataFrame, out: str | Path, profile: str, seed: int = 0,
                  workers: int | None = None, progress: bool = True, scale: float = 1.0) -> Path:
    """Draw every image of ``plan`` into OUT/Images and write the three CSVs."""
    out = Path(out)
    prepare_output(out, {"generator": "fishscale synth", "version": __version__, "profile": profile,
                         "seed": seed, "scale": scale, "images": len(plan)})
    sides = IMAGE_SIDES[profile]
    jobs = [ImageJob(int(i), str(out / "Images" / name), species, family, sides, seed)
            for i, name, species, family in zip(plan["image_id"], plan["filename"],
                                                plan["standardized_species"], plan["family"])]
    jobs.sort(key=lambda job: job.image_id)
    _run_jobs(jobs, workers or default_workers(), progress)
    for split in SPLITS:
        rows = plan[plan["split"] == split]
        rows[list(COLUMNS)].to_csv(csv_path(out, split), index=False, lineterminator="\n")
    return out


def _run_jobs(jobs: list[ImageJob], workers: int, progress: bool) -> None:
    from tqdm import tqdm
    chunk = 16
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    with tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress or None, file=sys.stderr) as bar:
        if workers <= 1 or len(chunks) <= 1:
            for part in chunks:
                _render_chunk(part)
                bar.update(len(part))
            return
        with multiprocessing.Pool(min(workers, len(chunks))) as pool:
            for part, _ in zip(chunks, pool.imap(_render_chunk, chunks)):
                bar.update(len(part))


def synthesize(out: str | Path, profile: str = "tiny", seed: int = 0, workers: int | None = None,
               scale: float = 1.0, progress: bool = True) -> Path:
    """Write a synthetic dataset in fish-vista's layout to OUT and return OUT.

    ``workers`` processes draw the images (default: all usable cores); the output is
    byte-identical for a given (profile, seed, scale) whatever ``workers`` is.
    """
    if workers is not None and workers < 1:
        raise FishscaleError(f"workers must be >= 1, got {workers}")
    plan = plan_dataset(profile, seed, scale)
    return write_dataset(plan, out, profile, seed, workers, progress, scale)


def summarize(plan: pd.DataFrame) -> list[str]:
    """Lines for the closing summary: images per split, classes per frequency bin."""
    per_split = plan["split"].value_counts()
    train_counts = plan[plan["split"] == "train"]["standardized_species"].value_counts()
    bins = pd.Series(assign_bins(train_counts.to_numpy(), DEFAULT_BIN_EDGES)).value_counts()
    edges = DEFAULT_BIN_EDGES
    ranges = [f"<{edges[0]}", *(f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])), f">={edges[-1]}"]
    return [
        "images: " + ", ".join(f"{s} {int(per_split.get(s, 0))}" for s in SPLITS) + f" (total {len(plan)})",
        f"classes: {len(train_counts)}, by training images: "
        + ", ".join(f"{name} ({r}) {int(bins.get(name, 0))}" for name, r in zip(DEFAULT_BIN_NAMES, ranges)),
    ]


@click.command(name="synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--profile", type=click.Choice(PROFILES), default="tiny", show_default=True,
              help="tiny: 23 species, ~1.4k small images (seconds); small: 100 species, ~6k images; "
                   "fishvista: the real 1,758 species and long tail (~64k images at --scale 1); "
                   "upstream: 80 balanced species of other families, ~3.8k images (pretraining "
                   "stand-in for the long-tail study).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the images and metadata; the same seed gives byte-identical files.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes drawing images [default: all usable cores]. Does not change the output.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Multiply every species' image counts (at least 2 train, 1 val, 1 test), "
                   "e.g. 0.1 for a tenth of fish-vista.")
def synth_command(out: Path, profile: str, seed: int, workers: int | None, scale: float) -> None:
    """Write a synthetic dataset in fish-vista's exact layout to OUT.

    OUT gets classification_{train,val,test}.csv (the 15 published columns) and a flat
    Images/ folder of JPEGs: procedurally drawn fish whose species share body plans within
    a family. OUT must be new, empty, or an earlier synth output (which is replaced).
    """
    started = time.perf_counter()
    plan = plan_dataset(profile, seed, scale)
    write_dataset(plan, out, profile, seed, workers, progress=True, scale=scale)
    for line in summarize(plan):
        click.echo(line)
    click.echo(f"wrote {out} (profile {profile}, seed {seed}, scale {scale:g}) "
               f"in {time.perf_counter() - started:.1f}s")
