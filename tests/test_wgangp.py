"""WGAN-GP family: the declaration and its refusals, the gradient penalty against hand computations,
the critic's per-sample independence, a critic that learns the Wasserstein distance of two Gaussians,
exact resume with n_critic > 1, and the penalty under DDP (2 ranks, gloo) against one process on the
concatenated batch.

    .venv/bin/python -m pytest tests/test_wgangp.py -q
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from facegan.config import ConfigError, from_dict
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import Phase
from facegan.families.wgangp.nets import build_wgangp
from facegan.families.wgangp.steps import (critic_loss, generator_loss, gradient_penalty, interpolates,
                                           uniform_eps)

SPEC = FAMILIES["wgangp"]


def run_cfg(**sections) -> RunConfig:
    data = {"data": {"shards": "unused"}, "model": {"family": "wgangp"}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return from_dict(RunConfig, data)


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere."""

    def __init__(self, w_CHW: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w_CHW.clone())

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return (x_BCHW * self.w).flatten(1).sum(1)


class HalfSquareCritic(nn.Module):
    """D(x) = a/2 ||x||^2: its gradient at x is a x."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.a * x_BCHW.flatten(1).square().sum(1)


# --- declaration

def test_declares_paper_defaults_and_n_critic_phases():
    cfg = run_cfg()
    assert cfg.family is SPEC and SPEC.discriminator is None and SPEC.generator == "G"
    assert SPEC.phases(cfg) == [Phase("critic", opt="D", repeat=5), Phase("g", opt="G", uses_data=False)]
    assert SPEC.phases(run_cfg(gan={"n_critic": 2}))[0].repeat == 2
    opts = SPEC.optimizers(cfg)
    assert {k: (v.nets, v.lr, v.betas) for k, v in opts.items()} == {
        "G": (("G",), 1e-4, (0.0, 0.9)), "D": (("D",), 1e-4, (0.0, 0.9))}
    assert cfg.gan.lambda_gp == 10.0 and cfg.model.d_norm == "layer" and not cfg.model.d_batchnorm


def test_critic_has_no_batch_norm_and_layer_norm_when_asked():
    for norm, groups in (("layer", 2), ("none", 0)):
        nets = build_wgangp(resolution=32, z_dim=8, base_channels=4, d_norm=norm)
        kinds = [type(m) for m in nets["D"].modules()]
        assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
        assert kinds.count(nn.GroupNorm) == groups    # after every conv but the first (3 octaves at 32)
        assert nets["D"](nets["G"](torch.randn(3, 8))).shape == (3,)


@pytest.mark.parametrize("override, message", [
    ({"model": {"d_batchnorm": True}}, "model.d_batchnorm: the wgangp critic cannot use batch norm"),
    ({"model": {"d_norm": "batch"}}, "model.d_norm"),
    ({"gan": {"n_critic": 0}}, "gan.n_critic"),
    ({"gan": {"n_critic": 1000}}, "gan.n_critic"),
    ({"gan": {"lambda_gp": -1}}, "gan.lambda_gp"),
    ({"gan": {"lambda_gp": "nan"}}, "gan.lambda_gp"),
    ({"gan": {"label_smoothing": 0.1}}, "unknown key gan.label_smoothing"),
    ({"train": {"precision": "fp16"}}, "train.precision: fp16 is not supported by wgangp"),
    ({"model": {"resolution": 1024, "base_channels": 256}}, "model.base_channels"),
])
def test_bad_options_are_refused_naming_the_field(override, message):
    with pytest.raises(ConfigError) as exc:
        run_cfg(**override)
    assert message in str(exc.value)
    if "batch norm" in message:
        assert "gradient penalty" in str(exc.value) and "couples the samples" in str(exc.value)


# --- the penalty against hand computations

def test_penalty_of_a_linear_critic_is_lambda_times_norm_minus_one_squared():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)
    w = w / w.norm() * 3.0                      # ||grad D|| = 3 everywhere
    D = LinearCritic(w)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    x_hat = interpolates(real, fake, torch.rand(5))
    gp, norm_B = gradient_penalty(D, x_hat, lambda_gp=10.0)
    torch.testing.assert_close(norm_B, torch.full((5,), 3.0))
    torch.testing.assert_close(gp, torch.tensor(10.0 * (3.0 - 1.0) ** 2))
    # Its gradient in w: d/dw lambda (||w|| - 1)^2 = 2 lambda (||w|| - 1) w / ||w||.
    gp.backward()
    torch.testing.assert_close(D.w.grad, 2 * 10.0 * (3.0 - 1.0) * w / 3.0)


def test_critic_loss_of_a_half_square_critic_matches_a_hand_computation():
    # D(x) = a/2 ||x||^2; grad at x_hat_i = a x_hat_i, x_hat_i = e_i r_i + (1 - e_i) f_i.
    a, lam = 0.7, 10.0
    D = HalfSquareCritic(a)
    real = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), -0.5)])   # ||r|| = 2, 1
    fake = torch.stack([torch.full((1, 2, 2), 0.0), torch.full((1, 2, 2), 0.5)])    # ||f|| = 0, 1
    eps = torch.tensor([0.25, 0.5])
    loss, sc = critic_loss(D, real, fake, eps, lambda_gp=lam)
    # x_hat_0 = 0.25 (all four pixels), ||x_hat_0|| = 0.5; x_hat_1 = 0, ||x_hat_1|| = 0.
    norms = torch.tensor([a * 0.5, 0.0])
    gp = lam * ((norms - 1) ** 2).mean()
    d_real = torch.tensor([a / 2 * 4.0, a / 2 * 1.0])
    d_fake = torch.tensor([0.0, a / 2 * 1.0])
    torch.testing.assert_close(sc["loss/gp"], gp, atol=1e-4, rtol=0)   # the norm has +1e-12 under its root
    torch.testing.assert_close(sc["wasserstein"], d_real.mean() - d_fake.mean())
    torch.testing.assert_close(loss, d_fake.mean() - d_real.mean() + gp, atol=1e-4, rtol=0)
    torch.testing.assert_close(sc["grad_norm"], norms.mean(), atol=1e-5, rtol=0)
    # And the gradient in a, against autograd on the same formula written out.
    loss.backward()
    a_ref = torch.tensor(a, requires_grad=True)
    x_hat_norm = torch.tensor([0.5, 0.0])
    ref = (0.5 * a_ref * torch.tensor([0.0, 1.0])).mean() - (0.5 * a_ref * torch.tensor([4.0, 1.0])).mean() \
        + lam * ((a_ref * x_hat_norm - 1) ** 2).mean()
    ref.backward()
    torch.testing.assert_close(D.a.grad, a_ref.grad)


def test_each_samples_penalty_depends_on_that_sample_only():
    # With layer norm (per sample), a sample's penalty term is the same alone or in a batch: a
    # batch-norm critic would fail this.
    torch.manual_seed(1)
    D = build_wgangp(resolution=16, z_dim=4, base_channels=4)["D"]
    real, fake, eps = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.rand(4)
    _, norms = gradient_penalty(D, interpolates(real, fake, eps), lambda_gp=10.0)
    alone = torch.cat([gradient_penalty(D, interpolates(real[i:i + 1], fake[i:i + 1], eps[i:i + 1]),
                                        lambda_gp=10.0)[1] for i in range(4)])
    torch.testing.assert_close(norms, alone)
    bn = nn.Sequential(nn.Conv2d(3, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 64, 1),
                       nn.Flatten(0))
    _, bn_norms = gradient_penalty(bn, interpolates(real, fake, eps), lambda_gp=10.0)
    bn_alone = torch.cat([gradient_penalty(bn, interpolates(real[i:i + 2], fake[i:i + 2], eps[i:i + 2]),
                                           lambda_gp=10.0)[1][:1] for i in range(3)])
    assert not torch.allclose(bn_norms[:3], bn_alone)


def test_eps_comes_from_the_generator():
    a = uniform_eps(6, generator=torch.Generator().manual_seed(3), device="cpu")
    b = uniform_eps(6, generator=torch.Generator().manual_seed(3), device="cpu")
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 1


@pytest.fixture
def one_thread():
    """Small ops on a shared machine: one thread is several times faster than contending for two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_critic_estimates_the_wasserstein_distance_of_two_gaussians(one_thread):
    # W1(N(m1, s^2 I), N(m2, s^2 I)) = ||m1 - m2|| = 5: what an MLP critic trained with the penalty finds.
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    shift = torch.tensor([3.0, 4.0])                     # distance 5
    D = nn.Sequential(nn.Flatten(), nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2),
                      nn.Linear(32, 1), nn.Flatten(0))
    opt = torch.optim.Adam(D.parameters(), lr=3e-3, betas=(0.0, 0.9))
    estimates, norms = [], []
    for step in range(300):
        real = (torch.randn(128, 2, generator=gen) * 0.3 + shift).view(128, 2, 1, 1)
        fake = (torch.randn(128, 2, generator=gen) * 0.3).view(128, 2, 1, 1)
        loss, sc = critic_loss(D, real, fake, uniform_eps(128, generator=gen, device="cpu"), lambda_gp=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        estimates.append(float(sc["wasserstein"]))
        norms.append(float(sc["grad_norm"]))
    # The penalty is soft: a critic of slope k along the shift scores 5k - lambda (k - 1)^2, best at
    # k = 1 + W / (2 lambda), so the estimate is W (1 + W / (2 lambda)) = 6.25 and the norm 1.25.
    assert sum(estimates[-50:]) / 50 == pytest.approx(5.0 * (1 + 5.0 / 20), abs=0.25), estimates[-50:]
    assert sum(norms[-50:]) / 50 == pytest.approx(1.25, abs=0.1)
    assert abs(estimates[0]) < 1.0     # it starts near 0: the value is learned, not built in


def test_generator_loss_is_minus_mean_critic_score():
    D = HalfSquareCritic(2.0)
    fake = torch.ones(3, 1, 1, 2)
    loss, sc = generator_loss(D, fake)
    torch.testing.assert_close(loss, torch.tensor(-2.0))
    assert sc["loss/g"] == loss.detach()


# --- the family in the loop

def test_resume_is_exact_with_several_critic_steps(synthetic_shards: Path, tmp_path: Path):
    from test_families import family_cfg, final_state

    from facegan.loop import train

    extra = {"gan": {"n_critic": 3}, "train": {"total_kimg": 0.144, "tick_kimg": 0.048, "checkpoint_kimg": 0.048}}
    metrics = train(family_cfg("wgangp", synthetic_shards, tmp_path / "full", **extra))
    assert metrics["step"] == 6 and metrics["images_seen"] == 144       # 3 critic batches of 8 per step
    train(family_cfg("wgangp", synthetic_shards, tmp_path / "split",
                     **{**extra, "train": {**extra["train"], "total_kimg": 0.072}}))
    train(family_cfg("wgangp", synthetic_shards, tmp_path / "split", **{**extra, "train": {**extra["train"],
                                                                                           "resume": "latest"}}))
    a, meta_a = final_state(tmp_path / "full")
    b, meta_b = final_state(tmp_path / "split")
    assert (meta_a["step"], meta_a["images_seen"]) == (meta_b["step"], meta_b["images_seen"]) == (6, 144)
    for net in ("G", "D", "G_ema"):
        for k, t in a[net].items():
            torch.testing.assert_close(t, b[net][k], rtol=0, atol=0, msg=f"{net}.{k}")
    for k in ("loss/gp", "wasserstein", "grad_norm"):
        assert math.isfinite(metrics[k])
    # The penalty keeps the critic's gradient norm near 1 from the start (it is initialised small).
    assert 0 < metrics["grad_norm"] < 10


# --- the penalty under DDP

def _critic_worker(rank: int, world: int, result_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    real, fake, eps = global_batch()
    half = real.shape[0] // world
    mine = slice(rank * half, (rank + 1) * half)
    D = make_critic()
    ddp = torch.nn.parallel.DistributedDataParallel(D)   # find_unused_parameters=False, as Ray's
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.9))
    loss, sc = critic_loss(ddp, real[mine], fake[mine], eps[mine], lambda_gp=10.0)
    opt.zero_grad()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in D.parameters()])
    opt.step()
    # A second step: DDP must accept the double-backward graph again (one reduction per step).
    loss2, _ = critic_loss(ddp, fake[mine], real[mine], eps.flip(0)[mine], lambda_gp=10.0)
    opt.zero_grad()
    loss2.backward()
    opt.step()
    params = torch.cat([p.detach().flatten() for p in D.parameters()])
    # This rank's own (unsynchronised) gradient, from a plain copy of the initial critic.
    local = make_critic()
    lloss, _ = critic_loss(local, real[mine], fake[mine], eps[mine], lambda_gp=10.0)
    lloss.backward()
    local_grads = torch.cat([p.grad.flatten() for p in local.parameters()])
    out = {}
    for name, t in (("grads", grads), ("params", params), ("local_grads", local_grads)):
        everyone = [torch.zeros_like(t) for _ in range(world)]
        dist.all_gather(everyone, t)
        out[name] = everyone
    if rank == 0:
        torch.save(out, Path(result_dir) / "ddp.pt")


