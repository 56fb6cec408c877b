"""GAN inversion, attribute directions and edits: the maths on toys, then the CLIs on tiny runs.

    .venv/bin/python -m pytest -q tests/test_inversion.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from facegan.config import from_dict
from facegan.errors import CheckpointError, ConfigError, DataError
from facegan.families import RunConfig
from facegan.families.loading import load_generator
from facegan.inversion import (VGG_LAYERS, Edit, InvertOptions, ReconstructionLoss, apply_edit, find_directions,
                               invert, load_vgg, parse_losses, scores)
from facegan.loop import train


@pytest.fixture(scope="module")
def tiny_run(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DCGAN and a tiny attribute classifier trained on the 32 px synthetic shards."""
    root = tmp_path_factory.mktemp("inversion")
    train(from_dict(RunConfig, {
        "data": {"shards": str(synthetic_shards), "batch_size": 16, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": 0.16, "tick_kimg": 0.16, "checkpoint_kimg": 0.16, "out_dir": str(root / "gan"),
                  "num_threads": 1, "grid_size": 4},
        "wandb": {"enabled": False}}))
    train(from_dict(RunConfig, {
        "data": {"shards": str(synthetic_shards), "batch_size": 16, "num_workers": 0},
        "model": {"family": "classifier", "resolution": 32, "dense_units": 32},
        "train": {"total_kimg": 0.32, "tick_kimg": 0.32, "checkpoint_kimg": 0.32, "out_dir": str(root / "clf"),
                  "num_threads": 1},
        "eval": {"splits": ["val"]}, "wandb": {"enabled": False}}))
    photos = root / "photos"
    from facegan.images import save_pngs

    gen = load_generator(root / "gan")
    save_pngs(gen.sample(3, seed=11), photos, prefix="face")   # faces G can draw exactly
    return {"gan": root / "gan", "clf": root / "clf", "photos": photos, "root": root}


# --- options and losses

def test_loss_specs_and_options_are_validated() -> None:
    assert parse_losses("mse") == {"mse": 1.0}
    assert parse_losses("mse=1, vgg=0.1,ms_ssim") == {"mse": 1.0, "vgg": 0.1, "ms_ssim": 1.0}
    for bad, message in [("l1", "unknown loss 'l1'"), ("mse=-1", "must be > 0"), ("mse,mse", "more than once"),
                         ("", "expected one or more"), ("mse=x", "must be a number")]:
        with pytest.raises(ConfigError, match=message):
            parse_losses(bad)
    with pytest.raises(ConfigError, match="--loss vgg needs --vgg-weights FILE"):
        InvertOptions(losses={"vgg": 1.0})
    with pytest.raises(ConfigError, match="--vgg-weights: /nope.pth does not exist"):
        InvertOptions(losses={"vgg": 1.0}, vgg_weights="/nope.pth")
    with pytest.raises(ConfigError, match="--steps: expected 1..100000"):
        InvertOptions(steps=0)
    with pytest.raises(ConfigError, match="--restarts"):
        InvertOptions(restarts=10**9)


def test_reconstruction_losses_are_per_photo_and_zero_at_the_photo() -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    fake = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    loss = ReconstructionLoss({"mse": 1.0, "ssim": 0.5, "ms_ssim": 2.0})
    per = loss(fake, real)
    assert per.shape == (3,) and (per > 0).all()
    torch.testing.assert_close(loss(real, real), torch.zeros(3), atol=1e-5, rtol=0)
    # Photo 0's loss does not depend on the other photos in the batch.
    torch.testing.assert_close(loss(fake[:1], real[:1]), per[:1])
    torch.testing.assert_close(ReconstructionLoss({"mse": 1.0})(fake, real), (fake - real).pow(2).mean((1, 2, 3)))
    s = scores(real, real)
    assert all(abs(r["ssim"] - 1) < 1e-4 and r["mse"] == 0 for r in s)


def test_vgg_loss_uses_the_first_23_layers_of_a_local_vgg16(tmp_path: Path) -> None:
    from torchvision.models import vgg16

    torch.manual_seed(0)
    path = tmp_path / "vgg16.pth"
    torch.save(vgg16(weights=None).state_dict(), path)      # random weights of the right shape: nothing downloaded
    vgg = load_vgg(path)
    assert len(vgg.features) == VGG_LAYERS and isinstance(vgg.features[-1], nn.ReLU)
    assert vgg(torch.zeros(2, 3, 32, 32)).shape == (2, 512 * 4 * 4)        # relu4_3 at 1/8 resolution
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loss = ReconstructionLoss({"vgg": 1.0}, vgg=vgg)
    torch.testing.assert_close(loss(x, x), torch.zeros(2))
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match="not a torchvision vgg16 state_dict"):
        load_vgg(bad)


