"""The synthetic fish-vista generator: layout, schema, images, long tail, determinism, CLI.

Outputs are read back with other readers than the writer's pandas: the csv module, PIL, and
fishscale's dataset reader.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fishscale.cli import main as cli
from fishscale.data.dataset import COLUMNS, SPLITS, load_dataset
from fishscale.errors import FishscaleError
from fishscale.data.synth.profiles import IMAGE_SIDES, species_table
from fishscale.data.synth.traits import species_traits
from fishscale.data.synth.write import ImageJob, default_workers, plan_dataset, render_image, synthesize

VAL_CSV = "fishvista_fv1758_classification_val_standardized.csv"
TEST_CSV = "fishvista_fv1758_classification_test_standardized.csv"


def read_rows(root: Path, split: str) -> tuple[list[str], list[dict]]:
    with open(root / f"classification_{split}.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def bin_of(count: int) -> str:
    return "ultra-rare" if count < 10 else "minority" if count < 100 else "neutral" if count < 500 else "majority"


def bins_of(counts) -> Counter:
    return Counter(bin_of(int(c)) for c in counts)


# ---------------------------------------------------------------------------- the tiny dataset

def test_tiny_layout_and_schema(tiny_dataset):
    assert sorted(p.name for p in tiny_dataset.iterdir()) == [
        ".fishscale-synth.json", "Images", "classification_test.csv", "classification_train.csv",
        "classification_val.csv"]
    provenance = json.loads((tiny_dataset / ".fishscale-synth.json").read_text())
    assert provenance["profile"] == "tiny" and provenance["seed"] == 0
    images = {p.name for p in (tiny_dataset / "Images").iterdir()}
    assert all((tiny_dataset / "Images" / name).is_file() for name in images)   # flat: no sub-folders
    listed = []
    for split in SPLITS:
        header, rows = read_rows(tiny_dataset, split)
        assert header == list(COLUMNS)
        listed += [r["filename"] for r in rows]
    assert len(listed) == len(set(listed)) == len(images)
    assert set(listed) == images


def test_tiny_read_back_and_images_decode(tiny_dataset):
    ds = load_dataset(tiny_dataset, on_error="fail")
    assert ds.problems == []
    low, high = IMAGE_SIDES["tiny"]
    for split, df in ds.splits.items():
        assert (df["label"] >= 0).all()
        for path in df["image_path"]:
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                im.load()
                w, h = im.size
                assert low <= max(w, h) <= high
                assert 1.45 <= w / h <= 5.1, (path, im.size)
                corners = np.asarray(im)[[0, 0, -1, -1], [0, -1, 0, -1]]
                assert corners.min() >= 200, f"{path}: background is not white"


def test_tiny_metadata_is_plausible(tiny_dataset):
    rows = [r for split in SPLITS for r in read_rows(tiny_dataset, split)[1]]
    extensions = Counter(Path(r["filename"]).suffix for r in rows)
    assert extensions.most_common(1)[0][0] == ".jpg"
    assert extensions[".jpeg"] > 0 and extensions[".JPG"] > 0
    assert set(extensions) <= {".jpg", ".jpeg", ".JPG"}
    for r in rows:
        assert r["file_name"] == "" and r["license"] == "CC BY-NC-ND" or \
            re.fullmatch(r"Images/chunk_[1-6]/" + re.escape(r["filename"]), r["file_name"]), r
        assert re.fullmatch(r"[0-9a-z]{8}", r["arkid"])
        assert r["original_url"].startswith("https://fishair.org/hdr-share/ftp/ark/89609/")
        assert r["original_url"].endswith(f"/{r['arkid']}.{r['original_format']}")
        assert r["original_format"] in ("jpg", "jpeg")
        assert r["source"] in ("GLIN", "iDigBio", "Morphbank") and r["license"]
        assert {r[c] for c in ("adipose_fin", "pelvic_fin", "barbel", "multiple_dorsal_fin")} <= {"", "0", "1"}
    family = {}
    for r in rows:
        assert family.setdefault(r["standardized_species"], r["family"]) == r["family"]
    assert Counter(r["source"] for r in rows).most_common(1)[0][0] == "GLIN"


def test_tiny_long_tail_spans_every_bin(tiny_dataset):
    counts = {split: Counter(r["standardized_species"] for r in read_rows(tiny_dataset, split)[1]) for split in SPLITS}
    species = set(counts["train"])
    assert 20 <= len(species) <= 30
    assert set(counts["val"]) == set(counts["test"]) == species
    assert min(counts["train"].values()) >= 2
    assert 1000 <= sum(sum(c.values()) for c in counts.values()) <= 2000
    bins = bins_of(counts["train"].values())
    assert set(bins) == {"ultra-rare", "minority", "neutral", "majority"}
    assert bins["ultra-rare"] >= 3


def tiny_features(ds, split: str, side: int = 16) -> np.ndarray:
    """Each image padded square on white and shrunk to side x side: raw pixels as features."""
    features = []
    for path in ds.splits[split]["image_path"]:
        with Image.open(path) as im:
            im.draft("RGB", (2 * side, 2 * side))
            im = im.convert("RGB")
            square = Image.new("RGB", (max(im.size),) * 2, (255, 255, 255))
            square.paste(im, (0, (max(im.size) - im.size[1]) // 2))
            features.append(np.asarray(square.resize((side, side), Image.BILINEAR), dtype=np.float32).ravel() / 255)
    return np.stack(features)


def test_tiny_is_learnable_and_fine_grained(tiny_dataset):
    """A linear model on 16x16 pixels must beat chance clearly on the common classes, and
    species of one family must look more alike than species of different families."""
    from sklearn.linear_model import RidgeClassifier
    ds = load_dataset(tiny_dataset)
    x_train, y_train = tiny_features(ds, "train"), ds.splits["train"]["label"].to_numpy()
    x_test, y_test = tiny_features(ds, "test"), ds.splits["test"]["label"].to_numpy()
    correct = RidgeClassifier(alpha=1.0).fit(x_train, y_train).predict(x_test) == y_test
    counts = np.asarray(ds.classes.counts)
    chance = np.mean(y_test == counts.argmax())
    assert correct.mean() > 1.5 * chance
    assert correct[counts[y_test] >= 100].mean() > 0.8
    centroids = np.stack([x_train[y_train == c].mean(0) for c in range(len(counts))])
    families = np.array([f.lower() for f in ds.classes.families])
    distance = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    same = (families[:, None] == families[None]) & ~np.eye(len(counts), dtype=bool)
    assert distance[same].mean() < 0.7 * distance[families[:, None] != families[None]].mean()


# ---------------------------------------------------------------------------- determinism

def test_same_seed_is_byte_identical_whatever_the_workers(tiny_dataset, tmp_path):
    workers = 1 if default_workers() > 1 else 3   # the fixture used default_workers()
    again = synthesize(tmp_path / "again", profile="tiny", seed=0, workers=workers, progress=False)
    files = sorted(p.relative_to(tiny_dataset) for p in tiny_dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    different = [f for f in files if (tiny_dataset / f).read_bytes() != (again / f).read_bytes()]
    assert different == []


def test_seed_changes_images_and_metadata(tmp_path):
    job = ImageJob(5, str(tmp_path / "a.jpg"), "lepomis macrochirus", "Centrarchidae", (96, 256), 0)
    render_image(job)
    render_image(ImageJob(5, str(tmp_path / "b.jpg"), job.species, job.family, job.sides, 1))
    render_image(ImageJob(5, str(tmp_path / "c.jpg"), job.species, job.family, job.sides, 0))
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.jpg", "b.jpg", "c.jpg"))
    assert a == c and a != b
    plan0, plan1 = plan_dataset("tiny", seed=0), plan_dataset("tiny", seed=1)
    assert plan0["filename"].tolist() != plan1["filename"].tolist()
    assert sorted(plan0["standardized_species"]) == sorted(plan1["standardized_species"])


def test_relatives_share_a_body_plan():
    bluegill = species_traits("lepomis macrochirus", "Centrarchidae")
    green = species_traits("lepomis cyanellus", "Centrarchidae")
    pike = species_traits("esox americanus", "Esocidae")
    for field in ("tail_shape", "adipose", "barbels"):
        assert getattr(bluegill, field) == getattr(green, field)
    assert len(bluegill.dorsal) == len(green.dorsal)
    assert bluegill != green
    assert abs(bluegill.elongation - green.elongation) < abs(bluegill.elongation - pike.elongation)
    # unknown families get a plan from their name, the same on every call and machine
    assert species_traits("foo bar", "Newidae") == species_traits("foo bar", "newidae")


# ---------------------------------------------------------------------------- profiles

def test_small_profile_table():
    table = species_table("small")
    assert 90 <= len(table) <= 110 and table["species"].is_unique
    assert set(bins_of(table["train"])) == {"ultra-rare", "minority", "neutral", "majority"}
    assert (table["train"] >= 2).all() and (table["val"] >= 1).all() and (table["test"] >= 1).all()
    assert table.groupby(table["family"].str.lower()).size().min() >= 4   # relatives for every species


def test_fishvista_profile_matches_the_real_distribution(shared_data):
    """The shipped table: real species, families, val/test counts; train = 7 x pooled val+test."""
    real = {}
    for split, name in (("val", VAL_CSV), ("test", TEST_CSV)):
        with open(shared_data / name, newline="", encoding="utf-8-sig") as f:
            real[split] = list(csv.DictReader(f))
    table = species_table("fishvista").set_index("species")
    for split in ("val", "test"):
        counts = Counter(r["standardized_species"] for r in real[split])
        assert table[split].to_dict() == dict(counts)
    val_share = len(real["val"]) / (len(real["val"]) + len(real["test"]))
    expected = np.maximum(2, np.rint(7 * (table["val"] + table["test"]) * val_share)).astype(int)
    assert (table["train"] == expected).all()
    families = {(r["standardized_species"], r["family"]) for split in real for r in real[split]}
    assert all((s, f) in families for s, f in table["family"].items())


def test_fishvista_profile_shape_and_scale():
    full = species_table("fishvista")
    assert len(full) == 1758 and full["species"].is_unique
    assert full["family"].str.lower().nunique() > 200
    assert 45_000 < full["train"].sum() < 50_000
    bins = bins_of(full["train"])
    assert bins["ultra-rare"] > bins["minority"] > bins["neutral"] > bins["majority"] > 10
    tenth = species_table("fishvista", scale=0.1)
    assert (tenth["train"] >= 2).all() and (tenth["val"] >= 1).all() and (tenth["test"] >= 1).all()
    assert (tenth["train"] <= full["train"]).all()
    assert tenth["train"].tolist() == np.maximum(2, np.rint(full["train"] * 0.1)).astype(int).tolist()
    # the head of the distribution still stands out after shrinking
    assert tenth["train"].max() >= 100


def test_fishvista_label_table_heavily_scaled():
    plan = plan_dataset("fishvista", seed=0, scale=0.01)
    assert list(plan.columns) == ["split", "image_id"] + list(COLUMNS)
    for split in SPLITS:
        assert plan.loc[plan["split"] == split, "standardized_species"].nunique() == 1758
    assert plan["filename"].is_unique and plan["image_id"].is_unique
    assert plan["split"].tolist() == sorted(plan["split"], key=SPLITS.index)   # train rows, then val, then test


def test_bad_profile_and_scale_raise():
    with pytest.raises(FishscaleError, match="unknown profile 'huge'"):
        species_table("huge")
    with pytest.raises(FishscaleError, match="scale must be a positive"):
        species_table("tiny", scale=0)


# ---------------------------------------------------------------------------- command line

def test_cli_help():
    result = CliRunner().invoke(cli, ["synth", "--help"])
    assert result.exit_code == 0
    for option in ("--profile", "--seed", "--workers", "--scale", "tiny|small|fishvista"):
        assert option in result.output


def test_cli_bad_profile_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "x"), "--profile", "huge"])
    assert result.exit_code == 2
    assert "Invalid value for '--profile'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_cli_writes_summary_and_replaces_an_earlier_output(tmp_path):
    out = tmp_path / "demo"
    args = ["synth", str(out), "--profile", "tiny", "--scale", "0.01", "--workers", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # 23 species, at least 2/1/1 images each; the majority species keeps 500 x 0.01 = 5 train
    assert "images: train 49, val 23, test 23 (total 95)" in result.output
    assert "ultra-rare (<10) 23" in result.output and str(out) in result.output
    first = {p.name: p.read_bytes() for p in (out / "Images").iterdir()}
    result = CliRunner().invoke(cli, args[:-2] + ["--seed", "3"])
    assert result.exit_code == 0, result.output
    second = {p.name: p.read_bytes() for p in (out / "Images").iterdir()}
    listed = {r["filename"] for split in SPLITS for r in read_rows(out, split)[1]}
    assert set(second) == listed and len(listed) == 95     # no stale images left behind
    assert first != second


def test_cli_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["synth", str(tmp_path), "--scale", "0.01"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "notes.txt" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_never_replaces_a_real_dataset_root(tmp_path):
    """A fish-vista download has the synth layout; without our marker file it is left alone."""
    root = tmp_path / "fish-vista"
    (root / "Images").mkdir(parents=True)
    (root / "Images" / "INHS_FISH_1.jpg").write_bytes(b"real")
    (root / "classification_train.csv").write_text("filename,standardized_species\nINHS_FISH_1.jpg,a b\n")
    with pytest.raises(FishscaleError, match="not an earlier synth output"):
        synthesize(root, profile="tiny", scale=0.01, workers=1, progress=False)
    assert (root / "Images" / "INHS_FISH_1.jpg").read_bytes() == b"real"
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "y"), "--seed", "-1"])
    assert result.exit_code == 2 and "Invalid value for '--seed'" in result.output


def test_upstream_profile_is_balanced_and_disjoint_from_the_study_classes():
    from fishscale.data.synth.profiles import species_table
    upstream, small, tiny = (species_table(p) for p in ("upstream", "small", "tiny"))
    assert len(upstream) == 80 and set(upstream["train"]) == {40}
    families = set(upstream["family"].str.lower())
    assert not families & set(small["family"].str.lower())
    assert not families & set(tiny["family"].str.lower())
    assert not set(upstream["species"]) & (set(small["species"]) | set(tiny["species"]))
