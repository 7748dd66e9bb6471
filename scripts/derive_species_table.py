#!/usr/bin/env python
"""Derive fishscale/data/synth/fishvista_species.csv from the real fish-vista val/test CSVs.

    python scripts/derive_species_table.py [--data ../shared/data] [--out fishscale/data/synth/fishvista_species.csv]

The table has one row per species of FV-1758: ``species, family, train, val, test``. ``val`` and
``test`` are the real counts. The training split is not published where we can reach it, so
``train`` is an estimate:

    train = max(2, round(7 * (val + test) * V / (V + T)))

where V and T are the total val and test rows. In expectation this is the "7 x val" rule of the
data README, but it pools both splits, which halves the noise for the rare species (a species
with one val image may have one or six test images). Over all species it gives ~47.8k training
images, the same total as 7 x val. ``family`` is the species' most frequent family string across
val and test, kept as written (the hub mixes "Cyprinidae" and "cyprinidae").

Only this script reads ../shared; the package ships its output, so nothing reads ../shared at
run time.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "fishscale" / "data" / "synth" / "fishvista_species.csv"
VAL_CSV = "fishvista_fv1758_classification_val_standardized.csv"
TEST_CSV = "fishvista_fv1758_classification_test_standardized.csv"
TRAIN_PER_VAL = 7   # the README's rule: train ~ 7 x val per species
MIN_TRAIN = 2


def read_labels(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                        usecols=["standardized_species", "family"])
    return frame.apply(lambda column: column.str.strip())


def most_frequent_family(rows: pd.DataFrame) -> pd.Series:
    """Per species, the family string seen most often (ties: alphabetical), for determinism."""
    counts = rows.groupby(["standardized_species", "family"]).size().reset_index(name="n")
    counts = counts.sort_values(["standardized_species", "n", "family"], ascending=[True, False, True])
    return counts.drop_duplicates("standardized_species").set_index("standardized_species")["family"]


def derive_table(val: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    val_counts = val["standardized_species"].value_counts()
    test_counts = test["standardized_species"].value_counts()
    species = sorted(set(val_counts.index) | set(test_counts.index))
    val_n = val_counts.reindex(species, fill_value=0).to_numpy()
    test_n = test_counts.reindex(species, fill_value=0).to_numpy()
    val_share = len(val) / (len(val) + len(test))
    train_n = np.maximum(MIN_TRAIN, np.rint(TRAIN_PER_VAL * (val_n + test_n) * val_share)).astype(int)
    family = most_frequent_family(pd.concat([val, test]))
    return pd.DataFrame({"species": species, "family": family.reindex(species).to_numpy(),
                         "train": train_n, "val": val_n, "test": test_n})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding the real val/test CSVs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the species table")
    args = parser.parse_args()
    table = derive_table(read_labels(args.data / VAL_CSV), read_labels(args.data / TEST_CSV))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, lineterminator="\n")
    bins = np.bincount(np.searchsorted([10, 100, 500], table["train"], side="right"), minlength=4)
    print(f"wrote {args.out}: {len(table)} species, {table['family'].str.lower().nunique()} families, "
          f"estimated train {table['train'].sum()}, val {table['val'].sum()}, test {table['test'].sum()}; "
          f"species per bin (<10, 10-99, 100-499, >=500): {bins.tolist()}")


if __name__ == "__main__":
    main()
