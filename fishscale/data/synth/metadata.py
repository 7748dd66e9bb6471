"""Synthetic fish-vista, the CSV rows: plausible sources, owners, licences, file names, ark ids, URLs.

Shares of sources and licences follow the real FV-1758 val+test CSVs; every row carries all 15
published columns, including the hub's ``file_name`` (``Images/chunk_N/<filename>``, empty for
the CC BY-NC-ND rows, as on the hub).
"""
from __future__ import annotations

import hashlib

import numpy as np

from fishscale.data.synth.traits import species_traits

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


