"""Tests for facegan.data.sources: CelebA / UTKFace / folder scanners and the hash split.

    .venv/bin/python -m pytest tests/test_sources.py -q
"""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from facegan.data.records import CELEBA_ATTRS, DataError
from facegan.data.sources import scan_celeba, scan_folder, scan_utkface, split_for_key

KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def _jpeg_bytes(color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg_bytes()


def _write_images(directory: Path, names: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(JPEG)


# ---------------------------------------------------------------------------------------------
# CelebA fixtures
# ---------------------------------------------------------------------------------------------

def _attr_row(index: int) -> list[int]:
    """A distinct -1/1 pattern per image so a row mix-up shows."""
    return [1 if (j + index) % 3 == 0 else -1 for j in range(len(CELEBA_ATTRS))]


ATTRS = {f"{i:06d}": _attr_row(i) for i in range(1, 7)}
IDENTITY = {"000001": 2880, "000002": 2937, "000003": 8692, "000004": 5805, "000005": 9295,
            "000006": 4153}
PARTITION = {"000001": 0, "000002": 1, "000003": 2, "000004": 0, "000005": 1, "000006": 2}
LANDMARKS = {key: [60 + i for i in range(10)] for key in ATTRS}
LANDMARKS["000002"] = [69, 109, 106, 113, 77, 142, 73, 152, 108, 154]


def _write_celeba_annotations(
    directory: Path,
    *,
    keys: list[str],
    newline: str = "\n",
    sep: str = " ",
    identity: bool = True,
    partition: bool = True,
    landmarks: bool = False,
    names: list[str] | None = None,
    trailing_blank_lines: int = 0,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, lines: list[str]) -> None:
        text = newline.join(lines) + newline + newline * trailing_blank_lines
        (directory / name).write_bytes(text.encode())

    attr_names = list(CELEBA_ATTRS) if names is None else names
    write("list_attr_celeba.txt", [str(len(keys)), " ".join(attr_names) + " "]
          + [f"{k}.jpg{sep}" + sep.join(f"{v:2d}" if sep == " " else str(v) for v in ATTRS[k])
             for k in keys])
    if identity:
        write("identity_CelebA.txt", [f"{k}.jpg{sep}{IDENTITY[k]}" for k in keys])
    if partition:
        write("list_eval_partition.txt", [f"{k}.jpg{sep}{PARTITION[k]}" for k in keys])
    if landmarks:
        header = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x "
                  "leftmouth_y rightmouth_x rightmouth_y")
        write("list_landmarks_align_celeba.txt", [str(len(keys)), header]
              + [f"{k}.jpg{sep}" + sep.join(str(v) for v in LANDMARKS[k]) for k in keys])


def _celeba(tmp_path: Path, *, images: list[str], rows: list[str] | None = None, **kwargs) -> Path:
    root = tmp_path / "celeba"
    _write_images(root / "img_align_celeba", [f"{k}.jpg" for k in images])
    _write_celeba_annotations(root, keys=images if rows is None else rows, **kwargs)
    return root


def _expected_attrs(key: str) -> list[int]:
    return [1 if v == 1 else 0 for v in ATTRS[key]]


def test_celeba_round_trip_all_annotation_files(tmp_path: Path) -> None:
    keys = ["000003", "000001", "000002"]
    root = _celeba(tmp_path, images=keys, landmarks=True)
    scan = scan_celeba(root=root)

    assert scan.source == "celeba"
    assert [item.key for item in scan.items] == ["000001", "000002", "000003"]
    assert [item.split for item in scan.items] == ["train", "val", "test"]
    assert scan.attr_names == list(CELEBA_ATTRS)
    assert scan.label_fields == ["attrs", "identity", "partition", "landmarks"]
    assert scan.skipped == []
    assert scan.rows_without_image == 0
    for item in scan.items:
        assert item.labels == {
            "attrs": _expected_attrs(item.key),
            "identity": IDENTITY[item.key],
            "partition": PARTITION[item.key],
            "landmarks": LANDMARKS[item.key],
        }
        assert Path(item.path) == (root / "img_align_celeba" / f"{item.key}.jpg").absolute()
        assert item.index == 0


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("sep", [" ", "  ", "\t"])
def test_celeba_line_endings_and_column_spacing(tmp_path: Path, newline: str, sep: str) -> None:
    keys = ["000001", "000002", "000004"]
    root = _celeba(tmp_path, images=keys, newline=newline, sep=sep, landmarks=True,
                   trailing_blank_lines=2)
    raw = (root / "list_attr_celeba.txt").read_bytes()
    assert (b"\r\n" in raw) == (newline == "\r\n")
    scan = scan_celeba(root=root)
    assert [item.key for item in scan.items] == keys
    assert scan.attr_names == list(CELEBA_ATTRS)
    assert [item.labels["attrs"] for item in scan.items] == [_expected_attrs(k) for k in keys]
    assert [item.labels["identity"] for item in scan.items] == [IDENTITY[k] for k in keys]
    assert [item.labels["landmarks"] for item in scan.items] == [LANDMARKS[k] for k in keys]


def test_celeba_separate_annotations_with_extra_rows(tmp_path: Path) -> None:
    # A full annotation set next to a partial image folder: absent images are counted, not errors.
    root = tmp_path / "images"
    _write_images(root / "img_align_celeba", ["000002.jpg", "000005.jpg"])
    annotations = tmp_path / "anno"
    _write_celeba_annotations(annotations, keys=list(ATTRS))
    scan = scan_celeba(root=root, annotations=annotations)
    assert [item.key for item in scan.items] == ["000002", "000005"]
    assert [item.split for item in scan.items] == ["val", "val"]
    assert scan.rows_without_image == 4
    assert scan.skipped == []
    assert scan.items[1].labels["attrs"] == _expected_attrs("000005")


def test_celeba_images_without_rows_are_skipped_with_reason(tmp_path: Path) -> None:
    root = _celeba(tmp_path, images=["000001", "000002", "000003"], rows=["000001", "000002"])
    # Partition file lacks 000002, identity file is complete.
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    scan = scan_celeba(root=root)
    assert [item.key for item in scan.items] == ["000001"]
    reasons = {Path(s["input"]).name: s["reason"] for s in scan.skipped}
    assert set(reasons) == {"000002.jpg", "000003.jpg"}
    assert reasons["000002.jpg"] == "no row in list_eval_partition.txt"
    assert "no row in list_attr_celeba.txt" in reasons["000003.jpg"]
    assert scan.rows_without_image == 0


def test_celeba_without_partition_or_identity_uses_hash_split(tmp_path: Path) -> None:
    keys = list(ATTRS)
    root = _celeba(tmp_path, images=keys, identity=False, partition=False)
    scan = scan_celeba(root=root, val_fraction=0.3, test_fraction=0.3)
    assert scan.label_fields == ["attrs"]
    for item in scan.items:
        assert set(item.labels) == {"attrs"}
        assert item.split == split_for_key(item.key, seed=0, val_fraction=0.3, test_fraction=0.3)
    other = scan_celeba(root=root, val_fraction=0.0, test_fraction=0.0)
    assert {item.split for item in other.items} == {"train"}


def test_celeba_images_directly_in_root_and_custom_attr_names(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _write_images(root, ["000001.jpg", "000002.jpg"])
    names = [f"attr_{j}" for j in range(40)]
    _write_celeba_annotations(root, keys=["000001", "000002"], names=names)
    scan = scan_celeba(root=root)
    assert [item.key for item in scan.items] == ["000001", "000002"]
    assert scan.attr_names == names


def _error(callable_, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        callable_(**kwargs)
    return str(info.value)


def test_celeba_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    root = _celeba(tmp_path, images=["000001", "000002"])
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().split("\n")
    lines[3] = lines[3].rsplit(" ", 1)[0]          # drop the last value of the 2nd row
    path.write_text("\n".join(lines))
    message = _error(scan_celeba, root=root)
    assert "list_attr_celeba.txt" in message
    assert "line 4" in message
    assert "expected 41" in message and "found 40" in message


def test_celeba_bad_attribute_value_names_line_and_attribute(tmp_path: Path) -> None:
    root = _celeba(tmp_path, images=["000001", "000002"])
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().split("\n")
    parts = lines[2].split()
    parts[3] = "0"                                 # third attribute of 000001
    lines[2] = " ".join(parts)
    path.write_text("\n".join(lines))
    message = _error(scan_celeba, root=root)
    assert "line 3" in message
    assert CELEBA_ATTRS[2] in message
    assert "'0'" in message and "-1 or 1" in message


def test_celeba_bad_partition_value(tmp_path: Path) -> None:
    root = _celeba(tmp_path, images=["000001", "000002"])
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 3\n")
    message = _error(scan_celeba, root=root)
    assert "list_eval_partition.txt" in message and "line 2" in message and "'3'" in message


def test_celeba_missing_attr_file_says_where_it_looked(tmp_path: Path) -> None:
    root = _celeba(tmp_path, images=["000001"])
    (root / "list_attr_celeba.txt").unlink()
    message = _error(scan_celeba, root=root)
    assert str((root / "list_attr_celeba.txt").absolute()) in message
    anno = tmp_path / "anno"
    anno.mkdir()
    message = _error(scan_celeba, root=root, annotations=anno)
    assert str((anno / "list_attr_celeba.txt").absolute()) in message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda lines: ["two"] + lines[1:], ["line 1", "integer", "'two'"]),
        (lambda lines: ["5"] + lines[1:], ["line 1 says 5 rows", "has 2 rows"]),
        (lambda lines: [lines[0], lines[1].rsplit(" ", 2)[0]] + lines[2:],
         ["line 2", "expected 40 column names", "found 39"]),
        (lambda lines: ["3"] + lines[1:3] + [lines[2]] + lines[3:],
         ["line 4", "'000001.jpg' is listed twice", "line 3"]),
        (lambda lines: [lines[0], lines[1].replace("Bald", "Bangs")] + lines[2:],
         ["line 2", "unique", "'Bangs'"]),
    ],
    ids=["count-not-int", "count-mismatch", "39-names", "duplicate-row", "repeated-name"],
)
def test_celeba_malformed_header_and_rows(tmp_path: Path, edit, expected: list[str]) -> None:
    root = _celeba(tmp_path, images=["000001", "000002"])
    path = root / "list_attr_celeba.txt"
    path.write_text("\n".join(edit(path.read_text().rstrip("\n").split("\n"))) + "\n")
    message = _error(scan_celeba, root=root)
    assert "list_attr_celeba.txt" in message
    for fragment in expected:
        assert fragment in message