# --- inversion and directions

def test_faces_the_generator_drew_are_recovered(tiny_run: dict[str, Path]) -> None:
    gen = load_generator(tiny_run["gan"])
    target = gen.sample(3, seed=11)
    result = invert(gen, target, InvertOptions(losses={"mse": 1.0}, steps=150, lr=0.05, restarts=4))
    assert result.start_kind == "best of 4 random"
    start_mse = (result.start_images - target).pow(2).mean()
    end_mse = (result.images - target).pow(2).mean()
    assert end_mse < start_mse / 4, (float(start_mse), float(end_mse))
    assert min(s["ms_ssim"] for s in result.scores) > 0.8, result.scores
    # Splitting the photos (as Ray workers do) gives each photo the same result.
    alone = invert(gen, target[1:2], InvertOptions(losses={"mse": 1.0}, steps=150, lr=0.05, restarts=4), indices=[1])
    torch.testing.assert_close(alone.latent, result.latent[1:2], atol=1e-4, rtol=1e-4)


class _Stub:
    """A generator bundle whose faces show the sign of latent[0] (as the 'Smiling' attribute)."""

    class family:
        name, takes_attrs, latent_codes = "stub", False, False

    latent_dim = 4
    attr_names = ["Smiling", "Male"]

    class steps:
        @staticmethod
        def latent(n, *, generator=None, device=None):
            return torch.randn(n, 4, generator=generator)

        @staticmethod
        def project_latent(latent):
            return latent

    def generate(self, latent, attrs=None):
        return latent[:, :1, None, None].expand(-1, 3, 2, 2).tanh()


class _StubClassifier(nn.Module):
    attr_names = ["Smiling", "Male"]
    scored_attrs = ["Smiling", "Male"]
    checkpoint = "stub"

    def forward(self, img):
        smile = img[:, 0, 0, 0] * 50
        return torch.stack([smile, torch.full_like(smile, -50)], dim=1)   # nobody is male: skipped


def test_directions_are_mean_latent_with_minus_without() -> None:
    found = find_directions(_Stub(), _StubClassifier(), num_samples=4000, seed=0, batch_size=500)
    d = found["directions"]["Smiling"]
    # E[z | z0 > 0] - E[z | z0 < 0] = 2 * sqrt(2 / pi) along z0, ~0 elsewhere.
    assert abs(float(d[0]) - 2 * (2 / torch.pi) ** 0.5) < 0.1 and d[1:].abs().max() < 0.1
    assert found["skipped"] == ["Male"] and found["counts"]["Smiling"][0] + found["counts"]["Smiling"][1] == 4000
    edit = Edit(name="smile", directions={"Smiling": 1.5})
    latent, _ = apply_edit(_Stub(), torch.zeros(2, 4), None, edit, directions=found["directions"])
    torch.testing.assert_close(latent, 1.5 * d.expand(2, -1))
    assert edit.target_attrs() == {"Smiling": 1.0}
    with pytest.raises(ConfigError, match="no direction for 'Male'"):
        apply_edit(_Stub(), torch.zeros(1, 4), None, Edit(name="m", directions={"Male": 1}), directions=found["directions"])
    with pytest.raises(ConfigError, match="does not take attributes"):
        apply_edit(_Stub(), torch.zeros(1, 4), None, Edit(name="a", attrs={"Smiling": 1}))
    with pytest.raises(ConfigError, match="has no latent codes"):
        apply_edit(_Stub(), torch.zeros(1, 4), None, Edit(name="c", codes={"cat": 3}))


# --- the command line

def _cli(argv: list[str]) -> int:
    from facegan.cli import main

    return main(argv)


