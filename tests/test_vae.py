"""VAE family: sizes that are not powers of two, the loss against F.binary_cross_entropy and the
closed-form KL, the reparameterisation's gradients, grids, and the ELBO on the val split (reported
at eval ticks, consistent with the checkpoint, the same on 2 ranks as on one).

    .venv/bin/python -m pytest tests/test_vae.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facegan.config import ConfigError, from_dict
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import DataInfo, Phase
from facegan.families.vae import vae_layout
from facegan.families.vae.nets import build_vae
from facegan.families.vae.steps import (VAESteps, kl_divergence, reconstruction_bce, reparameterize, to_unit,
                                        vae_loss)

SPEC = FAMILIES["vae"]


def run_cfg(**sections) -> RunConfig:
    data = {"data": {"shards": "unused"}, "model": {"family": "vae"}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return from_dict(RunConfig, data)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- declaration and nets

def test_declares_one_phase_one_optimizer_and_a_generator_without_discriminator():
    cfg = run_cfg()
    assert SPEC.phases(cfg) == [Phase("fit", opt="VAE")]
    (spec,) = SPEC.optimizers(cfg).values()
    assert spec.nets == ("E", "G") and spec.lr == 1e-3
    assert SPEC.generator == "G" and SPEC.discriminator is None and cfg.gan.beta == 1.0
    assert cfg.train.ema_kimg == 0.0 and cfg.eval.metrics == []


@pytest.mark.parametrize("resolution, layout", [(16, (4, 2)), (32, (4, 3)), (48, (6, 3)), (64, (4, 4)),
                                                (112, (7, 4)), (128, (4, 5))])
def test_layout_and_shapes(resolution, layout):
    assert vae_layout(resolution) == layout
    torch.manual_seed(0)
    nets = build_vae(resolution=resolution, z_dim=8, base_channels=4)
    mu, logvar = nets["E"](torch.zeros(2, 3, resolution, resolution))
    assert mu.shape == logvar.shape == (2, 8)
    z = torch.randn(2, 8)
    img = nets["G"](z)
    assert img.shape == (2, 3, resolution, resolution) and img.abs().max() <= 1
    nets["G"].eval()
    torch.testing.assert_close(nets["G"](z), torch.sigmoid(nets["G"](z, logits=True)) * 2 - 1)


@pytest.mark.parametrize("override, message", [
    ({"model": {"resolution": 100}}, "model.resolution: resolution must be s * 2^k"),
    ({"model": {"resolution": 8}}, "model.resolution"),
    ({"model": {"base_channels": 1024, "resolution": 1024}}, "model.base_channels"),
    ({"gan": {"beta": -1}}, "gan.beta"),
    ({"gan": {"alpha": 0.5}}, "unknown key gan.alpha"),
    ({"eval": {"every_kimg": 1, "metrics": ["fid"]}}, "eval.classifier"),
    ({"eval": {"metrics": ["nope"]}}, "eval.metrics"),
])
def test_bad_options_are_refused_naming_the_field(override, message):
    with pytest.raises(ConfigError) as exc:
        run_cfg(**override)
    assert message in str(exc.value)


def test_elbo_only_evaluation_needs_no_classifier():
    assert run_cfg(eval={"every_kimg": 1}).eval.every_kimg == 1


# --- the loss against references

def test_kl_closed_form_against_hand_values_and_torch_distributions():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, 0.0], [math.log(4.0), 0.0]])
    # KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1 - log s^2) / 2 per dimension.
    torch.testing.assert_close(kl_divergence(mu, logvar), torch.tensor([0.5, (4 - 1 - math.log(4.0)) / 2]))
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl_divergence(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1))


def test_loss_matches_binary_cross_entropy_on_the_decoder_probabilities():
    torch.manual_seed(0)
    nets = build_vae(resolution=16, z_dim=6, base_channels=4)
    E, G = nets["E"], nets["G"]
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    eps = torch.randn(4, 6)
    beta = 2.5
    loss, sc = vae_loss(E, G, x, eps, beta=beta)
    # The same batch-norm batch statistics for the reference: eval mode would differ, so run again in train mode.
    mu, logvar = E(x)
    z = mu + torch.exp(logvar / 2) * eps
    probs = torch.sigmoid(G(z, logits=True))
    bce = F.binary_cross_entropy(probs, (x + 1) / 2, reduction="sum") / 4
    q = torch.distributions.Normal(mu, torch.exp(logvar / 2))
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    torch.testing.assert_close(sc["loss/bce"], bce, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(sc["loss/kl"], kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, bce + beta * kl, rtol=1e-5, atol=1e-3)
    # Pixels map [-1, 1] -> [0, 1]; the BCE is summed over C*H*W, so it scales with the image size.
    torch.testing.assert_close(to_unit(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([0.0, 0.5, 1.0]))
    assert reconstruction_bce(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16)).tolist() == \
        pytest.approx([3 * 16 * 16 * math.log(2)] * 2)


def test_reparameterisation_passes_gradients_to_mu_and_logvar():
    mu = torch.tensor([0.5, -1.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(4.0)], requires_grad=True)
    eps = torch.tensor([1.0, -0.5])
    z = reparameterize(mu, logvar, eps)
    torch.testing.assert_close(z, torch.tensor([1.5, -2.0]))
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones(2))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)


def test_training_closes_the_gap_to_the_targets_entropy(one_thread):
    # 16 flat-coloured images: the BCE cannot fall below the targets' own entropy (the BCE of
    # the exact probabilities); 30 Adam steps close a good part of the gap above it.
    torch.manual_seed(0)
    nets = build_vae(resolution=16, z_dim=6, base_channels=8)
    opt = torch.optim.Adam([p for n in nets.values() for p in n.parameters()], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(16, 3, 1, 1, generator=gen) * 2 - 1).expand(16, 3, 16, 16).contiguous()
    floor = float(reconstruction_bce(torch.logit((x + 1) / 2, eps=1e-6), x).mean())
    losses = []
    for _ in range(30):
        loss, sc = vae_loss(nets["E"], nets["G"], x, torch.randn(16, 6, generator=gen), beta=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(sc["loss/vae"]))
    assert losses[-1] - floor < 0.8 * (losses[0] - floor), (losses[0], losses[-1], floor)


def test_tick_images_pair_reals_with_reconstructions_and_leave_training_state_alone():
    torch.manual_seed(0)
    cfg = run_cfg(model={"resolution": 16, "z_dim": 6, "base_channels": 4})
    nets = build_vae(resolution=16, z_dim=6, base_channels=4)
    steps = VAESteps(cfg, DataInfo())
    real = torch.rand(9, 3, 16, 16) * 2 - 1
    before = {k: v.clone() for k, v in nets["E"].state_dict().items()}
    nets["G"].eval()
    grids = steps.tick_images(nets, latent=torch.randn(5, 6), attrs=None, real=real)
    assert grids["samples"].shape == (5, 3, 16, 16)
    # 2 r^2 = 8 pairs (r = 2): a 4 x 4 grid, each real followed by its reconstruction.
    assert grids["recon"].shape == (16, 3, 16, 16)
    torch.testing.assert_close(grids["recon"][0::2], real[:8])
    torch.testing.assert_close(grids["recon"][1::2], steps.reconstruct(nets["E"].eval(), nets["G"], real[:8]))
    nets["E"].train()
    # encode (GAN inversion's start): the posterior mean, in eval mode, leaving the mode as it was.
    torch.testing.assert_close(steps.encode(nets, real), nets["E"].eval()(real)[0])
    nets["E"].train()
    steps.encode(nets, real)
    assert nets["E"].training
    for k, v in nets["E"].state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)   # batch-norm statistics untouched


# --- the ELBO in training

def vae_cfg(shards: Path, out: Path, **train):
    from test_families import family_cfg

    return family_cfg("vae", shards, out, train={"total_kimg": 0.384, "tick_kimg": 0.064,
                                                 "checkpoint_kimg": 0.192, **train},
                      eval={"every_kimg": 0.128, "batch_size": 5}, optim={"lr": 3e-3})


def test_elbo_is_reported_at_eval_ticks_and_matches_the_checkpoint(synthetic_shards: Path, tmp_path: Path):
    from facegan.data.stream import ShardSet
    from facegan.families.loading import load_run
    from facegan.loop import train

    # fp32: the periodic ELBO runs under the training autocast, the check below in fp32 (bf16 autocast,
    # what precision auto picks on a CPU with bf16 units, moves the sum by ~1e-4 relative).
    cfg = vae_cfg(synthetic_shards, tmp_path / "run", precision="fp32")
    metrics = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/val/elbo" in r]
    assert [r["images_seen"] for r in evals] == [128, 256, 384]
    for r in evals:
        assert r["eval/val/elbo"] == pytest.approx(-(r["eval/val/bce"] + r["eval/val/kl"]))
    assert evals[-1]["eval/val/elbo"] > evals[0]["eval/val/elbo"]          # it learns
    assert metrics["eval/val/elbo"] == evals[-1]["eval/val/elbo"]
    assert (tmp_path / "run" / "samples" / "recon-latest.png").is_file()
    assert (tmp_path / "run" / "samples" / "latest.png").is_file()

    # The same number from the checkpoint, computed here over the whole val split on one process.
    run = load_run(tmp_path / "run")
    again = run.steps.evaluate(run.nets, final=True, rank=0, world_size=1, out_dir=tmp_path, kimg=0.0)
    assert again["eval/val/elbo"] == pytest.approx(metrics["eval/val/elbo"], rel=1e-5)
    n_val = ShardSet.open(str(synthetic_shards)).count("val")
    assert n_val > 5      # more than one eval batch


def _elbo_worker(rank: int, world: int, cfg_dict: dict, result_dir: str) -> None:
    from facegan.config import from_dict

    torch.set_num_threads(1)
    cfg = from_dict(RunConfig, cfg_dict)
    torch.manual_seed(0)
    nets = SPEC.build_nets(cfg, DataInfo())
    if rank == 1:  # rank 1's batch-norm statistics drift; evaluation scores rank 0's on every rank
        for m in nets["E"].modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean += 1.0
    scores = SPEC.build_steps(cfg, DataInfo()).evaluate(nets, final=True, rank=rank, world_size=world,
                                                         out_dir=result_dir, kimg=0.0)
    torch.save(scores, Path(result_dir) / f"scores{rank}.pt")


@pytest.mark.slow
def test_elbo_over_two_ranks_equals_one_process(synthetic_shards: Path, tmp_path: Path):
    from ranks import run_ranks

    from facegan.config import to_dict

    cfg = vae_cfg(synthetic_shards, tmp_path / "unused")
    run_ranks(_elbo_worker, to_dict(cfg), str(tmp_path), store=tmp_path / "pg")
    got = [torch.load(tmp_path / f"scores{r}.pt", weights_only=True) for r in (0, 1)]
    assert got[0] == got[1]
    torch.manual_seed(0)
    one = SPEC.build_steps(cfg, DataInfo()).evaluate(SPEC.build_nets(cfg, DataInfo()), final=True, rank=0,
                                                    world_size=1, out_dir=tmp_path, kimg=0.0)
    for k in ("eval/val/elbo", "eval/val/bce", "eval/val/kl"):
        assert got[0][k] == pytest.approx(one[k], rel=1e-6)