def test_celeba_missing_root_and_no_usable_images(tmp_path: Path) -> None:
    message = _error(scan_celeba, root=tmp_path / "nope")
    assert "root" in message and "does not exist" in message and "nope" in message
    root = _celeba(tmp_path, images=["000001"], rows=["000002"])
    message = _error(scan_celeba, root=root)
    assert "no usable images" in message
    assert "1 skipped" in message and "no row in list_attr_celeba.txt" in message


# ---------------------------------------------------------------------------------------------
# UTKFace
# ---------------------------------------------------------------------------------------------

UTK_GOOD = {
    "25_0_2_20170116174525125.jpg.chip.jpg": ("25_0_2_20170116174525125", 25, 0, 2),
    "1_1_4_20161221193016140.jpg.chip.jpg": ("1_1_4_20161221193016140", 1, 1, 4),
    "30_1_0_20170103.jpg": ("30_1_0_20170103", 30, 1, 0),
    "40_0_3_2017 (copy).jpg.chip.jpg": ("40_0_3_2017__copy_", 40, 0, 3),
    "22_0_2.jpg": ("22_0_2", 22, 0, 2),      # AGE_GENDER_RACE with no datetime: complete
}
UTK_PARTIAL = {
    "61_1_20170109142408075.jpg.chip.jpg": ("61_1_20170109142408075", 61, 1, None),
    "39_1_20170116174525125.jpg.chip.jpg": ("39_1_20170116174525125", 39, 1, None),
    "61_3_20170109150557335.jpg.chip.jpg": ("61_3_20170109150557335", 61, None, 3),
}
UTK_BAD = {
    "abc.jpg": "found 1",
    "x_1_0_20170109142408075.jpg.chip.jpg": "age 'x'",
    "25_7_0_20170109142408075.jpg.chip.jpg": "gender '7'",
    "25_0_9_20170109142408075.jpg.chip.jpg": "race '9'",
    "25_0_1_2_20170109142408075.jpg.chip.jpg": "found 5",
    "25_9_20170109142408075.jpg.chip.jpg": "field 2 '9'",
    "999_0_1_20170109142408075.jpg": "age 999",
    ".jpg.chip.jpg": "found 1",
}