def test_invert_edit_and_directions_clis(tiny_run: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    photos = sorted(str(p) for p in tiny_run["photos"].iterdir())
    out = tmp_path / "inv"
    assert _cli(["invert", *photos, "--checkpoint", str(tiny_run["gan"]), "--out", str(out), "--steps", "30",
                 "--no-progress"]) == 0
    doc = json.loads((out / "scores.json").read_text())
    assert len(doc["photos"]) == 3 and {"mse", "ssim", "ms_ssim"} <= set(doc["photos"][0])
    assert (out / "reconstruction.png").stat().st_size > 0
    saved = torch.load(out / "latents.pt", weights_only=True)
    assert saved["latent"].shape == (3, 16)

    assert _cli(["directions", "--checkpoint", str(tiny_run["gan"]), "--classifier", str(tiny_run["clf"]),
                 "--num-samples", "400"]) in (0, 2)
    said = capsys.readouterr()
    if "stored" in said.out:   # the tiny classifier may read too little into tiny faces: then a clear error
        name = json.loads(next(tiny_run["gan"].rglob("directions.json")).read_text())["attrs"][0]
        assert _cli(["edit", *photos[:2], "--checkpoint", str(tiny_run["gan"]), "--direction", f"{name}=2",
                     "--steps", "10", "--out", str(tmp_path / "edit.png"), "--no-progress"]) == 0
        from PIL import Image

        with Image.open(tmp_path / "edit.png") as im:                      # 2 rows x (photo, recon, edit)
            assert im.size == (3 * 34 + 2, 2 * 34 + 2)
    else:
        assert "no scored attribute had" in said.err


@pytest.mark.parametrize("argv, message", [
    (["invert", "{bad}", "--out", "{tmp}/o"], "cannot read 1 of 1 photos: .*notaphoto"),
    (["invert", "{photo}", "--checkpoint", "{clf}", "--out", "{tmp}/o"], "classifier checkpoint has no generator"),
    (["invert", "{photo}", "--loss", "vgg", "--out", "{tmp}/o"], "--loss vgg needs --vgg-weights"),
    (["invert", "{photo}", "--loss", "vgg", "--vgg-weights", "{tmp}/none.pth", "--out", "{tmp}/o"], "does not exist"),
    (["edit", "{photo}", "--out", "{tmp}/e.png"], "give what to change"),
    (["edit", "{photo}", "--set", "cat=2", "--out", "{tmp}/e.png"], "has no latent codes"),
    (["edit", "{photo}", "--attrs", "Smiling=1", "--out", "{tmp}/e.png"], "does not take attributes"),
    (["edit", "{photo}", "--direction", "Smiling=1", "--out", "{tmp}/e.txt"], "expected a .png file"),
])
def test_bad_inversion_inputs_exit_2_and_write_nothing(argv: list[str], message: str, tiny_run: dict[str, Path],
                                                       tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "notaphoto.jpg"
    bad.write_text("hello")
    photo = str(next(tiny_run["photos"].iterdir()))
    filled = [a.format(bad=bad, tmp=tmp_path, photo=photo, clf=tiny_run["clf"]) for a in argv]
    if "--checkpoint" not in filled:
        filled += ["--checkpoint", str(tiny_run["gan"])]
    assert _cli(filled) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "o").exists() and not (tmp_path / "e.png").exists()


@pytest.mark.slow
def test_ray_workers_invert_like_one_process(tiny_run: dict[str, Path], ray_cluster: Any, tmp_path: Path) -> None:
    photos = sorted(str(p) for p in tiny_run["photos"].iterdir())
    for workers, out in ((0, tmp_path / "one"), (2, tmp_path / "two")):
        assert _cli(["invert", *photos, "--checkpoint", str(tiny_run["gan"]), "--out", str(out), "--steps", "20",
                     "--workers", str(workers), "--no-progress"]) == 0
    a = torch.load(tmp_path / "one" / "latents.pt", weights_only=True)["latent"]
    b = torch.load(tmp_path / "two" / "latents.pt", weights_only=True)["latent"]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_unreadable_photo_is_a_data_error(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    from facegan.control import load_photos

    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="x.png"):
        load_photos([str(tmp_path / "x.png")], crop="square", height=32, width=32)


def _smoke_run(name: str, shards: Path, out: Path) -> Path:
    from facegan.families import FAMILIES

    family = FAMILIES[name]
    data: dict[str, Any] = {"data": {"shards": str(shards), "batch_size": 8, "num_workers": 0},
                            "train": {"total_kimg": 0.016, "tick_kimg": 0.016, "checkpoint_kimg": 0.016,
                                      "out_dir": str(out), "num_threads": 1, "grid_size": 4},
                            "wandb": {"enabled": False}}
    for section, values in family.smoke.items():
        data[section] = {**data.get(section, {}), **values}
    data["model"] = {**data.get("model", {}), "family": name}
    train(from_dict(RunConfig, data))
    return out


def test_infogan_codes_are_edited_and_vae_inversion_starts_from_its_encoder(synthetic_shards: Path,
                                                                           tmp_path: Path, capsys: Any) -> None:
    info = _smoke_run("infogan", synthetic_shards, tmp_path / "infogan")
    gen = load_generator(info)
    photos = gen.sample(2, seed=3)
    from facegan.images import save_pngs

    paths = [str(p) for p in save_pngs(photos, tmp_path / "photos", prefix="p")]
    assert _cli(["edit", *paths, "--checkpoint", str(info), "--set", "cat=1", "--set", "c1=0.5", "--steps", "5",
                 "--out", str(tmp_path / "codes.png"), "--no-progress"]) == 0
    edited, _ = apply_edit(gen, gen.latent(2, seed=0), None, Edit(name="x", codes={"cat": 1, "c1": 0.5}))
    layout = gen.steps.layout
    assert edited[:, layout.cat_slice].argmax(1).tolist() == [1, 1]
    assert _cli(["edit", *paths, "--checkpoint", str(info), "--set", "cat=99", "--out", str(tmp_path / "x.png")]) == 2
    assert "cat: expected a category in 0.." in capsys.readouterr().err

    vae = load_generator(_smoke_run("vae", synthetic_shards, tmp_path / "vae"))
    result = invert(vae, vae.sample(2, seed=1), InvertOptions(steps=2))
    assert result.start_kind == "encoder"


# --- augmentation into shards

def test_augment_writes_a_verified_shard_set_that_trains_and_resumes(tiny_run: dict[str, Path], synthetic_shards: Path,
                                                                      tmp_path: Path, capsys: Any) -> None:
    from facegan.data.stream import ShardSet, eval_loader
    from facegan.data.writer import verify_shards

    out = tmp_path / "aug"
    argv = ["augment", str(synthetic_shards), "--split", "train", "--checkpoint", str(tiny_run["gan"]), "--variants",
            "2", "--jitter", "0.3", "--steps", "3", "--restarts", "2", "--out", str(out), "--no-progress",
            "--max-identity-distance", "0"]    # every variant (the identity filter: tests/test_face_identity.py)
    assert _cli(argv) == 0
    assert "augmented 120 images (0 staged by an earlier run)" in capsys.readouterr().out
    assert verify_shards(out) == []
    shards = ShardSet.open(str(out))
    assert shards.count("train") == 240 and shards.count("val") == 0
    src = ShardSet.open(str(synthetic_shards))
    assert shards.attr_names == src.attr_names and "identity" in shards.manifest["label_fields"]
    batch = next(iter(eval_loader(shards, split="train", batch_size=240)))
    assert batch["image"].shape == (240, 3, 32, 32) and "identity" in batch
    # Identities kept: every variant's identity is one of the source split's.
    src_ids = set(next(iter(eval_loader(src, split="train", batch_size=120)))["identity"].tolist())
    assert set(batch["identity"].tolist()) <= src_ids
    # Deterministic and resumable: a rerun stages nothing and leaves the same bytes.
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert _cli(argv) == 0
    assert "(120 staged by an earlier run)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before
    # It trains like any shards.
    metrics = train(from_dict(RunConfig, {
        "data": {"shards": str(out), "batch_size": 16, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": 0.032, "tick_kimg": 0.032, "out_dir": str(tmp_path / "run"), "num_threads": 1,
                  "grid_size": 4}, "wandb": {"enabled": False}}))
    assert metrics["images_seen"] == 32


def test_augment_a_photo_folder_lists_bad_photos(tiny_run: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(tiny_run["photos"], photos)
    (photos / "broken.jpg").write_text("not an image")
    out = tmp_path / "aug"
    assert _cli(["augment", str(photos), "--checkpoint", str(tiny_run["gan"]), "--variants", "1", "--jitter", "0.2",
                 "--steps", "2", "--restarts", "1", "--out", str(out), "--no-progress",
                 "--max-identity-distance", "0"]) == 0
    said = capsys.readouterr().out
    assert "augmented 3 images" in said and "skipped" in said and "broken.jpg" in said
    assert _cli(["augment", str(photos), "--checkpoint", str(tiny_run["gan"]), "--out", str(tmp_path / "x")]) == 2
    assert "give what to change" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
