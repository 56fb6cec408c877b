"""The predictor family (extension 3): image losses, the frozen GAN it loads, a run that learns the
latent and then switches to the image loss without touching G, its checkpoint and load_predictor,
and `facegan predictor train`.

    .venv/bin/python -m pytest tests/test_predictor.py -q
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from facegan.config import ConfigError, from_dict
from facegan.errors import CheckpointError
from facegan.families import FAMILIES, RunConfig
from facegan.families.predictor.load import load_gan, load_predictor
from facegan.families.predictor.steps import image_loss, ssim_settings

from conftest import REPO

PREDICTOR = FAMILIES["predictor"]


def gan_cfg(shards: Path, out: Path) -> RunConfig:
    return from_dict(RunConfig, {
        "data": {"shards": str(shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
        "model": {"family": "infogan", "resolution": 32, "z_dim": 8, "base_channels": 8, "cat_dim": 4, "cont_dim": 1,
                  "q_hidden": 16},
        "train": {"total_kimg": 0.48, "tick_kimg": 0.48, "num_threads": 1, "out_dir": str(out), "grid_size": 4,
                  "deterministic": True, "ema_kimg": 0.1},
        "wandb": {"enabled": False}})


@pytest.fixture(scope="module")
def gan_run(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny InfoGAN (30 steps, so its batch-norm statistics have settled): its EMA G is a fixed,
    code-dependent map the predictor can invert."""
    from facegan.loop import train

    out = tmp_path_factory.mktemp("gan") / "infogan"
    train(gan_cfg(synthetic_shards, out))
    return out


