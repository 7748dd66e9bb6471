"""Synthetic fish-vista, which species and how many images: the profiles.

``tiny`` (23 species) and ``small`` (100 species) are hand-made long tails over real fish-vista
species that span all four frequency bins; ``fishvista`` is all 1,758 real species with the real
families and the real shape of the distribution, read from the shipped ``fishvista_species.csv``
(train counts estimated, see scripts/derive_species_table.py); ``upstream`` is a balanced set of
other families that stands in for pretraining weights in the long-tail study.
"""
from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pandas as pd

from fishscale.errors import FishscaleError

PROFILES: tuple[str, ...] = ("tiny", "small", "fishvista", "upstream")
SPECIES_TABLE = "fishvista_species.csv"   # beside this module: package data
MIN_COUNTS = {"train": 2, "val": 1, "test": 1}
# longer image side in pixels per profile (real specimens are larger; these keep generation fast)
IMAGE_SIDES = {"tiny": (96, 256), "small": (128, 320), "fishvista": (160, 448), "upstream": (128, 320)}

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
    with resources.files(__package__).joinpath(SPECIES_TABLE).open("r", encoding="utf-8") as f:
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