def test_utkface_parses_full_partial_and_bad_names(tmp_path: Path) -> None:
    root = tmp_path / "utk"
    _write_images(root, [*UTK_GOOD, *UTK_PARTIAL, *UTK_BAD])
    (root / "notes.txt").write_text("not an image")
    (root / "subdir.jpg").mkdir()
    scan = scan_utkface(root=root)

    assert scan.source == "utkface"
    assert scan.attr_names == [] and scan.label_fields == ["age", "gender", "race"]
    by_key = {item.key: item for item in scan.items}
    assert len(by_key) == len(UTK_GOOD) + len(UTK_PARTIAL)
    for name, (key, age, gender, race) in UTK_GOOD.items():
        item = by_key[key]
        assert item.labels == {"age": age, "gender": gender, "race": race}
        assert Path(item.path).name == name
    for name, (key, age, gender, race) in UTK_PARTIAL.items():
        item = by_key[key]
        assert item.labels == {"age": age, "gender": gender, "race": race, "partial_name": True}
    assert sum(bool(item.labels.get("partial_name")) for item in scan.items) == 3

    reasons = {Path(s["input"]).name: s["reason"] for s in scan.skipped}
    assert set(reasons) == set(UTK_BAD)
    for name, fragment in UTK_BAD.items():
        assert fragment in reasons[name], (name, reasons[name])
    assert [item.key for item in scan.items] == sorted(by_key)
    assert all(KEY_RE.fullmatch(item.key) for item in scan.items)
    assert scan.rows_without_image == 0


