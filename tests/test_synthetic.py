"""Synthetic faces: determinism, shapes, label statistics, validation, and that a small CNN can
actually read every drawn attribute from 32x32 pixels (while a shuffled-label control cannot).

    .venv/bin/python -m pytest tests/test_synthetic.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facegan.data.records import CELEBA_ATTRS, DataError, SourceScan
from facegan.data.synthetic import (
    SYNTHETIC_DRAWN,
    render_face,
    sample_attributes,
    scan_synthetic,
)

REQUIRED_DRAWN = ("Male", "Smiling", "Eyeglasses", "Bangs", "Wearing_Hat", "Black_Hair",
                  "Blond_Hair", "Pale_Skin")


# --- determinism

def test_same_seed_and_index_give_identical_face_and_attrs():
    a = render_face(seed=7, index=123, height=64, width=64)
    b = render_face(seed=7, index=123, height=64, width=64)
    np.testing.assert_array_equal(a, b)
    assert sample_attributes(seed=7, index=123) == sample_attributes(seed=7, index=123)


def test_different_seeds_and_indices_give_different_faces():
    base = render_face(seed=0, index=5, height=32, width=32)
    assert not np.array_equal(base, render_face(seed=1, index=5, height=32, width=32))
    assert not np.array_equal(base, render_face(seed=0, index=6, height=32, width=32))
    attrs_0 = [sample_attributes(seed=0, index=i) for i in range(50)]
    attrs_1 = [sample_attributes(seed=1, index=i) for i in range(50)]
    assert attrs_0 != attrs_1


def test_item_does_not_depend_on_count_or_order():
    small = scan_synthetic(count=20, seed=3)
    large = scan_synthetic(count=200, seed=3)
    assert large.items[:20] == small.items
    # rendering out of order, after other faces, changes nothing
    later = render_face(seed=3, index=150, height=32, width=32)
    render_face(seed=3, index=0, height=32, width=32)
    np.testing.assert_array_equal(later, render_face(seed=3, index=150, height=32, width=32))


# --- shapes and pixels

@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 64), (218, 178), (20, 48)])
def test_shape_dtype_and_background_corners(height, width):
    for index in range(20):
        img = render_face(seed=4, index=index, height=height, width=width)
        assert img.shape == (height, width, 3)
        assert img.dtype == np.uint8
        # top corners are plain background; a fill that leaks across the frame breaks this
        np.testing.assert_array_equal(img[0, 0], img[0, -1])
        assert img.std() > 20, "face should stand out from the background"


def test_face_is_centred_in_non_square_frame():
    img = render_face(seed=0, index=0, height=218, width=178).astype(np.int16)
    bg = img[0, 0]
    differs = np.abs(img - bg).sum(axis=2) > 30
    rows = np.nonzero(differs.any(axis=1))[0]
    cols = np.nonzero(differs.any(axis=0))[0]
    # face plus shoulders reach the bottom; the head leaves a margin on top
    assert rows.min() > 10
    assert abs((cols.min() + cols.max()) / 2 - 178 / 2) < 15


def test_teeth_appear_exactly_on_smiling_faces():
    """A cheap pixel check that labels and drawing agree (the CNN test below is the thorough one).

    Only teeth are near-white in all three channels below the eyes: pale skin, blond beards,
    silver frames and pastel backgrounds all keep one channel under 225.
    """
    for index in range(150):
        smiling = sample_attributes(seed=9, index=index)["Smiling"]
        img = render_face(seed=9, index=index, height=128, width=128)
        mouth_region = img[79:116, 38:90]
        teeth = (mouth_region > 225).all(axis=2).sum()
        assert (teeth > 0) == bool(smiling), (index, smiling, teeth)


# --- label statistics

EXPECTED_FREQ = {
    "Male": 0.42, "Smiling": 0.48, "Eyeglasses": 0.20, "Bangs": 0.20, "Wearing_Hat": 0.15,
    "Black_Hair": 0.24, "Blond_Hair": 0.15, "Brown_Hair": 0.24, "Gray_Hair": 0.10,
    "Pale_Skin": 0.20, "No_Beard": 1 - 0.42 * 0.35,
}


def test_attribute_frequencies_and_constants():
    rows = [sample_attributes(seed=0, index=i) for i in range(2000)]
    assert all(list(r) == list(CELEBA_ATTRS) for r in rows)
    assert all(set(r.values()) <= {0, 1} for r in rows)
    assert set(REQUIRED_DRAWN) <= set(SYNTHETIC_DRAWN)
    assert set(EXPECTED_FREQ) == set(SYNTHETIC_DRAWN)
    for name in CELEBA_ATTRS:
        freq = np.mean([r[name] for r in rows])
        if name in SYNTHETIC_DRAWN:
            # 4 binomial standard errors at n=2000 is at most 0.045
            assert abs(freq - EXPECTED_FREQ[name]) < 0.045, (name, freq)
            assert name == "No_Beard" or freq >= 0.08, (name, freq)
        else:
            assert freq in (0.0, 1.0), (name, freq)
    assert np.mean([r["Young"] for r in rows]) == 1.0
    assert np.mean([r["Eyeglasses"] for r in rows]) >= 0.15
    for r in rows:
        assert r["Black_Hair"] + r["Blond_Hair"] + r["Brown_Hair"] + r["Gray_Hair"] <= 1
        assert r["No_Beard"] == 1 or r["Male"] == 1


def test_scan_items_labels_and_split_fractions():
    scan = scan_synthetic(count=3000, seed=2, val_fraction=0.15, test_fraction=0.05)
    assert isinstance(scan, SourceScan)
    assert scan.source == "synthetic"
    assert scan.attr_names == list(CELEBA_ATTRS)
    assert scan.label_fields == ["attrs", "identity", "partition"]
    assert len(scan.items) == 3000
    keys = [item.key for item in scan.items]
    assert len(set(keys)) == 3000 and keys[42] == "synth0000042"
    for item in scan.items[:100]:
        attrs = sample_attributes(seed=2, index=item.index)
        assert item.path is None
        assert item.labels["attrs"] == [attrs[name] for name in CELEBA_ATTRS]
        assert item.labels["identity"] == item.index
        assert item.split == ("train", "val", "test")[item.labels["partition"]]
    parts = np.array([item.labels["partition"] for item in scan.items])
    assert abs(np.mean(parts == 1) - 0.15) < 0.03
    assert abs(np.mean(parts == 2) - 0.05) < 0.02
    no_holdout = scan_synthetic(count=50, seed=2, val_fraction=0.0, test_fraction=0.0)
    assert {item.split for item in no_holdout.items} == {"train"}


# --- argument validation

@pytest.mark.parametrize(("kwargs", "field"), [
    ({"count": 0, "seed": 0}, "count"),
    ({"count": 2.5, "seed": 0}, "count"),
    ({"count": True, "seed": 0}, "count"),
    ({"count": 10, "seed": -1}, "seed"),
    ({"count": 10, "seed": 0, "val_fraction": 1.0}, "val_fraction"),
    ({"count": 10, "seed": 0, "val_fraction": -0.1}, "val_fraction"),
    ({"count": 10, "seed": 0, "test_fraction": "0.1"}, "test_fraction"),
    ({"count": 10, "seed": 0, "val_fraction": 0.5, "test_fraction": 0.5},
     "val_fraction + test_fraction"),
])
def test_scan_rejects_bad_arguments(kwargs, field):
    with pytest.raises(DataError, match=field.replace("+", r"\+")):
        scan_synthetic(**kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"seed": 0, "index": -1, "height": 32, "width": 32}, "index"),
    ({"seed": 0, "index": 0, "height": 0, "width": 32}, "height"),
    ({"seed": 0, "index": 0, "height": 32, "width": 32.0}, "width"),
    ({"seed": "0", "index": 0, "height": 32, "width": 32}, "seed"),
])
def test_render_rejects_bad_arguments(kwargs, field):
    with pytest.raises(DataError, match=field):
        render_face(**kwargs)


# --- learnability: the attributes must be in the pixels, not only in the labels

NUM_TRAIN, NUM_TEST, EPOCHS = 4000, 600, 15


def _faces(*, seed: int, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    imgs = np.stack([render_face(seed=seed, index=i, height=32, width=32)
                     for i in range(start, start + count)])
    rows = [sample_attributes(seed=seed, index=i) for i in range(start, start + count)]
    attrs = np.array([[row[name] for name in SYNTHETIC_DRAWN] for row in rows])
    x_BCHW = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x_BCHW, torch.from_numpy(attrs).float()


def _train_and_score(x_BCHW: torch.Tensor, y_BA: torch.Tensor, x_test: torch.Tensor,
                     y_test: torch.Tensor) -> np.ndarray:
    """Train a 3-conv CNN with BCE on the drawn attributes; return per-attribute test accuracy."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, y_BA.shape[1]),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(x_BCHW), generator=gen).split(64):
            loss = nn.functional.binary_cross_entropy_with_logits(net(x_BCHW[batch]), y_BA[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = net(x_test) > 0
    return (pred == y_test.bool()).float().mean(0).numpy()


@pytest.fixture(scope="module")
def learn_data():
    torch.set_num_threads(2)
    x_train, y_train = _faces(seed=11, start=0, count=NUM_TRAIN)
    x_test, y_test = _faces(seed=11, start=NUM_TRAIN, count=NUM_TEST)
    majority = np.maximum(y_test.mean(0).numpy(), 1 - y_test.mean(0).numpy())
    return x_train, y_train, x_test, y_test, majority


def _passes(acc: np.ndarray, majority: np.ndarray) -> np.ndarray:
    # majority + 0.05 binds for the skewed attributes (Wearing_Hat, No_Beard, Gray_Hair)
    return acc >= np.maximum(0.9, majority + 0.05)


def test_small_cnn_learns_every_drawn_attribute(learn_data):
    x_train, y_train, x_test, y_test, majority = learn_data
    acc = _train_and_score(x_train, y_train, x_test, y_test)
    report = {n: (round(float(a), 3), round(float(m), 3))
              for n, a, m in zip(SYNTHETIC_DRAWN, acc, majority)}
    print("test accuracy (acc, majority):", report)
    assert _passes(acc, majority).all(), report


def test_shuffled_label_control_does_not_learn(learn_data):
    """Same net and budget with labels permuted across images: it can only learn the label
    frequencies, so it must fail the bar above for every attribute (the bar is not trivial)."""
    x_train, y_train, x_test, y_test, majority = learn_data
    perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(1))
    acc = _train_and_score(x_train, y_train[perm], x_test, y_test)
    print("control accuracy:", dict(zip(SYNTHETIC_DRAWN, np.round(acc, 3).tolist())))
    assert not _passes(acc, majority).any()
