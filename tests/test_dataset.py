"""The fish-vista reader: real CSVs, every bad-input case, the class index and the bins.

CSVs are written here with the csv module (a different writer than the reader's pandas), and
expectations are computed independently of the reader.
"""
from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fishscale.data.bins import DEFAULT_BIN_NAMES
from fishscale.data.dataset import (COLUMNS, UNKNOWN_LABEL, available_splits, load_dataset, read_split)
from fishscale.errors import FishscaleError

VAL_CSV = "fishvista_fv1758_classification_val_standardized.csv"
TEST_CSV = "fishvista_fv1758_classification_test_standardized.csv"


def write_split(root: Path, split: str, rows: list[dict], columns=COLUMNS, bom: bool = False) -> Path:
    """Write classification_<split>.csv with the csv module; missing fields are empty."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"classification_{split}.csv"
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def rows_of(*pairs: tuple[str, str], family: str = "Cyprinidae") -> list[dict]:
    return [{"filename": f, "standardized_species": s, "family": family} for f, s in pairs]


def make_root(tmp_path: Path, train, val=None, test=None) -> Path:
    root = tmp_path / "data"
    write_split(root, "train", train)
    write_split(root, "val", val if val is not None else train[:1])
    write_split(root, "test", test if test is not None else train[:1])
    return root


TRAIN = rows_of(("a1.jpg", "notropis b"), ("a2.jpg", "notropis b"), ("b1.jpg", "lepomis a"),
                ("c1.jpg", "esox c"), ("c2.jpg", "esox c"), ("c3.jpg", "esox c"))


def read_csv_module(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- real fish-vista CSVs

@pytest.fixture(scope="module")
def real_root(shared_data, tmp_path_factory) -> Path:
    """The real val CSV as the training split and the real test CSV as val and test."""
    root = tmp_path_factory.mktemp("real")
    shutil.copy(shared_data / VAL_CSV, root / "classification_train.csv")
    shutil.copy(shared_data / TEST_CSV, root / "classification_val.csv")
    shutil.copy(shared_data / TEST_CSV, root / "classification_test.csv")
    return root


@pytest.fixture(scope="module")
def real_ds(real_root):
    return load_dataset(real_root)


def test_real_csvs_class_index_and_counts(real_root, real_ds):
    ds = real_ds
    train_rows = read_csv_module(real_root / "classification_train.csv")
    counts = Counter(r["standardized_species"] for r in train_rows)
    assert len(ds.classes) == 1758 == len(counts)
    assert ds.classes.names == sorted(counts)
    assert ds.classes.counts == [counts[n] for n in ds.classes.names]
    assert len(ds.splits["train"]) == len(train_rows) == 6779
    assert len(ds.splits["test"]) == 9781
    assert ds.problems == []
    # every val/test species is in train: no -1, and each label names the row's species
    for split in ("train", "val", "test"):
        df = ds.splits[split]
        assert (df["label"] >= 0).all()
        assert [ds.classes.names[i] for i in df["label"]] == df["standardized_species"].tolist()


def test_real_csvs_families_extensions_and_extra_columns(real_root, real_ds):
    ds = real_ds
    train = ds.splits["train"]
    families = {f.lower() for f in ds.classes.families}
    assert {"cyprinidae", "centrarchidae", "labridae"} <= families
    assert all(ds.classes.families)
    extensions = Counter(Path(f).suffix for f in train["filename"])
    assert {".jpg", ".jpeg", ".JPG", ".png"} <= set(extensions)
    assert extensions[".png"] == 1
    # newer releases' extra columns are carried along untouched, the 15 published ones all there
    assert set(COLUMNS) | {"verbatim_species", "species", "species_id"} <= set(train.columns)
    # the hub path is in file_name; with no images on disk the flat path is what we report
    row = train[train["file_name"] != ""].iloc[0]
    assert row["image_path"] == str(real_root / "Images" / row["filename"])


def test_real_csv_with_bom_reads_the_same(real_root, tmp_path):
    text = (real_root / "classification_train.csv").read_text(encoding="utf-8")
    assert not text.startswith("\ufeff")
    root = tmp_path / "bom"
    root.mkdir()
    (root / "classification_train.csv").write_text("\ufeff" + text, encoding="utf-8")
    df, problems = read_split(root, "train")
    plain, _ = read_split(real_root, "train")
    assert list(df.columns)[0] == "filename"
    assert problems == []
    assert df["standardized_species"].tolist() == plain["standardized_species"].tolist()


def test_real_bins(real_ds):
    ds = real_ds
    bins = Counter(ds.classes.bins())
    expected = Counter()
    for n in ds.classes.counts:
        expected["ultra-rare" if n < 10 else "minority" if n < 100 else "neutral" if n < 500 else "majority"] += 1
    assert bins == expected
    assert bins["ultra-rare"] > bins["minority"] > bins["neutral"] > 0   # val caps at 200: no majority


# ---------------------------------------------------------------------------- bad input

def test_missing_csv(tmp_path):
    root = tmp_path / "data"
    write_split(root, "train", TRAIN)
    with pytest.raises(FishscaleError, match=r"classification_val\.csv.*not found"):
        load_dataset(root, splits=["train", "val"])
    assert available_splits(root) == ["train"]
    write_split(root, "val", TRAIN)
    (root / "classification_train.csv").unlink()
    with pytest.raises(FishscaleError, match=r"classification_train\.csv.*not found"):
        load_dataset(root, splits=["val"])


def test_missing_root_and_unknown_split(tmp_path):
    with pytest.raises(FishscaleError, match="dataset root not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FishscaleError, match="no classification"):
        load_dataset(tmp_path / "empty")
    root = make_root(tmp_path, TRAIN)
    with pytest.raises(FishscaleError, match="unknown split.*holdout"):
        load_dataset(root, splits=["holdout"])


def test_missing_label_column(tmp_path):
    root = tmp_path / "data"
    columns = [c for c in COLUMNS if c != "standardized_species"]
    write_split(root, "train", TRAIN, columns=columns)
    with pytest.raises(FishscaleError, match=r"classification_train\.csv: missing column\(s\) standardized_species"):
        load_dataset(root)


def test_empty_label_fail_and_skip(tmp_path):
    train = TRAIN + rows_of(("blank.jpg", "  "))
    root = make_root(tmp_path, train)
    with pytest.raises(FishscaleError, match=r"classification_train\.csv line 8 \(blank\.jpg\): empty label"):
        load_dataset(root, on_error="fail")
    ds = load_dataset(root, on_error="skip")
    assert "blank.jpg" not in set(ds.splits["train"]["filename"])
    assert [(p.split, p.row, p.filename) for p in ds.problems] == [("train", 8, "blank.jpg")]
    assert "empty label" in ds.problems[0].reason


def test_duplicate_filename(tmp_path):
    train = TRAIN + rows_of(("b1.jpg", "esox c"))
    root = make_root(tmp_path, train)
    with pytest.raises(FishscaleError, match=r"line 8 \(b1\.jpg\): duplicate filename \(first seen on line 4\)"):
        load_dataset(root)
    ds = load_dataset(root, on_error="skip")
    kept = ds.splits["train"]
    assert kept["filename"].tolist().count("b1.jpg") == 1
    assert kept.loc[kept["filename"] == "b1.jpg", "standardized_species"].item() == "lepomis a"
    assert ds.classes.counts == [3, 1, 2]    # esox c, lepomis a, notropis b


def test_species_absent_from_train(tmp_path):
    val = rows_of(("v1.jpg", "lepomis a"), ("v2.jpg", "gobius x"), ("v3.jpg", "notropis b"))
    root = make_root(tmp_path, TRAIN, val=val)
    with pytest.raises(FishscaleError, match=r"classification_val\.csv line 3 \(v2\.jpg\): species 'gobius x' is not in the training split"):
        load_dataset(root, on_error="fail")
    ds = load_dataset(root, on_error="skip")
    labels = dict(zip(ds.splits["val"]["filename"], ds.splits["val"]["label"]))
    names = ds.classes.names
    assert labels == {"v1.jpg": names.index("lepomis a"), "v2.jpg": UNKNOWN_LABEL, "v3.jpg": names.index("notropis b")}
    assert "gobius x" not in names and len(names) == 3
    assert ds.unknown_species("val")["filename"].tolist() == ["v2.jpg"]
    assert [(p.split, p.row) for p in ds.problems] == [("val", 3)]


def test_on_error_must_be_fail_or_skip(tmp_path):
    root = make_root(tmp_path, TRAIN)
    with pytest.raises(FishscaleError, match="on_error"):
        load_dataset(root, on_error="ignore")


def test_empty_training_split(tmp_path):
    root = make_root(tmp_path, [], val=TRAIN, test=TRAIN)
    with pytest.raises(FishscaleError, match=r"classification_train\.csv: no valid rows"):
        load_dataset(root)


def test_unparseable_csv(tmp_path):
    root = make_root(tmp_path, TRAIN)
    (root / "classification_val.csv").write_bytes(b"filename,standardized_species\n\xff\xfe\x00bad\n")
    with pytest.raises(FishscaleError, match=r"classification_val\.csv: cannot parse"):
        load_dataset(root)


# ---------------------------------------------------------------------------- accepted variants

def test_extra_columns_and_bom_accepted(tmp_path):
    columns = ("species_id",) + COLUMNS + ("verbatim_species", "species")
    root = tmp_path / "data"
    for split in ("train", "val", "test"):
        write_split(root, split, [dict(r, species_id="7", species="x") for r in TRAIN], columns=columns, bom=True)
    assert (root / "classification_train.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    ds = load_dataset(root)
    assert ds.classes.names == ["esox c", "lepomis a", "notropis b"]
    assert ds.splits["train"]["species_id"].eq("7").all()
    assert ds.problems == []


def test_optional_columns_may_be_absent(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val", "test"):
        write_split(root, split, TRAIN, columns=("filename", "standardized_species"))
    ds = load_dataset(root)
    assert set(COLUMNS) <= set(ds.splits["val"].columns)
    assert ds.classes.families == ["", "", ""]


def test_image_extensions(tmp_path):
    good = rows_of(("x1.jpg", "s a"), ("x2.jpeg", "s a"), ("x3.JPG", "s a"), ("x4.png", "s a"), ("x5.JPEG", "s a"))
    bad = rows_of(("y1.gif", "s a"), ("y2.tif", "s a"), ("noext", "s a"))
    root = make_root(tmp_path, good + bad)
    with pytest.raises(FishscaleError, match=r"line 7 \(y1\.gif\): unsupported image extension"):
        load_dataset(root)
    ds = load_dataset(root, on_error="skip")
    assert ds.splits["train"]["filename"].tolist() == [r["filename"] for r in good]
    assert sorted(p.filename for p in ds.problems) == ["noext", "y1.gif", "y2.tif"]


def test_image_path_flat_then_hub_layout(tmp_path):
    train = [{"filename": "flat.jpg", "standardized_species": "s a", "file_name": "Images/chunk_1/flat.jpg"},
             {"filename": "hub.JPG", "standardized_species": "s a", "file_name": "Images/chunk_3/hub.JPG"},
             {"filename": "gone.jpg", "standardized_species": "s a", "file_name": "Images/chunk_2/gone.jpg"},
             {"filename": "nohub.jpg", "standardized_species": "s a", "file_name": ""}]
    root = make_root(tmp_path, train)
    (root / "Images" / "chunk_1").mkdir(parents=True)
    (root / "Images" / "chunk_3").mkdir()
    for path in ("Images/flat.jpg", "Images/chunk_1/flat.jpg", "Images/chunk_3/hub.JPG"):
        (root / path).write_bytes(b"x")
    paths = dict(zip(*[load_dataset(root).splits["train"][c] for c in ("filename", "image_path")]))
    assert paths == {"flat.jpg": str(root / "Images/flat.jpg"),        # flat wins when both exist
                     "hub.JPG": str(root / "Images/chunk_3/hub.JPG"),   # hub layout fallback
                     "gone.jpg": str(root / "Images/gone.jpg"),         # neither: the flat path
                     "nohub.jpg": str(root / "Images/nohub.jpg")}


def test_class_index_from_train_reused_for_val_and_test(tmp_path):
    # val holds the species in another order and only some of them; indices must not move
    val = rows_of(("v1.jpg", "notropis b"), ("v2.jpg", "notropis b"))
    test = rows_of(("t1.jpg", "lepomis a"), ("t2.jpg", "esox c"), ("t3.jpg", "notropis b"))
    ds = load_dataset(make_root(tmp_path, TRAIN, val=val, test=test))
    assert ds.classes.names == ["esox c", "lepomis a", "notropis b"]
    assert ds.classes.counts == [3, 1, 2]
    assert ds.splits["val"]["label"].tolist() == [2, 2]
    assert ds.splits["test"]["label"].tolist() == [1, 0, 2]
    assert ds.classes.label("gobius x") == UNKNOWN_LABEL
    only_test = load_dataset(tmp_path / "data", splits=["test"])
    assert list(only_test.splits) == ["test"] and only_test.classes.names == ds.classes.names


def test_row_numbers_and_whitespace(tmp_path):
    train = rows_of((" a1.jpg ", " notropis b "), ("b1.jpg", "lepomis a"))
    ds = load_dataset(make_root(tmp_path, train))
    df = ds.splits["train"]
    assert df["filename"].tolist() == ["a1.jpg", "b1.jpg"]
    assert df["row"].tolist() == [2, 3]
    assert ds.classes.names == ["lepomis a", "notropis b"]


# ---------------------------------------------------------------------------- bins

@pytest.mark.parametrize("count, name", [(1, "ultra-rare"), (9, "ultra-rare"), (10, "minority"), (99, "minority"),
                                         (100, "neutral"), (499, "neutral"), (500, "majority"), (5000, "majority")])
def test_bin_edges(tmp_path, count, name):
    train = rows_of(*[(f"a{i}.jpg", "s a") for i in range(count)])
    ds = load_dataset(make_root(tmp_path, train))
    assert ds.classes.bins() == [name]


def test_custom_bins(tmp_path):
    train = rows_of(*[(f"a{i}.jpg", "s a") for i in range(3)], *[(f"b{i}.jpg", "s b") for i in range(30)])
    ds = load_dataset(make_root(tmp_path, train))
    assert ds.classes.bins([5]) == ["<5", ">=5"]
    assert ds.classes.bins([5, 20], ["few", "some", "many"]) == ["few", "many"]
    assert tuple(DEFAULT_BIN_NAMES) == ("ultra-rare", "minority", "neutral", "majority")
    with pytest.raises(FishscaleError, match="strictly increasing"):
        ds.classes.bins([20, 5])


def test_filenames_are_bare_names_and_hub_paths_stay_inside(tmp_path):
    train = rows_of(("ok.jpg", "s a"), ("../escape.jpg", "s a"), ("sub/x.jpg", "s a"), ("c:\\x.jpg", "s a"))
    train.append({"filename": "hubbed.jpg", "standardized_species": "s a", "file_name": "../outside/hubbed.jpg"})
    root = make_root(tmp_path, train)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "hubbed.jpg").write_bytes(b"x")
    with pytest.raises(FishscaleError, match=r"line 3 \(\.\./escape\.jpg\): filename must be a bare file name"):
        load_dataset(root)
    ds = load_dataset(root, on_error="skip")
    paths = dict(zip(ds.splits["train"]["filename"], ds.splits["train"]["image_path"]))
    assert paths == {"ok.jpg": str(root / "Images/ok.jpg"), "hubbed.jpg": str(root / "Images/hubbed.jpg")}
    assert sorted(p.row for p in ds.problems) == [3, 4, 5]