def test_utkface_key_collisions_get_suffixes(tmp_path: Path) -> None:
    root = tmp_path / "utk"
    _write_images(root, ["25_0_1_20170101.jpg", "25_0_1_20170101.jpg.chip.jpg",
                         "25_0_1_20170101_2.jpg"])
    scan = scan_utkface(root=root)
    keys = {Path(item.path).name: item.key for item in scan.items}
    assert keys == {"25_0_1_20170101.jpg": "25_0_1_20170101",
                    "25_0_1_20170101.jpg.chip.jpg": "25_0_1_20170101_2"}
    assert [Path(s["input"]).name for s in scan.skipped] == ["25_0_1_20170101_2.jpg"]
    assert "found 5" in scan.skipped[0]["reason"]


def test_utkface_seed_changes_split_and_no_usable_images(tmp_path: Path) -> None:
    root = tmp_path / "utk"
    names = [f"{20 + i % 50}_{i % 2}_{i % 5}_2017010{i:05d}.jpg.chip.jpg" for i in range(200)]
    _write_images(root, names)
    a = scan_utkface(root=root, seed=0)
    b = scan_utkface(root=root, seed=1)
    assert [i.key for i in a.items] == [i.key for i in b.items]
    assert [i.split for i in a.items] != [i.split for i in b.items]
    assert [i.split for i in a.items] == [i.split for i in scan_utkface(root=root, seed=0).items]

    bad = tmp_path / "bad"
    _write_images(bad, ["abc.jpg", "x_1_0_20170109142408075.jpg"])
    message = _error(scan_utkface, root=bad)
    assert "no usable images" in message and str(bad) in message and "2 skipped" in message
    assert "age 'x'" in message
    message = _error(scan_utkface, root=tmp_path / "missing")
    assert "does not exist" in message


