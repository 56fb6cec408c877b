"""Identity through invert -> edit -> augment, measured by dlib's face descriptor, and the
recognition benchmark's protocol.

    .venv/bin/python -m pytest -q tests/test_face_identity.py

Faces are facegan's procedural ones (facegan.data.synthetic) and the package's real dlib models;
dlib's HOG detector finds some of the procedural faces (FACE below is one it finds) and no face in
a flat grey image (the "no detectable face" photo).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from facegan.augment import IdentityFilter, Variant, _make_variant, filter_identity, identity_summary
from facegan.data.synthetic import render_face
from facegan.errors import ConfigError
from facegan.inversion import Edit, FaceCheck, identity_report, save_directions
from test_inversion import tiny_run  # noqa: F401  (the fixture: a tiny DCGAN and classifier)

pytest.importorskip("dlib")
REPO = Path(__file__).resolve().parents[1]
FACE, OTHER = 1, 3           # procedural faces (seed 0) dlib's detector finds at 32 and 64 px


def _face(index: int, size: int) -> torch.Tensor:
    """A procedural face as 1 x 3 x size x size in [-1, 1]."""
    arr = render_face(seed=0, index=index, height=size, width=size)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1)


def _grey(size: int) -> torch.Tensor:
    return torch.zeros(1, 3, size, size)


@pytest.fixture(scope="module")
def check() -> FaceCheck:
    from facegan.metrics.face import load_face_models

    load_face_models()
    return FaceCheck()


# --- identity of outputs against their photos

def test_identity_report_distances_share_and_faceless_photo(check: FaceCheck) -> None:
    photos = torch.cat([_face(FACE, 64), _grey(64)])
    outputs = {"same": photos.clone(), "flipped": photos.flip(-1), "other": torch.cat([_face(OTHER, 64)] * 2)}
    report = identity_report(check, photos, outputs)
    face, grey = report["per_photo"]
    assert face["face_detected"] and face["identity_distance"]["same"] < 1e-3 and face["same_person"]["same"]
    # A mirrored face is far nearer its photo than another face is.
    assert face["identity_distance"]["flipped"] < face["identity_distance"]["other"]
    assert face["same_person"]["flipped"] == (face["identity_distance"]["flipped"] < 0.6)
    # No detectable face: reported per photo, not measured, and left out of the shares.
    assert grey == {"face_detected": False, "identity_distance": {"same": None, "flipped": None, "other": None},
                    "same_person": {"same": None, "flipped": None, "other": None}}
    summary = report["summary"]
    assert summary["photos_measured"] == 1 and summary["photos_without_face"] == 1 and summary["threshold"] == 0.6
    assert summary["outputs"]["same"]["same_person_share"] == 1.0
    assert summary["outputs"]["other"]["mean_distance"] == face["identity_distance"]["other"]


def test_identity_filter_keeps_the_person_and_drops_others_and_faceless_sources(check: FaceCheck) -> None:
    photos = torch.cat([_face(FACE, 32), _grey(32)])
    flipped, other = photos[0].flip(-1), _face(OTHER, 32)[0]
    dist, _ = check.distances(photos[:1], torch.stack([flipped, other]), per_photo=2)
    d_flip, d_other = dist[0]
    assert d_flip < d_other
    limit = (d_flip + d_other) / 2
    edit = Edit(name="e")
    variants = [[Variant(edit=edit, image=flipped), Variant(edit=edit, image=other),
                 Variant(edit=edit, image=other, dropped="not_landed")],
                [Variant(edit=edit, image=photos[1])]]
    filter_identity(IdentityFilter(check=check, max_distance=limit), photos, variants)
    kept, far, not_landed = variants[0]
    assert kept.kept and abs(kept.distance - d_flip) < 1e-4
    assert far.dropped == "identity" and abs(far.distance - d_other) < 1e-4
    assert not_landed.dropped == "not_landed" and not_landed.distance is None     # not measured
    assert variants[1][0].dropped == "no_face" and variants[1][0].distance is None
    doc = identity_summary({"a": [v.record() for v in variants[0]], "b": [v.record() for v in variants[1]]},
                           IdentityFilter(check=check, max_distance=limit))
    assert (doc["variants"], doc["kept"], doc["dropped"]) == (4, 1, 3)
    assert doc["dropped_by_reason"] == {"identity": 1, "not_landed": 1, "no_face": 1}


@pytest.mark.parametrize("bad, message", [
    ({"max_distance": 0}, "--max-identity-distance: expected 0 < D <= 2"),
    ({"max_distance": 3}, "--max-identity-distance"),
    ({"max_distance": 0.6, "strengths": ()}, "--strengths: expected 1..32"),
    ({"max_distance": 0.6, "strengths": (1.0, -1.0)}, "--strengths"),
])
def test_identity_filter_settings_are_checked(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IdentityFilter(check=FaceCheck(), **bad)


class _Stub:
    """A generator whose faces show latent[0] (as the 'Smiling' attribute) and a fixed face."""

    class family:
        name, takes_attrs, latent_codes = "stub", False, False

    latent_dim = 2
    attr_names = ["Smiling"]

    class steps:
        @staticmethod
        def project_latent(latent: torch.Tensor) -> torch.Tensor:
            return latent

    def generate(self, latent: torch.Tensor, attrs: Any = None) -> torch.Tensor:
        return latent[:, :1, None, None].expand(-1, 3, 4, 4).tanh()


class _SmileReader(nn.Module):
    attr_names = ["Smiling"]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return (img[:, :1, 0, 0] - 0.5) * 100          # "smiling" once the face's value passes tanh^-1(0.5)


def test_edit_strength_search_takes_the_smallest_strength_that_lands() -> None:
    directions = {"Smiling": torch.tensor([0.25, 0.0])}
    identity = IdentityFilter(check=FaceCheck(), max_distance=0.6, classifier=_SmileReader(),
                              strengths=(0.5, 1.0, 2.0, 3.0, 4.0))
    edit = Edit(name="Smiling+1", directions={"Smiling": 1.0})
    # latent[0] 0 -> 0.25 x strength; tanh(x) > 0.5 needs x > 0.549: strength 3 is the first to land.
    v = _make_variant(_Stub(), torch.zeros(1, 2), None, edit, directions=directions, noise=None, identity=identity)
    assert (v.strength, v.landed, v.kept) == (3.0, True, True)
    assert float(v.image[0, 0, 0]) == pytest.approx(float(torch.tanh(torch.tensor(0.75))))
    weak = IdentityFilter(check=FaceCheck(), max_distance=0.6, classifier=_SmileReader(), strengths=(0.5, 1.0))
    v = _make_variant(_Stub(), torch.zeros(1, 2), None, edit, directions=directions, noise=None, identity=weak)
    assert (v.landed, v.dropped, v.strength) == (False, "not_landed", 1.0)
    # Without a classifier the edit is taken at its own scale.
    plain = _make_variant(_Stub(), torch.zeros(1, 2), None, edit, directions=directions, noise=None, identity=None)
    assert plain.strength == 1.0 and plain.landed is None and plain.kept


# --- the command line on a tiny generator

@pytest.fixture(scope="module")
def tiny(tiny_run: dict[str, Path]) -> dict[str, Path]:
    """test_inversion's tiny DCGAN (32 px synthetic shards), a stored direction, and photos: a face
    dlib detects, the same face as a grey-scale PNG, and a flat grey image (no face)."""
    from facegan.families.loading import load_generator

    root = tiny_run["root"]
    gen = load_generator(tiny_run["gan"])
    save_directions({"directions": {"Smiling": torch.randn(16, generator=torch.Generator().manual_seed(0))},
                     "counts": {}, "skipped": [], "num_samples": 0, "latent_dim": 16}, gen.checkpoint)
    photos = root / "identity_photos"
    photos.mkdir()
    Image.fromarray(render_face(seed=0, index=FACE, height=64, width=64)).save(photos / "face.png")
    Image.fromarray(render_face(seed=0, index=FACE, height=64, width=64)).convert("L").save(photos / "face_grey.png")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photos / "blank.png")
    return {"gan": tiny_run["gan"], "photos": photos, "root": root}


def _cli(argv: list[str]) -> int:
    from facegan.cli import main

    return main(argv)


def test_invert_and_edit_write_identity_per_photo(tiny: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    photos = [str(tiny["photos"] / n) for n in ("face.png", "face_grey.png", "blank.png")]
    out = tmp_path / "inv"
    assert _cli(["invert", *photos, "--checkpoint", str(tiny["gan"]), "--out", str(out), "--steps", "5",
                 "--no-progress"]) == 0
    said = capsys.readouterr().out
    doc = json.loads((out / "scores.json").read_text())
    face, grey_png, blank = doc["photos"]
    assert face["face_detected"] and isinstance(face["identity_distance"], float)
    assert face["same_person"] == (face["identity_distance"] < 0.6)
    assert grey_png["face_detected"] is not None                           # a grey-scale file is read, not refused
    assert blank["face_detected"] is False and blank["identity_distance"] is None and blank["same_person"] is None
    assert doc["identity"]["photos_without_face"] >= 1 and "no detectable face" in said
    assert "identity reconstruction: mean dlib distance" in said

    grid = tmp_path / "edit.png"
    assert _cli(["edit", photos[0], photos[2], "--checkpoint", str(tiny["gan"]), "--direction", "Smiling=1",
                 "--steps", "5", "--out", str(grid), "--no-progress"]) == 0
    doc = json.loads(grid.with_suffix(".json").read_text())
    assert doc["columns"] == ["photo", "reconstruction", "Smiling+1"]
    assert set(doc["photos"][0]["identity_distance"]) == {"reconstruction", "Smiling+1"}
    assert doc["photos"][1]["face_detected"] is False
    assert set(doc["identity"]["outputs"]) == {"reconstruction", "Smiling+1"}

    assert _cli(["invert", photos[0], "--checkpoint", str(tiny["gan"]), "--out", str(tmp_path / "n"), "--steps", "2",
                 "--no-progress", "--no-identity"]) == 0
    assert "identity" not in json.loads((tmp_path / "n" / "scores.json").read_text())


def test_augment_filters_by_identity_and_records_it(tiny: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("face.png", "blank.png"):
        (src / name).write_bytes((tiny["photos"] / name).read_bytes())
    out = tmp_path / "aug"
    base = ["augment", str(src), "--checkpoint", str(tiny["gan"]), "--variants", "3", "--jitter", "0.3",
            "--steps", "5", "--no-progress"]
    # Nothing is the same person at distance 0.001: a clear error, nothing written.
    assert _cli([*base, "--max-identity-distance", "0.001", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: augment: the identity filter dropped all 6 variants") and err.count("\n") == 1
    assert not out.exists()

    assert _cli([*base, "--max-identity-distance", "2", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    filt = manifest["identity_filter"]
    assert filt["enabled"] and filt["max_distance"] == 2 and filt["variants"] == 6
    blank, face = filt["variants_per_source"]["blank"], filt["variants_per_source"]["face"]
    assert [r["dropped"] for r in blank] == ["no_face"] * 3
    assert all(isinstance(r["identity_distance"], float) and r["kept"] == (r["identity_distance"] <= 2) for r in face)
    assert filt["kept"] == manifest["counts"]["total"] == sum(r["kept"] for r in face)
    assert filt["dropped_by_reason"]["no_face"] == 3 and f"kept {filt['kept']} of 6 variants" in said
    from facegan.data.writer import verify_shards

    assert verify_shards(out) == []

    off = tmp_path / "off"
    assert _cli([*base, "--max-identity-distance", "0", "--out", str(off)]) == 0
    filt = json.loads((off / "manifest.json").read_text())["identity_filter"]
    assert not filt["enabled"] and filt["kept"] == 6 and filt["dropped"] == 0


@pytest.mark.parametrize("flags, message", [
    (["--max-identity-distance", "-1"], "--max-identity-distance: expected 0 < D <= 2"),
    (["--strengths", "1,x"], "--strengths: expected comma-separated numbers"),
    (["--max-identity-distance", "0", "--classifier", "x"], "--classifier: the strength search"),
])
def test_bad_identity_flags_exit_2(flags: list[str], message: str, tiny: dict[str, Path], tmp_path: Path,
                                   capsys: Any) -> None:
    assert _cli(["augment", str(tiny["photos"]), "--checkpoint", str(tiny["gan"]), "--jitter", "0.3",
                 "--out", str(tmp_path / "a"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "a").exists()


# --- the recognition benchmark's protocol (benchmarks/bench_recognition.py)

def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_recognition", REPO / "benchmarks" / "bench_recognition.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_recognition"] = module
    spec.loader.exec_module(module)
    return module


def test_enrolment_draw_skips_one_photo_identities_and_keeps_probes_apart() -> None:
    bench = _bench()
    ids = np.array([0] * 6 + [1] * 4 + [2] * 1 + [3] * 2)
    draw = bench.enrolment_draw(ids, k=3, seed=0)
    assert draw.skipped == {2: 1, 3: 2}                         # fewer than K + 1 photos: not enrolled
    assert sorted(draw.identities) == [0, 1]
    assert len(draw.enrol) == 6 and set(draw.enrol).isdisjoint(draw.probes)
    assert sorted([*draw.enrol, *draw.probes]) == list(range(10))
    assert bench.enrolment_draw(ids, k=3, seed=0).enrol == draw.enrol          # seeded
    assert bench.enrolment_draw(ids, k=3, seed=1).enrol != draw.enrol


def test_nearest_centroid_and_linear_probe_recognise_separated_people() -> None:
    bench = _bench()
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 128, generator=g)
    enrol_y = np.repeat(np.arange(4), 3)
    enrol = (centres[enrol_y] + 0.1 * torch.randn(12, 128, generator=g)).numpy()
    probe_y = np.repeat(np.arange(4), 5)
    probes = (centres[probe_y] + 0.1 * torch.randn(20, 128, generator=g)).numpy()
    assert (bench.nearest_centroid(enrol, enrol_y, probes) == probe_y).all()
    assert (bench.linear_probe(enrol, enrol_y, probes) == probe_y).all()
    # Shuffled enrolment labels: far from perfect.
    assert (bench.nearest_centroid(enrol, np.roll(enrol_y, 3), probes) == probe_y).mean() < 0.5


def test_interval_and_attribute_shift_selection() -> None:
    bench = _bench()
    mean, half = bench.interval([0.5, 0.5, 0.5])
    assert (mean, half) == (0.5, 0.0)
    mean, half = bench.interval([0.4, 0.6])
    assert mean == pytest.approx(0.5) and half == pytest.approx(12.706 * 0.1, rel=1e-3)   # t(0.975, 1) x sd / sqrt(n)
    assert bench.interval([0.3])[1] is None
    ids = np.array([0, 0, 0, 1, 1, 2, 2])
    has = np.array([1, 0, 0, 1, 1, 0, 0], dtype=bool)                     # identity 1 only with it, 2 only without
    shift = bench.attribute_shift(ids, has)
    assert shift.probe_identities == [0] and shift.probes == [0] and shift.enrol_pool == {0: [1, 2], 2: [5, 6]}
