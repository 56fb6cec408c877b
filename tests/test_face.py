"""Face identity by dlib's pretrained descriptor (facegan.metrics.face): the image path, bad input,
the metrics built on it, and `facegan eval` / `facegan compare` / periodic evaluation reporting them.

Runs on the installed face_recognition_models package's real models and on faces facegan renders
itself (facegan.data.synthetic), never on /work/shared.

    .venv/bin/python -m pytest tests/test_face.py -q                 # fast ones
    .venv/bin/python -m pytest tests/test_face.py -q -m slow         # eval, compare, training
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facegan.data.synthetic import render_face
from facegan.errors import DataError, FaceModelError
from facegan.metrics import face as F

FACE_KEYS = {"fid_face", "kid_face", "precision_face", "recall_face", "identity_diversity",
             "identity_diversity_real", "face_detection_rate", "face_detection_rate_real"}


def faces(n: int, *, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.stack([render_face(seed=seed, index=i, height=size, width=size) for i in range(n)])


@pytest.fixture(scope="module")
def eight() -> np.ndarray:
    return faces(8)


# -- the image path ----------------------------------------------------------------------------

def test_descriptors_of_tensors_and_arrays_agree_and_tell_faces_apart(eight: np.ndarray) -> None:
    d = F.face_descriptors(eight)
    assert d.shape == (8, F.DESCRIPTOR_DIM) and d.dtype == np.float32 and np.isfinite(d).all()
    as_float = torch.from_numpy(eight).permute(0, 3, 1, 2).float() / 127.5 - 1
    as_u8 = torch.from_numpy(eight).permute(0, 3, 1, 2).contiguous()
    np.testing.assert_allclose(F.face_descriptors(as_float), d, atol=1e-5)
    np.testing.assert_allclose(F.face_descriptors(as_u8), d, atol=1e-5)
    # One image alone gives the descriptor it gets in a batch (batching is only a speed-up).
    np.testing.assert_allclose(F.face_descriptors(eight[3]), d[3:4], atol=1e-5)
    np.testing.assert_allclose(F.face_descriptors(eight, batch_size=3), d, atol=1e-5)
    dist = F.pairwise_face_distances(d)
    assert np.allclose(np.diag(dist), 0, atol=1e-3)
    off = dist[~np.eye(8, dtype=bool)]
    assert off.min() > 0.1, off.min()          # eight different rendered people are not one descriptor
    # Any size goes through the same path: a 64 px rendering of a face is near its 32 px one.
    big = F.face_descriptors(faces(8, size=64))
    assert np.median(F.face_distance(big, d)) < np.median(off)


def test_distance_helpers(eight: np.ndarray) -> None:
    d = F.face_descriptors(eight[:3])
    np.testing.assert_allclose(F.face_distance(d, d[0]), F.pairwise_face_distances(d)[:, 0], atol=1e-5)
    assert F.same_person(d, d).all()
    assert list(F.same_person(d, d[0], threshold=1e-3)) == [True, False, False]
    with pytest.raises(ValueError, match="128 values"):
        F.face_distance(d[:, :10], d[:, :10])
    assert F.SAME_PERSON_THRESHOLD == 0.6


def test_a_picture_without_a_face_is_reported_per_image_not_an_error(eight: np.ndarray) -> None:
    blank = np.full((32, 32, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    batch = [eight[1], blank, noise, eight[3]]
    found = F.detect_faces(batch)
    assert found.dtype == bool and list(found) == [True, False, False, True]
    described = F.describe_faces(batch, align="detect")
    assert described.detected is not None and list(described.detected) == list(found)
    assert np.isfinite(described.descriptors).all()     # the fixed box stands in where no face is found
    assert described.detection_rate == 0.5
    # align="box", detect=True: every image aligned the same way, the flags still reported.
    boxed = F.describe_faces(batch, detect=True)
    assert list(boxed.detected) == list(found)
    np.testing.assert_allclose(boxed.descriptors, F.face_descriptors(batch), atol=1e-5)
    with pytest.raises(ValueError, match="align='box'"):
        _ = F.describe_faces(batch).detection_rate
    # dlib's CNN (MMOD) detector through the same work-size path; it finds no face in the blank image.
    mmod = F.detect_faces([blank, eight[1]], detector="mmod")
    assert mmod.shape == (2,) and mmod.dtype == bool and not mmod[0]
    assert F.load_face_models(detector="mmod").detector_name == "mmod"
    with pytest.raises(ValueError, match="detector: expected one of"):
        F.load_face_models(detector="cnn")  # type: ignore[arg-type]


def test_grey_is_replicated_16_bit_and_others_get_one_line(eight: np.ndarray) -> None:
    grey = eight[:2].mean(axis=3).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=3)
    np.testing.assert_allclose(F.face_descriptors(list(grey)), F.face_descriptors(rgb), atol=1e-5)
    np.testing.assert_allclose(F.face_descriptors(grey[0]), F.face_descriptors(rgb[:1]), atol=1e-5)
    cases = [
        (eight.astype(np.uint16) * 257, "16-bit"),
        (np.concatenate([eight, eight[..., :1]], axis=3), r"shape \(32, 32, 4\)"),
        (eight.astype(np.float32) / 255, "float32 pixels"),
        (torch.from_numpy(eight).permute(0, 3, 1, 2).float(), r"must lie in \[-1, 1\]"),
        (torch.from_numpy(eight.astype(np.int16)).permute(0, 3, 1, 2), "16-bit"),
        (np.zeros((4, 4, 3), np.uint8), "at least 8x8"),
    ]
    for bad, message in cases:
        with pytest.raises(DataError, match=message) as info:
            F.face_descriptors(bad)
        assert "\n" not in str(info.value)


# -- the models --------------------------------------------------------------------------------

def _copy_models(dst: Path) -> Path:
    dst.mkdir()
    for name in F.MODEL_FILES.values():
        (dst / name).symlink_to(F.face_models_dir() / name)
    return dst


def test_damaged_or_missing_model_files_say_how_to_reinstall(tmp_path: Path) -> None:
    d = _copy_models(tmp_path / "models")
    name = F.MODEL_FILES["descriptor"]
    data = bytearray((F.face_models_dir() / name).read_bytes())
    (d / name).unlink()
    data[len(data) // 2] ^= 0xFF                    # one flipped byte would load and give wrong distances
    (d / name).write_bytes(bytes(data))
    with pytest.raises(FaceModelError, match="damaged face descriptor model file.*force-reinstall") as info:
        F.load_face_models(models_dir=d)
    assert "\n" not in str(info.value) and name in str(info.value)
    (d / name).write_bytes(bytes(data[: len(data) // 3]))   # truncated
    with pytest.raises(FaceModelError, match="damaged"):
        F.load_face_models(models_dir=d)
    (d / name).unlink()
    (d / name).symlink_to(F.face_models_dir() / name)    # the descriptor whole again, the landmarks gone
    (d / F.MODEL_FILES["landmarks"]).unlink()
    with pytest.raises(FaceModelError, match="face model file not found.*pip install 'facegan\\[face\\]'"):
        F.load_face_models(models_dir=d)


def test_missing_packages_give_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import sys

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real_find_spec(name, *a))
    monkeypatch.delenv("FACEGAN_FACE_MODELS", raising=False)
    with pytest.raises(FaceModelError, match="face_recognition_models package, which is not installed.*facegan\\[face\\]"):
        F.face_models_dir()
    assert not F.face_available()
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "dlib", None)      # import dlib -> ImportError
    with pytest.raises(FaceModelError, match="need dlib.*pip install 'facegan\\[face\\]'"):
        F.face_chips(faces(1), models=F.load_face_models())
    assert not F.face_available()


def test_the_extractor_pickles_without_its_dlib_objects(eight: np.ndarray) -> None:
    import pickle

    ex = F.face_extractor(batch_size=4)
    clone = pickle.loads(pickle.dumps(ex))
    x = torch.from_numpy(eight).permute(0, 3, 1, 2).contiguous()
    torch.testing.assert_close(clone(x), ex(x))
    assert ex(x).shape == (8, 128) and ex.name == "face"


# -- metrics -----------------------------------------------------------------------------------

def test_identity_diversity_and_detection_metrics() -> None:
    from facegan.metrics import compute_metrics

    one = torch.zeros(20, 128)
    assert F.identity_diversity(one) == {"mean": 0.0, "same_share": 1.0}
    apart = torch.eye(128)[:20] * 5                      # pairwise distance 5 * sqrt(2)
    assert F.identity_diversity(apart)["mean"] == pytest.approx(5 * 2 ** 0.5)
    assert F.identity_diversity(apart)["same_share"] == 0.0
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(40, 128, generator=g) * 0.1, torch.randn(40, 128, generator=g) * 0.1 + 0.05
    flags = torch.tensor([True] * 30 + [False] * 10)
    scores = compute_metrics(feature_name="face", real_eval_feats=real, fake_feats=fake, fake_detected=flags,
                             real_detected=torch.ones(40, dtype=torch.bool))
    assert FACE_KEYS <= set(scores), sorted(scores)
    assert scores["face_detection_rate"] == 0.75 and scores["face_detection_rate_real"] == 1.0
    assert scores["identity_diversity"] == pytest.approx(F.identity_diversity(fake)["mean"])
    attr = compute_metrics(feature_name="attr", real_eval_feats=real, fake_feats=fake)
    assert "fid_attr" in attr and not any(k.startswith("identity") for k in attr)
    with pytest.raises(ValueError, match="applies to face features only"):
        compute_metrics(names=["identity_diversity"], feature_name="attr", fake_feats=fake)


def test_sweep_report_shows_the_face_columns(tmp_path: Path) -> None:
    from facegan.sweeps.report import text_table, write_csv, load_results

    (tmp_path / "sweep_spec.json").write_text(json.dumps({"spec": {
        "objective": {"metric": "fid_attr", "mode": "min"}, "space": {"optim.lr": {}}}, "base": {}}))
    for i, fid_face in enumerate((12.5, 7.25)):
        t = tmp_path / "trials" / f"t{i}"
        t.mkdir(parents=True)
        (t / "trial.json").write_text(json.dumps({"trial_id": f"t{i}", "params": {"optim.lr": 0.001 * (i + 1)}}))
        rows = [{"kimg": 1, "fid_attr": 3.0 + i, "fid_face": fid_face, "identity_diversity": 0.5 + i / 10},
                {"kimg": 2, "fid_attr": 2.0 + i}]     # the last tick had no evaluation: the last value is shown
        (t / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    table = text_table(tmp_path)
    assert "fid_face" in table and "identity_diversity" in table and "face_detection_rate" not in table
    assert "7.25" in table and "12.5" in table
    csv_text = write_csv(load_results(tmp_path), tmp_path / "trials.csv").read_text()
    assert csv_text.splitlines()[0].count("fid_face") == 1 and "0.6" in csv_text


# -- eval, compare, training -------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DCGAN and attribute classifier on the synthetic shards."""
    from facegan.config import from_dict
    from facegan.families import RunConfig
    from facegan.loop import train

    root = tmp_path_factory.mktemp("face")
    common = {"data": {"shards": str(synthetic_shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
              "wandb": {"enabled": False}}
    train(from_dict(RunConfig, {**common,
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": 0.16, "tick_kimg": 0.16, "checkpoint_kimg": 0.16, "out_dir": str(root / "gan"),
                  "num_threads": 1, "grid_size": 4}}))
    train(from_dict(RunConfig, {**common,
        "model": {"family": "classifier", "arch": "report_cnn", "resolution": 32, "dense_units": 64},
        "train": {"total_kimg": 0.16, "tick_kimg": 0.16, "checkpoint_kimg": 0.16, "out_dir": str(root / "clf"),
                  "num_threads": 1},
        "eval": {"splits": ["val"]}}))
    return {"gan": root / "gan", "clf": root / "clf", "shards": synthetic_shards, "root": root}


@pytest.mark.slow
def test_eval_reports_face_metrics_real_beats_random(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    from facegan.cli import main
    from facegan.evaluation.offline import EvalRequest, evaluate

    base = dict(shards=str(trained["shards"]), num_samples=32, num_real=32, ms_ssim_pairs=16, kid_subset_size=16)
    out = tmp_path / "real.json"
    assert main(["eval", "--baseline", "real", "--shards", str(trained["shards"]), "--features", "face",
                 "--num-samples", "32", "--num-real", "32", "--no-progress", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert all(k in text for k in ("fid_face", "identity_diversity", "face_detection_rate"))
    real = json.loads(out.read_text())
    rand = evaluate(EvalRequest(baseline="random", features="face", **base))
    r, z = real["scores"], rand["scores"]
    assert FACE_KEYS <= set(r) and "memorisation_ratio_face" in r
    assert r["fid_face"] < 0.5 * z["fid_face"], (r["fid_face"], z["fid_face"])
    assert r["precision_face"] > z["precision_face"] and z["face_detection_rate"] == 0.0
    assert real["face"]["fake_without_face"] == round((1 - r["face_detection_rate"]) * r["num_fake"])
    # Beside the attribute classifier (the default features), by default: the same face numbers.
    both = evaluate(EvalRequest(baseline="real", classifier=str(trained["clf"]), **base))["scores"]
    assert {"fid_attr", "ms_ssim"} | FACE_KEYS <= set(both)
    for key in ("fid_face", "kid_face", "identity_diversity", "face_detection_rate"):
        assert both[key] == pytest.approx(r[key], rel=1e-5, abs=1e-7), key
    off = evaluate(EvalRequest(baseline="real", classifier=str(trained["clf"]), face="off", **base))["scores"]
    assert not FACE_KEYS & set(off)
    with pytest.raises(Exception, match="need face descriptors"):
        EvalRequest(baseline="real", classifier=str(trained["clf"]), face="off", metrics=["identity_diversity"],
                    **base)


@pytest.mark.slow
def test_split_shares_give_the_scores_of_one_process(trained: dict[str, Path]) -> None:
    """What Ray tasks do (facegan.launch.evaluate): each rank its share, gathered before statistics."""
    from facegan.evaluation.offline import EvalRequest, compute_share, evaluate

    req = EvalRequest(shards=str(trained["shards"]), checkpoint=str(trained["gan"]), classifier=str(trained["clf"]),
                      num_samples=96, num_real=32, ms_ssim_pairs=16, kid_subset_size=16)
    alone = evaluate(req)["scores"]
    split = evaluate(req, shares=[compute_share(req, rank=r, world_size=2) for r in range(2)])["scores"]
    for key in FACE_KEYS:
        assert split[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_cli_says_in_one_line_that_a_model_file_is_damaged(trained: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from facegan.cli import main

    d = _copy_models(tmp_path / "models")
    (d / F.MODEL_FILES["landmarks"]).unlink()
    (d / F.MODEL_FILES["landmarks"]).write_bytes(b"\0" * 1000)
    monkeypatch.setenv("FACEGAN_FACE_MODELS", str(d))
    out = tmp_path / "e.json"
    code = main(["eval", "--baseline", "random", "--shards", str(trained["shards"]), "--features", "face",
                 "--num-samples", "16", "--num-real", "16", "--json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and "damaged 5-point landmark model file" in err[0], err


@pytest.mark.slow
def test_compare_page_and_periodic_eval_show_face_scores(trained: dict[str, Path], tmp_path: Path) -> None:
    from facegan.config import from_dict
    from facegan.evaluation.compare import CompareRequest, compare_runs, format_compare_table, write_compare
    from facegan.families import RunConfig
    from facegan.loop import train

    result = compare_runs(CompareRequest(runs=[str(trained["gan"])], shards=str(trained["shards"]),
                                         classifier=str(trained["clf"]), num_samples=32, num_real=32, grid_size=4))
    assert FACE_KEYS <= set(result["runs"][0]["scores"])
    assert "fid_face" in format_compare_table(result)
    page = write_compare(result, tmp_path / "compare.html")["html"].read_text()
    assert "FID (face)" in page and "identity diversity" in page and "id='face-note'" in page

    train(from_dict(RunConfig, {
        "data": {"shards": str(trained["shards"]), "batch_size": 16, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": 0.16, "tick_kimg": 0.08, "checkpoint_kimg": 0.16, "out_dir": str(tmp_path / "run"),
                  "num_threads": 1, "grid_size": 4},
        "eval": {"every_kimg": 0.16, "num_samples": 24, "num_real": 24, "features": "face",
                 "metrics": ["fid", "identity_diversity", "face_detection"]},
        "wandb": {"enabled": False}}))
    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if r.get("kind") == "tick" and "fid_face" in r]
    assert len(evaluated) == 1 and evaluated[0]["kimg"] == pytest.approx(0.16)
    assert {"identity_diversity", "identity_diversity_real", "face_detection_rate"} <= set(evaluated[0])


@pytest.mark.slow
def test_image_folder_lists_the_files_without_a_face(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    from PIL import Image

    from facegan.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(faces(11)):
        Image.fromarray(img).save(folder / f"face{i:02d}.png")
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(folder / "blank.png")
    Image.fromarray(faces(1)[0].mean(axis=2).astype(np.uint8)).save(folder / "grey.png")   # grey: read as RGB
    out = tmp_path / "e.json"
    assert main(["eval", "--images", str(folder), "--shards", str(trained["shards"]), "--features", "face",
                 "--num-real", "16", "--no-progress", "--json", str(out)]) == 0
    face = json.loads(out.read_text())["face"]
    found = F.detect_faces(faces(11))
    expected = sorted([str(folder / "blank.png")] + [str(folder / f"face{i:02d}.png") for i in range(11) if not found[i]]
                      + ([str(folder / "grey.png")] if not F.detect_faces(faces(1).mean(axis=3).astype(np.uint8)[0])[0]
                         else []))
    assert sorted(face["files_without_face"]) == expected and face["fake_without_face"] == len(expected)
    assert f"{len(expected)} of 13 generated images have no face" in capsys.readouterr().out


@pytest.mark.slow
def test_auto_mode_without_the_packages_says_how_to_install(trained: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """--face auto leaves the face metrics out where the packages are missing, with one line saying so;
    --face on refuses to start."""
    from facegan.cli import main

    monkeypatch.setattr(F, "face_available", lambda: False)
    out = tmp_path / "e.json"
    assert main(["eval", "--baseline", "random", "--shards", str(trained["shards"]), "--classifier",
                 str(trained["clf"]), "--num-samples", "16", "--num-real", "16", "--no-progress",
                 "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "face metrics (fid_face, identity_diversity, ...) skipped" in err and "pip install 'facegan[face]'" in err
    assert not FACE_KEYS & set(json.loads(out.read_text())["scores"])
    monkeypatch.setattr(F, "_cached_models", lambda *a: (_ for _ in ()).throw(
        FaceModelError(f"face metrics need dlib, which cannot be imported; {F.INSTALL_HELP}")))
    assert main(["eval", "--baseline", "random", "--shards", str(trained["shards"]), "--classifier",
                 str(trained["clf"]), "--face", "on", "--json", str(tmp_path / "f.json")]) == 2
    assert "need dlib" in capsys.readouterr().err and not (tmp_path / "f.json").exists()