# ---------------------------------------------------------------------------------------------
# Folder
# ---------------------------------------------------------------------------------------------

def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    _write_images(root, ["a.jpg", "top.PNG"])
    _write_images(root / "people" / "bob", ["a.jpg", "b.jpeg", "c.webp"])
    _write_images(root / "people" / "amy smith", ["x.y.jpg"])
    (root / "people" / "readme.txt").write_text("not an image")
    return root


def test_folder_recursive_without_labels(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    scan = scan_folder(root=root)
    assert [item.key for item in scan.items] == [
        "a", "people_amy_smith_x_y", "people_bob_a", "people_bob_b", "people_bob_c", "top",
    ]
    assert all(item.labels == {} for item in scan.items)
    assert scan.attr_names == [] and scan.label_fields == [] and scan.skipped == []
    assert Path(scan.items[2].path) == (root / "people" / "bob" / "a.jpg").absolute()
    assert all(item.split == split_for_key(item.key, seed=0, val_fraction=0.1, test_fraction=0.1)
               for item in scan.items)


def test_folder_csv_labels_binary(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "\ufefffilename,Smiling,Male\r\n"
        "a.jpg,1,-1\r\n"                      # relative path at the top level
        "people/bob/a.jpg,-1,1\r\n"
        "b.jpeg,1,1\r\n"                      # bare name, unique in the folder
        "./people/amy smith/x.y.jpg,-1,-1\r\n"
        "gone.jpg,1,1\r\n"                    # no such image
        "people/zed/q.jpg,1,1\r\n"
        "\r\n",
        encoding="utf-8",
    )
    scan = scan_folder(root=root, labels_csv=csv_path)
    assert scan.attr_names == ["Smiling", "Male"]
    assert scan.label_fields == ["attrs"]
    assert {item.key: item.labels["attrs"] for item in scan.items} == {
        "a": [1, 0], "people_bob_a": [0, 1], "people_bob_b": [1, 1],
        "people_amy_smith_x_y": [0, 0],
    }
    assert scan.rows_without_image == 2
    skipped = sorted(Path(s["input"]).name for s in scan.skipped)
    assert skipped == ["c.webp", "top.PNG"]
    assert all(s["reason"] == "no row in labels.csv" for s in scan.skipped)


def test_folder_csv_non_binary_values_are_floats(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,age,smile\ntop.PNG,31.5,1\na.jpg,20,0\n")
    scan = scan_folder(root=root, labels_csv=csv_path)
    attrs = {item.key: item.labels["attrs"] for item in scan.items}
    assert attrs == {"top": [31.5, 1.0], "a": [20.0, 0.0]}
    assert all(isinstance(v, float) for values in attrs.values() for v in values)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("filename,Smiling\na.jpg,1\ntop.PNG,1,0\n", ["line 3", "expected 2 columns", "found 3"]),
        ("filename,Smiling\na.jpg,yes\n", ["line 2", "'Smiling'", "'yes'"]),
        ("filename,Smiling\na.jpg,nan\n", ["line 2", "finite"]),
        ("name,Smiling\na.jpg,1\n", ["line 1", "'name'"]),
        ("filename,Smiling\na.jpg,1\n./a.jpg,0\n", ["line 3", "already has a row", "line 2"]),
        ("filename,Smiling\nzzz.jpg,1\n\na.jpg,1\n", ["matches 2 images"]),
    ],
    ids=["columns", "non-numeric", "nan", "header", "duplicate", "ambiguous"],
)
def test_folder_csv_errors(tmp_path: Path, text: str, expected: list[str]) -> None:
    root = _folder(tmp_path)
    _write_images(root / "p", ["zzz.jpg"])
    _write_images(root / "q", ["zzz.jpg"])
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(text)
    message = _error(scan_folder, root=root, labels_csv=csv_path)
    assert "labels.csv" in message
    for fragment in expected:
        assert fragment in message