def make_critic() -> nn.Module:
    torch.manual_seed(0)
    return build_wgangp(resolution=16, z_dim=4, base_channels=4)["D"]


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Different data for each rank's half; eps fixed per sample."""
    gen = torch.Generator().manual_seed(5)
    real = torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1
    fake = torch.randn(8, 3, 16, 16, generator=gen) * 0.3
    return real, fake, torch.rand(8, generator=gen)


@pytest.mark.slow
def test_penalty_under_ddp_equals_one_process_on_the_concatenated_batch(tmp_path: Path):
    from ranks import run_ranks

    run_ranks(_critic_worker, str(tmp_path), store=tmp_path / "pg")
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    # Ranks agree exactly after DDP's averaging, though their data (and own gradients) differ.
    torch.testing.assert_close(got["grads"][0], got["grads"][1], rtol=0, atol=0)
    torch.testing.assert_close(got["params"][0], got["params"][1], rtol=0, atol=0)
    assert not torch.allclose(got["local_grads"][0], got["local_grads"][1], rtol=1e-3, atol=1e-6)
    # One process on all 8 samples: the same gradient and the same two Adam steps.
    real, fake, eps = global_batch()
    D = make_critic()
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.9))
    loss, _ = critic_loss(D, real, fake, eps, lambda_gp=10.0)
    loss.backward()
    ref_grads = torch.cat([p.grad.flatten() for p in D.parameters()])
    opt.step()
    loss2, _ = critic_loss(D, fake, real, eps.flip(0), lambda_gp=10.0)
    opt.zero_grad()
    loss2.backward()
    opt.step()
    torch.testing.assert_close(got["grads"][0], ref_grads, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["params"][0], torch.cat([p.detach().flatten() for p in D.parameters()]),
                               rtol=1e-4, atol=1e-6)
    # The mean of the ranks' own gradients is that gradient too (what DDP computed).
    torch.testing.assert_close((got["local_grads"][0] + got["local_grads"][1]) / 2, ref_grads, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_two_rank_loop_with_several_critic_steps_keeps_ranks_identical(synthetic_shards: Path, tmp_path: Path):
    from ranks import run_ranks
    from test_families import _ddp_worker, family_cfg, final_state

    from facegan.config import to_dict

    cfg = family_cfg("wgangp", synthetic_shards, tmp_path / "ddp", gan={"n_critic": 3},
                     train={"total_kimg": 0.096, "tick_kimg": 0.096, "checkpoint_kimg": 0.096})
    run_ranks(_ddp_worker, to_dict(cfg), str(tmp_path), store=tmp_path / "pg")
    got = torch.load(tmp_path / "params.pt", weights_only=True)
    torch.testing.assert_close(got["rank0"], got["rank1"], rtol=0, atol=0)
    _, meta = final_state(tmp_path / "ddp")
    assert meta["step"] == 2 and meta["images_seen"] == 96     # 2 steps x 3 critic batches x 2 ranks x 8