def pred_cfg(shards: Path, out: Path, generator: str, **gan: Any) -> RunConfig:
    return from_dict(RunConfig, {
        "data": {"shards": str(shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
        "model": {"family": "predictor", "resolution": 32, "base_channels": 8},
        "optim": {"lr": 1e-3},
        "gan": {"generator": generator, "switch_kimg": 0.48, **gan},
        "train": {"total_kimg": 0.64, "tick_kimg": 0.16, "checkpoint_kimg": 10, "num_threads": 1, "out_dir": str(out),
                  "grid_size": 4, "deterministic": True, "ema_kimg": 0},
        "wandb": {"enabled": False}})


# ============================================================================ image losses

@pytest.mark.parametrize("side", [16, 24, 32, 48, 64, 128, 256])
def test_ssim_settings_follow_the_metrics_rule(side: int) -> None:
    from facegan.metrics.diversity import ms_ssim_settings

    assert ssim_settings(side) == ms_ssim_settings(height=side, width=side)


@pytest.mark.parametrize("kind", ["mse", "ssim", "ms_ssim"])
def test_image_losses_are_zero_on_equal_images_and_differentiable(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    assert image_loss(target, target, kind=kind).item() == pytest.approx(0.0, abs=1e-5)
    recon = (target + 0.3 * torch.randn(4, 3, 32, 32, generator=g)).clamp(-1, 1).requires_grad_(True)
    loss = image_loss(recon, target, kind=kind)
    loss.backward()
    assert loss.item() > 0.01 and recon.grad is not None and torch.isfinite(recon.grad).all() and recon.grad.abs().sum() > 0
    if kind == "mse":
        torch.testing.assert_close(loss, F.mse_loss(recon, target))
    far = image_loss(torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, target, kind=kind)
    assert far > loss


def test_huge_predictors_are_refused_before_building() -> None:
    with pytest.raises(ConfigError, match="model.base_channels, model.resolution: 512 at 1024 px gives .* more than 150M"):
        from_dict(RunConfig, {"data": {"shards": "x"}, "gan": {"generator": "untrained:dcgan"},
                              "model": {"family": "predictor", "resolution": 1024, "base_channels": 512}})


# ============================================================================ the GAN it loads

def test_load_gan_refuses_what_it_cannot_invert(gan_run: Path) -> None:
    assert load_gan(str(gan_run), resolution=32).latent_dim == 8 + 4 + 1
    with pytest.raises(ConfigError, match=r"model.resolution: 64 is not the GAN's \(32x32"):
        load_gan(str(gan_run), resolution=64)
    with pytest.raises(ConfigError, match="takes attribute rows"):
        load_gan("untrained:conditional", resolution=32)
    with pytest.raises(ConfigError, match="untrained:nope: no such family"):
        load_gan("untrained:nope", resolution=32)
    with pytest.raises(ConfigError, match="gan.generator: expected the GAN's checkpoint"):
        pred_cfg(Path("x"), Path("y"), "")


def test_arch_auto_follows_the_gans_discriminator(synthetic_shards: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    for gan, arch in (("untrained:infobegan", "began"), ("untrained:dcgan", "dcgan")):
        cfg = pred_cfg(synthetic_shards, tmp_path, gan)
        nets = PREDICTOR.build_nets(cfg, None)
        assert nets["P"].arch == arch and not any(p.requires_grad for p in nets["G"].parameters())
        assert nets["P"](torch.zeros(2, 3, 32, 32)).shape == (2, nets["P"].latent_dim)


# ============================================================================ a run

def test_predictor_learns_the_latent_then_the_image_loss_leaves_g_alone(gan_run: Path, synthetic_shards: Path,
                                                                       tmp_path: Path) -> None:
    from facegan.checkpoint import list_checkpoints, load_checkpoint
    from facegan.families.loading import load_generator
    from facegan.loop import train

    out = tmp_path / "pred"
    metrics = train(pred_cfg(synthetic_shards, out, str(gan_run), image_source="both", latent_weight=0.1))
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    latent_stage = [r for r in steps if "loss/image" not in r]
    image_stage = [r for r in steps if "loss/image" in r]
    assert len(latent_stage) == 30 and len(image_stage) == 10      # switch at 0.48 kimg of 0.64
    first, last = (sum(r["loss/latent"] for r in part) / 5 for part in (latent_stage[:5], latent_stage[-5:]))
    assert last < 0.5 * first, (first, last)
    assert sum(r["pred/cat_acc"] for r in latent_stage[-5:]) / 5 > 0.5   # chance: 0.25
    assert all(r["loss/p"] == pytest.approx(r["loss/image"] + 0.1 * r["loss/latent"], rel=1e-4) for r in image_stage)
    assert {"eval/latent_mse", "eval/image_mse", "eval/cat_acc"} <= set(metrics)

    state, meta = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    gan = load_generator(gan_run)
    for k, v in gan.G.state_dict().items():                       # G frozen: the GAN's EMA weights, unchanged
        torch.testing.assert_close(state["G"][k], v, rtol=0, atol=0)
    info = meta["predictor"]
    assert info["gan_checkpoint"] == gan.checkpoint and info["gan_family"] == "infogan" and info["arch"] == "dcgan"
    assert info["latent_layout"]["cat_dim"] == 4 and info["latent_dim"] == 13
    assert {p.name for p in (out / "samples").glob("*-latest.png")} == {"recon_fake-latest.png",
                                                                          "recon_real-latest.png"}

    P = load_predictor(out)
    assert not P.training and P.gan_checkpoint == gan.checkpoint and P.latent_layout["code_names"] == ["cat", "c1"]
    img = gan.sample(5, seed=3)
    latent = P(img)
    assert latent.shape == (5, 13) and gan.generate(latent).shape == img.shape
    with pytest.raises(CheckpointError, match="not a latent predictor"):
        load_predictor(gan_run)


def test_resume_refuses_another_gan(gan_run: Path, synthetic_shards: Path, tmp_path: Path) -> None:
    from facegan.loop import train

    cfg = pred_cfg(synthetic_shards, tmp_path, str(gan_run))
    train(from_dict(RunConfig, {**_as_dict(cfg), "train": {**_as_dict(cfg)["train"], "total_kimg": 0.032}}))
    other = pred_cfg(synthetic_shards, tmp_path, "untrained:infogan")
    with pytest.raises(CheckpointError, match="predicts latents of"):
        train(from_dict(RunConfig, {**_as_dict(other), "train": {**_as_dict(other)["train"], "resume": "latest"}}))


def _as_dict(cfg: RunConfig) -> dict[str, Any]:
    from facegan.config import to_dict

    return to_dict(cfg)


# ============================================================================ the command

def test_predictor_train_command_fills_in_the_gan(gan_run: Path, synthetic_shards: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from facegan.cli import main
    from facegan.cli.predictor import predictor_config

    cfg = predictor_config(str(gan_run), overrides=["model.base_channels=8"])
    assert cfg.model.resolution == 32 and cfg.data.shards == str(synthetic_shards)
    assert cfg.train.out_dir == str(gan_run / "predictor") and cfg.gan.generator.startswith(str(gan_run / "checkpoints"))
    # The shipped config is a template: the GAN's resolution, shards and folder win over it, --set over all.
    shipped = predictor_config(str(gan_run), config=str(REPO / "configs" / "predictor_celeba64.yaml"),
                               overrides=["model.base_channels=8", "train.out_dir=elsewhere"])
    assert shipped.model.resolution == 32 and shipped.data.shards == str(synthetic_shards)
    assert shipped.gan.image_loss == "ms_ssim" and shipped.train.out_dir == "elsewhere"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {family: dcgan}\n")
    assert main(["predictor", "train", "--checkpoint", str(gan_run), "--config", str(bad), "--no-ray"]) == 2
    assert "trains predictor runs" in capsys.readouterr().err
    argv = ["predictor", "train", "--checkpoint", str(gan_run), "--no-ray", "--set", f"train.out_dir={tmp_path / 'p'}",
            "--set", "model.base_channels=8", "--set", "data.num_workers=0", "--set", "data.batch_size=16",
            "--set", "train.total_kimg=0.032", "--set", "train.grid_size=4", "--set", "wandb.enabled=false",
            "--set", "train.num_threads=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained predictor" in printed and f"predicts latents of: {gan_run}" in printed
    assert load_predictor(tmp_path / "p").latent_dim == 13