def test_folder_unique_keys_and_zero_images(tmp_path: Path) -> None:
    root = tmp_path / "dups"
    _write_images(root, ["a.b.jpg", "a_b.jpg", "a_b.png", "a_b_2.jpg"])
    scan = scan_folder(root=root)
    keys = {Path(item.path).name: item.key for item in scan.items}
    assert keys == {"a.b.jpg": "a_b", "a_b.jpg": "a_b_3", "a_b.png": "a_b_4",
                    "a_b_2.jpg": "a_b_2"}

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("x")
    message = _error(scan_folder, root=empty)
    assert "no usable images" in message and str(empty) in message and "found 0" in message
    message = _error(scan_folder, root=tmp_path / "nowhere")
    assert "root" in message and "does not exist" in message
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("filename,x\nother.jpg,1\n")
    message = _error(scan_folder, root=root, labels_csv=csv_path)
    assert "4 skipped" in message and "no row in labels.csv" in message


# ---------------------------------------------------------------------------------------------
# split_for_key and argument validation
# ---------------------------------------------------------------------------------------------

def test_split_for_key_deterministic_and_fractions() -> None:
    keys = [f"{i:06d}" for i in range(20_000)]
    splits = [split_for_key(k, seed=0, val_fraction=0.1, test_fraction=0.2) for k in keys]
    again = [split_for_key(k, seed=0, val_fraction=0.1, test_fraction=0.2) for k in keys]
    assert splits == again
    counts = Counter(splits)
    assert abs(counts["val"] / len(keys) - 0.1) < 0.01
    assert abs(counts["test"] / len(keys) - 0.2) < 0.01
    assert abs(counts["train"] / len(keys) - 0.7) < 0.01
    other_seed = [split_for_key(k, seed=1, val_fraction=0.1, test_fraction=0.2) for k in keys]
    assert sum(a != b for a, b in zip(splits, other_seed)) > 1000
    # Growing val only moves train keys into val: existing test/val keys stay put.
    grown = [split_for_key(k, seed=0, val_fraction=0.3, test_fraction=0.2) for k in keys]
    assert all(g == s for s, g in zip(splits, grown) if s != "train")
    assert split_for_key("000001", seed=0, val_fraction=0.0, test_fraction=0.0) == "train"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(val_fraction=-0.1, test_fraction=0.1), "val_fraction must be in [0, 1)"),
        (dict(val_fraction=0.0, test_fraction=1.0), "test_fraction must be in [0, 1)"),
        (dict(val_fraction=0.5, test_fraction=0.5), "val_fraction + test_fraction"),
        (dict(val_fraction=float("nan"), test_fraction=0.1), "val_fraction must be in [0, 1)"),
        (dict(val_fraction="0.1", test_fraction=0.1), "val_fraction must be a number"),
    ],
)
def test_fraction_validation(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        split_for_key("k", seed=0, **kwargs)
    _write_images(tmp_path, ["a.jpg"])
    with pytest.raises(ValueError, match=re.escape(fragment)):
        scan_folder(root=tmp_path, **kwargs)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        scan_celeba(root=tmp_path, **kwargs)
